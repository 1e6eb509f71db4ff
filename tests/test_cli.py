"""proxy.cli: the keys commands, the serve guard, and the first-start banner."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from proxy import __version__, catalog, cli
from proxy.billing.keys import digest
from proxy.billing.store import Store
from proxy.config import default_routes_dir, load
from proxy.providers import ADAPTERS
from tests.redis_servers import REDIS_URL, redis_prefix

__all__ = ["redis_prefix"]  # a fixture

KEY_LINE = re.compile(r"sy-[A-Za-z0-9_-]{43}")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SWITCHYARD_* setting of the machine running the tests leaks in."""
    for name in list(os.environ):
        if name.startswith("SWITCHYARD_"):
            monkeypatch.delenv(name)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Records uvicorn.run calls instead of serving."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: None)
    return calls


def _run(capsys: pytest.CaptureFixture[str], data_dir: Path, *argv: str) -> tuple[int, str, str]:
    code = cli.main([*argv, "--data-dir", str(data_dir)])
    out, err = capsys.readouterr()
    return code, out, err


def _create(capsys: pytest.CaptureFixture[str], data_dir: Path, name: str) -> str:
    code, out, _ = _run(capsys, data_dir, "keys", "create", name)
    assert code == 0
    return out.splitlines()[-1]


def _find(data_dir: Path, key: str) -> bool:
    store = Store(data_dir / "switchyard.db")
    try:
        return store.find_key(digest(key)) is not None
    finally:
        store.close()


