"""Dossier status sync: one-stop system → national portal (``DongBoHoSoMC``, ``CapNhatTienDoHoSoMC``).

Each step is safe to rerun after a crash at any point (design §4):

1. :func:`stage_changes` reads the one-stop change feed into the outbox. The cursor advances in
   the same transaction as the rows it covers (nothing is lost). The bookmark is *inclusive*: the
   next run re-reads the last page it staged, and an event already staged is ignored (nothing is
   staged twice), so an event the feed commits late on that page is still caught. A newer
   snapshot of a dossier supersedes its older unsent one: the portal takes full snapshots.
2. :func:`deliver_pending` maps each pending dossier and sends it, in batches, as an insert when
   the portal never acknowledged it and as an update otherwise; "đã tồn tại" turns an insert into
   an update, "không tồn tại" an update into an insert. A dossier sent before without an answer
   (a timeout, a crash) is first looked up with ``TraCuuHoSo``. Guards: a payload the portal
   already acknowledged is not re-sent; an older snapshot never overwrites a newer one; a final
   status never regresses; a dossier with a change in dead letters holds back its own later
   changes (never anyone else's) until the dead letter is replayed.
3. When the portal acknowledges a dossier, its progress entries are mapped and staged;
   :func:`deliver_progress` sends them after the dossier, each dossier's in time order, in chunks,
   each once: a chunk is marked in flight
   before it is sent, and a chunk whose answer was lost is reconciled with the number of entries
   the portal holds and the time of its last one (``TraCuuHoSo``) before anything is re-sent. A chunk refused with a dossier's
   code but naming no entry (nothing of it applied) goes again one dossier, then one entry, per call.

Records that cannot be mapped or that the portal refuses are dead-lettered with their original
payload and every broken rule; the others go on. So is a snapshot whose ``version`` is unusable
(stage ``source``): the stale and supersede guards depend on it, so it is never read as "none".
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, case, exists, func, or_, select, tuple_, update
from sqlalchemy.engine import Connection

from connectors.errors import FieldError, RecordRejected
from connectors.national_portal.client import (
    FINAL_STATUSES,
    BatchResult,
    DossierAlreadyExists,
    DossierUnknown,
    NationalPortalClient,
)
from connectors.one_stop.client import OneStopClient
from lienthong.exchange_log import answer_transactions
from lienthong.leases import Leases
from lienthong.mapping import Mapping, RecordInvalid, load_mapping
from lienthong.store import (
    Store,
    blocked_keys,
    content_hash,
    catalogue_current,
    dead_letter,
    delivery_state,
    execute_many,
    insert_ignore,
    outbox,
    progress_outbox,
    resolve_dead_letters,
    upsert_acknowledgements,
    utcnow,
)

__all__ = [
    "FLOW",
    "MAPPING",
    "PEER",
    "PROGRESS_FLOW",
    "PROGRESS_MAPPING",
    "DeliveryReport",
    "ProgressReport",
    "ReplayResult",
    "StageReport",
    "deliver_pending",
    "deliver_progress",
    "discard",
    "enrich_from_catalogue",
    "replay",
    "stage_changes",
    "stage_window",
]

log = logging.getLogger(__name__)

FLOW = "dossier_status"
PROGRESS_FLOW = "dossier_progress"
PEER = "national_portal"
MAPPING = "onestop__national_portal/dossier"
PROGRESS_MAPPING = "onestop__national_portal/progress"
FEED_BEGINNING = "beginning"
# deliver_progress reads the next chunk in the order of the index ix_progress_send (lienthong/store.py)
# instead of sorting every pending entry for every chunk (which made a full sync quadratic).

#: Keys per ``IN (...)`` list (SQLite's default limit on bound parameters is 32766; stay well below).
_IN_CHUNK = 500


@dataclass
class StageReport:
    pages: int = 0
    events_read: int = 0
    staged: int = 0
    already_staged: int = 0
    superseded: int = 0
    cursor_from: str | None = None
    cursor_to: str | None = None

    def counts(self) -> dict[str, Any]:
        return {"pages": self.pages, "events_read": self.events_read, "staged": self.staged,
                "already_staged": self.already_staged, "superseded": self.superseded}


@dataclass
class DeliveryReport:
    considered: int = 0
    delivered_new: int = 0
    delivered_update: int = 0
    unchanged: int = 0
    stale: int = 0
    held: int = 0
    looked_up: int = 0
    leased_elsewhere: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0

    def counts(self) -> dict[str, Any]:
        return {"considered": self.considered, "leased_elsewhere": self.leased_elsewhere,
                "delivered_new": self.delivered_new,
                "delivered_update": self.delivered_update, "unchanged": self.unchanged, "stale": self.stale,
                "held": self.held, "looked_up": self.looked_up, "rejected": len(self.rejected),
                "rejections": self.rejected, "portal_calls": self.calls}


@dataclass
class ProgressReport:
    staged: int = 0
    sent: int = 0
    reconciled: int = 0
    held: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0

    def counts(self) -> dict[str, Any]:
        return {"progress_sent": self.sent, "progress_reconciled": self.reconciled, "progress_held": self.held,
                "progress_rejected": len(self.rejected), "progress_rejections": self.rejected,
                "progress_calls": self.calls}


# --- 1. stage ------------------------------------------------------------------------------------
def stage_changes(store: Store, onestop: OneStopClient, *, run_id: str, feed_from: str | None = None,
                  report: StageReport | None = None) -> StageReport:
    """Stage every one-stop change from the bookmark; see the module docstring.

    Args:
        feed_from: ``None`` to continue from the stored bookmark, ``"beginning"`` to re-read the
            whole feed, or a cursor. Re-reading is a backfill, safe like a window's: events staged
            before and finished go back in line, and delivery sends none whose payload the portal
            acknowledged unless asked to (``resend_acknowledged``, after the portal lost data).
            A backfill leaves the bookmark alone (a cursor past it would skip the events between).
        report: the report to fill as the step goes (a caller counting what a failed attempt did
            passes its own); a new one by default.
    """
    stored = store.get_cursor(FLOW)
    start = stored if feed_from is None else (None if feed_from == FEED_BEGINNING else feed_from)
    report = report if report is not None else StageReport()
    report.cursor_from, report.cursor_to = start, stored
    page_start = start
    for page in onestop.iter_changes(start):
        report.pages += 1
        report.events_read += len(page.events)
        if page.events:
            _stage_page(store, page, page_start, run_id, report, backfill=feed_from is not None)
            store.keep_statistics(_STAGE_TABLES)
        page_start = page.next_cursor
    log.info("staged %d new events (%d read, %d already staged, %d superseded) from %d pages; bookmark %s",
             report.staged, report.events_read, report.already_staged, report.superseded, report.pages,
             report.cursor_to)
    return report


def stage_window(
    store: Store, onestop: OneStopClient, *, run_id: str, modified_from: str | None, modified_to: str | None,
    report: StageReport | None = None,
) -> StageReport:
    """Backfill: stage the current snapshot of every dossier modified in [from, to).

    The bookmark is left alone. A snapshot the portal already acknowledged is not re-sent (its
    payload hash matches), so a window can be replayed safely; pass ``resend_acknowledged`` to the
    delivery to force it. ``report``: as for :func:`stage_changes`.
    """
    report = report if report is not None else StageReport()
    for items in onestop.iter_dossiers(modified_from=modified_from, modified_to=modified_to):
        report.pages += 1
        report.events_read += len(items)
        rows = []
        for d in items:
            version = _snapshot_version(d)
            # No feed sequence for a listed snapshot: -version keeps (dossier, version) unique.
            rows.append(_row(d, seq=-(version or 0), run_id=run_id))
        _stage_rows(store, rows, run_id, report, restage=True)
    log.info("backfill window [%s, %s): staged %d of %d snapshots", modified_from, modified_to, report.staged,
             report.events_read)
    return report


#: Longest record key the bus database holds (``outbox.record_key`` is a VARCHAR(200)).
_KEY_MAX = 200


def _record_key(dossier: dict[str, Any], seq: int) -> str:
    """The dossier's key, or a stand-in key when ``dossierNo`` is missing, not text, too long for the
    bus database or holds control characters. A hostile key must not stop the page it came on: the
    record is staged under the stand-in (unique per event and content) and the mapping dead-letters
    it with its original payload, naming ``MaHoSo``."""
    key = dossier.get("dossierNo")
    if isinstance(key, str) and key.strip() and len(key) <= _KEY_MAX and key.isprintable():
        return key
    what = "no dossierNo" if key in (None, "") else "invalid dossierNo"
    return f"<{what}, seq {seq}, {content_hash(dossier)[:12]}>"


def _version_problem(dossier: Any) -> FieldError | None:
    """What is wrong with the one-stop's snapshot counter ``version``, if anything.

    It decides which of two snapshots of a dossier is newer (a newer one supersedes an older
    unsent one; an older one never overwrites a newer one on the portal), so it must be absent,
    null or a whole number ≥ 0. Anything else (text, a fraction, ``true``, a negative number) is
    refused naming the field, instead of being taken as "no version" and losing that guard."""
    version = dossier.get("version") if isinstance(dossier, dict) else None
    if version is None or (type(version) is int and version >= 0):
        return None
    shown = repr(version) if isinstance(version, (str, int, float)) and len(repr(version)) <= 40 \
        else f"a {type(version).__name__}"
    return FieldError("version", "snapshot_version",
                      f"the one-stop's snapshot version must be a whole number ≥ 0 (or absent), not {shown}")


def _snapshot_version(dossier: Any) -> int | None:
    """``version`` when it is usable (see :func:`_version_problem`), else None."""
    return dossier.get("version") if _version_problem(dossier) is None and isinstance(dossier, dict) else None


def _row(dossier: dict[str, Any], *, seq: int, run_id: str) -> dict[str, Any]:
    return {
        "flow": FLOW,
        "record_key": _record_key(dossier, seq),
        "source_seq": seq,
        "source_version": _snapshot_version(dossier),
        "source_payload": dossier,
        "state": "pending",
        "attempts": 0,
        "staged_run_id": run_id,
        "staged_at": utcnow(),
    }


def _stage_page(store: Store, page: Any, page_start: str | None, run_id: str, report: StageReport, *,
                backfill: bool = False) -> None:
    """Stage one page; the bookmark moves to the page's start, except in a backfill: the bookmark
    is where the scheduled reading goes on, and a backfill's cursor (opaque, so never compared with
    it) may be past it, which would skip the events in between, or before it (re-reading it all)."""
    rows = [_row(e.dossier, seq=e.seq, run_id=run_id) for e in page.events]
    if backfill:
        _stage_rows(store, rows, run_id, report, restage=True)
        return
    _stage_rows(store, rows, run_id, report, bookmark=page_start or "")
    report.cursor_to = page_start


def _stage_rows(store: Store, rows: list[dict[str, Any]], run_id: str, report: StageReport,
                bookmark: str | None = None, restage: bool = False) -> None:
    with store.begin() as conn:
        new = insert_ignore(conn, outbox, rows, "uq_outbox_event")
        if restage and new < len(rows):
            # A backfill asks again on purpose: snapshots staged by an earlier backfill and since
            # finished go back in line (refused ones stay with their dead letter until replayed).
            for r in rows:
                new += conn.execute(
                    update(outbox).where(outbox.c.flow == FLOW, outbox.c.record_key == r["record_key"],
                                         outbox.c.source_seq == r["source_seq"],
                                         outbox.c.state.in_(("delivered", "unchanged", "superseded", "stale")))
                    # (its sends were answered since: no "sent without an answer" mark)
                    .values(state="pending", source_payload=r["source_payload"], staged_run_id=run_id, attempts=0)
                ).rowcount
        report.staged += new
        report.already_staged += len(rows) - new
        # Full snapshots: only the newest unsent snapshot of a dossier (by the source's version,
        # then feed order) needs delivering. It inherits the "sent without an answer" mark of the
        # ones it replaces, so the portal is asked first.
        # One query for the page's keys (not one per key): staging cost follows the page, and the
        # (flow, record_key) index keeps it independent of the outbox's size.
        by_key: dict[str, list[Any]] = defaultdict(list)
        keys = sorted({r["record_key"] for r in rows})
        # A snapshot whose version is unusable takes no part: it can neither be judged older than
        # another nor make one older, so it stays pending and delivery dead-letters it by name.
        unversioned = {(r["record_key"], r["source_seq"]) for r in rows if _version_problem(r["source_payload"])}
        for start in range(0, len(keys), _IN_CHUNK):
            for w in conn.execute(
                select(outbox.c.id, outbox.c.record_key, outbox.c.source_version, outbox.c.source_seq,
                       outbox.c.attempts)
                .where(outbox.c.flow == FLOW, outbox.c.record_key.in_(keys[start:start + _IN_CHUNK]),
                       outbox.c.state.in_(("pending", "held")))
            ):
                if (w.record_key, w.source_seq) not in unversioned:
                    by_key[w.record_key].append(w)
        for waiting in by_key.values():
            if len(waiting) < 2:
                continue
            newest = max(waiting, key=lambda w: (w.source_version if w.source_version is not None else -1,
                                                 w.source_seq, w.id))
            older = [w.id for w in waiting if w.id != newest.id]
            # Only those still waiting when the update runs: a worker may have delivered one since
            # it was read (it stays delivered), or marked it sent (its attempts, as they are now, go on).
            replaced = conn.execute(
                update(outbox).where(outbox.c.id.in_(older), outbox.c.state.in_(("pending", "held")))
                .values(state="superseded", done_run_id=run_id, done_at=utcnow())
                .returning(outbox.c.attempts)
            ).scalars().all()
            report.superseded += len(replaced)
            if replaced:
                most = max(replaced)
                conn.execute(update(outbox).where(outbox.c.id == newest.id).values(
                    attempts=case((outbox.c.attempts < most, most), else_=outbox.c.attempts)))
        if bookmark is not None:
            # Inclusive bookmark: the next run starts with this page again.
            Store.set_cursor(conn, FLOW, bookmark, run_id)


# --- 2. deliver dossiers -------------------------------------------------------------------------
@dataclass
class _Item:
    outbox_id: int
    key: str
    version: int | None
    source: dict[str, Any]
    record: dict[str, Any]
    digest: str
    attempts: int


def deliver_pending(
    store: Store,
    portal: NationalPortalClient,
    *,
    run_id: str,
    mapping: Mapping | None = None,
    progress_mapping: Mapping | None = None,
    batch_size: int = 50,
    resend_acknowledged: bool = False,
    leases: Leases | None = None,
    report: DeliveryReport | None = None,
) -> DeliveryReport:
    """Map and deliver every pending dossier; see the module docstring.

    Args:
        resend_acknowledged: send even payloads the portal already acknowledged (a resync after
            the portal lost data); the portal's answers still keep the effect single.
        leases: this worker's dossier leases (a new set by default). Several workers may deliver at
            once: a dossier leased by another is left to it (counted as ``leased_elsewhere``).
        report: the report to fill as the step goes (a caller counting what a failed attempt did
            passes its own); a new one by default.

    Raises:
        RetriableConnectorError: the portal became unreachable; rows not yet acknowledged stay
            pending (marked as sent, so the next attempt asks the portal before choosing).
    """
    mapping = mapping or load_mapping(MAPPING)
    progress_mapping = progress_mapping or load_mapping(PROGRESS_MAPPING)
    report = report if report is not None else DeliveryReport()
    leases = leases or Leases(store, FLOW)
    try:
        _deliver_batches(store, portal, report, run_id, mapping, progress_mapping, batch_size, resend_acknowledged,
                         leases)
    finally:
        leases.release()
    log.info("dossiers: %d new, %d updates, %d unchanged, %d stale, %d held, %d rejected, %d left to other "
             "workers in %d portal calls", report.delivered_new, report.delivered_update, report.unchanged,
             report.stale, report.held, len(report.rejected), report.leased_elsewhere, report.calls)
    return report


# The tables whose planner statistics each step keeps current on PostgreSQL (Store.keep_statistics:
# a first sync grows them from nothing within one run), checked every STATISTICS_EVERY batches or
# chunks and after each staged page.
STATISTICS_EVERY = 20
_STAGE_TABLES = (outbox,)
_DELIVERY_TABLES = (outbox, progress_outbox, delivery_state)
_PROGRESS_TABLES = (progress_outbox,)

# The statements of a batch, built once (building a statement and its cache key cost more than
# running it: issue #8).
# the slice's ids and dossiers only: its rows are read once their dossiers are leased (_LEASED_BATCH)
_NEXT_BATCH = (
    select(outbox.c.id, outbox.c.record_key)
    .where(outbox.c.flow == FLOW, outbox.c.state == "pending", outbox.c.id > bindparam("b_after"))
    .order_by(outbox.c.id).limit(bindparam("b_limit"))
)
_LEASED_BATCH = (
    select(outbox.c.id, outbox.c.record_key, outbox.c.source_version, outbox.c.source_payload, outbox.c.attempts)
    .where(outbox.c.id.in_(bindparam("b_ids", expanding=True)), outbox.c.state == "pending")
    .order_by(outbox.c.id)
)
# Held only if still pending and its dossier still has an unresolved dead letter when it runs.
_HOLD_DOSSIER = (update(outbox)
                 .where(outbox.c.id == bindparam("b_id"), outbox.c.state == "pending",
                        exists().where(dead_letter.c.flow == FLOW, dead_letter.c.record_key == outbox.c.record_key,
                                       dead_letter.c.resolved_at.is_(None)))
                 .values(state="held"))
_ACKS = select(delivery_state).where(delivery_state.c.peer == PEER,
                                     delivery_state.c.record_key.in_(bindparam("b_keys", expanding=True)))


def _deliver_batches(store: Store, portal: NationalPortalClient, report: DeliveryReport, run_id: str,
                     mapping: Mapping, progress_mapping: Mapping, batch_size: int, resend_acknowledged: bool,
                     leases: Leases) -> None:
    last_id = 0
    settled: set[str] = set()  # the last batch's dossiers: their leases go back with the next batch
    for batch in itertools.count():
        if batch % STATISTICS_EVERY == 0:
            store.keep_statistics(_DELIVERY_TABLES)
        inserts: list[_Item] = []
        updates: list[_Item] = []
        unsure: list[_Item] = []
        # One transaction per batch: read it, lease its dossiers, map them, settle what needs no
        # call, and mark what will be sent as sent (before it is).
        with store.begin() as conn:
            rows = conn.execute(_NEXT_BATCH, {"b_after": last_id, "b_limit": batch_size}).all()
            if not rows:
                break
            last_id = rows[-1].id
            mine = leases.ensure({r.record_key for r in rows}, conn)
            # The last batch is settled (answered, or left pending and marked as sent): its
            # dossiers' leases go back, so a long run holds one batch's, not every dossier's.
            leases.release(settled - mine, conn)
            settled = set(mine)
            report.leased_elsewhere += sum(1 for r in rows if r.record_key not in mine)
            # Read again now that the leases are held: the slice was read before, and a worker that
            # held a dossier then may have sent it, finished its row and given the lease back since
            # (a stale row, pending and marked as sent, would be sent again as an update).
            leased = [r.id for r in rows if r.record_key in mine]
            rows = conn.execute(_LEASED_BATCH, {"b_ids": leased}).all() if leased else []
            if not rows:
                continue
            keys = [r.record_key for r in rows]
            acks = {r.record_key: r for r in conn.execute(_ACKS, {"b_keys": keys})}
            blocked = blocked_keys(conn, FLOW, keys)
            procedures = _catalogue_entries(conn, [r.source_payload for r in rows])
            report.considered += len(rows)
            for row in rows:
                if row.record_key in blocked:
                    # conditional, like the progress path's _HOLD: held only if still pending and
                    # still behind an unresolved dead letter (blocked_keys' locks make that so; this
                    # is the second line), never a row another worker finished or a replay freed
                    report.held += conn.execute(_HOLD_DOSSIER, {"b_id": row.id}).rowcount
                    continue
                problem = _version_problem(row.source_payload)
                if problem is not None:
                    _reject(conn, report.rejected, FLOW, row.id, row.record_key, row.source_payload,
                            RecordRejected(row.record_key, [problem]), run_id, "source")
                    continue
                try:
                    record = mapping.apply(enrich_from_catalogue(row.source_payload, procedures))
                except RecordInvalid as exc:
                    _reject(conn, report.rejected, FLOW, row.id, row.record_key, row.source_payload, exc, run_id,
                            "mapping")
                    continue
                item = _Item(row.id, row.record_key, row.source_version, row.source_payload, record,
                             content_hash(record), row.attempts)
                ack = acks.get(row.record_key)
                if ack is not None and _older(item.version, ack.source_version):
                    _finish(conn, item, "stale", None, run_id)
                    report.stale += 1
                elif ack is not None and ack.peer_status in FINAL_STATUSES and \
                        record.get("TrangThaiHoSo") != ack.peer_status:
                    regress = RecordRejected(item.key, [FieldError(
                        "TrangThaiHoSo", "final_status",
                        f"the portal holds final status {ack.peer_status}; status {record.get('TrangThaiHoSo')} "
                        "would regress it")])
                    _reject(conn, report.rejected, FLOW, item.outbox_id, item.key, item.source, regress, run_id,
                            "guard")
                # Unchanged only if nothing was sent since the acknowledgement, or the acknowledgement
                # is of this snapshot or a newer one (another worker delivered it after this batch was
                # read): a snapshot marked as sent without an answer (itself, or one it replaced) may
                # have changed what the portal holds, so it is asked first, below (make reliability
                # found the portal left behind).
                elif ack is not None and ack.payload_hash == item.digest and not resend_acknowledged \
                        and (item.attempts == 0 or _acked_since(item.version, ack.source_version)):
                    _finish(conn, item, "unchanged", None, run_id)
                    if item.version is not None and (ack.source_version is None or item.version > ack.source_version):
                        # what the portal holds is this newer snapshot's content: an older one that
                        # the feed commits late must be stale against it, not sent over it
                        conn.execute(_ACKED_VERSION, {"b_key": item.key, "b_version": item.version})
                    report.unchanged += 1
                    # The status the portal holds is this one, but the snapshot may carry steps
                    # finished since (a step inside the same status changes no dossier field).
                    _stage_progress(conn, progress_mapping, [item], run_id)
                elif ack is not None and ack.created_on_peer:
                    updates.append(item)
                elif item.attempts > 0:
                    unsure.append(item)  # sent before without an answer: ask the portal first
                else:
                    inserts.append(item)
            _mark_sent(conn, inserts + updates)
        if not (unsure or inserts or updates):
            continue
        # The batch's dossiers stay leased while the portal is asked and answers, however long that
        # takes: another worker taking an expired lease over would send them again.
        with leases.kept_while("a batch to the portal"):
            if unsure:
                for item in unsure:
                    report.looked_up += 1
                    (updates if portal.lookup_dossier(item.key) is not None else inserts).append(item)
                with store.begin() as conn:
                    _mark_sent(conn, unsure)
            retry_as_update = _send(store, portal, report, progress_mapping, inserts, is_updating=False,
                                    run_id=run_id, reroute=DossierAlreadyExists)
            retry_as_insert = _send(store, portal, report, progress_mapping, updates + retry_as_update,
                                    is_updating=True, run_id=run_id, reroute=DossierUnknown)
            # The portal forgot these dossiers (an update met "không tồn tại"): they go in again, and
            # so does their whole progress history.
            _send(store, portal, report, progress_mapping, retry_as_insert, is_updating=False, run_id=run_id,
                  reroute=None, forgotten=True)


#: One-stop dossier field → canonical procedure field that may stand in for it when it is empty.
CATALOGUE_FILL = {"serviceName": "procedure_name", "domainCode": "domain_code", "domainName": "domain_name"}


def _catalogue_entries(conn: Connection, dossiers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Published catalogue records (from the catalogue flow's snapshot) of these dossiers' procedures."""
    codes = sorted({str(d.get("serviceCode")) for d in dossiers
                    if isinstance(d, dict) and d.get("serviceCode") and any(not d.get(f) for f in CATALOGUE_FILL)})
    if not codes:
        return {}
    rows = conn.execute(select(catalogue_current.c.procedure_code, catalogue_current.c.record).where(
        catalogue_current.c.procedure_code.in_(codes), catalogue_current.c.published.is_(True)))
    return {r.procedure_code: r.record for r in rows}


