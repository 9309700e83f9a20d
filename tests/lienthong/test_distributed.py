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


# --- two runs at once ------------------------------------------------------------------------------
def _ports(cfg: distributed.HarnessConfig) -> set[int]:
    return {cfg.api_port, *cfg.standin_ports, *cfg.worker_log_ports, cfg.trigger_log_port,
            cfg.scheduler_health_port}


def test_two_runs_started_together_get_ports_of_their_own(tmp_path):
    """A run binds its ports only once Airflow is migrated and the stand-ins start (10 s and more
    after it chose them): a second run started meanwhile must not choose the same ones."""
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from lienthong import distributed as d\n"
         f"c = d.new_config(run_dir=Path({str(tmp_path / 'first')!r}))\n"
         "print(*sorted({c.api_port, *c.standin_ports, *c.worker_log_ports, c.trigger_log_port,"
         " c.scheduler_health_port}), flush=True)\n"
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        first = {int(p) for p in child.stdout.readline().split()}
        second = distributed.new_config(run_dir=tmp_path / "second")
        assert len(first) == 9 and len(_ports(second)) == 9
        assert not first & _ports(second), sorted(first & _ports(second))
    finally:
        child.communicate("", timeout=30)
    # the first run has ended: its ports are free to take again
    third = distributed.new_config(run_dir=tmp_path / "third")
    assert third.api_port == 28080 or not distributed._port_free(28080)


class FakeRedis:
    """Redis databases 0–15 as dicts, shared by every client: what pick_redis_db calls."""

    def __init__(self, databases: dict[int, dict[str, str]], db: int):
        self.data = databases.setdefault(db, {})

    def dbsize(self) -> int:
        return len(self.data)

    def set(self, key: str, value: str, nx: bool = False) -> bool | None:
        if nx and key in self.data:
            return None
        self.data[key] = value
        return True

    def flushdb(self) -> None:
        self.data.clear()


def test_two_runs_do_not_share_a_redis_database(tmp_path, monkeypatch):
    """Process ids 7 and 22 start looking at the same database (pid % 15): the first run's broker
    is still empty when the second looks, so the second must see that it is taken."""
    databases: dict[int, dict[str, str]] = {}
    monkeypatch.setattr(distributed, "_redis", lambda cfg, db: FakeRedis(databases, db))
    first = distributed.new_config(run_dir=tmp_path / "first")
    second = distributed.new_config(run_dir=tmp_path / "second")
    first.suffix, second.suffix = "7", "22"
    a = distributed.pick_redis_db(first)
    b = distributed.pick_redis_db(second)
    assert (a, b) == (8, 9)
    FakeRedis(databases, a).flushdb()  # the first run's cleanup
    assert distributed.pick_redis_db(first) == 8


