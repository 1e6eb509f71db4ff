"""`switchyard keys` settings, show, set, rotate, and `switchyard usage` (table and CSV)."""

from __future__ import annotations

import csv
import io
import time
from decimal import Decimal
from pathlib import Path

import pytest

from proxy import cli
from proxy.billing.keys import KeyLimits, digest
from proxy.billing.rows import Entry
from proxy.billing.store import Store


def run(capsys: pytest.CaptureFixture[str], data_dir: Path, *argv: str) -> tuple[int, str]:
    try:
        code = cli.main([*argv, "--data-dir", str(data_dir)])
    except SystemExit as exc:
        code = 2 if isinstance(exc.code, str) else int(exc.code or 0)
        print(exc.code)
    out, err = capsys.readouterr()
    return code, out + err


def only_key(data_dir: Path) -> tuple[str, KeyLimits]:
    with Store(data_dir / "switchyard.db") as store:
        (record,) = store.list_keys()
    return record.id, record.limits


def test_create_with_settings(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = run(capsys, tmp_path, "keys", "create", "acme", "--tenant", "acme-corp",
                    "--budget", "12.50", "--period", "daily", "--rpm", "60", "--ipm", "90",
                    "--concurrency", "4", "--models", "demo-image, demo-image-pro",
                    "--strategy", "fastest", "--plan", "resale")
    assert code == 0
    key = out.splitlines()[-1]
    with Store(tmp_path / "switchyard.db") as store:
        found = store.find_key(digest(key))
    assert found is not None
    record = found[1]
    assert record.tenant == "acme-corp"
    assert record.limits == KeyLimits(("demo-image", "demo-image-pro"), "fastest", "resale",
                                      Decimal("12.50"), "daily", 60, 90, 4)


@pytest.mark.parametrize(("flags", "needle"), [
    (("--rpm", "0"), "--rpm"), (("--rpm", "lots"), "--rpm"), (("--budget", "-3"), "--budget"),
    (("--budget", "cheap"), "--budget"), (("--period", "weekly"), "--period"),
    (("--strategy", "random"), "--strategy"),
])
def test_bad_settings_name_the_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                    flags: tuple[str, str], needle: str) -> None:
    code, out = run(capsys, tmp_path, "keys", "create", "acme", *flags)
    assert code != 0 and needle in out
    with Store(tmp_path / "switchyard.db") as store:
        assert store.list_keys() == [], "nothing is created on a bad flag"


def test_set_changes_and_clears(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run(capsys, tmp_path, "keys", "create", "acme", "--rpm", "5", "--budget", "1")
    key_id, _ = only_key(tmp_path)
    code, _ = run(capsys, tmp_path, "keys", "set", key_id, "--rpm", "none", "--ipm", "7")
    assert code == 0
    _, limits = only_key(tmp_path)
    assert (limits.rpm, limits.ipm, limits.budget_usd) == (None, 7, Decimal(1))
    assert run(capsys, tmp_path, "keys", "set", "key_nope", "--rpm", "1")[0] != 0


def test_show_reports_settings_and_spend(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    run(capsys, tmp_path, "keys", "create", "acme", "--budget", "2")
    key_id, _ = only_key(tmp_path)
    with Store(tmp_path / "switchyard.db") as store:
        reservation = store.money.reserve(key_id, "total", 300_000, 2_000_000)
        store.money.settle(reservation, _entry(key_id, "req_1", 250_000))
    code, out = run(capsys, tmp_path, "keys", "show", key_id)
    assert code == 0 and "budget_usd      2" in out
    assert "spent           $0.25 in total ($0 reserved now)" in out


def test_rotate_prints_a_new_key_once(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    run(capsys, tmp_path, "keys", "create", "acme")
    key_id, _ = only_key(tmp_path)
    code, out = run(capsys, tmp_path, "keys", "rotate", key_id)
    new_key = out.splitlines()[-1]
    assert code == 0 and new_key.startswith("sy-")
    with Store(tmp_path / "switchyard.db") as store:
        assert store.find_key(digest(new_key)) is not None
    run(capsys, tmp_path, "keys", "revoke", key_id)
    assert run(capsys, tmp_path, "keys", "rotate", key_id)[0] == 1


def _entry(key_id: str, request_id: str, billed: int, model: str = "m",
           when: int | None = None) -> Entry:
    return Entry(request_id, key_id, "t", model, "p", f"{model}/p", "1K", 1, 1, billed,
                 billed // 2, 900, "success", None, 1, None, None,
                 when if when is not None else int(time.time()))


def test_usage_table_and_csv(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    day = 86400 * 20_400  # 2025-11-08
    with Store(tmp_path / "switchyard.db") as store:
        for i, (model, when) in enumerate([("a", day), ("a", day + 60), ("b", day + 86400)]):
            store.money.settle(None, _entry("key_1", f"req_{i}", 50_000, model, when))
    code, out = run(capsys, tmp_path, "usage", "--csv", "--from", "2025-11-08",
                    "--to", "2025-11-09", "--group-by", "day,model")
    assert code == 0
    rows = list(csv.reader(io.StringIO(out)))
    # Models the catalog does not know are their own reference: nothing saved.
    assert rows == [["day", "model", "requests", "succeeded", "images", "billed_usd",
                     "upstream_usd", "reference_usd", "saved_usd"],
                    ["2025-11-08", "a", "2", "2", "2", "0.1", "0.05", "0.05", "0"],
                    ["2025-11-09", "b", "1", "1", "1", "0.05", "0.025", "0.025", "0"]]
    code, out = run(capsys, tmp_path, "usage", "--to", "2025-11-08", "--group-by", "model")
    assert code == 0
    assert out.splitlines()[1].split() == ["a", "2", "2", "2", "0.1", "0.05", "0.05", "0"]
    assert len(out.splitlines()) == 2
    code, out = run(capsys, tmp_path, "usage", "--group-by", "colour")
    assert code != 0 and "--group-by" in out


def test_usage_prices_the_images_on_the_reference_route(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """demo-image's first route (sim-thrifty) prices 1K at $0.03; each entry cost $0.025."""
    monkeypatch.delenv("SWITCHYARD_ROUTES_DIR", raising=False)
    with Store(tmp_path / "switchyard.db") as store:
        for i in range(2):
            store.money.settle(None, _entry("key_1", f"req_{i}", 50_000, "demo-image"))
    code, out = run(capsys, tmp_path, "usage", "--csv", "--group-by", "model")
    assert code == 0
    assert list(csv.reader(io.StringIO(out)))[1] == [
        "demo-image", "2", "2", "2", "0.1", "0.05", "0.06", "0.01"]
    monkeypatch.setenv("SWITCHYARD_REFERENCE_ROUTES", "demo-image=sim-swift")  # $0.08
    code, out = run(capsys, tmp_path, "usage", "--csv", "--group-by", "model")
    assert list(csv.reader(io.StringIO(out)))[1][-2:] == ["0.16", "0.11"]
    monkeypatch.setenv("SWITCHYARD_REFERENCE_ROUTES", "demo-image=nowhere")
    code, out = run(capsys, tmp_path, "usage", "--group-by", "model")
    assert code != 0 and "'nowhere'" in out and "sim-thrifty" in out
