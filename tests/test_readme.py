"""README.md's commands are the ones CI runs, and its SDK example works as pasted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image as PILImage

from proxy.config import default_routes_dir, load
from tests.conftest import serve

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def block(marker: str) -> str:
    found = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)```", README, re.S)
    assert found, f"README.md has no block after <!-- {marker} -->"
    return found.group(1).strip()


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == block("test")
    assert "pytest" in block("test")


def test_install_and_serve_command_starts_the_server() -> None:
    command = block("install-and-serve")
    assert command.endswith("switchyard serve") and "pip install" in command


def test_sdk_example_saves_a_valid_image(tmp_path: Path) -> None:
    config = load(env={}, data_dir=tmp_path / "data", routes_dir=default_routes_dir(),
                  simulation_time_scale=0)
    with serve(config) as running:
        port = running.base_url.rsplit(":", 1)[1]
        script = block("sdk-example").replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        script = script.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
        env = {**os.environ, "SWITCHYARD_DATA_DIR": str(config.data_dir)}
        done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "saved lighthouse.png" in done.stdout
    with PILImage.open(tmp_path / "lighthouse.png") as image:
        assert (image.format, image.size) == ("PNG", (1024, 1024))
