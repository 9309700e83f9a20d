"""The multi-process harness (lienthong/distributed.py) in parts, without starting Airflow: its
exit status, its claims on shared resources (ports, the Redis database) and what it writes.
The whole run is tests/test_distributed.py."""

from __future__ import annotations

import pytest

from lienthong import distributed


def _harness(tmp_path, **kwargs) -> tuple[distributed.Harness, list[str]]:
    cfg = distributed.new_config(run_dir=tmp_path / "run")
    lines: list[str] = []
    return distributed.Harness(cfg, out=lines.append, **kwargs), lines


def _passing_phases(harness: distributed.Harness, monkeypatch) -> None:
    """Every phase succeeds and one invariant holds; nothing is started."""
    for phase in ("prepare", "start_airflow", "prepare_bus", "start_standins", "wait_airflow", "run_flows"):
        monkeypatch.setattr(harness, phase, lambda: None)
    monkeypatch.setattr(harness, "check_invariants", lambda: harness.check("all fine", True, "1 of 1"))


def test_a_passing_run_exits_0(tmp_path, monkeypatch):
    harness, lines = _harness(tmp_path)
    _passing_phases(harness, monkeypatch)
    assert harness.run() == 0
    assert lines[-1] == "PASS: 1 of 1 invariants hold"


def test_databases_left_behind_make_the_run_fail(tmp_path, monkeypatch):
    harness, lines = _harness(tmp_path)
    _passing_phases(harness, monkeypatch)
    harness.databases_created = True

    def refuse(cfg):
        raise RuntimeError("database is being accessed by other users")

    monkeypatch.setattr(distributed, "drop_databases", refuse)
    assert harness.run() == 1
    assert lines[-1].startswith("FAIL"), lines
    assert any("could not drop the databases" in line for line in lines)


def test_a_redis_database_left_full_makes_the_run_fail(tmp_path, monkeypatch):
    harness, lines = _harness(tmp_path)
    _passing_phases(harness, monkeypatch)
    harness.redis_db_claimed = True

    class Unreachable:
        def flushdb(self):
            raise ConnectionError("Redis went away")

    monkeypatch.setattr(distributed, "_redis", lambda cfg, db: Unreachable())
    assert harness.run() == 1
    assert lines[-1].startswith("FAIL"), lines


def test_a_process_that_would_not_stop_makes_the_run_fail(tmp_path, monkeypatch):
    harness, lines = _harness(tmp_path)
    _passing_phases(harness, monkeypatch)
    monkeypatch.setattr(harness.processes, "stop_all", lambda: ["worker1:4242 (did not exit)"])
    assert harness.run() == 1
    assert lines[-1].startswith("FAIL"), lines
