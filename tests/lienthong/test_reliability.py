"""The reliability harness (issue #7): a short seeded soak inside the suite, and proof that its
checks see a loss when there is one. The long soak is ``make reliability`` (README)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

from sqlalchemy import update

from lienthong.reliability import harness, worker
from lienthong.reliability.harness import Harness, Settings, run_reliability
from lienthong.store import Store, dead_letter, utcnow


def test_short_seeded_soak_loses_and_duplicates_nothing(tmp_path):
    lines: list[str] = []
    settings = Settings(home=tmp_path / "rel", seed=11, min_faults=40, min_kills=3, max_rounds=14, min_rounds=2,
                        dossiers=30, catalogue_size=60, quiet=True)
    assert run_reliability(settings, out=lines.append) == 0, "\n".join(lines)
    result = json.loads((tmp_path / "rel" / "result.json").read_text())
    assert result["ok"] and result["targets_met"]
    assert sum(result["faults"].values()) >= 40
    assert sum(result["kills"].values()) >= 3
    assert result["log"]["verified"] and result["log"]["records"] > 0
    by_flow = {f["flow"]: f for f in result["flows"]}
    assert set(by_flow) == {"dossier_status", "procedure_catalogue", "payment_receipts"}
    for f in by_flow.values():
        assert f["lost"] == 0 and f["duplicated"] == 0, f["problems"]
        assert f["records"] == f["delivered"] + f["dead_lettered"], f
        assert f["delivered"] > 0
    # every defective dossier of the seeded world is accounted for by its dead letter
    assert by_flow["dossier_status"]["dead_lettered"] == by_flow["dossier_status"]["details"]["defective_at_source"]
    # the world grew during the run, and the table says so
    assert by_flow["dossier_status"]["records"] > 30
    table = "\n".join(lines)
    assert "| dossier_status |" in table and "Faults injected" in table and "PASS: 0 lost, 0 duplicated" in table


def test_the_checks_name_a_lost_procedure_and_an_unaccounted_dossier(tmp_path):
    """A checker that cannot fail proves nothing: take a row away from a destination and a dead
    letter away from the bus, and each is reported by name."""
    h = Harness(Settings(home=tmp_path / "rel", seed=3, dossiers=20, catalogue_size=40, quiet=True))
    try:
        h.setup()
        h._run_flows("clean", kill=False)
        h._run_flows("clean2", kill=False)
        first = h.check()
        assert first["verify"].ok
        for f in first["flows"]:
            assert (f.lost, f.duplicated) == (0, 0), f.problems
        dossiers, procedures, payments = first["flows"]
        assert procedures.delivered == procedures.details["published"] > 0
        assert dossiers.dead_lettered == dossiers.details["defective_at_source"] > 0

        with sqlite3.connect(h.topo.home / "ministry.db") as conn:
            (victim,) = conn.execute("SELECT ma_tthc FROM tthc_thu_tuc WHERE trang_thai = 'cong_bo' ORDER BY ma_tthc "
                                     "LIMIT 1").fetchone()
            conn.execute("DELETE FROM tthc_phi_le_phi WHERE ma_tthc = ?", (victim,))
            conn.execute("DELETE FROM tthc_thu_tuc WHERE ma_tthc = ?", (victim,))
        store = Store.from_connection(h.spec("lienthong_db"))
        with store.begin() as conn:
            letter = conn.execute(dead_letter.select().where(dead_letter.c.flow == "dossier_status")
                                  .order_by(dead_letter.c.id)).mappings().first()
            conn.execute(update(dead_letter).where(dead_letter.c.id == letter["id"])
                         .values(resolved_at=utcnow(), resolution="test: forgotten"))
        store.dispose()

        second = h.check()
        dossiers, procedures, _ = second["flows"]
        assert procedures.lost == 1
        assert any(p.startswith(f"{victim}: not in the ministry replica") for p in procedures.problems)
        assert dossiers.lost == 1
        assert any(p.startswith(f"{letter['record_key']}: defective at the source, not held and not dead-lettered")
                   for p in dossiers.problems)
    finally:
        h.outage.end()
        h.peers.stop()


def test_ministry_outage_refuses_connections_then_gives_the_database_back(tmp_path):
    path = tmp_path / "ministry.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (42)")
    outage = harness._MinistryOutage(path)
    outage.begin()
    try:
        sqlite3.connect(path).execute("SELECT 1")
        raise AssertionError("the database answered during the outage")
    except sqlite3.OperationalError as exc:
        assert "unable to open" in str(exc)
    outage.end()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]


def test_worker_exit_codes_follow_the_dags_retry_rule(capsys):
    assert worker.main(["no.such.step", "r1"]) == worker.EXIT_FATAL
    assert "ConfigurationError: unknown step 'no.such.step'" in capsys.readouterr().err
    assert worker.main([]) == 2
    assert set(worker.STEPS) == {s for steps in harness.FLOWS.values() for s in steps} | {harness.SEAL_STEP}


def test_cli_refuses_an_unknown_fault_kind():
    done = subprocess.run([sys.executable, "-m", "lienthong", "reliability", "--faults", "drop,gremlins"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "unknown fault kind(s) gremlins" in done.stderr


def test_the_harness_wipes_only_a_home_it_made(tmp_path):
    import pytest

    from connectors.errors import ConfigurationError

    precious = tmp_path / "var"
    precious.mkdir()
    (precious / "lienthong.db").write_text("the real bus database")
    h = Harness(Settings(home=precious, quiet=True))
    with pytest.raises(ConfigurationError, match="holds files this harness did not make"):
        h.setup()
    assert (precious / "lienthong.db").read_text() == "the real bus database"


def test_a_failed_step_is_counted_under_the_error_class_it_named():
    stderr = (b"catalogue.ministry: OperationalError: (sqlite3.OperationalError) no such table: x\n"
              b"[SQL: ALTER TABLE x ADD COLUMN y INTEGER]\n"
              b"(Background on this error at: https://sqlalche.me/e/21/e3q8)\n")
    assert harness._error_name("catalogue.ministry", stderr) == "OperationalError"
    assert harness._error_name("dossier.stage", b"Traceback (most recent call last):\n  boom: x: y\n") is None


def _offline_run(monkeypatch, tmp_path, fingerprints, **settings):
    """run_reliability with the stand-ins, the rounds and the checks replaced: every flow checks
    clean and the log verifies; the destinations change as ``fingerprints`` say, pass by pass."""
    from types import SimpleNamespace

    from lienthong.reliability.checks import FlowResult

    prints = iter(fingerprints)
    monkeypatch.setattr(Harness, "setup", lambda self: None)
    monkeypatch.setattr(Harness, "run_rounds", lambda self: None)
    monkeypatch.setattr(Harness, "_clear_faults", lambda self: None)
    monkeypatch.setattr(Harness, "_run_flows", lambda self, tag, kill: None)
    monkeypatch.setattr(Harness, "_destinations_fingerprint", lambda self: next(prints))
    monkeypatch.setattr(Harness, "check", lambda self: {
        "flows": [FlowResult(f, records=1, delivered=1) for f in harness.FLOWS],
        "verify": SimpleNamespace(ok=True, failure=None, records_checked=10, seals_checked=1)})
    monkeypatch.setattr(harness._Peers, "stop", lambda self: None)
    home = tmp_path / "rel"
    home.mkdir(exist_ok=True)
    lines: list[str] = []
    code = run_reliability(Settings(home=home, quiet=True, **settings), out=lines.append)
    return code, json.loads((home / "result.json").read_text()), lines


def test_destinations_that_a_clean_pass_still_changes_fail_the_run(monkeypatch, tmp_path):
    """With every fault off and the world still, a pass that changes what the destinations hold
    re-sent or re-applied something (a status the portal already acknowledged, written again):
    after the last clean pass it must not say PASS."""
    code, result, lines = _offline_run(monkeypatch, tmp_path, ["a", "b", "c", "d"], min_faults=0, min_kills=0)
    assert code == 1 and result["ok"] is False and result["settled"] is False
    assert lines[-1].startswith("FAIL: 0 lost, 0 duplicated, log verified; the destinations still changed in the "
                                "last of 4 clean passes")
    code, result, lines = _offline_run(monkeypatch, tmp_path, ["a", "b", "b"], min_faults=0, min_kills=0)
    assert code == 0 and result["ok"] is True and result["settled"] is True and result["settle_passes"] == 3
    assert lines[-1].startswith("PASS: 0 lost, 0 duplicated, log verified; result in")


class _FakeStep:
    """A step process that ends at once with the given exit status; it notes the kill timer."""

    def __init__(self, code: int, timers: list, step: str):
        self.returncode, self.timers, self.step = code, timers, step

    def communicate(self, timeout=None):
        self.timers.append((self.step, timeout))
        return b"", b"" if self.returncode == 0 else b"x: PeerUnavailable: down\n"

    def poll(self):
        return self.returncode


def _a_round(monkeypatch, tmp_path, name, failing):
    """Round 1's kill timers by step, and the fault plans the seed then draws for round 2, when
    the steps in ``failing`` failed (and were retried) in round 1."""
    h = Harness(Settings(home=tmp_path / name, seed=5, kill_share=0.5, quiet=True))
    h.topo.log_dir.mkdir(parents=True)
    timers: list = []
    monkeypatch.setattr(harness.subprocess, "Popen", lambda args, **kwargs: _FakeStep(
        worker.EXIT_RETRY if args[3] in failing else 0, timers, args[3]))
    h._run_flows("r001", kill=True)
    by_step: dict = {}
    for step, timer in timers:
        by_step.setdefault(step, []).append(timer)
    return by_step, [h._plan(peer) for peer in ("onestop", "portal", "platform", "ledger")]


def test_the_seed_draws_the_same_faults_and_kills_whatever_the_steps_did(monkeypatch, tmp_path):
    """--seed promises the world's changes, the fault plans and the kill timers: they must not
    depend on how many attempts a round's steps took (each draws its kill timer) nor on the order
    in which the flows' threads drew."""
    calm_kills, calm = _a_round(monkeypatch, tmp_path, "calm", failing=set())
    again_kills, again = _a_round(monkeypatch, tmp_path, "again", failing=set())
    rough_kills, rough = _a_round(monkeypatch, tmp_path, "rough", failing={"dossier.deliver", "payments.fees"})
    assert calm == again == rough
    assert calm_kills == again_kills
    assert rough_kills["dossier.deliver"][0] == calm_kills["dossier.deliver"][0]
    assert len(rough_kills["dossier.deliver"]) == 3


