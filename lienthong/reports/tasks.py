"""The work of the report DAGs' tasks and of ``lienthong report``, callable without Airflow.

Each function takes a connection resolver (Airflow's in a DAG, ``connection_from_env`` in the CLI
and tests), does one step, and returns small counts for XCom. Nothing is counted here: the
numbers come from :mod:`lienthong.reports.kpi` and :mod:`lienthong.reports.agreement`; this
module only moves them to the ministry tables and the files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from connectors.connection import ConnectionSpec, connection_from_env
from connectors.errors import ConfigurationError, IntegrationError
from lienthong.reports.agreement import CHECK_SYSTEMS, CHECKS, CheckUnavailable, load_agreement, mark_skipped, save_result
from lienthong.reports.facts import refresh_dossier_facts
from lienthong.reports.kpi import DEFAULT_THRESHOLDS, LOCAL, KpiReport, Period, compute_kpis, month_start, parse_period
from lienthong.reports.render import write_files
from lienthong.store import Store, dossier_fact, utcnow
from lienthong.tasks import MINISTRY_DB_CONN_ID, open_store

__all__ = [
    "AGREEMENT_CHECKS",
    "CheckUnavailable",
    "check_agreement",
    "default_period",
    "kpi_period",
    "kpi_report",
    "refresh_facts",
    "report_dir",
    "report_period",
    "write_agreement_report",
    "write_demo_report",
]

log = logging.getLogger(__name__)

Resolver = Callable[[str], ConnectionSpec]

#: the checks an agreement run makes, in order
AGREEMENT_CHECKS = ("dossier_status", "fee_payment")


REPORTS_FLOW = "reports"


def report_dir() -> Path:
    """``$LIENTHONG_HOME/reports`` (``var/reports`` by default)."""
    from lienthong import localenv

    return localenv.topology().home / "reports"


def default_period(today: date | None = None, *, whole_days: bool = False) -> tuple[str, str]:
    """The current month up to today, local dates; with ``whole_days`` (the daily DAG), the month
    of yesterday up to yesterday, so every row written covers days that are over (the run on the
    1st writes the whole previous month: "up to today" left a month's row without its last day,
    computed once in that day's morning)."""
    today = today or utcnow().astimezone(LOCAL).date()
    last = today - timedelta(days=1) if whole_days else today
    return last.replace(day=1).isoformat(), last.isoformat()


def report_period(date_from: str | None = None, date_to: str | None = None, *, today: date | None = None,
                  whole_days: bool = False) -> tuple[str, str]:
    """The period of a KPI report, each bound defaulting on its own: without ``date_to``, the last
    day of :func:`default_period` (today; yesterday with ``whole_days``); without ``date_from``,
    the first of the month of ``date_to``'s last day.

    Raises:
        ValueError: a bound is not a date or an ISO date-time, or the period ends before it starts
            (the message names both bounds, and says which one is a default).
    """
    default_from, default_to = default_period(today, whole_days=whole_days)
    end = date_to or default_to
    start = date_from
    try:
        start = date_from or (month_start(date_to) if date_to else default_from)
        parse_period(start, end)
    except ValueError as exc:
        first = date_from or (f"{start} (default: the first of the last day's month)" if start else "(default)")
        last = date_to or f"{end} (default: {'yesterday' if whole_days else 'today'})"
        raise ValueError(f"KPI report period from {first} to {last}: {exc}") from None
    return start, end


def kpi_period(date_from: str | None = None, date_to: str | None = None, *, today: date | None = None,
               whole_days: bool = False, ministry: bool = True) -> tuple[str, str, Period]:
    """The bounds of a KPI report (:func:`report_period`) and its period; with ``ministry``, only
    whole local days (:func:`lienthong.reports.ministry.check_whole_days`).

    Raises:
        ValueError: as :func:`report_period`, or a bound within a day while the ministry table is written.
    """
    start, end = report_period(date_from, date_to, today=today, whole_days=whole_days)
    period = parse_period(start, end)
    if ministry:
        from lienthong.reports.ministry import check_whole_days

        check_whole_days(period)
    return start, end, period


def refresh_facts(resolve: Resolver, *, run_id: str | None = None) -> dict[str, Any]:
    """Bring the dossier facts level with what the dossier flow staged."""
    store = open_store(resolve)
    changed = refresh_dossier_facts(store, run_id=run_id)
    with store.engine.connect() as conn:
        held = conn.execute(select(func.count()).select_from(dossier_fact)).scalar_one()
    return {"facts_changed": changed, "facts_held": held}


def _replica(resolve: Resolver, store: Store, run_id: str | None = None, task_id: str | None = None):
    """The ministry database, with its writes recorded in the exchange log (flow ``reports``)."""
    from connectors.ministry_db.replica import MinistryReplica
    from lienthong.exchange_log import BusRecorder

    try:
        spec = resolve(MINISTRY_DB_CONN_ID)
    except Exception as exc:  # noqa: BLE001 - ConfigurationError, or Airflow's "connection not found"
        log.warning("ministry tables not written: connection %s is not usable (%s)", MINISTRY_DB_CONN_ID, exc)
        return None
    return MinistryReplica.from_connection(spec, recorder=BusRecorder(store, REPORTS_FLOW, run_id, task_id))


def kpi_report(
    resolve: Resolver,
    *,
    date_from: str | None = None,
    date_to: str | None = None,
    thresholds: list[float] | tuple[float, ...] | None = None,
    out_dir: str | Path | None = None,
    ministry: bool = True,
    with_agreement: bool = True,
    as_of: datetime | None = None,
    refresh: bool = True,
    whole_days: bool = False,
    run_id: str | None = None,
    task_id: str | None = None,
) -> dict[str, Any]:
    """Compute the period's KPIs once, upsert them into the ministry tables, write HTML + CSV
    (each bound not given defaults on its own: :func:`report_period`, with ``whole_days`` as given).

    The HTML also shows the latest agreement run kept in the bus database (``with_agreement``).
    ``thresholds``: fractions an agency's toàn trình share is flagged below; ``None`` means
    :data:`DEFAULT_THRESHOLDS`, an empty list no threshold (nobody flagged). ``run_id``/``task_id``:
    what the ministry writes are recorded under in the exchange log (the DAG's run; else
    ``kpi__<from>__<to>``).
    """
    start, end, period = kpi_period(date_from, date_to, whole_days=whole_days, ministry=ministry)  # fails first
    store = open_store(resolve)
    if refresh:
        refresh_dossier_facts(store)
    report = compute_kpis(store, period, thresholds=DEFAULT_THRESHOLDS if thresholds is None else tuple(thresholds),
                          as_of=as_of)
    summary = _kpi_summary(report)
    if ministry:
        replica = _replica(resolve, store, run_id=run_id or f"kpi__{start}__{end}", task_id=task_id)
        if replica is not None:
            from lienthong.reports.ministry import write_kpis

            try:
                summary["ministry_rows"] = write_kpis(replica, report)
            finally:
                replica.dispose()
    agreement = load_agreement(store) if with_agreement else None
    paths = write_files(Path(out_dir) if out_dir else report_dir(), kpi=report, agreement=agreement)
    summary.update({k: str(v) for k, v in paths.items()})
    log.info("KPI report %s → %s: %s procedures, %s online services, %s dossiers received (%s online), "
             "%s flagged agencies; HTML %s", report.period.first_day, report.period.last_day,
             report.province.procedures, report.province.online_services, report.province.received,
             report.province.received_online, summary["flagged"], paths["html"])
    return summary


def _kpi_summary(report: KpiReport) -> dict[str, Any]:
    p = report.province
    return {"from": report.period.first_day.isoformat(), "to": report.period.last_day.isoformat(),
            "agencies": len(report.agencies), "procedures": p.procedures, "online_services": p.online_services,
            "level_full": p.level_full, "level_partial": p.level_partial, "received": p.received,
            "received_online": p.received_online, "processed": p.processed, "on_time": p.on_time, "late": p.late,
            "open_past_due": p.open_past_due, "flagged": len(report.flagged())}


def check_agreement(
    resolve: Resolver,
    *,
    run_id: str,
    check: str,
    task_id: str | None = None,
    as_of: datetime | None = None,
    dossiers: list[str] | None = None,
) -> dict[str, Any]:
    """Run one registered check and keep its result under ``run_id`` (a rerun replaces it)."""
    if check not in CHECKS:
        raise ConfigurationError(f"unknown agreement check {check!r} (known: {', '.join(sorted(CHECKS))})")
    store = open_store(resolve)
    started = utcnow()
    kwargs: dict[str, Any] = {"run_id": run_id, "task_id": task_id}
    if dossiers and check == "dossier_status":
        kwargs["dossiers"] = dossiers
    try:
        checker, close = CHECKS[check](resolve, store, **kwargs)
    except (CheckUnavailable, ConfigurationError) as exc:
        mark_skipped(store, run_id, check, CHECK_SYSTEMS[check], f"not checked: {exc}", as_of or started)
        log.warning("agreement check %s not run: %s", check, exc)
        return {"check": check, "checked": 0, "differing": 0, "skipped": str(exc)}
    try:
        result = checker.run(store, as_of=as_of or utcnow())
    except Exception as exc:
        # a peer that could not be read leaves the run saying so (a retry replaces it): with
        # nothing recorded, the run held the other checks alone and the report said nothing
        mark_skipped(store, run_id, check, checker.systems, f"not checked: {type(exc).__name__}: {exc}",
                     as_of or started)
        raise
    finally:
        close()
    save_result(store, run_id, result, started_at=started)
    log.info("agreement %s (%s): %d checked, %d agree, %d differ", check, result.systems, result.checked,
             result.agreeing, result.differing)
    for d in result.differences[:50]:
        log.info("  %s %s: %s vs %s, since %s; last exchange %s", d.record_key, d.aspect, d.value_a, d.value_b,
                 d.since, d.last_exchange or "none")
    return {"check": check, "checked": result.checked, "agreeing": result.agreeing, "differing": result.differing}


def write_agreement_report(
    resolve: Resolver, *, run_id: str, out_dir: str | Path | None = None, ministry: bool = True,
    task_id: str | None = None,
) -> dict[str, Any]:
    """The run's agreement results into the ministry tables and as HTML + CSV (the ministry writes
    recorded in the exchange log under ``run_id`` and ``task_id``)."""
    store = open_store(resolve)
    report = load_agreement(store, run_id)
    if report is None:
        raise ConfigurationError(f"no agreement results for run {run_id!r}: run the checks first")
    summary: dict[str, Any] = {"run_id": run_id, "differences": len(report.differences()),
                               "checks": {r.check_name: r.differing for r in report.results}}
    if ministry:
        replica = _replica(resolve, store, run_id=run_id, task_id=task_id)
        if replica is not None:
            from lienthong.reports.ministry import write_agreement

            try:
                summary["ministry_rows"] = write_agreement(replica, report)
            finally:
                replica.dispose()
    paths = write_files(Path(out_dir) if out_dir else report_dir(), agreement=report)
    summary.update({k: str(v) for k, v in paths.items()})
    return summary


def run_agreement(resolve: Resolver, *, run_id: str, checks: tuple[str, ...] = AGREEMENT_CHECKS,
                  out_dir: str | Path | None = None, ministry: bool = True, as_of: datetime | None = None,
                  task_id: str | None = None) -> dict[str, Any]:
    """Every check, then the report (what ``lienthong report agreement`` does)."""
    results = [check_agreement(resolve, run_id=run_id, check=c, task_id=task_id, as_of=as_of) for c in checks]
    summary = write_agreement_report(resolve, run_id=run_id, out_dir=out_dir, ministry=ministry, task_id=task_id)
    summary["results"] = results
    return summary


def _facts_span(store: Store) -> tuple[str, str] | None:
    with store.engine.connect() as conn:
        first, last = conn.execute(select(func.min(dossier_fact.c.submitted_at),
                                          func.max(dossier_fact.c.modified_at))).one()
    if first is None:
        return None
    first_day = (first.astimezone(LOCAL) if first.tzinfo else first).date()
    last_day = ((last or first).astimezone(LOCAL) if (last or first).tzinfo else (last or first)).date()
    return first_day.isoformat(), max(last_day, first_day).isoformat()


def write_demo_report(topo: Any, *, check_agreement_now: bool = True, out: Callable[[str], None] | None = None
                      ) -> Path:
    """``make demo``'s last step: the HTML report (KPIs over every dossier the bus holds, plus the
    cross-system agreement when the stand-ins are up), its CSVs and the ministry tables; returns
    the HTML file's path. Call it while the stand-ins run to include the agreement."""
    env = {**topo.environment(), **os.environ}

    def resolve(conn_id: str) -> ConnectionSpec:
        return connection_from_env(conn_id, env)

    store = open_store(resolve)
    refresh_dossier_facts(store)
    out_dir = Path(topo.home) / "reports"
    if check_agreement_now:
        run_id = f"demo__{utcnow().strftime('%Y%m%dT%H%M%S')}"
        try:
            for check in AGREEMENT_CHECKS:
                check_agreement(resolve, run_id=run_id, check=check, task_id="demo")
            write_agreement_report(resolve, run_id=run_id, out_dir=out_dir, task_id="demo")
        except IntegrationError as exc:  # the stand-ins are down: the KPIs are still worth writing
            if out:
                out(f"  agreement not checked: {exc}")
    span = _facts_span(store) or default_period()
    summary = kpi_report(resolve, date_from=span[0], date_to=span[1], out_dir=out_dir, refresh=False)
    path = Path(summary["html"])
    if out:
        out(f"  report ({span[0]} → {span[1]}): {path}")
    return path