def enrich_from_catalogue(dossier: Any, procedures: dict[str, dict[str, Any]]) -> Any:
    """Content Enricher: fill the procedure name and field a dossier lacks from the national
    catalogue. Only empty values are filled; what the one-stop says is never overridden, and the
    stored (dead-lettered) payload stays the one-stop's own."""
    if not isinstance(dossier, dict):
        return dossier
    procedure = procedures.get(str(dossier.get("serviceCode") or ""))
    if not procedure:
        return dossier
    missing = {ours: procedure.get(theirs) for ours, theirs in CATALOGUE_FILL.items()
               if not dossier.get(ours) and procedure.get(theirs)}
    return {**dossier, **missing} if missing else dossier


def _older(version: int | None, acked: int | None) -> bool:
    return version is not None and acked is not None and version < acked


def _mark_sent(conn: Connection, items: list[_Item]) -> None:
    """Record, before sending, that these rows may reach the portal (a crash then means "ask first")."""
    if not items:
        return
    conn.execute(_MARK_SENT, {"b_ids": [i.outbox_id for i in items], "b_at": utcnow()})


_MARK_SENT = (update(outbox).where(outbox.c.id.in_(bindparam("b_ids", expanding=True)))
              .values(attempts=outbox.c.attempts + 1, sent_at=bindparam("b_at")))


