"""A PostgreSQL URL libpq cannot parse (a stray `%` in a pasted password) has its password
quoted in libpq's error; `serve` must say the URL is wrong without printing it. The lookup of
the password to hide raised that same error, so `serve` died with a traceback ending in it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from proxy.bench.procs import _free_port

PASSWORD = "s3cr%tPassw0rd"


def test_serve_never_prints_the_database_password(tmp_path: Path) -> None:
    env = {**os.environ, "SWITCHYARD_DATA_DIR": str(tmp_path / "data"),
           "SWITCHYARD_PORT": str(_free_port()),
           "SWITCHYARD_DATABASE_URL": f"postgresql://switchyard:{PASSWORD}@127.0.0.1:5432/x"}
    done = subprocess.run([sys.executable, "-m", "proxy", "serve"], env=env,
                          capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert PASSWORD not in output and "s3cr" not in output, output[-400:]
    assert "Traceback" not in output, output[-400:]
    assert "[password]" in output, output[-400:]
