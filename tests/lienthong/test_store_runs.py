"""A run's summary (``Store.add_run_counts``) written by two steps of one run at once: the
catalogue DAG's push_to_onestop and push_to_ministry run in parallel and both add their counts to
the same ``sync_run`` row. Neither step's counts may be lost, and neither step may fail."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import event

from lienthong.store import Store


@pytest.mark.parametrize("row_exists", [False, True], ids=["new_run", "existing_run"])
def test_two_steps_adding_counts_to_one_run_at_once_both_count(bus_store, row_exists):
    if row_exists:
        bus_store.add_run_counts("catalogue", "r1", {"pulled": 5})
    slow, fast = Store(bus_store.url), Store(bus_store.url)
    read_done, go_on = threading.Event(), threading.Event()

    @event.listens_for(slow.engine, "after_cursor_execute")
    def pause_after_reading_the_run(conn, cursor, statement, *args):
        # the slow step has read the run's counts; the other step writes them before it goes on
        if statement.lstrip().upper().startswith("SELECT") and "sync_run" in statement and not read_done.is_set():
            read_done.set()
            go_on.wait(10)

    errors: list[BaseException] = []

    def run(store: Store, counts: dict) -> None:
        try:
            store.add_run_counts("catalogue", "r1", counts)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    first = threading.Thread(target=run, args=(slow, {"onestop_pushed": 3}))
    first.start()
    assert read_done.wait(10)
    second = threading.Thread(target=run, args=(fast, {"ministry_pushed": 4}))
    second.start()
    second.join(1.5)  # done at once when the slow step holds nothing; else waits for it
    go_on.set()
    first.join(30)
    second.join(30)
    slow.dispose()
    fast.dispose()
    assert errors == []
    expected = {"onestop_pushed": 3, "ministry_pushed": 4, **({"pulled": 5} if row_exists else {})}
    assert bus_store.run_summary("catalogue", "r1")["counts"] == expected


def test_two_steps_setting_a_new_bookmark_at_once_both_succeed_and_the_last_commit_wins(bus_store):
    """A flow's first bookmark written by two stage steps at once (a backfill from the command line
    while the DAG stages): the second waits for the first, and neither fails on the primary key."""
    errors: list[BaseException] = []
    with bus_store.begin() as first:
        Store.set_cursor(first, "dossier_status", "page-2", "dag-run")

        def second_step() -> None:
            try:
                with bus_store.begin() as conn:
                    Store.set_cursor(conn, "dossier_status", "page-9", "backfill")
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        second = threading.Thread(target=second_step)
        second.start()
        second.join(1.5)  # it waits for the first step's commit (the row, or SQLite's write lock)
        assert second.is_alive()
    second.join(30)
    assert errors == []
    assert bus_store.get_cursor("dossier_status") == "page-9"