def _send(
    store: Store,
    portal: NationalPortalClient,
    report: DeliveryReport,
    progress_mapping: Mapping,
    items: list[_Item],
    *,
    is_updating: bool,
    run_id: str,
    reroute: type[RecordRejected] | None,
    forgotten: bool = False,
) -> list[_Item]:
    """Send one batch; acknowledge accepted items, dead-letter refused ones, return the rerouted."""
    if not items:
        return []
    with answer_transactions(store, portal) as begin:
        return _send_held(portal, report, progress_mapping, items, begin, is_updating=is_updating,
                          run_id=run_id, reroute=reroute, forgotten=forgotten)


def _send_held(
    portal: NationalPortalClient,
    report: DeliveryReport,
    progress_mapping: Mapping,
    items: list[_Item],
    begin: Callable[[], AbstractContextManager[Connection]],
    *,
    is_updating: bool,
    run_id: str,
    reroute: type[RecordRejected] | None,
    forgotten: bool,
) -> list[_Item]:
    """:func:`_send`, its answer stored by a transaction of ``begin`` (with the call's exchange log)."""
    result = portal.sync_dossiers([i.record for i in items], is_updating=is_updating)
    report.calls += result.calls
    rerouted: list[_Item] = []
    accepted = set(result.accepted)
    with begin() as conn:  # the call's exchange-log rows commit with its acknowledgements
        done = [item for item in items if item.key in accepted]
        if done:
            # The batch's bookkeeping in a few statements (executemany), not several per dossier.
            _acknowledge(conn, done, run_id)
            _finish_many(conn, done, "delivered", "update" if is_updating else "insert", run_id)
            if forgotten:
                for item in done:
                    conn.execute(update(progress_outbox).where(
                        progress_outbox.c.flow == PROGRESS_FLOW, progress_outbox.c.record_key == item.key,
                        progress_outbox.c.state.in_(("acked", "in_flight"))).values(state="pending"))
            _stage_progress(conn, progress_mapping, done, run_id)
            if is_updating:
                report.delivered_update += len(done)
            else:
                report.delivered_new += len(done)
        for item in items:
            if item.key in accepted:
                continue
            refusal = result.rejected.get(item.key)
            if refusal is None:
                continue  # neither accepted nor refused: stays pending for the next run
            if reroute is not None and isinstance(refusal, reroute):
                rerouted.append(item)
                continue
            _reject(conn, report.rejected, FLOW, item.outbox_id, item.key, item.source, refusal, run_id, "peer",
                    peer_code=getattr(refusal, "peer_code", None))
    if result.unattributed:
        # The portal refused the call with a code about one dossier without saying whose (its own
        # clients send one dossier per call): nothing of it was applied, so each goes again alone
        # and gets its own answer, stored (with its exchange-log row) before the next is sent.
        unattributed = set(result.unattributed)
        alone = [item for item in items if item.key in unattributed]
        log.info("the portal refused a call of %d dossiers naming none of them (error_code of one dossier): "
                 "sending its %d unanswered dossiers one per call", len(items), len(alone))
        for item in alone:
            rerouted += _send_held(portal, report, progress_mapping, [item], begin, is_updating=is_updating,
                                   run_id=run_id, reroute=reroute, forgotten=forgotten)
    return rerouted


