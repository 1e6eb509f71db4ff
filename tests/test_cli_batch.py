"""`switchyard batch submit --wait`, `status` and `results` against a running server."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from PIL import Image as PILImage

from proxy import cli
from tests.conftest import make_config, serve


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_submit_wait_status_and_results(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    lines = [{"custom_id": f"sku/{i}", "method": "POST", "url": "/v1/images/generations",
              "body": {"model": "test-image", "prompt": f"p{i}", "size": "1536x1024"}}
             for i in range(4)]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\nnot json\n")
    with serve(make_config(tmp_path / "data")) as running:
        common = ["--url", running.v1, "--key", running.new_key()]
        code, out, err = run(capsys, "batch", "submit", str(source), "--wait", *common)
        batch_id = out.strip()
        assert code == 0 and batch_id.startswith("batch_")
        assert "5/5 (1 failed)" in err and err.rstrip().endswith("completed")
        code, out, _ = run(capsys, "batch", "status", batch_id, *common)
        assert out.split()[:2] == [batch_id, "completed"] and "4 completed, 1 failed" in out
        folder = tmp_path / "out"
        code, out, _ = run(capsys, "batch", "results", batch_id, "--out", str(folder), *common)
    assert code == 0 and "wrote 4 images" in out
    written = sorted(p.name for p in folder.glob("*.png"))
    assert written == [f"sku_{i}-0.png" for i in range(4)]
    with PILImage.open(folder / "sku_0-0.png") as image:
        assert image.format == "PNG" and image.size[0] > 0
    assert b"not valid JSON" in (folder / "errors.jsonl").read_bytes()


def test_a_missing_key_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("SWITCHYARD_API_KEY", raising=False)
    with pytest.raises(SystemExit, match="tenant key"):
        cli.main(["batch", "status", "batch_x", "--url", "http://127.0.0.1:9/v1"])
