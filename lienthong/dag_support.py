"""What every lienthong DAG shares: the default task arguments and the ids of the running task.

One of the two Airflow adapters besides ``connectors/hooks.py`` and ``lienthong/airflow_plugin.py``
(tests/test_layout.py): DAG files import it at parse time, so it imports only ``airflow.sdk``.

The retry rule of design §5: transport errors (``RetriableConnectorError``: timeouts, 5xx, an
answer that arrived unreadable) and anything unexpected are retried with exponential back-off;
errors a retry cannot fix — a peer refusing our credentials, an answer that reads but breaks the
peer's contract (``FatalConnectorError``), a connection that is not configured
(``ConfigurationError``) — fail the task at once. Refused *records* never reach Airflow: the flows
dead-letter them; one that does (``RecordRejected``, a bug) fails the task at once too, as the same
record would be refused again. A retriable error carrying the peer's ``Retry-After`` (``retry_after``, seconds:
a 429 or 503 that asked for longer than the transport waits itself) is retried no sooner than the
peer asked, and no later than :data:`MAX_RETRY_AFTER`.

A run's closing task (the one that closes its summary in the bus database) runs whatever happened
to the steps before it (``trigger_rule="all_done"``) and records which failed
(:func:`failed_steps`); since its success would then make the run's last task green, every DAG also
ends with :func:`fail_if_a_step_failed`, which fails the run (Airflow marks a run failed when one of
its last tasks failed) naming the steps that failed, and is skipped when none did.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from airflow.sdk import ExceptionRetryPolicy, RetryAction, RetryRule, get_current_context, task
from airflow.sdk.definitions.retry_policy import RetryDecision
from airflow.sdk.exceptions import AirflowFailException

from connectors.errors import NOT_RETRIED

__all__ = ["MAX_RETRY_AFTER", "NO_RETRY", "PeerPacedRetryPolicy", "WATCHER_TASK_ID", "default_args",
           "fail_if_a_step_failed", "failed_steps", "run_ids"]

#: The task that fails a run one of whose steps failed (:func:`fail_if_a_step_failed`).
WATCHER_TASK_ID = "fail_if_a_step_failed"

#: Task states that mean a step did not do its work: it failed, or did not run because one before it failed.
FAILED_STATES = ("failed", "upstream_failed")

#: Exceptions (dotted paths) that fail a task at once instead of being retried: connectors.errors.NOT_RETRIED.
NO_RETRY = tuple(f"{error.__module__}.{error.__qualname__}" for error in NOT_RETRIED)


#: The longest a peer's Retry-After delays a task's retry (a longer ask is taken as this).
MAX_RETRY_AFTER = timedelta(hours=1)


class PeerPacedRetryPolicy(ExceptionRetryPolicy):
    """The rules of :data:`NO_RETRY`, and a retry no sooner than the peer's ``Retry-After``.

    Args:
        rules: as :class:`ExceptionRetryPolicy`'s.
        retry_delay, max_retry_delay: the task's own back-off (doubling from ``retry_delay``, at
            most ``max_retry_delay``): a peer's shorter ask leaves it as it is.
    """

    def __init__(self, rules: list[RetryRule], *, retry_delay: timedelta, max_retry_delay: timedelta) -> None:
        super().__init__(rules)
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay

    def evaluate(self, exception: BaseException, try_number: int, max_tries: int,
                 context: Any = None) -> RetryDecision:
        decision = super().evaluate(exception, try_number, max_tries, context)
        asked = getattr(exception, "retry_after", None)
        if decision.action is RetryAction.FAIL or type(asked) not in (int, float) or not asked > 0:
            return decision
        own = min(self.max_retry_delay, self.retry_delay * 2 ** max(try_number - 1, 0))
        wait = min(timedelta(seconds=asked), MAX_RETRY_AFTER)
        if wait <= own:
            return decision
        return RetryDecision.retry(delay=wait, reason=f"the peer asked to be called again in {asked:.0f} s "
                                                      f"(Retry-After): retried in {wait.total_seconds():.0f} s")


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
        "retry_policy": PeerPacedRetryPolicy(
            [RetryRule(exception=name, action=RetryAction.FAIL) for name in (*NO_RETRY, *also_fatal)],
            retry_delay=retry_delay, max_retry_delay=max_retry_delay),
    }


def run_ids() -> tuple[str, str]:
    """(run id, task id) of the task instance running now: what the exchange log records."""
    ctx = get_current_context()
    return ctx["run_id"], ctx["ti"].task_id


def failed_steps(context: Any = None) -> dict[str, str]:
    """The tasks of the running DAG run that failed or did not run because one before them failed,
    as ``{task_id: state}`` (the running task and :data:`WATCHER_TASK_ID` left out), read from
    Airflow through the Task SDK (the task's context, not the metadata DB). ``context``: a
    callback's (``on_failure_callback``), else the running task's."""
    ctx = context if context is not None else get_current_context()
    ti = ctx["ti"]
    states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ctx["run_id"]]).get(ctx["run_id"], {})
    return {task_id: str(state) for task_id, state in sorted(states.items())
            if task_id not in (ti.task_id, WATCHER_TASK_ID) and str(state) in FAILED_STATES}


@task(task_id=WATCHER_TASK_ID, trigger_rule="one_failed")
def fail_if_a_step_failed() -> None:
    """Fail the run when a step failed (Airflow runs this only then; otherwise it is skipped): the
    closing task, which runs whatever happened before it, would otherwise be the run's last task
    and turn a failed run green. Fails at once, never retried (the steps' own retries are over)."""
    failed = failed_steps()
    raise AirflowFailException("this run failed: " + (", ".join(
        f"{task_id} {'failed' if state == 'failed' else 'did not run (a step before it failed)'}"
        for task_id, state in failed.items()) or "a step failed") + "; its run summary records which")