def _acked_since(version: int | None, acked: int | None) -> bool:
    """The acknowledgement is of this snapshot's version or a newer one (both known)."""
    return version is not None and acked is not None and acked >= version


_ACKED_VERSION = (update(delivery_state)
                  .where(delivery_state.c.peer == PEER, delivery_state.c.record_key == bindparam("b_key"))
                  .values(source_version=bindparam("b_version")))


def _acknowledge(conn: Connection, items: list[_Item], run_id: str) -> None:
    """Record the portal's acknowledgement of ``items``: one upsert on (peer, record_key) for all."""
    now = utcnow()
    rows = [{"peer": PEER, "record_key": item.key, "payload_hash": item.digest, "created_on_peer": True,
             "outbox_id": item.outbox_id, "source_version": item.version,
             "peer_status": item.record.get("TrangThaiHoSo"), "acked_at": now, "acked_run_id": run_id}
            for item in items]
    upsert_acknowledgements(conn, rows)


def _finish(conn: Connection, item: _Item, state: str, operation: str | None, run_id: str) -> None:
    conn.execute(
        update(outbox).where(outbox.c.id == item.outbox_id).values(
            state=state, operation=operation, payload_hash=item.digest, done_run_id=run_id, done_at=utcnow())
    )


_FINISH_MANY = (
    update(outbox).where(outbox.c.id == bindparam("b_id"))
    .values(state=bindparam("b_state"), operation=bindparam("b_operation"), payload_hash=bindparam("b_hash"),
            done_run_id=bindparam("b_run"), done_at=bindparam("b_at"))
)


