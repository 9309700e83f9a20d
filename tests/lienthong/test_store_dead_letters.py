"""Dead letters read by a delivery batch (``blocked_keys``) while an operator replays them, and
replays racing each other: every dead letter is resolved once, and no transaction deadlocks."""

from __future__ import annotations

import threading
import time

from sqlalchemy import event, select

from lienthong.flows import dossier_status
from lienthong.store import Store, blocked_keys, dead_letter, utcnow

FLOW = dossier_status.FLOW


def _letter(conn, letter_id: int | None, key: str) -> None:
    values = {"flow": FLOW, "record_key": key, "outbox_id": None, "run_id": "run-1", "stage": "peer",
              "error_class": "RecordRejected", "errors": [], "attempts": 1, "source_payload": {"dossierNo": key},
              "created_at": utcnow()}
    conn.execute(dead_letter.insert().values(**({"id": letter_id} if letter_id else {}), **values))


def test_a_batch_reading_dead_letters_while_a_replay_resolves_several_does_not_deadlock(bus_store):
    """A replay resolves dead letters #1 (dossier B) and #2 (dossier A); a delivery batch reads the
    dead letters of both dossiers FOR SHARE between the replay's two updates. Rows stored out of id
    order (#2 first) were locked by the batch in another order than the replay's (ids), and one of
    the two was aborted as a deadlock. Both lock in id order: the batch waits for the replay and
    finds neither dossier blocked. (On SQLite the batch's read waits for the replay's write lock.)"""
    with bus_store.begin() as conn:
        _letter(conn, 2, "A")  # stored first
        _letter(conn, 1, "B")
    replaying, delivering = Store(bus_store.url), Store(bus_store.url)
    errors: list[BaseException] = []
    found: list[set[str]] = []

    def batch() -> None:
        try:
            with delivering.begin() as conn:
                found.append(blocked_keys(conn, FLOW, ["A", "B"]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    delivery = threading.Thread(target=batch)

    @event.listens_for(replaying.engine, "after_cursor_execute")
    def read_by_a_batch_between_the_replays_updates(conn, cursor, statement, *args):
        if "dead_letter" in statement and statement.lstrip().upper().startswith(("UPDATE", "SELECT")) \
                and not delivery.is_alive() and not found and not errors:
            if statement.lstrip().upper().startswith("UPDATE") or "FOR UPDATE" in statement.upper():
                delivery.start()
                time.sleep(0.5)  # the batch reads (and waits for a lock the replay holds)

    try:
        result = dossier_status.replay(replaying, dead_letter_ids=[1, 2])
    except BaseException as exc:  # noqa: BLE001 - reported below
        errors.append(exc)
        result = None
    delivery.join(30)
    replaying.dispose()
    delivering.dispose()
    assert errors == []
    assert result.dead_letters == [1, 2]
    assert found == [set()]


def test_two_replays_of_one_dead_letter_at_once_resolve_and_requeue_it_once(bus_store):
    """Two operators replay the same dead letter at once (or one replay while another runs): both
    read it unresolved, and both resolved it and put the dossier back in line; the second one,
    committing after the first replay's delivery had sent the snapshot, put an older refused
    snapshot of the dossier back in line instead. The second now waits for the first and finds
    nothing left to replay."""
    from lienthong.store import outbox

    with bus_store.begin() as conn:
        for seq, version in ((1, 1), (2, 2)):  # an older refusal (replayed long ago), then the current one
            conn.execute(outbox.insert().values(
                flow=FLOW, record_key="K", source_seq=seq, source_version=version,
                source_payload={"dossierNo": "K", "version": version}, state="rejected", attempts=1,
                staged_run_id="run-1", staged_at=utcnow()))
        _letter(conn, None, "K")
    letter_id = bus_store.dead_letters(FLOW)[0]["id"]
    first, second = Store(bus_store.url), Store(bus_store.url)
    results: dict[str, object] = {}
    errors: list[BaseException] = []

    def replay(name: str, store: Store) -> None:
        try:
            results[name] = dossier_status.replay(store, record_key="K", by=name)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    other = threading.Thread(target=replay, args=("second", second))

    @event.listens_for(first.engine, "after_cursor_execute")
    def the_other_replay_runs_once_this_one_has_read(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("SELECT") and "FROM dead_letter" in statement \
                and not other.is_alive() and "second" not in results:
            other.start()
            other.join(1.5)  # done at once unless it waits for this replay

    replay("first", first)
    other.join(30)
    first.dispose()
    second.dispose()
    assert errors == []
    assert sorted((r.dead_letters, r.requeued) for r in results.values()) == [([], []), ([letter_id], ["K"])]
    with bus_store.engine.connect() as conn:
        states = dict(conn.execute(select(outbox.c.source_seq, outbox.c.state).where(outbox.c.record_key == "K")).all())
    assert states == {1: "rejected", 2: "pending"}
