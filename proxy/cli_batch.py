"""`switchyard batch submit | status | results`: the Batch API from the command line.

Talks to a running Switchyard over HTTP like any client: the URL defaults to this machine's
configured host and port, the key comes from --key, SWITCHYARD_API_KEY or OPENAI_API_KEY.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from proxy.config import Config

POLL_S = 1.0
BAR = 30


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--url", help="Switchyard's /v1 URL (default: this machine's serve)")
    client.add_argument("--key", help="tenant key (or SWITCHYARD_API_KEY / OPENAI_API_KEY)")
    batch = commands.add_parser("batch", help="batches of image requests").add_subparsers(
        dest="action", required=True)
    submit = batch.add_parser("submit", parents=[common, client],
                              help="upload a JSONL file and start a batch")
    submit.add_argument("file", type=Path)
    submit.add_argument("--endpoint", default="/v1/images/generations",
                        choices=("/v1/images/generations", "/v1/images/edits"))
    submit.add_argument("--wait", action="store_true", help="show progress until it ends")
    submit.set_defaults(run=submit_batch)
    status = batch.add_parser("status", parents=[common, client], help="a batch's progress")
    status.add_argument("id")
    status.set_defaults(run=batch_status)
    results = batch.add_parser("results", parents=[common, client],
                               help="write a batch's images (and its errors) to a folder")
    results.add_argument("id")
    results.add_argument("--out", type=Path, required=True)
    results.set_defaults(run=batch_results)


def _client(config: Config, args: argparse.Namespace) -> httpx.Client:
    key = args.key or os.environ.get("SWITCHYARD_API_KEY") or os.environ.get("OPENAI_API_KEY")
    if not key:
        raise SystemExit("switchyard: a tenant key is needed: --key, SWITCHYARD_API_KEY or "
                         "OPENAI_API_KEY")
    url = args.url or f"http://{config.host}:{config.port}/v1"
    return httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=60)


def _checked(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise SystemExit(f"switchyard: HTTP {response.status_code}: {message}")
    return response.json()


def submit_batch(config: Config, args: argparse.Namespace) -> int:
    with _client(config, args) as http:
        uploaded = _checked(http.post("/files", data={"purpose": "batch"}, files={
            "file": (args.file.name, args.file.read_bytes(), "application/jsonl")}))
        batch = _checked(http.post("/batches", json={
            "input_file_id": uploaded["id"], "endpoint": args.endpoint,
            "completion_window": "24h"}))
        print(batch["id"])
        if args.wait:
            batch = _follow(http, batch["id"])
    return 0 if batch["status"] in ("in_progress", "completed") else 1


def _follow(http: httpx.Client, batch_id: str) -> Any:
    """A progress bar with an ETA until the batch ends."""
    started = time.monotonic()
    while True:
        batch = _checked(http.get(f"/batches/{batch_id}"))
        counts = batch["request_counts"]
        done, total = counts["completed"] + counts["failed"], max(1, counts["total"])
        elapsed = time.monotonic() - started
        eta = elapsed / done * (total - done) if done else 0.0
        filled = BAR * done // total
        print(f"\r[{'#' * filled}{' ' * (BAR - filled)}] {done}/{total} "
              f"({counts['failed']} failed)  ETA {int(eta) // 60}:{int(eta) % 60:02d}",
              end="", file=sys.stderr, flush=True)
        if batch["status"] in ("completed", "cancelled", "failed", "expired"):
            print(f"\n{batch['status']}", file=sys.stderr)
            return batch
        time.sleep(POLL_S)


def batch_status(config: Config, args: argparse.Namespace) -> int:
    with _client(config, args) as http:
        batch = _checked(http.get(f"/batches/{args.id}"))
    counts = batch["request_counts"]
    print(f"{batch['id']}  {batch['status']}  {counts['completed']} completed, "
          f"{counts['failed']} failed, {counts['total']} in all")
    return 0


def batch_results(config: Config, args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    written = 0
    with _client(config, args) as http:
        batch = _checked(http.get(f"/batches/{args.id}"))
        if batch.get("output_file_id"):
            lines = http.get(f"/files/{batch['output_file_id']}/content").content
            written = _write_images(http, lines, args.out)
        if batch.get("error_file_id"):
            errors = http.get(f"/files/{batch['error_file_id']}/content").content
            (args.out / "errors.jsonl").write_bytes(errors)
    print(f"wrote {written} images to {args.out}")
    return 0


def _write_images(http: httpx.Client, lines: bytes, out: Path) -> int:
    written = 0
    for line in lines.splitlines():
        item = orjson.loads(line)
        body = item["response"]["body"]
        extension = body.get("output_format", "png")
        for index, image in enumerate(body.get("data", [])):
            data = base64.b64decode(image["b64_json"]) if image.get("b64_json") else \
                http.get(image["url"]).content
            name = "".join(c if c.isalnum() or c in "-_." else "_" for c in item["custom_id"])
            (out / f"{name}-{index}.{extension}").write_bytes(data)
            written += 1
    return written
