"""The local environment (`make airflow`, `make demo`): what Airflow is told on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_local_airflow_ui_listens_on_loopback_only(tmp_path):
    """README: `make airflow` — Airflow UI at http://127.0.0.1:8080 — admin/admin. Airflow's
    api-server binds [api] host, 0.0.0.0 by default; the local environment set the port only."""
    from lienthong import localenv

    env = localenv.topology(tmp_path).environment()
    out = subprocess.run([str(Path(sys.executable).parent / "airflow"), "config", "get-value", "api", "host"],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "127.0.0.1", out.stdout + out.stderr
