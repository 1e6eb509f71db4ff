"""README.md's commands are the ones CI runs, and its quick start works as pasted: `switchyard
serve` with no configuration, then the SDK example against it."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image as PILImage

from proxy import catalog as catalog_module
from proxy import geometry
from proxy.config import default_routes_dir
from proxy.providers import ADAPTERS
from tests.conftest import free_socket

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
VENV_BIN = f"{Path(sys.executable).parent}/"


def block(marker: str) -> str:
    found = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)```", README, re.S)
    assert found, f"README.md has no block after <!-- {marker} -->"
    return found.group(1).strip()


def install_and_run(marker: str) -> tuple[str, str]:
    """A one-line block's install part (what CI runs) and the command it then runs."""
    install, _, command = block(marker).rpartition(" && ")
    return install, command


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == block("test")
    assert "pytest" in block("test")
    # The quick start installs exactly as CI (and the test command) does.
    install, command = install_and_run("install-and-serve")
    assert install == install_and_run("test")[0] and "pip install" in install
    assert command == ".venv/bin/switchyard serve"


def zero_config_env(data_dir: Path) -> dict[str, str]:
    """This environment without anything that configures Switchyard or a provider: every key
    and option variable the catalog reads, and every SWITCHYARD_ setting."""
    models = catalog_module.inventory(default_routes_dir(), {}, ADAPTERS)
    providers = {r.provider.name: r.provider for m in models for r in m.routes}
    read = {p.key_env for p in providers.values()} | {
        name for p in providers.values() for name in p.options_env.values()}
    env = {k: v for k, v in os.environ.items()
           if k not in read and not k.startswith("SWITCHYARD_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return {**env, "SWITCHYARD_DATA_DIR": str(data_dir)}  # for the example's `keys create`


def wait_healthy(server: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert server.poll() is None, f"serve exited with {server.returncode}:\n{log.read_text()}"
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"serve did not answer /healthz:\n{log.read_text()}")


def stop(server: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, as a service manager stops it: the exit code, or None (after a SIGKILL) if it
    did not stop."""
    server.send_signal(signal.SIGTERM)
    try:
        return server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        return None


# Each SDK example of README.md, run against the quick start's server: what it prints, the
# file it saves and that image's size.
EXAMPLES = (("sdk-example", "lighthouse.png", (1024, 1024)),
            ("gemini-example", "lighthouse-gemini.png", geometry.pixels("16:9", "1K")),
            ("chat-example", "lighthouse-chat.png", geometry.pixels("16:9", "1K")))


def test_quick_start_serves_and_each_sdk_example_saves_a_valid_image(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with free_socket() as sock:
        port = sock.getsockname()[1]
    command = install_and_run("install-and-serve")[1].replace(".venv/bin/", VENV_BIN)
    env = zero_config_env(data_dir)
    out, err = tmp_path / "serve.out", tmp_path / "serve.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        server = subprocess.Popen([*shlex.split(command), "--port", str(port), "--data-dir",
                                   str(data_dir)], cwd=tmp_path, env=env, stdout=stdout,
                                  stderr=stderr)
    try:
        wait_healthy(server, f"http://127.0.0.1:{port}", err)
        runs = []
        for marker, _, _ in EXAMPLES:
            script = block(marker).replace("127.0.0.1:8080", f"127.0.0.1:{port}")
            runs.append(subprocess.run(["bash", "-c", script.replace(".venv/bin/", VENV_BIN)],
                                       cwd=tmp_path, env=env, capture_output=True, text=True,
                                       timeout=120))
    finally:
        code = stop(server)
    for done, (_, saved, size) in zip(runs, EXAMPLES, strict=True):
        assert done.returncode == 0, done.stderr
        assert f"saved {saved}" in done.stdout
        with PILImage.open(tmp_path / saved) as image:
            assert (image.format, image.size) == ("PNG", size)
    banner, log = out.read_text(), err.read_text()
    assert "demo catalog ON" in banner  # no provider key reached it: the zero-config demo
    assert re.search(r"^ {4}sy-\S+$", banner, re.M), "the first start prints a key"
    # A graceful stop: uvicorn shuts down, then ends by the signal it caught (its documented
    # behaviour); the lifespan closed the store, so SQLite removed its write-ahead log.
    assert code in (0, -signal.SIGTERM), log
    assert "Shutting down" in log and "Traceback" not in log, log
    assert not (data_dir / "switchyard.db-wal").exists()
