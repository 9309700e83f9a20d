"""The demo's ``airflow dags test`` (lienthong/airflow_dag_test.py) leaves each task's log where the
api-server reads it: plain ``dags test`` wrote none, and ``make airflow`` showed every task
instance of the demo's runs with "Could not read served logs"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow
REPO = Path(__file__).resolve().parents[2]


DAG_FILE = """
import logging
from airflow.sdk import DAG, task

with DAG("demo_task_logs", schedule=None) as dag:
    @task
    def first():
        logging.getLogger("lienthong.demo_test").info("first task's own line: 41 dossiers")
        print("first task printed this")

    @task
    def second():
        logging.getLogger("lienthong.demo_test").warning("second task's own line")

    first() >> second()
"""


def test_each_task_log_is_in_the_file_the_ui_reads_and_still_on_stdout(airflow_db, tmp_path):
    """As the demo runs it: its own process (the fds it redirects are the process's), on the
    session's metadata DB, a two-task DAG from a folder of its own."""
    from airflow.models import DagRun
    from airflow.utils.log.log_reader import TaskLogReader
    from airflow.utils.session import create_session

    (tmp_path / "demo_task_logs.py").write_text(DAG_FILE)
    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "lienthong.airflow_dag_test", "demo_task_logs"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    with create_session() as session:
        (run,) = DagRun.find(dag_id="demo_task_logs", session=session)
        assert run.state == "success"
        lines = {}
        for ti in run.get_task_instances(session=session):
            chunks, _ = TaskLogReader().read_log_chunks(ti, 1, {})  # what GET .../logs/1 answers
            lines[ti.task_id] = [getattr(m, "event", str(m)) for m in chunks]

    first_lines, second_lines = "\n".join(lines["first"]), "\n".join(lines["second"])
    assert "first task's own line: 41 dossiers" in first_lines and "first task printed this" in first_lines
    assert "second task's own line" in second_lines
    # each file holds its own task only: the api-server names the file it read
    assert "second task's own line" not in first_lines and "first task printed this" not in second_lines
    assert any(line.endswith(f"dag_id=demo_task_logs/run_id={run.run_id}/task_id=first/attempt=1.log")
               for line in lines["first"])
    # the command's own output (the demo's var/log/airflow-cli.log) still has every line
    assert "first task's own line: 41 dossiers" in done.stdout and "second task's own line" in done.stdout