# --- what it writes -------------------------------------------------------------------------------
def test_every_ui_user_has_a_password_so_airflow_prints_none(tmp_path, monkeypatch):
    """SimpleAuthManager generates a password for a user missing from the passwords file and prints
    it: the api-server's log, kept after a failed run, would hold it. The harness writes one for every
    user, as docker-compose.yml's airflow-init does."""
    import json
    import subprocess
    import sys

    harness, _ = _harness(tmp_path)
    monkeypatch.setattr(distributed, "probe_services", lambda *a, **k: None)
    monkeypatch.setattr(distributed, "pick_redis_db", lambda cfg: 1)
    monkeypatch.setattr(distributed, "create_databases", lambda cfg: None)
    monkeypatch.setattr(harness, "airflow", lambda *args, name=None: None)
    harness.prepare()
    env = harness.env
    users = [u.split(":")[0] for u in env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")]
    path = tmp_path / "run" / "airflow" / "passwords.json"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(path)
    written = json.loads(path.read_text())
    assert sorted(written) == sorted(users) == ["admin", "auditor"]
    assert written["admin"] == harness.cfg.admin_password and len(set(written.values())) == 2

    # what the api-server does with it on start
    result = subprocess.run(
        [sys.executable, "-c", "from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import "
                               "SimpleAuthManager; SimpleAuthManager().init()"],
        env=env, capture_output=True, text=True, timeout=120, check=True)
    assert "Password for user" not in result.stdout + result.stderr
    assert json.loads(path.read_text()) == written


# --- invariants -----------------------------------------------------------------------------------
def _catalogue_check(tmp_path, monkeypatch, *, onestop_name: str | None = None) -> list[distributed.Check]:
    """The harness's catalogue invariant over one published procedure, the stand-ins' states crafted
    and served in place of HTTP (the portal's, the one-stop's, the ministry replica's), the bus
    database on SQLite."""
    import copy
    import types

    from lienthong.reliability import checks
    from lienthong.store import Store, catalogue_current, utcnow
    from tests.lienthong.reliability.test_checks import _catalogue_world, _fake_catalogue_peers

    record, onestop, ministry = _catalogue_world()
    code = ministry["ma_tthc"]
    if onestop_name is not None:
        onestop = {**onestop, "serviceName": onestop_name}
    harness, _ = _harness(tmp_path)
    harness.env = distributed.airflow_environment(harness.cfg)
    harness.standins = types.SimpleNamespace(onestop_url="http://onestop", portal_url="http://portal")
    monkeypatch.setattr(harness.cfg, "pg_url", lambda database, driver=None: f"sqlite:///{tmp_path / database}.db")
    bus = Store(harness.cfg.pg_url(harness.cfg.bus_db))
    bus.create_schema()
    with bus.begin() as conn:
        conn.execute(catalogue_current.insert().values(procedure_code=code, record=record, record_hash="00" * 32,
                                                       published=True, updated_run_id="run", updated_at=utcnow()))
    bus.dispose()
    doors = {
        "http://portal/_state/catalogue": {"counts": {"published": 1}, "malformed": []},
        "http://onestop/_state/procedures": {"procedures": [onestop], "upserts": {code: 1}},
    }
    monkeypatch.setattr(harness, "_state", lambda base, path: copy.deepcopy(doors[base + path]))
    monkeypatch.setattr(checks, "_get", lambda url: copy.deepcopy(doors[url]))

    _fake_catalogue_peers(monkeypatch, record, ministry)  # the clean pull finds the same procedure
    harness._check_catalogue()
    return harness.checks


def test_catalogue_held_alike_holds(tmp_path, monkeypatch):
    results = _catalogue_check(tmp_path, monkeypatch)
    assert [c.ok for c in results] == [True] * len(results) and results, results


def test_catalogue_with_other_values_at_the_one_stop_fails(tmp_path, monkeypatch):
    """Same codes, same count, another name: a check of codes and counts says nothing is wrong."""
    results = _catalogue_check(tmp_path, monkeypatch, onestop_name="Đăng ký kết hôn (khác)")
    failed = [c for c in results if not c.ok]
    assert len(failed) == 1, results
    assert "the one-stop holds other values in serviceName" in failed[0].detail


# --- the run directory ----------------------------------------------------------------------------
def test_a_passing_run_removes_only_what_it_made_in_a_given_run_dir(tmp_path, monkeypatch):
    """`--run-dir DIR` may name a directory that holds other things (`--run-dir .`, a logs folder):
    a passing run removes its own files there, never the directory's other contents."""
    run_dir = tmp_path / "mine"
    (run_dir / "notes").mkdir(parents=True)
    (run_dir / "notes" / "keep.txt").write_text("mine")
    (run_dir / "report.md").write_text("mine too")
    cfg = distributed.new_config(run_dir=run_dir)
    lines: list[str] = []
    harness = distributed.Harness(cfg, out=lines.append)
    _passing_phases(harness, monkeypatch)
    monkeypatch.setattr(harness, "prepare", lambda: [p.mkdir(parents=True) for p in (cfg.home, cfg.airflow_home,
                                                                                     cfg.log_dir)])
    assert harness.run() == 0
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes", "report.md"]
    assert (run_dir / "notes" / "keep.txt").read_text() == "mine"


def test_a_passing_run_removes_the_run_dir_it_made(tmp_path, monkeypatch):
    cfg = distributed.new_config(run_dir=tmp_path / "run")
    cfg.run_dir.mkdir()
    harness = distributed.Harness(cfg, out=lambda line: None)
    _passing_phases(harness, monkeypatch)
    monkeypatch.setattr(harness, "prepare", lambda: [p.mkdir(parents=True) for p in (cfg.home, cfg.airflow_home,
                                                                                     cfg.log_dir)])
    assert harness.run() == 0
    assert not cfg.run_dir.exists()


def test_a_failed_run_keeps_its_logs_but_not_its_throwaway_secrets(tmp_path, monkeypatch):
    """A failed run keeps its run directory for diagnosis; the secrets it generated there (the UI
    users' passwords, the private seal key, the airflow.cfg Airflow writes with a generated JWT
    secret and API secret key) must not stay beside the logs. Its passwords file is the owner's only."""
    import stat

    harness, lines = _harness(tmp_path)
    cfg = harness.cfg
    monkeypatch.setattr(distributed, "probe_services", lambda *a, **k: None)
    monkeypatch.setattr(distributed, "pick_redis_db", lambda cfg: 1)
    monkeypatch.setattr(distributed, "create_databases", lambda cfg: None)
    monkeypatch.setattr(distributed, "drop_databases", lambda cfg: list(cfg.databases))
    monkeypatch.setattr(distributed, "_redis", lambda cfg, db: type("R", (), {"flushdb": lambda self: None})())

    def airflow(*args, name=None):  # what `airflow db migrate` leaves in AIRFLOW_HOME
        (cfg.airflow_home / "airflow.cfg").write_text("[api_auth]\njwt_secret = generated\n")

    monkeypatch.setattr(harness, "airflow", airflow)
    prepare = harness.prepare

    def prepared():
        prepare()
        assert stat.S_IMODE((cfg.airflow_home / "passwords.json").stat().st_mode) == 0o600
        cfg.log_dir.mkdir(parents=True, exist_ok=True)
        (cfg.log_dir / "api-server.log").write_text("started\n")
        key = distributed.Path(harness.env["LIENTHONG_SEAL_KEY"])
        key.parent.mkdir(parents=True)
        key.write_text("PRIVATE")
        key.with_name(key.name + ".pub").write_text("PUBLIC")

    monkeypatch.setattr(harness, "prepare", prepared)

    def fails():
        raise RuntimeError("the api-server did not start")

    monkeypatch.setattr(harness, "start_airflow", fails)
    assert harness.run() == 1
    key = distributed.Path(harness.env["LIENTHONG_SEAL_KEY"])
    assert (cfg.log_dir / "api-server.log").read_text() == "started\n", "the logs are kept"
    assert key.with_name(key.name + ".pub").read_text() == "PUBLIC"
    assert not key.exists() and not (cfg.airflow_home / "passwords.json").exists()
    assert not (cfg.airflow_home / "airflow.cfg").exists()
    assert harness.cfg.admin_password not in "\n".join(lines)
    assert any("removed the run's secrets" in line for line in lines), lines


def _payment_check(tmp_path, monkeypatch, **receipt_changes) -> list[distributed.Check]:
    """The harness's payment invariants over one paid and one pending payment, the stand-ins' states
    served in place of HTTP, the bus database on SQLite."""
    import copy
    import types

    from lienthong.reliability import checks
    from lienthong.store import Store
    from tests.lienthong.reliability.test_checks import DOSSIER, _payment_world

    platform, onestop, receipts, callbacks = _payment_world()
    receipts = [{**receipts[0], **receipt_changes}]
    harness, _ = _harness(tmp_path)
    harness.standins = types.SimpleNamespace(onestop_url="http://onestop", payment_url="http://payments",
                                             ledger_url="http://ledger")
    monkeypatch.setattr(harness.cfg, "pg_url", lambda database, driver=None: f"sqlite:///{tmp_path / database}.db")
    Store(harness.cfg.pg_url(harness.cfg.bus_db)).create_schema()
    doors = {
        "http://payments/_state/payments": {"payments": platform},
        "http://onestop/_state/payments": {"payments": onestop, "callbacks": callbacks},
        "http://ledger/_state/receipts": {"receipts": receipts},
        "http://onestop/_state/dossiers": {"dossiers": [{"dossierNo": DOSSIER, "applicantName": "Trần Văn Đức"}]},
    }
    monkeypatch.setattr(harness, "_state", lambda base, path: copy.deepcopy(doors[base + path]))
    monkeypatch.setattr(checks, "_get", lambda url: copy.deepcopy(doors[url]))
    harness._check_payments()
    return harness.checks


def test_payments_held_alike_hold(tmp_path, monkeypatch):
    results = _payment_check(tmp_path, monkeypatch)
    assert [c.ok for c in results] == [True, True, True], results
    assert "1 of 1 settled payments held alike" in results[2].detail


@pytest.mark.parametrize(("field", "value", "named"), [
    ("PayerName", "Nguyễn Văn Khác", "payer name"), ("PdfSha256", "cd" * 32, "receipt PDF"),
    ("PaidAt", "2026-11-02T09:15:00+07:00", None)])
def test_a_receipt_with_another_payer_pdf_or_time_fails_the_payment_invariant(tmp_path, monkeypatch, field, value,
                                                                              named):
    """The harness compared a receipt's amount and number only: one booked with another payer, PDF
    hash or payment time passed. It runs make reliability's field-by-field check too."""
    results = _payment_check(tmp_path, monkeypatch, **{field: value})
    failed = [c for c in results if not c.ok]
    assert [c.name for c in failed] == [
        "payments: each settled payment's receipt and fee hold the platform's values, field by field"], results
    assert "0 of 1 settled payments held alike" in failed[0].detail
    if named:
        assert f"differs in {named}" in failed[0].detail