def _finish_many(conn: Connection, items: list[_Item], state: str, operation: str | None, run_id: str) -> None:
    now = utcnow()
    execute_many(conn, _FINISH_MANY, [{"b_id": i.outbox_id, "b_state": state, "b_operation": operation,
                                       "b_hash": i.digest, "b_run": run_id, "b_at": now} for i in items])


def _reject(
    conn: Connection,
    rejections: list[dict[str, Any]],
    flow: str,
    row_id: int,
    key: str,
    source: dict[str, Any],
    exc: RecordRejected,
    run_id: str,
    stage: str,
    *,
    peer_code: str | None = None,
) -> None:
    errors = exc.error_dicts()
    table = outbox if flow == FLOW else progress_outbox
    attempts = conn.execute(select(table.c.attempts).where(table.c.id == row_id)).scalar() or 0
    Store.add_dead_letter(conn, flow=flow, record_key=key, outbox_id=row_id, run_id=run_id, stage=stage,
                          error=exc, errors=errors, source_payload=source, peer_code=peer_code, attempts=attempts)
    conn.execute(update(table).where(table.c.id == row_id).values(
        state="rejected", done_run_id=run_id, done_at=utcnow()))
    rejections.append({"record_key": key, "stage": stage, "errors": errors})
    log.warning("rejected %s %s at %s: %s", flow, key, stage, "; ".join(str(FieldError(**e)) for e in errors))


# --- 3. progress ---------------------------------------------------------------------------------
def _stage_progress(conn: Connection, progress_mapping: Mapping, items: list[_Item], run_id: str) -> None:
    """Stage the acknowledged snapshots' finished progress steps that are not staged yet, mapped.

    A step still under way is left for a later snapshot: the portal only appends, so a step sent
    before it finishes could never be corrected. Entries are mapped here, in the transaction that
    stages them, so that sending reads each once and rewrites it only to change its state. An
    entry the mapping refuses is staged unmapped (no ``occurred_at``): :func:`deliver_progress`
    dead-letters it with every broken rule. Entries staged before are not mapped again.
    """
    now = utcnow()
    candidates = []
    for item in items:
        entries = item.source.get("progress") or []
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if not isinstance(entry, dict) or not entry.get("finishedAt"):
                continue
            source = {**entry, "dossierNo": item.key}
            candidates.append((item.key, _entry_key(progress_mapping, source, item.key), entry, source))
    if not candidates:
        return
    staged: dict[str, str] = {}  # entry key -> state
    keys = sorted({c[1] for c in candidates})
    for start in range(0, len(keys), _IN_CHUNK):
        staged.update(conn.execute(_STAGED_ENTRIES, {"b_keys": keys[start:start + _IN_CHUNK]}).all())
    rows = []
    corrected: dict[str, dict[str, Any]] = {}
    for dossier_key, entry_key, entry, source in candidates:
        if staged.get(entry_key) == "rejected":
            # refused, never sent: the one-stop's newer copy of the step (a corrected actor...) is
            # what a replay maps and sends (the dead letter keeps the copy that was refused)
            corrected[entry_key] = source
        if entry_key in staged:
            continue
        staged[entry_key] = "pending"  # the same step twice in one snapshot is staged once
        try:
            record: dict[str, Any] | None = progress_mapping.apply(source)
        except RecordInvalid:
            record = None  # dead-lettered by deliver_progress, which maps it again for the errors
        rows.append({
            "flow": PROGRESS_FLOW,
            "record_key": dossier_key,
            "entry_key": entry_key,
            "step_id": entry.get("stepId") if isinstance(entry.get("stepId"), int) else -1,
            "occurred_at": "" if record is None else str(record.get("ThoiDiemXuLy", "")),
            "source_payload": source,
            "payload": record,
            "payload_hash": None if record is None else content_hash(record),
            "state": "pending",
            "attempts": 0,
            "staged_run_id": run_id,
            "staged_at": now,
        })
    insert_ignore(conn, progress_outbox, rows, "uq_progress_entry")
    for entry_key, source in corrected.items():
        conn.execute(_CORRECT_REFUSED, {"b_key": entry_key, "b_source": source})


_STAGED_ENTRIES = select(progress_outbox.c.entry_key, progress_outbox.c.state).where(
    progress_outbox.c.flow == PROGRESS_FLOW, progress_outbox.c.entry_key.in_(bindparam("b_keys", expanding=True)))
_CORRECT_REFUSED = (update(progress_outbox)
                    .where(progress_outbox.c.flow == PROGRESS_FLOW, progress_outbox.c.entry_key == bindparam("b_key"),
                           progress_outbox.c.state == "rejected")
                    .values(source_payload=bindparam("b_source")))

#: Longest progress entry key the bus database holds (``progress_outbox.entry_key`` is a VARCHAR(250)).
_ENTRY_KEY_MAX = 250


def _entry_key(progress_mapping: Mapping, entry: dict[str, Any], dossier_key: str) -> str:
    """The entry's key (``dossier#stepId``). When ``stepId`` is missing, not a number or text, too
    long or holds control characters, two different entries would share one key (and the second
    would be dropped as already staged) or the key would not fit the bus database: the key is then
    made from the entry's content, so each distinct entry is staged once, and the same one once."""
    step = entry.get("stepId")
    key = progress_mapping.record_key(entry)
    valid = (isinstance(step, (int, str)) and not isinstance(step, bool) and str(step).strip() != "")
    if valid and len(key) <= _ENTRY_KEY_MAX and key.isprintable():
        return key
    return f"{dossier_key}#<invalid stepId {content_hash(entry)[:16]}>"


def deliver_progress(
    store: Store,
    portal: NationalPortalClient,
    *,
    run_id: str,
    mapping: Mapping | None = None,
    chunk_size: int = 10,
    leases: Leases | None = None,
    report: ProgressReport | None = None,
) -> ProgressReport:
    """Send staged progress entries; see the module docstring.

    A dossier leased by another worker is left to it: its entries stay pending, and its entries in
    flight are that worker's to reconcile (``leases``: this worker's, a new set by default).
    ``report``: as for :func:`deliver_pending`.

    Raises:
        RetriableConnectorError: the portal became unreachable; the chunk in flight is
            reconciled before anything is re-sent on the next attempt.
    """
    mapping = mapping or load_mapping(PROGRESS_MAPPING)
    report = report if report is not None else ProgressReport()
    leases = leases or Leases(store, FLOW)
    try:
        _map_progress(store, mapping, report, run_id)
        _reconcile_in_flight(store, portal, report, leases)
        _send_chunks(store, portal, report, run_id, chunk_size, leases)
    finally:
        leases.release()
    log.info("progress: %d sent, %d reconciled, %d held, %d rejected in %d calls",
             report.sent, report.reconciled, report.held, len(report.rejected), report.calls)
    return report