def test_a_run_that_injected_fewer_faults_or_kills_than_asked_does_not_pass(monkeypatch, tmp_path):
    """The table proves the invariants under the faults and kills asked for; a run that reached
    --max-rounds short of them (a stand-in that stopped injecting, say) proved less."""
    code, result, lines = _offline_run(monkeypatch, tmp_path, ["a", "a"], min_faults=5, min_kills=0, max_rounds=0)
    assert code == 1 and result["targets_met"] is False and result["ok"] is False
    assert lines[-1].startswith("FAIL: 0 lost, 0 duplicated, log verified (0 faults and 0 kills, fewer than the 5 "
                                "faults and 0 kills asked: raise --max-rounds)")


def test_a_kill_timer_starts_when_the_step_begins_not_while_python_starts(monkeypatch, tmp_path):
    """A step process spends its first second or more importing (longer with four starting at once
    on two cores); a SIGKILL then hits no step, yet counted toward --min-kills. The timer runs from
    the moment the worker begins its step: a timer of 0 s kills each attempt only once its imports
    are done, never within the first 0.3 s of its life."""
    import re

    h = Harness(Settings(home=tmp_path / "rel", seed=5, kill_share=1.0, quiet=True))
    h.topo.log_dir.mkdir(parents=True)
    monkeypatch.setattr(Harness, "_kill_after", lambda self, step, run_id, attempt: 0.0)
    h._run_step("no.such.step", "r001", kill=True)
    stats = h.state.stats("no.such.step")
    assert (stats.attempts, stats.killed) == (3, 3)
    lived = [float(x) for x in re.findall(r"exit -9 ([0-9.]+)s SIGKILL", (h.topo.log_dir / "steps.log").read_text())]
    assert len(lived) == 3 and min(lived) > 0.3, lived


def test_the_harness_takes_as_fatal_what_the_dags_do_not_retry():
    """The DAGs fail a task at once on NO_RETRY (RecordRejected joined it); the harness's worker kept
    its own copy without it, so a rejected record escaping a step was retried as the DAGs no longer do."""
    from lienthong import dag_support
    from lienthong.reliability import worker

    assert sorted(f"{c.__module__}.{c.__name__}" for c in worker.NOT_RETRIED) == sorted(dag_support.NO_RETRY)