def test_keys_create_prints_the_key_alone_on_the_last_line(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = _run(capsys, tmp_path, "keys", "create", "alice")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 3
    assert "alice" in lines[0] and re.search(r"key_[0-9a-f]{12}", lines[0])
    assert re.fullmatch(r"webhook secret: whsec_[A-Za-z0-9+/]{43}=", lines[1])
    assert lines[-1].startswith("sy-")
    assert KEY_LINE.fullmatch(lines[-1])
    assert _find(tmp_path, lines[-1])


def test_keys_list_one_line_per_key_without_the_key(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    keys = {name: _create(capsys, tmp_path, name) for name in ("alice", "bob")}
    code, out, _ = _run(capsys, tmp_path, "keys", "list")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    store = Store(tmp_path / "switchyard.db")
    ids = {r.id: r for r in store.list_keys()}
    store.close()
    for line in lines:
        key_id, state, name, shown, created = line.split("\t")
        assert key_id in ids
        assert (state, name, shown) == ("active", ids[key_id].name, ids[key_id].hint)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created)
    for key in keys.values():
        assert key not in out
        assert key[3:] not in out


def test_keys_list_when_empty(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert _run(capsys, tmp_path, "keys", "list") == (0, "", "")


def test_keys_revoke_then_list_shows_revoked(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    revoked = _create(capsys, tmp_path, "alice")
    kept = _create(capsys, tmp_path, "bob")
    _, out, _ = _run(capsys, tmp_path, "keys", "list")
    ids = {line.split("\t")[2]: line.split("\t")[0] for line in out.splitlines()}
    code, out, err = _run(capsys, tmp_path, "keys", "revoke", ids["alice"])
    assert (code, out.strip(), err) == (0, f"revoked {ids['alice']}", "")
    _, out, _ = _run(capsys, tmp_path, "keys", "list")
    states = {line.split("\t")[0]: line.split("\t")[1] for line in out.splitlines()}
    assert states == {ids["alice"]: "revoked", ids["bob"]: "active"}
    code, _, err = _run(capsys, tmp_path, "keys", "revoke", ids["alice"])
    assert code == 1 and ids["alice"] in err  # a second revoke finds no active key
    assert _find(tmp_path, revoked) and _find(tmp_path, kept)


def test_revoking_an_unknown_id_exits_1(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    code, out, err = _run(capsys, tmp_path, "keys", "revoke", "key_doesnotexist")
    assert (code, out) == (1, "")
    assert "key_doesnotexist" in err


def test_config_error_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_PORT", "http")
    code, out, err = _run(capsys, tmp_path, "keys", "list")
    assert (code, out) == (2, "")
    assert err.startswith("switchyard: ") and "'port'" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"switchyard {__version__}"


def test_serve_refuses_a_public_host_without_admin_key(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        started: list[dict[str, Any]]) -> None:
    code, out, err = _run(capsys, tmp_path, "serve", "--host", "0.0.0.0")
    assert code == 2
    assert "0.0.0.0" in err and "SWITCHYARD_ADMIN_KEY" in err
    assert out == ""
    assert started == []
    assert not (tmp_path / "switchyard.db").exists()  # no banner, no key made


def test_serve_on_a_public_host_with_admin_key_starts(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, started: list[dict[str, Any]]) -> None:
    monkeypatch.setenv("SWITCHYARD_ADMIN_KEY", "adm-secret")
    code, out, _ = _run(capsys, tmp_path, "serve", "--host", "0.0.0.0", "--port", "9123")
    assert code == 0
    assert [(c["host"], c["port"]) for c in started] == [("0.0.0.0", 9123)]
    assert "http://0.0.0.0:9123/v1" in out


def test_serve_on_loopback_needs_no_admin_key(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        started: list[dict[str, Any]]) -> None:
    code, _, _ = _run(capsys, tmp_path, "serve")
    assert code == 0
    assert [(c["host"], c["port"]) for c in started] == [("127.0.0.1", 8080)]


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True),
    ("127.0.0.1", True),
    ("127.1.2.3", True),
    ("::1", True),
    ("0.0.0.0", False),
    ("::", False),
    ("192.168.1.20", False),
    ("10.0.0.1", False),
    ("2001:db8::1", False),
    ("example.com", False),
    ("localhost.example.com", False),
    ("", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert cli.is_loopback(host) is loopback


def test_banner_creates_one_key_on_first_start_only(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = load(env={}, data_dir=tmp_path)
    demo = catalog.load(default_routes_dir(), {}, None, ADAPTERS)
    cli._banner(config, demo, ["demo catalog ON"])
    out = capsys.readouterr().out
    store = Store(config.database_path)
    assert store.count_keys() == 1
    store.close()
    keys = KEY_LINE.findall(out)
    assert keys and set(keys) == {keys[0]}
    key = keys[0]
    assert key in [line.strip() for line in out.splitlines()]  # alone on its own line
    assert f"export OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY={key}" in out
    assert "  demo catalog ON" in out
    assert "model='demo-image'" in out
    assert _find(tmp_path, key)

    cli._banner(config, demo, [])
    again = capsys.readouterr().out
    store = Store(config.database_path)
    assert store.count_keys() == 1
    store.close()
    assert "export OPENAI_BASE_URL=" not in again
    assert KEY_LINE.search(again) is None
    assert "switchyard keys list" in again


def test_a_server_reachable_from_other_machines_makes_and_prints_no_key(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Its output is a container's log (before: a working key, printed there, with no
    budget; and said to be stored in the data directory on PostgreSQL too)."""
    config = load(env={"SWITCHYARD_HOST": "0.0.0.0", "SWITCHYARD_ADMIN_KEY": "adm-secret"},
                  data_dir=tmp_path)
    demo = catalog.load(default_routes_dir(), {}, None, ADAPTERS)
    cli._banner(config, demo, [])
    out = capsys.readouterr().out
    assert KEY_LINE.search(out) is None and "switchyard keys create NAME" in out
    with Store(config.database_path) as store:
        assert store.count_keys() == 0


def test_the_first_key_says_where_it_is_stored(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path, postgres_url: str) -> None:
    config = load(env={"SWITCHYARD_DATABASE_URL": postgres_url}, data_dir=tmp_path)
    demo = catalog.load(default_routes_dir(), {}, None, ADAPTERS)
    cli._banner(config, demo, [])
    out = capsys.readouterr().out
    assert "stored hashed in the PostgreSQL database" in out and str(tmp_path) not in out


def _real_tree(root: Path) -> Path:
    """routes/ with one keyed provider (simulated protocol, standing in for a real host) and the
    shipped demo beside it."""
    (root / "models").mkdir(parents=True)
    (root / "providers.toml").write_text(
        '[acme]\nprotocol = "simulated"\nbase_url = "http://acme.test"\nkey_env = "ACME_KEY"\n')
    (root / "models" / "acme-image.toml").write_text(
        'name = "acme-image"\n[[routes]]\nprovider = "acme"\nupstream_model = "a1"\n'
        'price.per_image = { "1K" = 0.04, "4K" = 0.2 }\n')
    (root / "demo").symlink_to(default_routes_dir() / "demo")
    return root


def test_routes_list_says_why_a_route_is_off(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    routes = _real_tree(tmp_path / "routes")
    monkeypatch.setenv("SWITCHYARD_ROUTES_DIR", str(routes))
    code, out, _ = _run(capsys, tmp_path / "data", "routes", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["MODEL", "PROVIDER", "PROTOCOL", "UPSTREAM"]
    acme = next(line for line in lines if line.startswith("acme-image"))
    assert acme.split()[:8] == ["acme-image", "acme", "simulated", "a1", "-", "0.0400", "-",
                                "0.2000"]
    assert acme.endswith("off: ACME_KEY is not set")
    assert any("sim-thrifty" in line and line.endswith("live (simulated demo)") for line in lines)

    monkeypatch.setenv("ACME_KEY", "secret-value")
    code, out, _ = _run(capsys, tmp_path / "data", "routes", "list")
    acme = next(line for line in out.splitlines() if line.startswith("acme-image"))
    assert acme.endswith("live (ACME_KEY is set)")
    assert "secret-value" not in out
    thrifty = next(line for line in out.splitlines() if "sim-thrifty" in line)
    assert "off: demo is off" in thrifty


def test_a_database_that_is_away_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """No traceback, no pool chatter, never the URL's password."""
    import subprocess
    import sys

    env = {**os.environ, "SWITCHYARD_DATABASE_URL": "postgresql://u:secretpw@127.0.0.1:1/x",
           "SWITCHYARD_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "proxy", "keys", "list"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("switchyard: PostgreSQL"), done.stderr
    assert lines[0].endswith("Connection refused")  # why, so a typo is not waited out
    assert "secretpw" not in done.stderr + done.stdout


def test_routes_list_says_the_mode_and_whether_redis_answers(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        redis_prefix: str) -> None:
    code, out, _ = _run(capsys, tmp_path / "data", "routes", "list")
    assert code == 0 and out.splitlines()[-1].startswith("Mode: single process")

    monkeypatch.setenv("SWITCHYARD_DATABASE_URL", "postgresql://127.0.0.1:5432/test")
    monkeypatch.setenv("SWITCHYARD_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("SWITCHYARD_REDIS_PREFIX", redis_prefix)
    code, out, _ = _run(capsys, tmp_path / "data", "routes", "list")
    last = out.splitlines()[-1]
    assert code == 0 and last.startswith("Mode: fleet; Redis at redis://"), last
    assert f"(prefix {redis_prefix!r}) answers in " in last and last.endswith("the fleet's")

    monkeypatch.setenv("SWITCHYARD_REDIS_URL", "redis://:hunter2@127.0.0.1:1/0")
    code, out, _ = _run(capsys, tmp_path / "data", "routes", "list")
    last = out.splitlines()[-1]
    assert code == 0 and "redis://:***@127.0.0.1:1/0" in last, last
    assert "does not answer (ConnectionError)" in last and "hunter2" not in out

    # redis-py takes a password from the query string too (before: printed as given)
    monkeypatch.setenv("SWITCHYARD_REDIS_URL", "redis://127.0.0.1:1/0?db=0&password=hunter2")
    code, out, _ = _run(capsys, tmp_path / "data", "routes", "list")
    last = out.splitlines()[-1]
    assert code == 0 and "redis://127.0.0.1:1/0?db=0&password=***" in last, last
    assert "hunter2" not in out
    monkeypatch.setenv("SWITCHYARD_REDIS_URL", "redis://127.0.0.1:1/0?pass%77ord=hunter2")
    code, out, _ = _run(capsys, tmp_path / "data", "routes", "list")
    assert code == 0 and "hunter2" not in out  # the name as redis-py reads it
