"""What every lienthong DAG shares: the default task arguments and the ids of the running task.

One of the two Airflow adapters besides ``connectors/hooks.py`` and ``lienthong/airflow_plugin.py``
(tests/test_layout.py): DAG files import it at parse time, so it imports only ``airflow.sdk``.

The retry rule of design §5: transport errors (``RetriableConnectorError``: timeouts, 5xx, an
answer that arrived unreadable) and anything unexpected are retried with exponential back-off;
errors a retry cannot fix — a peer refusing our credentials, an answer that reads but breaks the
peer's contract (``FatalConnectorError``), a connection that is not configured
(``ConfigurationError``) — fail the task at once. Refused *records* never reach Airflow: the flows
dead-letter them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from airflow.sdk import ExceptionRetryPolicy, RetryAction, RetryRule, get_current_context

__all__ = ["NO_RETRY", "default_args", "run_ids"]

#: Exceptions (dotted paths) that fail a task at once instead of being retried.
NO_RETRY = ("connectors.errors.FatalConnectorError", "connectors.errors.ConfigurationError")


def default_args(*, retries: int = 3, retry_delay: timedelta, max_retry_delay: timedelta,
                 execution_timeout: timedelta, also_fatal: Iterable[str] = ()) -> dict[str, Any]:
    """Default task arguments of a lienthong DAG: owner, retries with exponential back-off, a
    timeout, and the retry policy that fails at once on :data:`NO_RETRY` (and ``also_fatal``)."""
    return {
        "owner": "lienthong",
        "retries": retries,
        "retry_delay": retry_delay,
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": max_retry_delay,
        "execution_timeout": execution_timeout,
        "retry_policy": ExceptionRetryPolicy(rules=[
            RetryRule(exception=name, action=RetryAction.FAIL) for name in (*NO_RETRY, *also_fatal)]),
    }


def run_ids() -> tuple[str, str]:
    """(run id, task id) of the task instance running now: what the exchange log records."""
    ctx = get_current_context()
    return ctx["run_id"], ctx["ti"].task_id
