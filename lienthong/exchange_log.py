"""The exchange log: one row per HTTP attempt, written by the transport layer (design §4.4).

Connectors hand each :class:`~connectors.transport.Exchange` to a recorder; the recorder here
binds the correlation keys of the run (flow, Airflow run id, task id) and writes the row, with
its record keys (dossier codes...) in a side table so an auditor can search by them. Bodies are
already redacted by the transport; they are stored zlib-compressed with the SHA-256 and size of
the redacted bytes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from connectors.transport import Exchange
from lienthong.store import Store, exchange_key, exchange_log

__all__ = ["BusRecorder", "exchanges_for_key", "read_body"]


@dataclass
class BusRecorder:
    """Writes exchanges to the bus database, each in its own transaction, before the caller
    sees the answer.

    Attributes:
        store: the bus database.
        flow: the flow the exchanges belong to (``dossier_status``...).
        run_id: the Airflow run id (or a CLI run id).
        task_id: the Airflow task id, when inside a task.
    """

    store: Store
    flow: str
    run_id: str | None = None
    task_id: str | None = None

    def record(self, exchange: Exchange) -> None:
        row: dict[str, Any] = {
            "started_at": exchange.started_at,
            "flow": self.flow,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "peer": exchange.peer,
            "operation": exchange.operation,
            "direction": exchange.direction,
            "method": exchange.method,
            "url": exchange.url,
            "attempt": exchange.attempt,
            "outcome": exchange.outcome,
            "peer_code": exchange.peer_code,
            "http_status": exchange.response_status,
            "duration_ms": exchange.duration_ms,
            "record_count": len(exchange.record_keys),
            "request_headers": exchange.request_headers,
            "request_body": zlib.compress(exchange.request_body),
            "request_sha256": Exchange.digest(exchange.request_body),
            "request_size": len(exchange.request_body),
            "response_headers": exchange.response_headers,
            "response_body": zlib.compress(exchange.response_body),
            "response_sha256": Exchange.digest(exchange.response_body),
            "response_size": len(exchange.response_body),
            "error": exchange.error,
        }
        with self.store.begin() as conn:
            exchange_id = conn.execute(exchange_log.insert().values(**row)).inserted_primary_key[0]
            keys = sorted(set(exchange.record_keys))
            if keys:
                conn.execute(exchange_key.insert(), [{"exchange_id": exchange_id, "record_key": k} for k in keys])


def read_body(blob: bytes) -> bytes:
    """The stored (redacted) body bytes of an exchange."""
    return zlib.decompress(blob)


def exchanges_for_key(store: Store, record_key: str) -> list[dict[str, Any]]:
    """Every exchange that carried ``record_key``, oldest first (bodies left compressed)."""
    query = (
        select(exchange_log)
        .join(exchange_key, exchange_key.c.exchange_id == exchange_log.c.id)
        .where(exchange_key.c.record_key == record_key)
        .order_by(exchange_log.c.id)
    )
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def count_exchanges(store: Store, run_id: str | None = None) -> int:
    query = select(func.count()).select_from(exchange_log)
    if run_id:
        query = query.where(exchange_log.c.run_id == run_id)
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())