def _send_chunks(store: Store, portal: NationalPortalClient, report: ProgressReport, run_id: str, chunk_size: int,
                 leases: Leases) -> None:
    """Send chunk after chunk. The portal's answer to one chunk, and the call's exchange-log rows,
    are written in the transaction that picks and marks the next one (one commit per chunk instead
    of three): nothing is sent before everything sent earlier is logged and its answer stored."""
    answered: tuple[list[_Entry], BatchResult] | None = None
    # Entries still in flight whose call the portal refused naming none of them (nothing of it
    # applied): sent again in smaller calls, before any new chunk is taken.
    again: list[list[_Entry]] = []
    with answer_transactions(store, portal) as begin:
        for calls in itertools.count():
            if calls % STATISTICS_EVERY == 0:
                store.keep_statistics(_PROGRESS_TABLES)
            with begin() as conn:  # also commits the last call's exchange-log rows
                settled: set[str] = set()
                if answered is not None:
                    again = _settle_chunk(conn, *answered, report, run_id, again)
                    settled = {c.record_key for c in answered[0]}
                    answered = None
                # marked in flight before it is sent
                chunk = again.pop(0) if again else _next_chunk(conn, chunk_size, report, leases)
                # the settled chunk's dossiers not in the next one nor waiting to go again: their leases go back
                leases.release(settled - {c.record_key for c in chunk}
                               - {c.record_key for part in again for c in part}, conn)
            if not chunk:
                break
            with leases.kept_while("a chunk of progress to the portal"):  # not taken over by another worker
                result = portal.update_progress([c.payload for c in chunk])
            report.calls += result.calls
            answered = (chunk, result)


def _settle_chunk(conn: Connection, chunk: list[_Entry], result: BatchResult, report: ProgressReport,
                  run_id: str, again: list[list[_Entry]] | None = None) -> list[list[_Entry]]:
    """Store the portal's answer to a chunk: accepted entries acknowledged, refused ones dead-lettered,
    the others (not applied: the portal refused another entry of the call) pending again.

    Returns the calls still to make before a new chunk is taken (``again``, the ones waiting, with
    this chunk's unattributed entries first): a call the portal refused with a code about one
    dossier but naming no entry (no ``result`` rows) applied nothing, so its entries stay in flight
    and go again one dossier per call, or one entry per call when the call held one dossier (each
    then gets its own answer, and a refused entry holds back the rest of its dossier). A dossier
    of this chunk with an entry not accepted sends none of its entries still waiting: they go back
    to pending (held behind a refused one by the next chunk)."""
    again = list(again or [])
    unattributed = [chunk[i] for i in result.unattributed]
    if unattributed:
        by_dossier: dict[str, list[_Entry]] = {}
        for c in unattributed:
            by_dossier.setdefault(c.record_key, []).append(c)
        parts = list(by_dossier.values()) if len(by_dossier) > 1 else [[c] for c in unattributed]
        log.info("the portal refused a call of %d progress entries naming none of them (error_code of one "
                 "dossier): sending them again in %d calls", len(chunk), len(parts))
        again = parts + again
    accepted = [chunk[i].id for i in result.accepted]
    if accepted:
        conn.execute(_ACKED, {"b_ids": accepted, "b_run": run_id, "b_at": utcnow()})
    report.sent += len(accepted)
    for i, refusal in result.rejected.items():
        c = chunk[i]
        source = conn.execute(select(progress_outbox.c.source_payload)
                              .where(progress_outbox.c.id == c.id)).scalar_one()
        _reject(conn, report.rejected, PROGRESS_FLOW, c.id, c.entry_key, source, refusal, run_id,
                "peer", peer_code=getattr(refusal, "peer_code", None))
    done = set(result.accepted) | set(result.rejected) | set(result.unattributed)
    leftover = [c.id for i, c in enumerate(chunk) if i not in done]
    stopped = {chunk[i].record_key for i in range(len(chunk)) if i not in result.accepted
               and i not in result.unattributed}
    if stopped:
        leftover += [c.id for part in again for c in part if c.record_key in stopped]
        again = [kept for part in again if (kept := [c for c in part if c.record_key not in stopped])]
    if leftover:
        conn.execute(_PENDING_AGAIN, {"b_ids": leftover})
    return again


_MAP_CHUNK = 2000

_SET_MAPPED = (
    update(progress_outbox).where(progress_outbox.c.id == bindparam("b_id"))
    .values(payload=bindparam("b_payload"), payload_hash=bindparam("b_hash"), occurred_at=bindparam("b_at"))
)


def _map_progress(store: Store, mapping: Mapping, report: ProgressReport, run_id: str) -> None:
    """Map the staged entries not mapped yet; an entry that cannot be mapped is dead-lettered.

    Staging maps entries already (:func:`_stage_progress`); what is left here is an entry the
    mapping refused at staging (no ``occurred_at``: it is dead-lettered now, with every broken
    rule), one staged by an older release, and one a replay reset (it keeps its ``occurred_at``,
    hence the second pass). Chunk by chunk, each in one transaction with one statement for its
    mapped entries, so that neither all entries nor a long-lived read snapshot is held.
    """
    for first_pass in (True, False):
        while True:
            query = (select(progress_outbox.c.id, progress_outbox.c.entry_key, progress_outbox.c.source_payload)
                     .where(progress_outbox.c.flow == PROGRESS_FLOW, progress_outbox.c.state == "pending",
                            progress_outbox.c.payload_hash.is_(None)))
            if first_pass:
                query = query.where(progress_outbox.c.occurred_at == "")
            with store.begin() as conn:
                chunk = conn.execute(query.limit(_MAP_CHUNK)).all()
                if not chunk:
                    break
                report.staged += len(chunk)
                mapped = []
                for row in chunk:
                    try:
                        record = mapping.apply(row.source_payload)
                    except RecordInvalid as exc:
                        _reject(conn, report.rejected, PROGRESS_FLOW, row.id, row.entry_key, row.source_payload,
                                exc, run_id, "mapping")
                        continue
                    mapped.append({"b_id": row.id, "b_payload": record, "b_hash": content_hash(record),
                                   "b_at": str(record.get("ThoiDiemXuLy", ""))})
                if mapped:
                    execute_many(conn, _SET_MAPPED, mapped)


def _reconcile_in_flight(store: Store, portal: NationalPortalClient, report: ProgressReport, leases: Leases) -> None:
    """Entries sent without an answer: ask the portal what it holds before re-sending anything.

    Only dossiers this worker can lease: entries in flight under another live worker's lease are
    being sent right now, not lost. The entries are read again once the lease is held (the worker
    that had them may have settled them and given the lease back in between). What landed is
    decided by :func:`_landed` from ``TraCuuHoSo``'s count and last entry time; the rest go back
    to pending and are sent again."""
    with store.engine.connect() as conn:
        keys = set(conn.execute(
            select(progress_outbox.c.record_key)
            .where(progress_outbox.c.flow == PROGRESS_FLOW, progress_outbox.c.state == "in_flight")
        ).scalars())
    mine = leases.ensure(keys) if keys else set()
    if not mine:
        return
    with store.engine.connect() as conn:
        in_flight: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for r in conn.execute(
            select(progress_outbox.c.id, progress_outbox.c.record_key, progress_outbox.c.occurred_at)
            .where(progress_outbox.c.flow == PROGRESS_FLOW, progress_outbox.c.state == "in_flight",
                   progress_outbox.c.record_key.in_(sorted(mine)))
            .order_by(*_ORDER)
        ):
            in_flight[r.record_key].append((r.id, r.occurred_at))
        acked = dict(conn.execute(
            select(progress_outbox.c.record_key, func.count())
            .where(progress_outbox.c.flow == PROGRESS_FLOW, progress_outbox.c.state == "acked",
                   progress_outbox.c.record_key.in_(list(in_flight)))
            .group_by(progress_outbox.c.record_key)
        ).all()) if in_flight else {}
    for key, entries in in_flight.items():
        with leases.kept_while("a progress lookup"):
            row = portal.lookup_dossier(key)
        landed = _landed(key, [at for _, at in entries], acked.get(key, 0), row)
        ids = [i for i, _ in entries]
        with store.begin() as conn:
            if landed:
                conn.execute(update(progress_outbox).where(progress_outbox.c.id.in_(ids[:landed]),
                                                           progress_outbox.c.state == "in_flight")
                             .values(state="acked", done_at=utcnow()))
            if ids[landed:]:
                conn.execute(update(progress_outbox).where(progress_outbox.c.id.in_(ids[landed:]),
                                                           progress_outbox.c.state == "in_flight")
                             .values(state="pending"))
        report.reconciled += landed


