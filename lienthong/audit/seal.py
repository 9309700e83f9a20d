"""Seal the exchange log: signed, chained Merkle roots over batches of records, in id order.

Each call seals what exists when it starts (records up to the highest id committed then), in
batches of at most ``batch_size`` records (X-Road's time-stamping batch limit is 10,000), one
transaction per seal. Two sealers at once neither leave a gap nor seal a record twice:

* the transaction first takes the database's write lock (SQLite ``BEGIN IMMEDIATE``;
  PostgreSQL ``LOCK TABLE exchange_log IN SHARE ROW EXCLUSIVE MODE``, which also waits for
  exchange-log inserts still in flight, so no uncommitted lower id can appear later inside a
  sealed range), then reads the head seal and the records after it;
* and whatever the database, ``exchange_seal`` has unique ``seq``, ``first_id``, ``last_id`` and
  ``prev_hash``, and ``exchange_seal_leaf`` has one row per record: a sealer that lost a race
  gets an integrity error, rolls back and retries from the new head.

The private key is used for signing only; the database gets its fingerprint and signatures.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from lienthong.audit.keys import key_fingerprint, load_private_key
from lienthong.audit.records import GENESIS, load_records, merkle_root, seal_body
from lienthong.store import (
    Store,
    exchange_log,
    exchange_seal,
    exchange_seal_leaf,
    utcnow,
)

__all__ = ["DEFAULT_BATCH_SIZE", "SealResult", "seal_exchanges"]

DEFAULT_BATCH_SIZE = 10_000
RETRIES = 10


@dataclass
class SealResult:
    """What one call sealed: the new seals (as stored, without key material) and the records."""

    seals: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0

    @property
    def head(self) -> dict[str, Any] | None:
        return self.seals[-1] if self.seals else None


def _lock(conn: Connection) -> None:
    dialect = conn.dialect.name
    if dialect == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif dialect == "postgresql":
        conn.exec_driver_sql("LOCK TABLE exchange_log IN SHARE ROW EXCLUSIVE MODE")


def _seal_one(conn: Connection, key: Ed25519PrivateKey, fingerprint: str, up_to_id: int,
              batch_size: int) -> dict[str, Any] | None:
    head = conn.execute(select(exchange_seal).order_by(exchange_seal.c.seq.desc()).limit(1)).mappings().first()
    after_id = head["last_id"] if head else 0
    records = load_records(conn, after_id, up_to_id, limit=batch_size)
    if not records:
        return None
    seal: dict[str, Any] = {
        "seq": head["seq"] + 1 if head else 1,
        "first_id": records[0][0],
        "last_id": records[-1][0],
        "count": len(records),
        "root": merkle_root([leaf for _, leaf in records]),
        "prev_hash": head["seal_hash"] if head else GENESIS,
        "key_fingerprint": fingerprint,
        "sealed_at": utcnow(),
    }
    body = seal_body(seal)
    seal["seal_hash"] = hashlib.sha256(body).hexdigest()
    seal["signature"] = key.sign(body).hex()
    conn.execute(exchange_seal.insert().values(**seal))
    conn.execute(exchange_seal_leaf.insert(),
                 [{"exchange_id": i, "seal_seq": seal["seq"], "leaf_hash": leaf} for i, leaf in records])
    return seal


def seal_exchanges(store: Store, key: Ed25519PrivateKey | str | os.PathLike[str] | None = None, *,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> SealResult:
    """Seal every exchange-log record committed when the call starts and not sealed yet.

    Args:
        store: the bus database (its schema must exist).
        key: the Ed25519 private key, or the path of its PEM file; default ``$LIENTHONG_SEAL_KEY``.
        batch_size: at most this many records per seal.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if not isinstance(key, Ed25519PrivateKey):
        key = load_private_key(key)
    fingerprint = key_fingerprint(key)
    with store.engine.connect() as conn:
        up_to_id = conn.execute(select(func.max(exchange_log.c.id))).scalar()
    result = SealResult()
    if up_to_id is None:
        return result
    conflicts = 0
    while True:
        with store.engine.connect() as conn:
            try:
                _lock(conn)
                seal = _seal_one(conn, key, fingerprint, up_to_id, batch_size)
                conn.commit()
            except IntegrityError:  # another sealer took this seq or these records first
                conn.rollback()
                conflicts += 1
                if conflicts > RETRIES:
                    raise
                continue
        if seal is None:
            return result
        result.seals.append(seal)
        result.records += seal["count"]
