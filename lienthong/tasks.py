"""The work of each Airflow task, callable without Airflow.

A DAG task calls one function here with a connection resolver (Airflow's, through
``connectors.hooks.airflow_connection_spec``); the CLI and tests pass
``connectors.connection.connection_from_env``. Each function opens what it needs, does one step
of a flow, adds its counts to the run summary, and returns those counts (small, for XCom; a run
summary, which carries its rejections, goes through :func:`for_xcom` first).

A step that fails after part of its work (batches delivered, then a 503; Airflow retries it)
adds the counts of what it did all the same, once (:func:`_counted`): the retry counts only what
it does itself, so the run summary adds up to what the run did. Steps whose work commits all at
once or that describe a whole pass (the catalogue pull, the reconciliation) add theirs only when
they finish.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from connectors.connection import ConnectionSpec
from connectors.errors import ConfigurationError
from connectors.national_portal.client import NationalPortalClient
from connectors.one_stop.client import OneStopClient
from lienthong.exchange_log import BusRecorder
from lienthong.flows import dossier_status
from lienthong.store import Store

__all__ = [
    "BUS_DB_CONN_ID",
    "NATIONAL_PORTAL_CONN_ID",
    "ONESTOP_CONN_ID",
    "collect_payments",
    "deliver_dossier_progress",
    "deliver_dossier_statuses",
    "dossier_run_summary",
    "for_xcom",
    "open_store",
    "reconcile_payments",
    "stage_dossier_changes",
    "submit_payment_receipts",
    "update_onestop_fees",
]

log = logging.getLogger(__name__)

Resolver = Callable[[str], ConnectionSpec]

ONESTOP_CONN_ID = "onestop_default"
NATIONAL_PORTAL_CONN_ID = "national_portal_default"
BUS_DB_CONN_ID = "lienthong_db"
MINISTRY_DB_CONN_ID = "ministry_db_default"


def open_store(resolve: Resolver, conn_id: str = BUS_DB_CONN_ID) -> Store:
    store = Store.from_connection(resolve(conn_id))
    store.create_schema()
    return store


def for_xcom(summary: dict[str, Any]) -> dict[str, Any]:
    """A run summary as a DAG task returns it (XCom: kept small): each list, at any depth (the
    rejections, the open mismatches), as its length. The records themselves are in the bus
    database, the task log and the report."""
    return {k: len(v) if isinstance(v, list) else for_xcom(v) if isinstance(v, dict) else v
            for k, v in summary.items()}


def _counted(store: Store, flow: str, run_id: str, report: Any, work: Callable[[Any], Any],
             shape: Callable[[dict[str, Any]], dict[str, Any]] = lambda counts: counts) -> dict[str, Any]:
    """Run ``work(report)`` (a step filling ``report`` as it goes and returning it) and add its
    counts, shaped by ``shape``, to the run summary: when it returns, or when it raises after part
    of its work (what the report held then; a retry counts only its own work, so nothing is counted
    twice). With ``report`` None (a step counted only when it finishes), only when it returns."""
    try:
        done = work(report)
    except BaseException:
        if report is not None:  # what a retry does again (held items asked again...) it counts itself
            redone = getattr(report, "redone_by_retry", ())
            try:
                store.add_run_counts(flow, run_id, shape({k: v for k, v in report.counts().items()
                                                          if k not in redone}))
            except Exception:  # noqa: BLE001 - the step's own error is the one to raise
                log.warning("run %s: the counts of the failed %s step were not recorded", run_id, flow,
                            exc_info=True)
        raise
    counts = shape(done.counts())
    store.add_run_counts(flow, run_id, counts)
    return counts


#: What the one-stop takes as a window bound: an ISO 8601 date-time with offset (fraction optional).
_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def _window_bound(name: str, value: str | None) -> str | None:
    """A backfill window bound as given, checked (``None`` or empty: not given).

    Raises:
        ConfigurationError: naming the param, when it is not an ISO 8601 date-time with offset.
    """
    if value is None or value == "":
        return None
    ok = isinstance(value, str) and _INSTANT.fullmatch(value) is not None
    if ok:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            ok = False
    if not ok:
        shown = repr(value) if len(repr(value)) <= 60 else f"a {type(value).__name__}"
        raise ConfigurationError(f"{name}: {shown} is not an ISO 8601 date-time with offset, "
                                 f"e.g. 2026-11-02T08:00:00+07:00")
    return value


def stage_dossier_changes(
    resolve: Resolver,
    *,
    run_id: str,
    task_id: str | None = None,
    feed_from: str | None = None,
    window_from: str | None = None,
    window_to: str | None = None,
) -> dict[str, Any]:
    """Read the one-stop change feed into the outbox (``feed_from``: see ``stage_changes``), and
    when a backfill window is given, the snapshots of dossiers modified in [from, to) too.

    Raises:
        ConfigurationError: a window bound that is not an ISO 8601 date-time with offset, or a
            window that ends before it starts, before anything is opened.
    """
    window_from, window_to = _window_bound("window_from", window_from), _window_bound("window_to", window_to)
    if window_from and window_to and datetime.fromisoformat(window_from) > datetime.fromisoformat(window_to):
        raise ConfigurationError(f"window_from {window_from} is later than window_to {window_to}")
    store = open_store(resolve)
    recorder = BusRecorder(store, dossier_status.FLOW, run_id, task_id)
    onestop = OneStopClient.from_connection(resolve(ONESTOP_CONN_ID), recorder=recorder)

    def window_counts(counts: dict[str, Any]) -> dict[str, Any]:
        return {**{f"window_{k}": v for k, v in counts.items()}, "staged": counts["staged"]}

    try:
        counts = _counted(store, dossier_status.FLOW, run_id, dossier_status.StageReport(),
                          lambda report: dossier_status.stage_changes(store, onestop, run_id=run_id,
                                                                      feed_from=feed_from, report=report))
        if window_from or window_to:
            window = _counted(store, dossier_status.FLOW, run_id, dossier_status.StageReport(),
                              lambda report: dossier_status.stage_window(store, onestop, run_id=run_id,
                                                                         modified_from=window_from,
                                                                         modified_to=window_to, report=report),
                              window_counts)
            counts = {**counts, **window, "staged": counts["staged"] + window["staged"]}
    finally:
        onestop.close()
    return counts


#: The largest batch a connection's ``extra.batch_size`` (or ``progress_chunk_size``) may ask for.
MAX_BATCH_SIZE = 10_000


def _batch_size(extra: dict[str, Any], key: str, default: int, *, conn_id: str, given: int | None = None) -> int:
    """Records per call: ``given`` (the DAG's param, the CLI's option) when set, else the
    connection's ``extra.<key>``, else ``default``; checked, as the transport's extras are.

    Raises:
        ConfigurationError: naming the connection and the extra, when it is not a whole number
            from 1 to :data:`MAX_BATCH_SIZE` (text from Airflow's form that reads as one is taken).
    """
    if given:
        value: Any = given
        where = key
    else:
        value = extra.get(key, default)
        where = f"connection {conn_id}: extra.{key}"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if type(value) is not int or not 1 <= value <= MAX_BATCH_SIZE:
        shown = repr(value) if len(repr(value)) <= 40 else f"a {type(value).__name__}"
        raise ConfigurationError(f"{where} must be a whole number from 1 to {MAX_BATCH_SIZE:,}, not {shown}")
    return value


def _with_portal(resolve: Resolver, run_id: str, task_id: str | None, report: Any,
                 size: Callable[[ConnectionSpec], int], work) -> dict[str, Any]:
    """Open the store and a recorded portal client, run ``work(store, portal, size, report)`` (``size``:
    the batch size read from the portal's connection, checked before anything is opened), record
    its counts in the run summary (also a failed attempt's), and return them without the long
    rejection lists."""
    spec = resolve(NATIONAL_PORTAL_CONN_ID)
    per_call = size(spec)
    store = open_store(resolve)
    portal = NationalPortalClient.from_connection(
        spec, recorder=BusRecorder(store, dossier_status.FLOW, run_id, task_id))
    try:
        counts = _counted(store, dossier_status.FLOW, run_id, report, lambda r: work(store, portal, per_call, r))
    finally:
        portal.close()
    return {k: v for k, v in counts.items() if not isinstance(v, list)}


def deliver_dossier_statuses(
    resolve: Resolver,
    *,
    run_id: str,
    task_id: str | None = None,
    batch_size: int | None = None,
    resend_acknowledged: bool = False,
) -> dict[str, Any]:
    """Map and deliver pending dossiers to the national portal.

    ``batch_size`` defaults to the portal connection's ``extra.batch_size`` (else 50).
    """
    return _with_portal(resolve, run_id, task_id, dossier_status.DeliveryReport(),
                        lambda spec: _batch_size(spec.extra, "batch_size", 50, conn_id=spec.conn_id,
                                                 given=batch_size),
                        lambda store, portal, size, report: dossier_status.deliver_pending(
        store, portal, run_id=run_id, batch_size=size, resend_acknowledged=resend_acknowledged, report=report))


def deliver_dossier_progress(
    resolve: Resolver, *, run_id: str, task_id: str | None = None, chunk_size: int | None = None
) -> dict[str, Any]:
    """Send acknowledged dossiers' progress entries (``extra.progress_chunk_size``, else 10)."""
    return _with_portal(resolve, run_id, task_id, dossier_status.ProgressReport(),
                        lambda spec: _batch_size(spec.extra, "progress_chunk_size", 10, conn_id=spec.conn_id,
                                                 given=chunk_size),
                        lambda store, portal, size, report: dossier_status.deliver_progress(
        store, portal, run_id=run_id, chunk_size=size, report=report))


def _close_run(store: Store, flow: str, run_id: str, failed_tasks: dict[str, str] | None) -> None:
    """Close the run's summary (``finished_at``) with its outcome: ``outcome`` ``failed`` and
    ``failed_tasks`` (``{task_id: "failed" | "upstream_failed"}``, the latter: did not run because
    a step before it failed) when a step failed, else ``succeeded`` and ``{}``. Set, not added: a
    closing task's retry writes the same."""
    failed = dict(failed_tasks or {})
    store.add_run_counts(flow, run_id, {"outcome": "failed" if failed else "succeeded", "failed_tasks": failed},
                         finished=True)


def failed_tasks_text(failed_tasks: dict[str, str]) -> str:
    """``failed_tasks`` for people: which step failed, which did not run because of it."""
    return ", ".join(f"{task_id} {'failed' if state == 'failed' else 'did not run (a step before it failed)'}"
                     for task_id, state in failed_tasks.items())


def _log_outcome(what: str, run_id: str, failed_tasks: dict[str, str] | None) -> None:
    if failed_tasks:
        log.error("%s %s FAILED: %s; the counts below are what it did before", what, run_id,
                  failed_tasks_text(failed_tasks))


def dossier_run_summary(resolve: Resolver, *, run_id: str,
                        failed_tasks: dict[str, str] | None = None) -> dict[str, Any]:
    """Close the run's summary and return it (what the demo prints). ``failed_tasks``: the run's
    steps that failed (``{task_id: state}``), recorded with the outcome (see :func:`_close_run`)."""
    store = open_store(resolve)
    _close_run(store, dossier_status.FLOW, run_id, failed_tasks)
    summary = store.run_summary(dossier_status.FLOW, run_id) or {}
    counts = summary.get("counts", {})
    # What an engineer reads in the task log of the Airflow UI.
    _log_outcome("run", run_id, failed_tasks)
    log.info("run %s: %s new events staged; dossiers %s new, %s updated, %s unchanged, %s held, %s rejected; "
             "progress %s sent, %s rejected; %s exchange-log records",
             run_id, counts.get("staged", 0), counts.get("delivered_new", 0), counts.get("delivered_update", 0),
             counts.get("unchanged", 0), counts.get("held", 0), counts.get("rejected", 0),
             counts.get("progress_sent", 0), counts.get("progress_rejected", 0), summary.get("exchanges", 0))
    for rejection in counts.get("rejections", []) + counts.get("progress_rejections", []):
        log.info("  rejected %s at %s: %s", rejection["record_key"], rejection["stage"],
                 "; ".join(f"{e['field']} [{e['rule']}]: {e['message']}" for e in rejection["errors"]))
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in summary.items()}


# --- procedure catalogue -------------------------------------------------------------------------
def pull_procedure_catalogue(resolve: Resolver, *, run_id: str, task_id: str | None = None) -> dict[str, Any]:
    """Pull the national catalogue, normalise, diff against the kept snapshot. Counted only when
    it finishes: the snapshot changes at the end, in one transaction, and a retry reads the whole
    catalogue again (a failed pull's listing and refusals would count twice)."""
    from lienthong.flows import catalogue

    store = open_store(resolve)
    portal = NationalPortalClient.from_connection(
        resolve(NATIONAL_PORTAL_CONN_ID), recorder=BusRecorder(store, catalogue.FLOW, run_id, task_id))
    try:
        counts = catalogue.pull_catalogue(store, portal, run_id=run_id).counts()
    finally:
        portal.close()
    store.add_run_counts(catalogue.FLOW, run_id, counts)
    return {k: v for k, v in counts.items() if not isinstance(v, list)}


def push_procedure_catalogue(
    resolve: Resolver, *, run_id: str, task_id: str | None = None, destination: str
) -> dict[str, Any]:
    """Push the snapshot's changes to one destination: ``onestop`` or ``ministry``."""
    from connectors.ministry_db.replica import MinistryReplica
    from lienthong.flows import catalogue

    store = open_store(resolve)
    if destination == "onestop":
        onestop = OneStopClient.from_connection(
            resolve(ONESTOP_CONN_ID), recorder=BusRecorder(store, catalogue.FLOW, run_id, task_id))
        try:
            counts = _counted(store, catalogue.FLOW, run_id, catalogue.PushReport("onestop"),
                              lambda report: catalogue.push_onestop(store, onestop, run_id=run_id, report=report))
        finally:
            onestop.close()
    elif destination == "ministry":
        spec = resolve(MINISTRY_DB_CONN_ID)
        size = _batch_size(spec.extra, "batch_size", 200, conn_id=spec.conn_id)
        replica = MinistryReplica.from_connection(spec, recorder=BusRecorder(store, catalogue.FLOW, run_id, task_id))
        try:
            counts = _counted(store, catalogue.FLOW, run_id, catalogue.PushReport("ministry"),
                              lambda report: catalogue.push_ministry(store, replica, run_id=run_id, report=report,
                                                                     batch_size=size))
        finally:
            replica.dispose()
    else:
        raise ValueError(f"unknown catalogue destination {destination!r} (onestop, ministry)")
    return {k: v for k, v in counts.items() if not isinstance(v, list)}


def catalogue_run_summary(resolve: Resolver, *, run_id: str, report_dir: str | None = None,
                          failed_tasks: dict[str, str] | None = None) -> dict[str, Any]:
    """Close the run, write its change report (Markdown) and return the summary. ``failed_tasks``:
    the run's steps that failed, recorded with the outcome and said at the top of the report."""
    from pathlib import Path

    from lienthong.flows import catalogue

    store = open_store(resolve)
    _close_run(store, catalogue.FLOW, run_id, failed_tasks)
    text = catalogue.change_report(store, run_id)
    if failed_tasks:
        head, _, rest = text.partition("\n\n")
        text = (f"{head}\n\n**This run failed**: {failed_tasks_text(failed_tasks)}. The changes below are "
                f"those the pull found; a destination whose push failed or did not run gets them from the "
                f"next run.\n\n{rest}")
    _log_outcome("catalogue run", run_id, failed_tasks)
    summary = store.run_summary(catalogue.FLOW, run_id) or {}
    if report_dir:
        path = Path(report_dir) / f"catalogue-{''.join(c if c.isalnum() else '_' for c in run_id)}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        summary["report_path"] = str(path)
    counts = summary.get("counts", {})
    log.info("catalogue run %s: %s listed, %s added, %s amended, %s withdrawn, %s rejected; one-stop %s upserted, "
             "%s withdrawn; ministry %s upserted, %s withdrawn", run_id, counts.get("listed", 0),
             counts.get("added", 0), counts.get("amended", 0), counts.get("withdrawn", 0), counts.get("rejected", 0),
             counts.get("onestop_upserted", 0), counts.get("onestop_withdrawn", 0),
             counts.get("ministry_upserted", 0), counts.get("ministry_withdrawn", 0))
    for line in text.splitlines():
        log.info("%s", line)
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in summary.items()}


# --- payment receipts ----------------------------------------------------------------------------
PAYMENT_PLATFORM_CONN_ID = "payment_platform_default"
LEDGER_CONN_ID = "ministry_ledger_default"


def _payment_clients(resolve: Resolver, store: Store, run_id: str, task_id: str | None, *names: str) -> dict[str, Any]:
    """Recorded clients of the payment flow's peers, by name (onestop, platform, ledger)."""
    from connectors.ministry_ledger.client import ReceiptLedgerClient
    from connectors.payment_platform.client import PaymentPlatformClient
    from lienthong.flows import payment_receipts

    recorder = BusRecorder(store, payment_receipts.FLOW, run_id, task_id)
    clients: dict[str, Any] = {}
    try:
        for name in names:
            if name == "onestop":
                clients[name] = OneStopClient.from_connection(resolve(ONESTOP_CONN_ID), recorder=recorder)
            elif name == "platform":
                clients[name] = PaymentPlatformClient.from_connection(resolve(PAYMENT_PLATFORM_CONN_ID),
                                                                      recorder=recorder)
            elif name == "ledger":
                clients[name] = ReceiptLedgerClient.from_connection(resolve(LEDGER_CONN_ID), recorder=recorder)
    except BaseException:
        _close_all(clients)
        raise
    return clients


def _close_all(clients: dict[str, Any]) -> None:
    for client in clients.values():
        client.close()


def _payment_step(resolve: Resolver, run_id: str, task_id: str | None, names: tuple[str, ...], report: Any,
                  work) -> dict[str, Any]:
    """One step of the payment flow, ``work(store, clients, report)``; its counts go to the run
    summary also when it fails after part of its work (``report``; ``None``: only when it finishes)."""
    from lienthong.flows import payment_receipts

    store = open_store(resolve)
    clients = _payment_clients(resolve, store, run_id, task_id, *names)
    try:
        counts = _counted(store, payment_receipts.FLOW, run_id, report, lambda r: work(store, clients, r))
    finally:
        _close_all(clients)
    return {k: v for k, v in counts.items() if not isinstance(v, list)}


def collect_payments(resolve: Resolver, *, run_id: str, task_id: str | None = None,
                     full_listing: bool | None = None) -> dict[str, Any]:
    """List the one-stop's payment requests (every one once a day or when ``full_listing``, else
    the newest); QUERY the unfinished ones that are due and GET_BILL the paid ones."""
    from lienthong.flows import payment_receipts

    return _payment_step(resolve, run_id, task_id, ("onestop", "platform"), payment_receipts.CollectReport(),
                         lambda store, c, report: payment_receipts.collect_payments(
                             store, c["onestop"], c["platform"], run_id=run_id, full_listing=full_listing,
                             report=report))


def update_onestop_fees(resolve: Resolver, *, run_id: str, task_id: str | None = None) -> dict[str, Any]:
    """Record paid and failed transactions at the one-stop where the callback was lost."""
    from lienthong.flows import payment_receipts

    return _payment_step(resolve, run_id, task_id, ("onestop",), payment_receipts.FeeReport(),
                         lambda store, c, report: payment_receipts.update_onestop_fees(store, c["onestop"],
                                                                                       run_id=run_id, report=report))


def submit_payment_receipts(
    resolve: Resolver, *, run_id: str, task_id: str | None = None, batch_size: int | None = None
) -> dict[str, Any]:
    """Map and submit the receipts to the ministry ledger (``extra.batch_size`` of the ledger
    connection, else 100, per SOAP call)."""
    from lienthong.flows import payment_receipts

    ledger = resolve(LEDGER_CONN_ID)
    size = _batch_size(ledger.extra, "batch_size", 100, conn_id=ledger.conn_id, given=batch_size)
    return _payment_step(resolve, run_id, task_id, ("onestop", "ledger"), payment_receipts.LedgerReport(),
                         lambda store, c, report: payment_receipts.submit_receipts(
                             store, c["onestop"], c["ledger"], run_id=run_id, batch_size=size, report=report))


def reconcile_payments(
    resolve: Resolver, *, run_id: str, task_id: str | None = None, report_dir: str | None = None,
    full: bool | None = None, failed_tasks: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Reconcile the three systems, close the run, write the report (Markdown and JSON) and return
    the summary. ``full``: every transaction (true), only those changed since the last pass and
    those with open mismatches (false), or a full pass when the last is a day old (``None``).

    ``failed_tasks``: the run's steps that failed (``{task_id: state}``). Then there is no pass (it
    would judge what the failed step left half done; the next run's pass covers this run's changes,
    as the pass's bookmark does not move): the run is closed with its outcome and the report says
    it failed, with the mismatches earlier passes left open."""
    from pathlib import Path

    from lienthong.flows import payment_receipts

    counts: dict[str, Any] = {}
    if not failed_tasks:
        # a pass's findings, not work done: a failed pass is not counted (its retry checks everything again)
        counts = _payment_step(resolve, run_id, task_id, ("onestop", "ledger"), None, lambda store, c, _report:
                               payment_receipts.reconcile(store, c["onestop"], c["ledger"], run_id=run_id,
                                                          full=full))
    store = open_store(resolve)
    _close_run(store, payment_receipts.FLOW, run_id, failed_tasks)
    summary = store.run_summary(payment_receipts.FLOW, run_id) or {}
    run_counts = summary.get("counts", {})
    text = payment_receipts.reconciliation_markdown(
        store, run_id, run_counts, failed=failed_tasks_text(failed_tasks) if failed_tasks else None)
    _log_outcome("payment run", run_id, failed_tasks)
    items = payment_receipts.open_items(store)
    if report_dir:
        stem = Path(report_dir) / f"payments-{''.join(ch if ch.isalnum() else '_' for ch in run_id)}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".md").write_text(text, encoding="utf-8")
        stem.with_suffix(".json").write_text(json.dumps(
            {"run_id": run_id, "counts": run_counts, "open_mismatches": items}, ensure_ascii=False, indent=2,
            default=str), encoding="utf-8")
        summary["report_path"] = str(stem.with_suffix(".md"))
    summary["open_mismatches"] = [{k: item[k] for k in ("kind", "record_key", "dossier_code", "receipt_no")}
                                  for item in items]
    log.info("payment run %s: %s requests listed, %s paid and %s failed found; one-stop fees updated %s "
             "(already %s, held %s); receipts accepted %s, unchanged %s, held %s, rejected %s; reconciliation: %s",
             run_id, run_counts.get("requests_listed", 0),
             run_counts.get("found_paid", 0), run_counts.get("found_failed", 0), run_counts.get("fees_updated", 0),
             run_counts.get("fees_already_recorded", 0), run_counts.get("fees_held", 0),
             run_counts.get("receipts_accepted", 0), run_counts.get("receipts_unchanged", 0),
             run_counts.get("receipts_held", 0), run_counts.get("receipts_rejected", 0),
             "not run (the run failed)" if failed_tasks else
             f"{counts.get('reconciled_paid')} paid checked, {counts.get('reconciled_agreed')} agree, "
             f"{counts.get('mismatches')} mismatches")
    for line in text.splitlines():
        log.info("%s", line)
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in summary.items()}