def _landed(key: str, times: list[str], acked: int, row: dict[str, Any] | None) -> int:
    """How many of a dossier's entries in flight (``times``: their ``ThoiDiemXuLy``, in send order)
    the portal's ``TraCuuHoSo`` row proves landed; the others are sent again.

    The portal appends, in time order, and other systems may append to the same dossier too
    (contract §7.4): ``SoTienDo`` minus our acknowledged entries (``new``) counts ours that landed
    (a first run of ours, since calls are made in order) plus the other systems'. Taken alone it
    marked an entry that never landed as acknowledged as soon as another system had added a step:
    it was never sent. So ``n`` entries are taken as landed only when the count allows them (n ≤
    new) and the portal's last entry (``ThoiDiemXuLyCuoi``) is at the time of the n-th one, the
    last the portal could hold (the latest of ours not later than that time, within the count).
    Otherwise none is: every one is sent again, and none can be applied twice, since ours at the
    portal's last time are then proven not landed and an earlier one is refused by the portal as
    out of order (dead-lettered with that rule, for an operator to check) rather than stored again.
    A row without a count or a last time proves nothing either.
    """
    if not row:
        return 0
    try:
        new = int(row.get("SoTienDo")) - acked
    except (TypeError, ValueError):
        log.warning("TraCuuHoSo gave no progress count for %s: re-sending its %d unanswered entries", key, len(times))
        return 0
    last = row.get("ThoiDiemXuLyCuoi")
    if new <= 0:
        return 0
    if not (isinstance(last, str) and len(last) == 14 and last.isascii() and last.isdigit()):
        log.warning("TraCuuHoSo gave no time of the last progress entry for %s (ThoiDiemXuLyCuoi %r): cannot "
                    "tell which of its %d unanswered entries landed, re-sending them", key, last, len(times))
        return 0
    n = min(new, sum(1 for at in times if at <= last))
    if n and times[n - 1] == last:
        return n
    if n:
        log.warning("TraCuuHoSo for %s: %d more progress entries than acknowledged, the last at %s, not one of "
                    "its %d unanswered entries (another system added steps): re-sending them", key, new, last,
                    len(times))
    return 0


@dataclass
class _Entry:
    id: int
    record_key: str
    entry_key: str
    payload: dict[str, Any]


# The statements of a chunk, built once (building a statement and its cache key cost more than
# running it: issue #8). The send order is the index ix_progress_send; ``blocked`` says the entry's
# dossier has an entry dead-lettered or held (none of its entries may go until that is replayed).
_ORDER = (progress_outbox.c.record_key, progress_outbox.c.occurred_at, progress_outbox.c.step_id,
          progress_outbox.c.id)
_BEHIND = progress_outbox.alias("behind")
# One EXISTS per state, each an exact (flow, state, record_key) prefix of ix_progress_send. With
# ``state IN ('rejected', 'held')`` PostgreSQL, before its first ANALYZE of a growing table (a first
# sync), probed the index on flow and record_key only and filtered the states: every probe read all
# of the flow's entries, so each chunk cost more as the table grew (24 ms per 50 entries at 4,677
# entries, against 0.3 ms this way; issue #8, ``python -m bench --postgres``).
# ``waits``: an entry of the dossier is in flight (another worker's call whose answer is not stored
# yet, or a dead worker's, which the next run reconciles) or was staged unmapped after this step
# mapped the backlog (the next run maps or dead-letters it): the dossier's other entries are left
# pending until then, not held, as sending them could put them before it.
_BLOCKED = or_(*(exists().where(_BEHIND.c.flow == PROGRESS_FLOW, _BEHIND.c.state == state,
                                 _BEHIND.c.record_key == progress_outbox.c.record_key)
                  for state in ("rejected", "held")))
_PENDING = (
    select(progress_outbox.c.id, progress_outbox.c.entry_key, *_ORDER, _BLOCKED.label("blocked"),
           or_(exists().where(_BEHIND.c.flow == PROGRESS_FLOW, _BEHIND.c.state == "in_flight",
                              _BEHIND.c.record_key == progress_outbox.c.record_key),
               exists().where(_BEHIND.c.flow == PROGRESS_FLOW, _BEHIND.c.state == "pending",
                              _BEHIND.c.record_key == progress_outbox.c.record_key,
                              _BEHIND.c.payload_hash.is_(None))).label("waits"))
    .where(progress_outbox.c.flow == PROGRESS_FLOW, progress_outbox.c.state == "pending",
           progress_outbox.c.payload_hash.is_not(None))
    .order_by(*_ORDER).limit(bindparam("b_limit"))
)
_PENDING_AFTER = _PENDING.where(tuple_(*_ORDER) > tuple_(bindparam("a_key"), bindparam("a_at"), bindparam("a_step"),
                                                         bindparam("a_id")))
# Held only if still pending and still behind a refused or held entry when the update runs: a
# replay committed since the slice was read has released the dossier, and an entry held then
# would wait with no dead letter left to replay it.
_HOLD = (update(progress_outbox)
         .where(progress_outbox.c.id.in_(bindparam("b_ids", expanding=True)), progress_outbox.c.state == "pending",
                _BLOCKED)
         .values(state="held"))
# Marks the chosen entries in flight if they are still pending, mapped and unsent, and gives their
# payloads as they are now: an entry another worker sent and acknowledged since it was read (then
# giving its lease back) is not taken, so it cannot go twice.
_TAKE = (
    update(progress_outbox)
    .where(progress_outbox.c.id.in_(bindparam("b_ids", expanding=True)), progress_outbox.c.state == "pending",
           progress_outbox.c.payload_hash.is_not(None))
    .values(state="in_flight", attempts=progress_outbox.c.attempts + 1)
    .returning(progress_outbox.c.id, progress_outbox.c.payload)
)
_ACKED = (
    update(progress_outbox).where(progress_outbox.c.id.in_(bindparam("b_ids", expanding=True)))
    .values(state="acked", done_run_id=bindparam("b_run"), done_at=bindparam("b_at"))
)
_PENDING_AGAIN = (update(progress_outbox).where(progress_outbox.c.id.in_(bindparam("b_ids", expanding=True)))
                  .values(state="pending"))


