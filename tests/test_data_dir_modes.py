"""The data directory keeps secrets from other local users: the URL-signing key, the billing
database (every tenant key's webhook signing secret, the responses kept for replays) and the
images behind signed links. The database and images were made with the process umask,
readable by any local user under the usual 022: any of them could forge a tenant's webhooks
or read every tenant's images without a link."""
from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import httpx

from tests.conftest import make_config, serve


def test_tenant_secrets_and_images_are_not_world_readable(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the common default umask
    try:
        data = tmp_path / "data"
        with serve(make_config(data)) as running:
            key = running.new_key("alice")
            answer = httpx.post(f"{running.v1}/images/generations", timeout=30,
                                headers={"authorization": f"Bearer {key}"},
                                json={"model": "test-image", "prompt": "a red fox",
                                      "response_format": "url"})
            assert answer.status_code == 200, answer.text
    finally:
        os.umask(old)
    with sqlite3.connect(data / "switchyard.db") as db:
        (secret,) = db.execute("SELECT webhook_secret FROM api_keys").fetchone()
    assert secret.startswith("whsec_")  # the tenant's signing secret, in plain text
    modes = {p.relative_to(data).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in [data / "url-signing.key", data / "switchyard.db", data / "images",
                       *(data / "images").iterdir()]}
    exposed = {k: oct(v) for k, v in modes.items() if v & 0o077}
    assert not exposed, f"readable by other local users: {exposed}"
    assert len(modes) > 3  # an image was stored
