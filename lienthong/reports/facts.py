"""Dossier facts: what the KPI reports count, kept by the bus from the snapshots it stages.

Every one-stop snapshot the dossier flow stages stays in the outbox (``source_payload``). The KPI
reports need, per dossier, only its newest snapshot's agency, procedure, channel, status and dates;
:func:`refresh_dossier_facts` reads the outbox rows staged since its last call (a bookmark in
``sync_cursor``, moved in the same transaction as the facts it covers; never past a row a stager
still in flight may commit below) and keeps one
``dossier_fact`` row per dossier, newest version wins. The sync flows are not touched: a report
catches up with whatever was staged, and a rerun changes nothing.

:func:`record_dossier_facts` is the same upsert for a connection and a list of staged rows, for a
flow that prefers to keep the facts as it stages (one call after ``insert_ignore``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.engine import Connection

from lienthong.store import Store, dialect_insert, dossier_fact, outbox, utcnow

__all__ = ["FACTS_CURSOR", "fact_of", "parse_instant", "record_dossier_facts", "refresh_dossier_facts"]

log = logging.getLogger(__name__)

#: the bookmark (``sync_cursor.flow``) of the last outbox row turned into facts
FACTS_CURSOR = "report_dossier_facts"
DOSSIER_FLOW = "dossier_status"  # lienthong.flows.dossier_status.FLOW (not imported: no cycle)


def parse_instant(value: Any) -> datetime | None:
    """An ISO 8601 date-time with offset as aware UTC; ``None`` for anything else."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.astimezone(UTC)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value != "" else None


def _code(snapshot: dict[str, Any], name: str, column: str) -> str | None:
    """A code of the snapshot that fits its ``dossier_fact`` column, else ``None`` (logged): the
    outbox holds snapshots as they came, and one over-long value failed every refresh on
    PostgreSQL, the bookmark stuck before it."""
    value = _text(snapshot.get(name))
    limit = dossier_fact.c[column].type.length
    if value is not None and limit is not None and len(value) > limit:
        log.warning("dossier facts: %s: %s longer than %d characters (%d), left out of the facts",
                    str(snapshot.get("dossierNo"))[:200], name, limit, len(value))
        return None
    return value


def fact_of(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The ``dossier_fact`` columns of one one-stop snapshot (docs/wire/onestop.md)."""
    progress = snapshot.get("progress")
    version = snapshot.get("version")
    return {
        "agency_code": _code(snapshot, "govAgencyCode", "agency_code"),
        "agency_name": _text(snapshot.get("govAgencyName")),
        "procedure_code": _code(snapshot, "serviceCode", "procedure_code"),
        "channel": _code(snapshot, "submissionChannel", "channel"),
        "status": _code(snapshot, "dossierStatus", "status"),
        "submitted_at": parse_instant(snapshot.get("submitDate")),
        "received_at": parse_instant(snapshot.get("receiveDate")),
        "due_at": parse_instant(snapshot.get("dueDate")),
        "finished_at": parse_instant(snapshot.get("finishDate")),
        "released_at": parse_instant(snapshot.get("releaseDate")),
        "modified_at": parse_instant(snapshot.get("modifiedAt")),
        "progress_count": len(progress) if isinstance(progress, list) else 0,
        "source_version": version if isinstance(version, int) and not isinstance(version, bool) else None,
    }


def _newer(version: int | None, stored: int | None) -> bool:
    if stored is None:
        return True
    return version is not None and version > stored


def record_dossier_facts(conn: Connection, rows: Iterable[dict[str, Any]]) -> int:
    """Upsert the facts of staged outbox rows (``record_key``, ``source_payload``, optional ``id``)
    in one ``INSERT ... ON CONFLICT`` (safe to run twice at once); an older version never
    overwrites a newer one. Returns how many facts changed."""
    newest: dict[str, tuple[dict[str, Any], int | None]] = {}
    for row in rows:
        payload = row.get("source_payload")
        key = row.get("record_key")
        if not isinstance(payload, dict) or not key or str(key).startswith("<"):
            continue
        fact = fact_of(payload)
        held = newest.get(key)
        if held is None or _newer(fact["source_version"], held[0]["source_version"]) or \
                fact["source_version"] == held[0]["source_version"]:
            newest[key] = (fact, row.get("id"))
    if not newest:
        return 0
    # one upsert, never read-then-insert: two refreshes at once (the DAG's task and the CLI) both
    # found a fact missing and the second failed on the key; the newer version wins in the
    # database, under the row's lock, whichever commits first. Keys in order: two batches lock
    # the same rows in the same order.
    now = utcnow()
    values = [{"dossier_no": key, **fact, "outbox_id": outbox_id, "updated_at": now}
              for key, (fact, outbox_id) in sorted(newest.items())]
    stmt = dialect_insert(conn, dossier_fact)
    stmt = stmt.on_conflict_do_update(
        index_elements=[dossier_fact.c.dossier_no],
        set_={name: stmt.excluded[name] for name in values[0] if name != "dossier_no"},
        where=or_(dossier_fact.c.source_version.is_(None),
                  stmt.excluded.source_version > dossier_fact.c.source_version))  # as _newer
    return len(conn.execute(stmt.returning(dossier_fact.c.dossier_no), values).all())


def refresh_dossier_facts(store: Store, *, batch_size: int = 2000, run_id: str | None = None) -> int:
    """Bring ``dossier_fact`` level with the outbox rows committed when the call starts (later
    ones wait for the next call); returns how many facts changed."""
    changed = 0
    # Never past an id a stager still in flight may commit below (the DAG and a backfill at once,
    # on PostgreSQL): the bookmark would pass its rows for good.
    settled = store.settled_max_id(outbox)
    while settled is not None:
        last = int(store.get_cursor(FACTS_CURSOR) or 0)
        with store.begin() as conn:
            rows = conn.execute(
                select(outbox.c.id, outbox.c.record_key, outbox.c.source_payload)
                .where(outbox.c.flow == DOSSIER_FLOW, outbox.c.id > last, outbox.c.id <= settled)
                .order_by(outbox.c.id).limit(batch_size)
            ).mappings().all()
            if not rows:
                break
            changed += record_dossier_facts(conn, [dict(r) for r in rows])
            Store.set_cursor(conn, FACTS_CURSOR, str(rows[-1]["id"]), run_id)
    log.info("dossier facts: %d changed", changed)
    return changed
