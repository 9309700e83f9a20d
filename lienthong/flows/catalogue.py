"""Procedure catalogue sync: national portal → one-stop catalogue and the ministry replica, as diffs.

1. :func:`pull_catalogue` reads the national catalogue in full — the list (``LayDanhSachTTHC``),
   each procedure's detail (``LayThuTuc``), the online service levels (``LayDVC``) and the agency
   dictionary (``LayDanhMucCoQuan``) — and normalises every procedure to the canonical procedure
   record with the mapping ``national_portal__canonical/procedure`` (fees parsed to whole đồng
   with the published text kept; "mức độ 3/4" and "một phần/toàn trình" through one code table).
   A procedure that cannot be normalised (no code, a fee that is not an amount, an agency the
   dictionary does not know) is dead-lettered; the others go on. A listed procedure whose detail's
   ``TRANGTHAI`` is not 1 is hidden (contract §4.5): not published.
2. The new snapshot is compared with the one kept in the bus database: added, amended (which
   fields), withdrawn. The changes are recorded for the run's change report, and the snapshot
   replaces the old one.
3. :func:`push_catalogue` brings each destination level with the snapshot, using its own
   acknowledgement state: the one-stop catalogue over REST (one upsert or withdrawal per changed
   procedure), the ministry replica over SQL (upserts in one transaction per batch). Only what a
   destination does not hold yet is pushed, so a second run with no change pushes nothing and a
   push interrupted halfway is finished by the next run.

Dead letters need no requeue: every pull reads every procedure again, and every push sends what
a destination has not acknowledged. A procedure's open dead letters of the pull (stage
``normalise``) are resolved by the pull that normalises and publishes it, or that no longer finds it
published (withdrawn nationally); those of a push (stage
``onestop`` or ``ministry``) by that destination's acknowledgement of it. :func:`replay` resolves
them at once (``lienthong deadletter replay``): a procedure still refused is dead-lettered again
by the next run.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from connectors.errors import FieldError, ProtocolError, RecordRejected
from connectors.ministry_db.replica import MinistryReplica, ProcedureRow
from connectors.national_portal.client import NationalPortalClient
from connectors.one_stop.client import OneStopClient
from lienthong.exchange_log import answer_transactions
from lienthong.mapping import Mapping, load_mapping
from lienthong.store import (
    Store,
    content_hash,
    catalogue_change,
    catalogue_current,
    dead_letter,
    delivery_state,
    resolve_dead_letters,
    upsert_acknowledgements,
    utcnow,
)

__all__ = ["FLOW", "PullReport", "PushReport", "change_report", "pull_catalogue", "push_catalogue",
           "push_ministry", "push_onestop", "replay"]

log = logging.getLogger(__name__)

FLOW = "procedure_catalogue"
NORMALISE = "national_portal__canonical/procedure"
TO_ONESTOP = "canonical__onestop/procedure"
TO_MINISTRY = "canonical__ministry_db/procedure"
ONESTOP = "onestop_catalogue"
# The pull's answers cause nothing until the snapshot is applied: their exchange-log records are
# written this many at a time, and all of them before the snapshot, instead of one commit per call.
PULL_RECORD_EVERY = 50
MINISTRY = "ministry_db"


@dataclass
class PullReport:
    listed: int = 0
    normalised: int = 0
    added: int = 0
    amended: int = 0
    withdrawn: int = 0
    unchanged: int = 0
    hidden: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        return {"listed": self.listed, "normalised": self.normalised, "added": self.added, "amended": self.amended,
                "withdrawn": self.withdrawn, "unchanged": self.unchanged, "hidden": self.hidden,
                "rejected": len(self.rejected),
                "rejections": self.rejected}


@dataclass
class PushReport:
    destination: str
    upserted: int = 0
    withdrawn: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)

    @property
    def redone_by_retry(self) -> tuple[str, ...]:
        """Counts a retry of a failed attempt makes again: a refused procedure is unacknowledged, so
        pushed (and refused) again; left out of what the failed attempt adds to the run summary."""
        return f"{self.destination}_rejected", f"{self.destination}_rejections"

    def counts(self) -> dict[str, Any]:
        d = self.destination
        return {f"{d}_upserted": self.upserted, f"{d}_withdrawn": self.withdrawn, f"{d}_rejected": len(self.rejected),
                f"{d}_rejections": self.rejected}


def _levels(services: Iterable[dict[str, Any]]) -> dict[str, list[Any]]:
    """Procedure code → every MUCDO the portal publishes for its public services, in an order of
    their own (the highest is taken, so LayDVC's order means nothing; a dead letter's source keeps
    them, and must not differ by it)."""
    out: dict[str, list[Any]] = defaultdict(list)
    for service in services:
        code = str(service.get("MATTHC") or "")
        for applied in service.get("APDUNGDVC") or []:
            if isinstance(applied, dict) and applied.get("MUCDO") not in (None, ""):
                out[code].append(applied["MUCDO"])
    for levels in out.values():
        levels.sort(key=lambda level: (type(level).__name__, str(level)))
    return out


def pull_catalogue(store: Store, portal: NationalPortalClient, *, run_id: str,
                   mapping: Mapping | None = None) -> PullReport:
    """Pull, normalise, diff and keep the national catalogue; see the module docstring."""
    mapping = mapping or load_mapping(NORMALISE)
    report = PullReport()
    with answer_transactions(store, portal) as begin:
        _pull(portal, mapping, run_id, report, begin)
    log.info("catalogue: %d listed, %d normalised, %d added, %d amended, %d withdrawn, %d rejected",
             report.listed, report.normalised, report.added, report.amended, report.withdrawn, len(report.rejected))
    return report


def _pull(portal: NationalPortalClient, mapping: Mapping, run_id: str, report: PullReport,
          begin: Callable[[], AbstractContextManager[Connection]]) -> None:
    agencies = {str(a.get("MADONVI")) for a in portal.list_agencies()}
    levels = _levels(portal.list_services())
    listed = portal.list_procedures()
    report.listed = len(listed)
    if not listed:
        with begin() as conn:
            published = conn.execute(select(func.count()).select_from(catalogue_current).where(
                catalogue_current.c.published.is_(True))).scalar_one()
        if published:  # a listing cut short or a portal fault, not a province's whole catalogue repealed
            raise ProtocolError(f"national_portal LayDanhSachTTHC: the list of procedures is empty while "
                                f"{published} are published; refusing to withdraw them all", peer="national_portal",
                                operation="LayDanhSachTTHC")
    snapshot: dict[str, dict[str, Any]] = {}
    rejected_codes: set[str] = set()
    for n, row in enumerate(listed, 1):
        if n % PULL_RECORD_EVERY == 0:
            with begin():  # writes the exchange-log records held so far
                pass
        given = row.get("MATTHC")
        code = given if isinstance(given, str) and _usable_code(given) else ""
        if given not in (None, "") and not code:
            # Not a code the portal could be asked about (an object, a 300-character text, a NUL...):
            # never sent back to the portal, dead-lettered under a key the bus database can hold.
            key = f"<invalid MATTHC, {content_hash(row)[:12]}>"
            exc = RecordRejected(key, [FieldError("MATTHC", "format", "MATTHC is not a procedure code (text of at "
                                                                      "most 64 printable characters)")])
            rejected_codes.add(key)
            _dead_letter(begin, run_id, key, {"procedure": {}, "listed": row, "levels": []}, exc)
            report.rejected.append({"record_key": key, "stage": "normalise", "errors": exc.error_dicts()})
            continue
        detail = portal.get_procedure(code) if code else None
        if isinstance(detail, dict) and not _published(detail):
            # Listed, but its detail says it is not published (hidden between the list and the
            # detail, or listed though hidden): not in the snapshot, so withdrawn if it was published.
            report.hidden += 1
            continue
        source = {"procedure": detail or {}, "listed": row, "levels": levels.get(code, [])}
        try:
            if detail is None:
                raise RecordRejected(code or "<no MATTHC>", [FieldError(
                    "MATTHC", "not_found", f"LayDanhSachTTHC lists {code!r} but LayThuTuc has no such procedure")])
            record = mapping.apply(source)
            if record.get("procedure_code") != code:
                # The snapshot is keyed by the procedure's own code: another code would withdraw the
                # listed procedure, publish one nobody listed, or overwrite a third one.
                named = record.get("procedure_code")
                shown = repr(named)[:60] if isinstance(named, str) else f"a {type(named).__name__}"
                raise RecordRejected(code, [FieldError(
                    "MATTHC", "matches_listed_code",
                    f"LayThuTuc({code!r}) answers for procedure {shown}, not the one LayDanhSachTTHC lists")])
            unknown = [a for a in _agency_codes(record) if a not in agencies]
            if unknown:
                raise RecordRejected(code, [FieldError(
                    "agencies", "unknown_agency",
                    f"agency code(s) {', '.join(sorted(unknown))} are not in LayDanhMucCoQuan")])
        except RecordRejected as exc:
            key = exc.record_key if exc.record_key and not exc.record_key.startswith("<") else (code or "<no MATTHC>")
            rejected_codes.add(key)
            _dead_letter(begin, run_id, key, source, exc)
            report.rejected.append({"record_key": key, "stage": "normalise",
                                    "errors": exc.error_dicts()})
            continue
        snapshot[record["procedure_code"]] = record
    report.normalised = len(snapshot)
    _apply_snapshot(begin, run_id, snapshot, rejected_codes, report)


def _published(detail: dict[str, Any]) -> bool:
    """Contract §4.5: TRANGTHAI 1 (number or text) is published, anything else hidden; a detail
    without one is taken as the listing has it, published."""
    state = detail.get("TRANGTHAI")
    return state is None or state == "" or (not isinstance(state, bool) and str(state).strip() == "1")


def _usable_code(code: str) -> bool:
    return 0 < len(code) <= 64 and code.isprintable() and code.strip() == code


def _agency_codes(record: dict[str, Any]) -> set[str]:
    codes = {record.get("publishing_agency_code")} if record.get("publishing_agency_code") else set()
    for group in (record.get("agencies") or {}).values():
        for agency in group or []:
            if isinstance(agency, dict) and agency.get("code"):
                codes.add(agency["code"])
    return {str(c) for c in codes}


def _dead_letter(begin: Callable[[], AbstractContextManager[Connection]], run_id: str, key: str,
                 source: dict[str, Any], exc: RecordRejected, stage: str = "normalise") -> None:
    """Dead-letter a procedure, once: the same refusal of the same record already waiting is not repeated
    by every daily run. ``begin`` opens the transaction (``store.begin``, or one that also writes the
    exchange-log records of the answers that led here)."""
    errors = exc.error_dicts()
    with begin() as conn:
        waiting = conn.execute(select(dead_letter.c.errors, dead_letter.c.source_payload).where(
            dead_letter.c.flow == FLOW, dead_letter.c.record_key == key, dead_letter.c.stage == stage,
            dead_letter.c.resolved_at.is_(None))).all()
        if any(w.errors == errors and w.source_payload == source for w in waiting):
            return
        Store.add_dead_letter(conn, flow=FLOW, record_key=key, outbox_id=None, run_id=run_id, stage=stage,
                              error=exc, errors=errors, source_payload=source)


def _open_letters(conn: Connection, stage: str) -> dict[str, list[int]]:
    """Procedure code → ids of its unresolved dead letters of ``stage`` (few: read once per step)."""
    waiting: dict[str, list[int]] = defaultdict(list)
    for letter_id, key in conn.execute(select(dead_letter.c.id, dead_letter.c.record_key).where(
            dead_letter.c.flow == FLOW, dead_letter.c.stage == stage, dead_letter.c.resolved_at.is_(None))):
        waiting[key].append(letter_id)
    return waiting


def _resolve_letters(conn: Connection, ids: list[int], resolution: str) -> None:
    if ids:
        conn.execute(update(dead_letter).where(dead_letter.c.id.in_(ids), dead_letter.c.resolved_at.is_(None))
                     .values(resolved_at=utcnow(), resolution=resolution))


def replay(store: Store, *, dead_letter_ids: list[int] | None = None, record_key: str | None = None,
           by: str = "operator") -> tuple[list[int], list[str]]:
    """Resolve catalogue dead letters (by ids, by procedure code, or every unresolved one).

    Nothing is put back in line: the next pull reads every procedure of the national catalogue
    again and the next push sends whatever a destination has not acknowledged, so a procedure
    fixed meanwhile goes through, and one still refused is dead-lettered anew. Returns (dead
    letters, procedure codes)."""
    query = select(dead_letter.c.id, dead_letter.c.record_key).where(
        dead_letter.c.resolved_at.is_(None), dead_letter.c.flow == FLOW)
    if dead_letter_ids:
        query = query.where(dead_letter.c.id.in_(dead_letter_ids))
    if record_key:
        query = query.where(dead_letter.c.record_key == record_key)
    with store.begin() as conn:  # locked, then resolved: a second replay at once finds none of them
        letters = resolve_dead_letters(conn, query, f"replayed by {by}: read again by the next pull")
    return [lt.id for lt in letters], sorted({lt.record_key for lt in letters})


def _changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _apply_snapshot(begin: Callable[[], AbstractContextManager[Connection]], run_id: str,
                    snapshot: dict[str, dict[str, Any]], rejected: set[str], report: PullReport) -> None:
    """Diff against the kept snapshot, record the changes, keep the new snapshot."""
    now = utcnow()
    with begin() as conn:
        current = {r.procedure_code: r for r in conn.execute(select(catalogue_current))}
        changes: list[dict[str, Any]] = []
        for code, record in snapshot.items():
            digest = content_hash(record)
            old = current.get(code)
            agency = record.get("publishing_agency_code")
            if old is None or not old.published:
                kind, fields = "added", []
            elif old.record_hash != digest:
                kind, fields = "amended", _changed_fields(old.record, record)
            else:
                report.unchanged += 1
                continue
            changes.append({"run_id": run_id, "procedure_code": code, "kind": kind, "fields": fields,
                            "agency_code": agency, "procedure_name": record.get("procedure_name"), "at": now})
            values = {"record": record, "record_hash": digest, "published": True, "updated_run_id": run_id,
                      "updated_at": now}
            if old is None:
                conn.execute(catalogue_current.insert().values(procedure_code=code, **values))
            else:
                conn.execute(update(catalogue_current).where(catalogue_current.c.procedure_code == code)
                             .values(**values))
        # Withdrawn: published before, not listed now. A procedure refused this run is not
        # "withdrawn": it is still published, just unreadable; it keeps its last good snapshot.
        for code, old in current.items():
            if old.published and code not in snapshot and code not in rejected:
                changes.append({"run_id": run_id, "procedure_code": code, "kind": "withdrawn", "fields": [],
                                "agency_code": (old.record or {}).get("publishing_agency_code"),
                                "procedure_name": (old.record or {}).get("procedure_name"), "at": now})
                conn.execute(update(catalogue_current).where(catalogue_current.c.procedure_code == code)
                             .values(published=False, updated_run_id=run_id, updated_at=now))
        if changes:
            conn.execute(catalogue_change.insert(), changes)
        # A procedure refused by an earlier pull that normalises now is published: its dead letters are done.
        waiting = _open_letters(conn, "normalise")
        _resolve_letters(conn, [i for code in waiting.keys() & snapshot.keys() for i in waiting[code]],
                         f"normalised and published by run {run_id}")
        # One no longer listed or published (withdrawn nationally) will never be normalised again: nothing is left to do
        # (not on an empty listing, which may be one cut short).
        if report.listed:
            _resolve_letters(conn, [i for code in waiting.keys() - snapshot.keys() - rejected for i in waiting[code]],
                             f"no longer published nationally (withdrawn) in run {run_id}")
    for change in changes:
        setattr(report, change["kind"], getattr(report, change["kind"]) + 1)


# --- push ----------------------------------------------------------------------------------------
def _pending_for(store: Store, destination: str) -> tuple[list[Any], list[Any]]:
    """(to upsert, to withdraw) for a destination: what its acknowledgements do not cover yet."""
    with store.engine.connect() as conn:
        acks = {r.record_key: r for r in conn.execute(
            select(delivery_state).where(delivery_state.c.peer == destination))}
        rows = conn.execute(select(catalogue_current).order_by(catalogue_current.c.procedure_code)).all()
    upserts, withdrawals = [], []
    for row in rows:
        ack = acks.get(row.procedure_code)
        if row.published and (ack is None or ack.payload_hash != row.record_hash or ack.peer_status != "published"):
            upserts.append(row)
        elif not row.published and (ack is None or ack.peer_status != "withdrawn"):
            # Also without an acknowledgement: a push whose answer was lost, or a worker killed
            # between the destination's commit and the acknowledgement, may have left it published
            # there. Withdrawing what a destination does not hold is harmless (the one-stop answers
            # 404, the replica changes no row).
            withdrawals.append(row)
    return upserts, withdrawals


def _ack(conn: Connection, destination: str, codes_hashes: list[tuple[str, str]], status: str, run_id: str) -> None:
    now = utcnow()
    upsert_acknowledgements(conn, [
        {"peer": destination, "record_key": code, "payload_hash": digest, "created_on_peer": True,
         "peer_status": status, "acked_at": now, "acked_run_id": run_id} for code, digest in codes_hashes])


def push_catalogue(
    store: Store,
    *,
    run_id: str,
    onestop: OneStopClient | None = None,
    replica: MinistryReplica | None = None,
    batch_size: int = 200,
) -> list[PushReport]:
    """Bring the one-stop catalogue and the ministry replica level with the snapshot."""
    reports = []
    if onestop is not None:
        reports.append(push_onestop(store, onestop, run_id=run_id))
    if replica is not None:
        reports.append(push_ministry(store, replica, run_id=run_id, batch_size=batch_size))
    return reports


def push_onestop(store: Store, onestop: OneStopClient, *, run_id: str, report: PushReport | None = None) -> PushReport:
    """The snapshot's changes to the one-stop catalogue (``report``: the report to fill as it goes,
    a caller counting what a failed attempt did passes its own; a new one by default)."""
    mapping = load_mapping(TO_ONESTOP)
    report = report if report is not None else PushReport("onestop")
    upserts, withdrawals = _pending_for(store, ONESTOP)
    with store.engine.connect() as conn:
        waiting = _open_letters(conn, "onestop")
    # Each call's exchange-log record commits with the acknowledgement (or dead letter) it caused.
    with answer_transactions(store, onestop) as begin:
        for row in upserts:
            try:
                onestop.upsert_procedure(mapping.apply(row.record))
            except RecordRejected as exc:
                _dead_letter(begin, run_id, row.procedure_code, row.record, exc, "onestop")
                report.rejected.append({"record_key": row.procedure_code, "stage": "onestop",
                                        "errors": exc.error_dicts()})
                continue
            with begin() as conn:
                _ack(conn, ONESTOP, [(row.procedure_code, row.record_hash)], "published", run_id)
                _resolve_letters(conn, waiting.pop(row.procedure_code, []), f"{ONESTOP} accepted it in run {run_id}")
            report.upserted += 1
        for row in withdrawals:
            onestop.withdraw_procedure(row.procedure_code)
            with begin() as conn:
                _ack(conn, ONESTOP, [(row.procedure_code, row.record_hash)], "withdrawn", run_id)
                _resolve_letters(conn, waiting.pop(row.procedure_code, []),
                                 f"withdrawn nationally; {ONESTOP} withdrew it in run {run_id}")
            report.withdrawn += 1
    return report


def _replica_row(mapping: Mapping, row: Any) -> ProcedureRow:
    """The ministry replica's row of a snapshot procedure.

    Raises:
        RecordInvalid: the mapping refuses it.
        RecordRejected: a column the replica cannot hold: a NUL character, or longer than the column
            (on PostgreSQL one such row fails the batch's statement, and with it the batch, every run).
    """
    procedure = ProcedureRow(**mapping.apply(row.record), noi_dung=row.record, ma_bam_noi_dung=row.record_hash)
    nul = procedure.nul_columns()
    if nul:
        raise RecordRejected(row.procedure_code, [FieldError(
            column, "no_nul_character", "the text holds a NUL character, which the ministry database cannot store")
            for column in nul])
    overlong = procedure.overlong_columns()
    if overlong:
        raise RecordRejected(row.procedure_code, [FieldError(
            column, "max_length", f"{length} characters; the ministry database holds at most {limit}")
            for column, length, limit in overlong])
    return procedure


def push_ministry(store: Store, replica: MinistryReplica, *, run_id: str, batch_size: int = 200,
                  report: PushReport | None = None) -> PushReport:
    """The snapshot's changes to the ministry replica (``report``: as for :func:`push_onestop`)."""
    mapping = load_mapping(TO_MINISTRY)
    report = report if report is not None else PushReport("ministry")
    replica.migrate()
    upserts, withdrawals = _pending_for(store, MINISTRY)
    with store.engine.connect() as conn:
        waiting = _open_letters(conn, "ministry")
    for start in range(0, len(upserts), batch_size):
        batch = upserts[start:start + batch_size]
        rows = []
        for row in batch:
            try:
                procedure = _replica_row(mapping, row)
            except RecordRejected as exc:  # a mapping refusal (RecordInvalid) or a column the replica cannot hold
                _dead_letter(store.begin, run_id, row.procedure_code, row.record, exc, "ministry")
                report.rejected.append({"record_key": row.procedure_code, "stage": "ministry",
                                        "errors": exc.error_dicts()})
                continue
            rows.append((row, procedure))
        replica.upsert(r for _, r in rows)  # one transaction for the batch
        with store.begin() as conn:
            _ack(conn, MINISTRY, [(row.procedure_code, row.record_hash) for row, _ in rows], "published", run_id)
            _resolve_letters(conn, [i for row, _ in rows for i in waiting.pop(row.procedure_code, [])],
                             f"{MINISTRY} accepted it in run {run_id}")
        report.upserted += len(rows)
    if withdrawals:
        replica.withdraw(r.procedure_code for r in withdrawals)
        with store.begin() as conn:
            _ack(conn, MINISTRY, [(r.procedure_code, r.record_hash) for r in withdrawals], "withdrawn", run_id)
            _resolve_letters(conn, [i for r in withdrawals for i in waiting.pop(r.procedure_code, [])],
                             f"withdrawn nationally; {MINISTRY} withdrew it in run {run_id}")
        report.withdrawn += len(withdrawals)
    return report


# --- report --------------------------------------------------------------------------------------
def change_report(store: Store, run_id: str) -> str:
    """The run's changes for integration engineers, by agency then procedure, as Markdown."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(catalogue_change).where(catalogue_change.c.run_id == run_id)
                            .order_by(catalogue_change.c.agency_code, catalogue_change.c.procedure_code)).all()
    if not rows:
        return f"# Catalogue changes, run {run_id}\n\nNo change in the national catalogue.\n"
    by_kind: dict[str, int] = defaultdict(int)
    for r in rows:
        by_kind[r.kind] += 1
    lines = [f"# Catalogue changes, run {run_id}", "",
             f"{by_kind['added']} added, {by_kind['amended']} amended, {by_kind['withdrawn']} withdrawn.", ""]
    agency = object()
    for r in rows:
        if r.agency_code != agency:
            agency = r.agency_code
            lines += ["", f"## Agency {agency or '(none)'}", ""]
        detail = f" — fields: {', '.join(r.fields)}" if r.fields else ""
        lines.append(f"- **{r.kind}** {r.procedure_code} {r.procedure_name or ''}{detail}")
    return "\n".join(lines) + "\n"