def _next_chunk(conn: Connection, chunk_size: int, report: ProgressReport, leases: Leases) -> list[_Entry]:
    """The next entries to send: dossier by dossier, each dossier's in time order, none behind a
    dead-lettered entry, none of a dossier with an entry in flight or not mapped yet.

    They are marked in flight (one more attempt) in the caller's transaction, before being sent.
    Entries are read in slices of the send order (keys only, from the ``ix_progress_send`` index),
    until the chunk is full or ``chunk_size * 5`` entries were looked at (entries of dossiers another
    worker holds are passed over). The chosen entries are then marked in flight by one statement
    that takes only those still pending and returns their payloads as they are once the dossiers
    are leased (the slice may have been read before this transaction took the write lock).
    """
    chosen: list[Any] = []
    looked_at = 0
    after: Any = None
    while len(chosen) < chunk_size and looked_at < chunk_size * 5:
        limit = min(chunk_size - len(chosen), chunk_size * 5 - looked_at)
        rows = (conn.execute(_PENDING, {"b_limit": limit}) if after is None else conn.execute(
            _PENDING_AFTER, {"b_limit": limit, "a_key": after.record_key, "a_at": after.occurred_at,
                             "a_step": after.step_id, "a_id": after.id})).all()
        if not rows:
            break
        looked_at += len(rows)
        after = rows[-1]
        mine = leases.ensure({r.record_key for r in rows if not r.blocked and not r.waits}, conn)
        held = []
        for r in rows:
            if r.blocked:
                held.append(r.id)
            elif r.record_key in mine and not r.waits:  # else another worker's dossier: it waits for it
                chosen.append(r)
        if held:
            report.held += conn.execute(_HOLD, {"b_ids": held}).rowcount
    if not chosen:
        return []
    payloads = dict(conn.execute(_TAKE, {"b_ids": [r.id for r in chosen]}).all())
    return [_Entry(r.id, r.record_key, r.entry_key, payloads[r.id]) for r in chosen if r.id in payloads]


# --- replay --------------------------------------------------------------------------------------
@dataclass
class ReplayResult:
    dead_letters: list[int] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)


def replay(store: Store, *, dead_letter_ids: list[int] | None = None, record_key: str | None = None,
           flow: str | None = None, by: str = "operator") -> ReplayResult:
    """Resolve dead letters and put their records back in line, to be delivered once.

    For a dossier, its newest held, refused or pending snapshot goes back to pending (re-mapped
    with the current mapping file), the others held behind it are superseded; for a progress
    entry, the entry and the entries held behind it go back to pending.
    Select by dead-letter ids, by record key (a dossier code selects its progress steps' too), or
    every unresolved dead letter of a flow.
    """
    result = ReplayResult()
    query = _letters(dead_letter_ids, record_key, flow)
    with store.begin() as conn:
        # locked, then resolved: a second replay at once waits and finds none of them (requeued once)
        letters = resolve_dead_letters(conn, query, f"replayed by {by}")
        result.dead_letters.extend(lt.id for lt in letters)
        for key in sorted({lt.record_key for lt in letters if lt.flow == FLOW}):
            # a newer snapshot staged meanwhile (pending) is the one to deliver: the refused one
            # put back beside it went in the same call, and the portal refused both as a dossier
            # given twice
            if _release_newest_snapshot(conn, key, ("held", "rejected", "pending")):
                result.requeued.append(key)
        for entry_key in sorted({lt.record_key for lt in letters if lt.flow == PROGRESS_FLOW}):
            dossier = conn.execute(select(progress_outbox.c.record_key).where(
                progress_outbox.c.flow == PROGRESS_FLOW, progress_outbox.c.entry_key == entry_key)).scalar()
            conn.execute(update(progress_outbox).where(
                progress_outbox.c.flow == PROGRESS_FLOW, progress_outbox.c.entry_key == entry_key)
                .values(state="pending", payload=None, payload_hash=None))
            if dossier is not None:
                conn.execute(update(progress_outbox).where(
                    progress_outbox.c.flow == PROGRESS_FLOW, progress_outbox.c.record_key == dossier,
                    progress_outbox.c.state == "held").values(state="pending"))
            result.requeued.append(entry_key)
    return result


def _release_newest_snapshot(conn: Any, key: str, states: tuple[str, ...]) -> bool:
    """Put dossier ``key``'s newest snapshot in ``states`` back to pending and supersede the others
    held behind it (what :func:`replay` and :func:`discard` release); False when there is none."""
    newest = conn.execute(
        select(outbox.c.id).where(outbox.c.flow == FLOW, outbox.c.record_key == key, outbox.c.state.in_(states))
        .order_by(outbox.c.source_version.desc().nulls_last(), outbox.c.source_seq.desc(), outbox.c.id.desc())
        .limit(1)
    ).scalar()
    if newest is None:
        return False
    conn.execute(update(outbox).where(outbox.c.id == newest).values(state="pending"))
    conn.execute(update(outbox).where(outbox.c.flow == FLOW, outbox.c.record_key == key, outbox.c.state == "held",
                                      outbox.c.id != newest).values(state="superseded"))
    return True


def _letters(dead_letter_ids: list[int] | None, record_key: str | None, flow: str | None) -> Any:
    """The unresolved dossier and progress dead letters selected by ids, by record key (a dossier
    code selects its progress steps' too), or of a flow."""
    query = select(dead_letter).where(dead_letter.c.resolved_at.is_(None),
                                      dead_letter.c.flow.in_((FLOW, PROGRESS_FLOW)))
    if dead_letter_ids:
        query = query.where(dead_letter.c.id.in_(dead_letter_ids))
    if record_key:
        # a dossier code also names its progress steps' dead letters (keyed ``<code>#<stepId>``):
        # they are what holds the dossier's later steps back
        query = query.where(or_(dead_letter.c.record_key == record_key,
                                (dead_letter.c.flow == PROGRESS_FLOW)
                                & dead_letter.c.record_key.startswith(f"{record_key}#", autoescape=True)))
    if flow:
        query = query.where(dead_letter.c.flow == flow)
    return query


def discard(store: Store, *, reason: str, by: str, dead_letter_ids: list[int] | None = None,
            record_key: str | None = None) -> ReplayResult:
    """Resolve dead letters WITHOUT sending their records again ("discarded by <by>: <reason>"),
    and release what they held back as :func:`replay` does.

    For when the record reached the portal anyway (a progress entry refused as out of time order
    that had in fact landed) or was delivered by other means. The refused record is marked
    ``discarded`` and never sent: a progress entry is not staged again either; a dossier snapshot
    is not resent, its newest held or pending later snapshot goes back to pending (the others held
    behind it superseded) and the dossier's next change goes normally. A progress entry's later
    entries held behind it go back to pending (held again if another of the dossier's entries is
    still refused). Select by dead-letter ids or by record key (a dossier code selects its
    progress steps' too). ``requeued`` names the dossiers and dossiers' entries released."""
    if not reason.strip():
        raise ValueError("a discard needs a reason")
    if not (dead_letter_ids or record_key):
        raise ValueError("say which dead letters to discard: ids or a record key")
    result = ReplayResult()
    with store.begin() as conn:
        # locked, then resolved: a replay or discard at once waits and finds none of them
        letters = resolve_dead_letters(conn, _letters(dead_letter_ids, record_key, None),
                                       f"discarded by {by}: {reason.strip()}")
        result.dead_letters.extend(lt.id for lt in letters)
        now = utcnow()
        for lt in letters:
            if lt.outbox_id is None:
                continue
            table = outbox if lt.flow == FLOW else progress_outbox
            conn.execute(update(table).where(table.c.id == lt.outbox_id, table.c.state == "rejected")
                         .values(state="discarded", done_at=now))
        for key in sorted({lt.record_key for lt in letters if lt.flow == FLOW}):
            # what it held back, as replay releases it (the refused snapshot itself is discarded)
            if _release_newest_snapshot(conn, key, ("held", "pending")):
                result.requeued.append(key)
        dossiers = set()
        for lt in letters:
            if lt.flow == PROGRESS_FLOW and lt.outbox_id is not None:
                dossiers.update(conn.execute(select(progress_outbox.c.record_key).where(
                    progress_outbox.c.id == lt.outbox_id)).scalars())
        for dossier in sorted(dossiers):
            released = conn.execute(update(progress_outbox).where(
                progress_outbox.c.flow == PROGRESS_FLOW, progress_outbox.c.record_key == dossier,
                progress_outbox.c.state == "held").values(state="pending")).rowcount
            if released:
                result.requeued.append(dossier)
    return result
