"""`make e2e-distributed` as a test: the production shape (CeleryExecutor, two workers, Redis,
PostgreSQL for Airflow's and the bus database) run for real on this machine.

It needs PostgreSQL (127.0.0.1:5432, trust auth, user postgres) and Redis (127.0.0.1:6379). Without
them it is skipped with the reason, which `make test` prints (pytest -ra); in CI (``CI`` set) it
fails instead, because CI's machine has both. About 3–3.5 minutes on two cores.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from lienthong import distributed

pytestmark = pytest.mark.distributed


def _require_services() -> None:
    try:
        distributed.probe_services()
    except distributed.ServiceUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc} — CI is set, so the distributed test must run (start PostgreSQL and Redis)")
        pytest.skip(f"{exc} (the distributed test needs PostgreSQL and Redis on 127.0.0.1)")


def _leftover_databases(suffix: str) -> list[str]:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"%\\_e2e\\_{suffix}",))
            return [r[0] for r in cur.fetchall()]
    finally:
        conn.close()


def test_e2e_distributed_passes_and_leaves_nothing_behind(tmp_path):
    _require_services()
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "lienthong.distributed", "--run-dir", str(run_dir)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        process.terminate()  # the harness stops what it started on SIGTERM
        output, _ = process.communicate(timeout=90)
        pytest.fail("make e2e-distributed did not finish in 7 minutes:\n" + output[-6000:])
    print(output)
    assert process.returncode == 0, output[-6000:]
    lines = output.strip().splitlines()
    assert lines[-1].startswith("PASS"), lines[-1]

    # the work was really spread: the task table names both Celery workers
    table = output.split("Which worker ran which task", 1)[1].split("Invariants", 1)[0]
    workers = set(re.findall(r"\bworker\d+@\S+", table))
    assert len(workers) == 2, table
    for dag_id in distributed.DAG_IDS:
        assert dag_id in table
    assert "✗" not in output

    # stopped by process id, databases dropped, run directory removed
    stopped = next(line for line in lines if "stopped by process id:" in line)
    for name in ("api-server", "scheduler", "dag-processor", "triggerer", "worker1", "worker2", "standins"):
        assert name in stopped, stopped
    assert _leftover_databases(str(process.pid)) == []
    assert not run_dir.exists()
    import psutil

    leftovers = []  # any process still running with this run's AIRFLOW_HOME or LIENTHONG_HOME
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            env = proc.environ()
        except psutil.Error:
            continue
        if any(str(run_dir) in env.get(k, "") for k in ("AIRFLOW_HOME", "LIENTHONG_HOME")):
            leftovers.append((proc.info["pid"], " ".join(proc.info["cmdline"] or [])[:80]))
    assert leftovers == []
