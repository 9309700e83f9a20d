"""Per-record leases: at most one worker handles a given record of a flow at a time.

When several Airflow workers (CeleryExecutor) deliver the same flow at once, each one leases the
records (dossier codes) it is about to send before it touches them, and gives them back when the
batch is done. A record leased by another live worker is skipped — it stays pending for that
worker or a later run — so the order of one dossier's snapshots and progress entries is kept
without any global lock, and nothing is sent twice by two workers. A lease expires (``ttl``), so a
worker killed mid-batch never blocks a record for good: the next worker takes the lease over (at
once when the dead worker ran on the same host, whose process table says it is gone) and,
because the record was marked "sent without an answer" before sending, asks the peer what landed
before it sends anything again.

Works the same on SQLite (one writer at a time) and PostgreSQL (``INSERT … ON CONFLICT DO
NOTHING`` and a conditional ``UPDATE`` whose condition PostgreSQL re-checks under the row lock, so
two workers can never both take over an expired lease).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, or_, select, update
from sqlalchemy.engine import Connection

from lienthong.store import Store, built_once, delivery_lease, dialect_insert, utcnow

__all__ = ["Leases", "default_ttl", "worker_name"]

_log = logging.getLogger(__name__)

_IN_CHUNK = 500


def default_ttl() -> timedelta:
    """``LIENTHONG_LEASE_SECONDS`` (default 600): how long a lease outlives a worker that died."""
    return timedelta(seconds=float(os.environ.get("LIENTHONG_LEASE_SECONDS", "600")))


def _died_here(worker: str) -> bool:
    """A worker of this host whose process is gone (killed mid-batch): its leases need not wait for
    their expiry. Workers of other hosts cannot be checked from here; theirs expire."""
    host, _, rest = worker.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def worker_name() -> str:
    """host:pid:random — unique per process, readable in the lease table."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


_RELEASE = delete(delivery_lease).where(
    delivery_lease.c.flow == bindparam("b_flow"), delivery_lease.c.record_key.in_(bindparam("b_keys", expanding=True)),
    delivery_lease.c.worker == bindparam("b_worker"))


def _insert_new(conn: Connection, rows: list[dict[str, object]]) -> set[str]:
    """Insert the leases no one holds (ignoring those that exist); the record keys inserted."""
    stmt = built_once(("lease_insert_new", conn.dialect.name), lambda: dialect_insert(conn, delivery_lease)
                      .on_conflict_do_nothing().returning(delivery_lease.c.record_key))
    return set(conn.execute(stmt, rows).scalars())


