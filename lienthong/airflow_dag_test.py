"""``airflow dags test DAG_ID`` that also leaves each task's log where Airflow's UI reads it.

``make demo`` runs the DAGs with ``airflow dags test`` (no scheduler, no executor, no api-server):
``DAG.test()`` runs each task in this process (``airflow.sdk.definitions.dag._run_task`` →
``supervisor.run_task_in_process``), and nothing there opens the task's log file — only the
executor path does (``ExecuteTask.make`` renders ``[logging] log_filename_template``,
``supervise_task`` writes it). So ``make airflow`` showed the demo's task instances with "Could not
read served logs". Here each task's run is wrapped: while it runs, this process's stdout and
stderr (file descriptors 1 and 2: Airflow's console log, the engine's logging, prints) go to the
file the executor would have written — ``[logging] base_log_folder`` / the rendered template, e.g.
``dag_id=…/run_id=…/task_id=…/attempt=1.log`` — created as Airflow creates it (``init_log_file``);
afterwards the same lines are copied to the original stdout, so the command's own output stays
whole. Lines are Airflow's console format (the api-server shows them as text lines with their
timestamps), colours off.

One of the Airflow adapters (tests/test_layout.py): run as ``python -m lienthong.airflow_dag_test
DAG_ID [airflow dags test options]``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["main", "task_log_path"]


def task_log_path(ti: Any) -> Path:
    """The task instance's log file under ``[logging] base_log_folder``, created (with its folders)
    the way the executor's worker creates it."""
    from airflow.sdk.log import init_log_file
    from airflow.utils.helpers import log_filename_template_renderer

    return init_log_file(log_filename_template_renderer()(ti=ti))


@contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send file descriptors 1 and 2 to ``path`` (appended) meanwhile; then copy what was written
    there to the original stdout."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    with path.open("ab") as log:
        start = log.tell()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
    with path.open("rb") as written:
        written.seek(start)
        while chunk := written.read(1 << 16):
            os.write(1, chunk)


def _logging_run_task(run_task: Callable[..., Any]) -> Callable[..., Any]:
    def run(*, ti: Any, task: Any, **kwargs: Any) -> Any:
        with _output_to(task_log_path(ti)):
            return run_task(ti=ti, task=task, **kwargs)

    run.__wrapped__ = run_task  # type: ignore[attr-defined]
    return run


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        raise SystemExit("usage: python -m lienthong.airflow_dag_test DAG_ID [airflow dags test options]")
    # the console renderer would put colour codes in the files when run from a terminal
    os.environ.setdefault("AIRFLOW__LOGGING__COLORED_CONSOLE_LOG", "False")
    import airflow.sdk.definitions.dag as dag_module
    from airflow.__main__ import main as airflow_main

    run_task = getattr(dag_module, "_run_task", None)
    if run_task is None:  # another Airflow than the pinned one: run as plain `dags test`, say so
        print("lienthong.airflow_dag_test: airflow.sdk.definitions.dag._run_task not found; "
              "task logs are not written (see this output instead)", file=sys.stderr)
    else:
        dag_module._run_task = _logging_run_task(run_task)
    sys.argv = ["airflow", "dags", "test", *args]
    airflow_main()


if __name__ == "__main__":
    main()
