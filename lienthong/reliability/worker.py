"""One step of one flow in its own process: what an Airflow task does, so the reliability harness
can kill it with SIGKILL at any point and run it again.

``python -m lienthong.reliability.worker STEP RUN_ID`` runs :data:`STEPS` [STEP] with the
connections of the environment (``AIRFLOW_CONN_*``) and prints its counts as one JSON line.

Exit codes follow the DAGs' retry rule (``lienthong/dag_support.py``): 0 done; :data:`EXIT_RETRY`
for a transient failure or anything unexpected (Airflow retries those); :data:`EXIT_FATAL` for an
error a retry cannot fix (``FatalConnectorError``, ``ConfigurationError``: Airflow fails the task
at once). The error's class and text go to stderr; connectors never put secrets in them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

from connectors.connection import connection_from_env
from connectors.errors import NOT_RETRIED, ConfigurationError

__all__ = ["EXIT_FATAL", "EXIT_RETRY", "STEPS", "STEP_BEGAN_ENV", "main", "run_step"]

EXIT_RETRY = 75  # EX_TEMPFAIL
EXIT_FATAL = 78  # EX_CONFIG
#: A file the worker creates once its imports are done and its step begins (when the variable is
#: set): the harness starts a kill timer from then, not while Python starts.
STEP_BEGAN_ENV = "LIENTHONG_STEP_BEGAN"


def _seal(run_id: str) -> dict[str, Any]:
    from lienthong import tasks
    from lienthong.audit.seal import seal_exchanges

    result = seal_exchanges(tasks.open_store(connection_from_env), batch_size=500)
    return {"seals": len(result.seals), "records": result.records}


def _task(name: str, **kwargs: Any) -> Callable[[str], dict[str, Any]]:
    def run(run_id: str) -> dict[str, Any]:
        from lienthong import tasks

        return getattr(tasks, name)(connection_from_env, run_id=run_id, task_id=name, **kwargs)
    return run


def _reconcile(run_id: str) -> dict[str, Any]:
    """The payment flow's last step, writing its report under ``$LIENTHONG_HOME/reports``."""
    return _task("reconcile_payments",
                 report_dir=os.path.join(os.environ.get("LIENTHONG_HOME", "."), "reports"))(run_id)


#: Step name → the work, in the order a round runs them (per flow).
STEPS: dict[str, Callable[[str], dict[str, Any]]] = {
    "dossier.stage": _task("stage_dossier_changes"),
    "dossier.deliver": _task("deliver_dossier_statuses"),
    "dossier.progress": _task("deliver_dossier_progress"),
    "catalogue.pull": _task("pull_procedure_catalogue"),
    "catalogue.onestop": _task("push_procedure_catalogue", destination="onestop"),
    "catalogue.ministry": _task("push_procedure_catalogue", destination="ministry"),
    "payments.collect": _task("collect_payments"),
    "payments.fees": _task("update_onestop_fees"),
    "payments.receipts": _task("submit_payment_receipts"),
    "payments.reconcile": _reconcile,
    "audit.seal": _seal,
}


def run_step(step: str, run_id: str) -> dict[str, Any]:
    if step not in STEPS:
        raise ConfigurationError(f"unknown step {step!r}; known: {', '.join(STEPS)}")
    return STEPS[step](run_id)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m lienthong.reliability.worker STEP RUN_ID", file=sys.stderr)
        return 2
    step, run_id = args
    began = os.environ.get(STEP_BEGAN_ENV)
    if began:
        import lienthong.audit.seal  # noqa: F401 - what every step loads, before the step begins
        import lienthong.tasks  # noqa: F401

        with open(began, "w", encoding="utf-8"):
            pass
    try:
        counts = run_step(step, run_id)
    except NOT_RETRIED as exc:
        print(f"{step}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except Exception as exc:  # noqa: BLE001 - the DAGs retry anything else; so does the harness
        print(f"{step}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_RETRY
    print(json.dumps({"step": step, "run_id": run_id, "counts": counts}, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