@dataclass
class Leases:
    """Leases of one flow's records held by this worker.

    Args:
        store: the bus database.
        flow: whose records (leases of different flows never collide).
        worker: this worker's name (default: :func:`worker_name`).
        ttl: how long a lease lasts without being renewed; longer than one batch can take.
    """

    store: Store
    flow: str
    worker: str = field(default_factory=worker_name)
    ttl: timedelta = field(default_factory=default_ttl)
    held: set[str] = field(default_factory=set)
    renewed_at: datetime | None = None

    def ensure(self, keys: Iterable[str], conn: Connection | None = None) -> set[str]:
        """The keys of ``keys`` this worker holds, leasing the ones it does not hold yet (and
        renewing every lease it holds once half their life has passed)."""
        keys = set(keys)
        if self.renewed_at is not None and utcnow() - self.renewed_at > self.ttl / 2:
            self.acquire(self.held | keys, conn)
        elif keys - self.held:
            self.acquire(keys - self.held, conn)
        return keys & self.held

    def acquire(self, keys: Iterable[str], conn: Connection | None = None) -> set[str]:
        """Lease what can be leased of ``keys`` (in ``conn``'s transaction when given); returns the
        keys of ``keys`` this worker now holds."""
        wanted = sorted(set(keys))
        if not wanted:
            return set()
        if conn is None:
            with self.store.begin() as own:
                return self.acquire(wanted, own)
        now = utcnow()
        until = now + self.ttl
        got: set[str] = set()
        for start in range(0, len(wanted), _IN_CHUNK):
            part = wanted[start:start + _IN_CHUNK]
            # Keys nobody held are ours as soon as inserted (the usual case in a sync: one statement);
            # only the others need the checks below.
            fresh = _insert_new(conn, [
                {"flow": self.flow, "record_key": k, "worker": self.worker, "expires_at": until} for k in part])
            got |= fresh
            part = [k for k in part if k not in fresh]
            if not part:
                continue
            others = set(conn.execute(select(delivery_lease.c.worker).where(
                delivery_lease.c.flow == self.flow, delivery_lease.c.record_key.in_(part),
                delivery_lease.c.worker != self.worker, delivery_lease.c.expires_at >= now)).scalars())
            dead = sorted(w for w in others if _died_here(w))
            conn.execute(update(delivery_lease).where(
                delivery_lease.c.flow == self.flow, delivery_lease.c.record_key.in_(part),
                or_(delivery_lease.c.worker == self.worker, delivery_lease.c.expires_at < now,
                    delivery_lease.c.worker.in_(dead)),
            ).values(worker=self.worker, expires_at=until))
            got |= set(conn.execute(select(delivery_lease.c.record_key).where(
                delivery_lease.c.flow == self.flow, delivery_lease.c.record_key.in_(part),
                delivery_lease.c.worker == self.worker)).scalars())
        full_renewal = self.renewed_at is None or set(wanted) >= self.held
        # a key asked for and not got is not held, even if it was: another worker took the lease
        # over once it expired (a batch that outlived it), and the record is that worker's now
        self.held = (self.held - set(wanted)) | got
        self.renewed_at = now if full_renewal else self.renewed_at
        return got

    def release(self, keys: Iterable[str] | None = None, conn: Connection | None = None) -> None:
        """Give leases back (all this worker holds when ``keys`` is None), in ``conn``'s
        transaction when given. A worker gives back the leases of the records it has settled as it
        goes, so what it holds (in memory, and what a renewal re-leases) stays one batch, not every
        record of a long run."""
        keys = sorted(self.held if keys is None else set(keys) & self.held)
        if not keys:
            return
        if conn is None:
            with self.store.begin() as own:
                self.release(keys, own)
            return
        for start in range(0, len(keys), _IN_CHUNK):
            conn.execute(_RELEASE, {"b_flow": self.flow, "b_worker": self.worker,
                                    "b_keys": keys[start:start + _IN_CHUNK]})
        self.held -= set(keys)

    @contextmanager
    def kept_while(self, what: str = "a call") -> Iterator[None]:
        """Keep every lease this worker holds while the body runs (a batch's call to a peer):
        a thread renews them every third of their ``ttl``. A batch sent, then answered slowly
        (a peer's latency, its retries) outlived its leases: another worker took the dossiers over
        and sent them again, each delivery recorded twice. A worker that dies still loses its
        leases once they expire; one whose renewals fail (the bus database unreachable) is logged."""
        if not self.held:
            yield
            return
        stop = threading.Event()
        every = max(self.ttl.total_seconds() / 3, 0.05)

        def renew() -> None:
            while not stop.wait(every):
                try:
                    keys = set(self.held)
                    lost = keys - self.acquire(keys)
                except Exception as exc:  # noqa: BLE001 - the next renewal tries again
                    _log.warning("leases of %d %s records not renewed during %s: %s", len(self.held), self.flow,
                                 what, type(exc).__name__)
                    continue
                if lost:
                    _log.warning("%d %s leases were taken over by another worker during %s: %s", len(lost),
                                 self.flow, what, ", ".join(sorted(lost)[:10]))

        keeper = threading.Thread(target=renew, name=f"lease-keeper-{self.flow}", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            stop.set()
            keeper.join()

    def __enter__(self) -> Leases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
