"""Dossier status sync: one-stop system → national portal (``DongBoHoSoMC``).

Two steps, each safe to rerun after a crash at any point:

1. :func:`stage_changes` reads the one-stop change feed from the stored cursor and stages every
   event in the outbox. The cursor advances in the same transaction as the rows it covers
   (nothing is lost), and an event already staged is ignored (nothing is staged twice). A newer
   event for a dossier supersedes its older pending one: the portal takes full snapshots.
2. :func:`deliver_pending` maps each pending dossier with the mapping file, skips it when the
   portal already acknowledged exactly this payload (nothing is sent twice), and sends the rest in
   batches — as inserts when the portal has never acknowledged the dossier, as updates otherwise.
   A duplicate-insert answer turns into an update, an unknown-dossier answer into an insert.
   Records that cannot be mapped or that the portal refuses are dead-lettered with their
   original payload and reasons; the others go on.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from connectors.errors import FieldError, RecordRejected
from connectors.national_portal.client import DossierAlreadyExists, DossierUnknown, NationalPortalClient
from connectors.one_stop.client import OneStopClient
from lienthong.mapping import Mapping, RecordInvalid, load_mapping
from lienthong.store import Store, canonical_json, delivery_state, outbox, utcnow

__all__ = ["DeliveryReport", "FLOW", "MAPPING", "PEER", "StageReport", "deliver_pending", "stage_changes"]

log = logging.getLogger(__name__)

FLOW = "dossier_status"
PEER = "national_portal"
MAPPING = "onestop__national_portal/dossier"


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
    rejected: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0

    def counts(self) -> dict[str, Any]:
        return {"considered": self.considered, "delivered_new": self.delivered_new,
                "delivered_update": self.delivered_update, "unchanged": self.unchanged,
                "rejected": len(self.rejected), "rejections": self.rejected, "portal_calls": self.calls}


def _insert_ignore(conn: Connection, rows: list[dict[str, Any]]) -> int:
    """Insert outbox rows, ignoring events already staged; return how many were new."""
    if not rows:
        return 0
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(outbox).on_conflict_do_nothing(constraint="uq_outbox_event")
    else:
        stmt = sqlite_insert(outbox).on_conflict_do_nothing()
    return conn.execute(stmt, rows).rowcount


def stage_changes(store: Store, onestop: OneStopClient, *, run_id: str) -> StageReport:
    """Stage every one-stop change after the stored cursor; see the module docstring."""
    report = StageReport(cursor_from=store.get_cursor(FLOW))
    report.cursor_to = report.cursor_from
    for page in onestop.iter_changes(report.cursor_from):
        report.pages += 1
        report.events_read += len(page.events)
        now = utcnow()
        rows = [
            {
                "flow": FLOW,
                "record_key": e.dossier_no or f"<no dossierNo, seq {e.seq}>",
                "source_seq": e.seq,
                "source_version": e.dossier.get("version"),
                "source_payload": e.dossier,
                "state": "pending",
                "attempts": 0,
                "staged_run_id": run_id,
                "staged_at": now,
            }
            for e in page.events
        ]
        with store.begin() as conn:
            new = _insert_ignore(conn, rows)
            report.staged += new
            report.already_staged += len(rows) - new
            # Full snapshots: only the newest pending event of a dossier needs delivering.
            for key in {r["record_key"] for r in rows}:
                newest = conn.execute(
                    select(outbox.c.source_seq).where(outbox.c.flow == FLOW, outbox.c.record_key == key,
                                                      outbox.c.state == "pending")
                    .order_by(outbox.c.source_seq.desc()).limit(1)
                ).scalar()
                report.superseded += conn.execute(
                    update(outbox)
                    .where(outbox.c.flow == FLOW, outbox.c.record_key == key, outbox.c.state == "pending",
                           outbox.c.source_seq < newest)
                    .values(state="superseded", done_run_id=run_id, done_at=now)
                ).rowcount
            Store.set_cursor(conn, FLOW, page.next_cursor, run_id)
        report.cursor_to = page.next_cursor
    log.info("staged %d new events (%d already staged, %d superseded) from %d pages; cursor %s → %s",
             report.staged, report.already_staged, report.superseded, report.pages,
             report.cursor_from, report.cursor_to)
    return report


def payload_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(record)).hexdigest()


def _errors_of(exc: RecordRejected) -> list[dict[str, str]]:
    return [{"field": e.field, "rule": e.rule, "message": e.message} for e in exc.errors]


@dataclass
class _Item:
    outbox_id: int
    key: str
    source: dict[str, Any]
    record: dict[str, Any]
    digest: str


def deliver_pending(
    store: Store,
    portal: NationalPortalClient,
    *,
    run_id: str,
    mapping: Mapping | None = None,
    batch_size: int = 50,
) -> DeliveryReport:
    """Map and deliver every pending dossier; see the module docstring.

    Raises:
        RetriableConnectorError: the portal became unreachable; rows not yet acknowledged stay
            pending and the next attempt continues from them.
    """
    mapping = mapping or load_mapping(MAPPING)
    report = DeliveryReport()
    last_id = 0
    while True:
        with store.engine.connect() as conn:
            rows = conn.execute(
                select(outbox.c.id, outbox.c.record_key, outbox.c.source_payload)
                .where(outbox.c.flow == FLOW, outbox.c.state == "pending", outbox.c.id > last_id)
                .order_by(outbox.c.id).limit(batch_size)
            ).all()
            if not rows:
                break
            last_id = rows[-1].id
            acks = {
                r.record_key: r
                for r in conn.execute(
                    select(delivery_state).where(
                        delivery_state.c.peer == PEER,
                        delivery_state.c.record_key.in_([r.record_key for r in rows]),
                    )
                )
            }
        report.considered += len(rows)
        inserts: list[_Item] = []
        updates: list[_Item] = []
        with store.begin() as conn:
            for row in rows:
                try:
                    record = mapping.apply(row.source_payload)
                except RecordInvalid as exc:
                    _reject(conn, report, row.id, row.record_key, row.source_payload, exc, run_id, "mapping")
                    continue
                item = _Item(row.id, row.record_key, row.source_payload, record, payload_hash(record))
                ack = acks.get(row.record_key)
                if ack is not None and ack.payload_hash == item.digest:
                    _finish(conn, item, "unchanged", None, run_id)
                    report.unchanged += 1
                elif ack is not None and ack.created_on_peer:
                    updates.append(item)
                else:
                    inserts.append(item)
        retry_as_update = _send(store, portal, report, inserts, is_updating=False, run_id=run_id,
                                reroute=DossierAlreadyExists)
        retry_as_insert = _send(store, portal, report, updates + retry_as_update, is_updating=True,
                                run_id=run_id, reroute=DossierUnknown)
        leftover = _send(store, portal, report, retry_as_insert, is_updating=False, run_id=run_id, reroute=None)
        assert not leftover
    log.info("delivered %d new, %d updates, %d unchanged, %d rejected in %d portal calls",
             report.delivered_new, report.delivered_update, report.unchanged, len(report.rejected), report.calls)
    return report


def _send(
    store: Store,
    portal: NationalPortalClient,
    report: DeliveryReport,
    items: list[_Item],
    *,
    is_updating: bool,
    run_id: str,
    reroute: type[RecordRejected] | None,
) -> list[_Item]:
    """Send one batch; acknowledge accepted items, dead-letter refused ones, return the rerouted."""
    if not items:
        return []
    result = portal.sync_dossiers([i.record for i in items], is_updating=is_updating)
    report.calls += result.calls
    rerouted: list[_Item] = []
    accepted = set(result.accepted)
    with store.begin() as conn:
        for item in items:
            if item.key in accepted:
                _acknowledge(conn, item, run_id)
                _finish(conn, item, "delivered", "update" if is_updating else "insert", run_id)
                if is_updating:
                    report.delivered_update += 1
                else:
                    report.delivered_new += 1
                continue
            refusal = result.rejected.get(item.key)
            if refusal is None:
                # The portal neither accepted nor refused it: keep it pending for the next run.
                continue
            if reroute is not None and isinstance(refusal, reroute):
                rerouted.append(item)
                continue
            _reject(conn, report, item.outbox_id, item.key, item.source, refusal, run_id, "peer",
                    peer_code=getattr(refusal, "peer_code", None))
    return rerouted


def _acknowledge(conn: Connection, item: _Item, run_id: str) -> None:
    values = {"payload_hash": item.digest, "created_on_peer": True, "outbox_id": item.outbox_id,
              "acked_at": utcnow(), "acked_run_id": run_id}
    updated = conn.execute(
        update(delivery_state)
        .where(and_(delivery_state.c.peer == PEER, delivery_state.c.record_key == item.key))
        .values(**values)
    ).rowcount
    if not updated:
        conn.execute(delivery_state.insert().values(peer=PEER, record_key=item.key, **values))


def _finish(conn: Connection, item: _Item, state: str, operation: str | None, run_id: str) -> None:
    conn.execute(
        update(outbox).where(outbox.c.id == item.outbox_id).values(
            state=state, operation=operation, payload_hash=item.digest, done_run_id=run_id, done_at=utcnow(),
            attempts=outbox.c.attempts + 1,
        )
    )


def _reject(
    conn: Connection,
    report: DeliveryReport,
    outbox_id: int,
    key: str,
    source: dict[str, Any],
    exc: RecordRejected,
    run_id: str,
    stage: str,
    *,
    peer_code: str | None = None,
) -> None:
    errors = _errors_of(exc)
    Store.add_dead_letter(conn, flow=FLOW, record_key=key, outbox_id=outbox_id, run_id=run_id, stage=stage,
                          error=exc, errors=errors, source_payload=source, peer_code=peer_code)
    conn.execute(
        update(outbox).where(outbox.c.id == outbox_id).values(
            state="rejected", last_error=str(exc), done_run_id=run_id, done_at=utcnow(),
            attempts=outbox.c.attempts + 1,
        )
    )
    report.rejected.append({"record_key": key, "stage": stage, "errors": errors})
    log.warning("rejected dossier %s at %s: %s", key, stage, "; ".join(str(FieldError(**e)) for e in errors))
