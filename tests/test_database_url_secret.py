"""A PostgreSQL URL with a pasted password libpq reads wrong has the password quoted in libpq's
error; `serve` must say the URL is wrong without printing any of it. A stray `%`: the lookup
of the password to hide raised that same error, so `serve` died with a traceback ending in
it. An unescaped `@`: libpq ends the password at the first one and quotes the rest as part of
the host name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.bench.procs import _free_port


@pytest.mark.parametrize("password,parts", [("s3cr%tPassw0rd", ("s3cr%tPassw0rd", "s3cr")),
                                             ("s3cret@Sup3rTail9", ("s3cret", "Sup3rTail9")),
                                             ("correct-horse@x7", ("correct-horse", "x7@"))])
def test_serve_never_prints_the_database_password(tmp_path: Path, password: str,
                                                  parts: tuple[str, ...]) -> None:
    env = {**os.environ, "SWITCHYARD_DATA_DIR": str(tmp_path / "data"),
           "SWITCHYARD_PORT": str(_free_port()),
           "SWITCHYARD_DATABASE_URL": f"postgresql://switchyard:{password}@127.0.0.1:5432/x"}
    done = subprocess.run([sys.executable, "-m", "proxy", "serve"], env=env,
                          capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert not [part for part in parts if part in output], output[-400:]
    assert "Traceback" not in output, output[-400:]
    assert "[password]" in output, output[-400:]
