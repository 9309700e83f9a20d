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


def test_make_airflow_starts_no_log_server_on_every_interface(tmp_path, monkeypatch):
    """`make airflow` (`airflow standalone`) left the scheduler's and the triggerer's log servers
    listening on 0.0.0.0:8793 and 0.0.0.0:8794 (and [::]): Airflow binds them to every interface
    and has no setting for it. `lienthong airflow` now runs Airflow through a wrapper, first on the
    PATH standalone starts its components from, that gives those two --skip-serve-logs."""
    import shutil

    from lienthong import cli, demo, localenv

    calls = []
    monkeypatch.setenv("LIENTHONG_HOME", str(tmp_path))
    monkeypatch.setattr(demo, "prepare_airflow", lambda *args, **kwargs: None)
    monkeypatch.setattr(cli.os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    assert cli.main(["airflow", "standalone"]) == 0
    ((path, argv, env),) = calls
    assert argv[1:] == ["standalone"]
    assert shutil.which("airflow", path=env["PATH"]) == path  # what standalone's components run too
    assert str(Path(sys.executable).parent / "airflow") in Path(path).read_text()

    fake = tmp_path / "fake-airflow"  # Airflow as far as the wrapper can tell: prints its arguments
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    wrapper = localenv.topology(tmp_path).write_airflow_wrapper(fake)
    for args, expected in ((["scheduler"], "scheduler --skip-serve-logs"),
                           (["triggerer", "--capacity", "10"], "triggerer --capacity 10 --skip-serve-logs"),
                           (["api-server"], "api-server"), (["dag-processor"], "dag-processor"),
                           (["dags", "test", "sync_dossier_status"], "dags test sync_dossier_status")):
        out = subprocess.run([str(wrapper), *args], capture_output=True, text=True, timeout=30)
        assert (out.returncode, out.stdout.strip()) == (0, expected), out
