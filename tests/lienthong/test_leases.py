"""Per-record leases: one worker per record at a time, expired leases taken over, on SQLite and
PostgreSQL, also when many workers race for the same records."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from lienthong.leases import Leases


@pytest.fixture
def store(bus_store):
    """The bus database on SQLite and on PostgreSQL (tests/conftest.py)."""
    return bus_store


def test_a_record_leased_by_one_worker_is_not_given_to_another(store):
    a, b = Leases(store, "dossier_status", "a"), Leases(store, "dossier_status", "b")
    assert a.acquire(["X", "Y"]) == {"X", "Y"}
    assert b.acquire(["Y", "Z"]) == {"Z"}
    assert a.acquire(["X"]) == {"X"}, "renewing one's own lease works"
    a.release(["Y"])
    assert b.acquire(["Y"]) == {"Y"}
    other_flow = Leases(store, "payment_receipts", "c")
    assert other_flow.acquire(["X"]) == {"X"}, "flows do not collide"
    a.release()
    b.release()
    assert Leases(store, "dossier_status", "d").acquire(["X", "Y", "Z"]) == {"X", "Y", "Z"}


def test_an_expired_lease_is_taken_over(store):
    dead = Leases(store, "dossier_status", "dead", ttl=timedelta(seconds=-1))
    assert dead.acquire(["X"]) == {"X"}
    alive = Leases(store, "dossier_status", "alive")
    assert alive.acquire(["X"]) == {"X"}
    dead.release()  # the dead worker's late release does not free the new holder's lease
    assert Leases(store, "dossier_status", "third").acquire(["X"]) == set()


def test_racing_workers_never_share_a_record(store):
    keys = [f"000.00.01.H49-261102-{i:04d}" for i in range(200)]
    results: dict[str, set[str]] = {}
    barrier = threading.Barrier(4)

    def work(name: str) -> None:
        leases = Leases(store, "dossier_status", name)
        barrier.wait()
        got: set[str] = set()
        for start in range(0, len(keys), 25):
            got |= leases.acquire(keys[start:start + 25])
        results[name] = got

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    held = [k for got in results.values() for k in got]
    assert len(held) == len(set(held)) == len(keys), "every record leased once, by exactly one worker"


def test_a_killed_worker_on_this_host_does_not_block_its_records_until_expiry(store):
    import os
    import signal
    import socket
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = Leases(store, "dossier_status", f"{socket.gethostname()}:{child.pid}:abc123")
        assert dead.acquire(["X"]) == {"X"}
        assert Leases(store, "dossier_status", "other").acquire(["X"]) == set(), "alive: respected"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        assert Leases(store, "dossier_status", "other").acquire(["X"]) == {"X"}, "dead: taken over at once"
    finally:
        if child.poll() is None:
            child.kill()
    elsewhere = Leases(store, "dossier_status", "another-host:1:abc")
    assert elsewhere.acquire(["Y"]) == {"Y"}
    assert Leases(store, "dossier_status", "me").acquire(["Y"]) == set(), "another host's worker: wait for expiry"


def test_a_lease_taken_over_after_it_expired_is_no_longer_held_by_the_slow_worker(store):
    """A worker whose batch outlived its lease, taken over meanwhile, must see it gone at its next
    renewal: it went on counting the record as its own, so two workers sent one dossier's entries
    (found in review)."""
    from lienthong.flows import dossier_status

    slow = Leases(store, dossier_status.FLOW, "slow", ttl=timedelta(seconds=0.2))
    assert slow.ensure({"HS-1", "HS-2"}) == {"HS-1", "HS-2"}
    time.sleep(0.3)  # the slow worker's batch outlived its lease
    other = Leases(store, dossier_status.FLOW, "other")
    assert other.ensure({"HS-1"}) == {"HS-1"}  # taken over, as designed
    assert slow.ensure({"HS-1", "HS-2"}) == {"HS-2"}  # HS-2 renewed, HS-1 the other worker's
    assert slow.held == {"HS-2"}
