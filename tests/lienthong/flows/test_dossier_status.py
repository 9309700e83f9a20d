"""The dossier flow end to end against the stand-ins as real servers, without a scheduler.

Every test states invariants against the stand-ins' own state: the portal holds exactly what the
mapping makes of the one-stop dossiers, nothing is sent twice, nothing is lost, every refusal is
dead-lettered with its field and rule.
"""

from __future__ import annotations

import json
import os

import pytest
import requests
from sqlalchemy import func, select

from connectors.connection import connection_from_env
from connectors.errors import PeerUnavailable
from lienthong import tasks
from lienthong.exchange_log import read_body
from lienthong.flows import dossier_status
from lienthong.mapping import load_mapping
from lienthong.store import exchange_log, outbox
from tests.lienthong.flows.proxy import ForwardingProxy

T = 10  # seconds, for every test-door call


def onestop_world(standins) -> dict:
    return requests.get(standins.onestop.url + "/_state", timeout=T).json()


def onestop_dossiers(standins) -> dict[str, dict]:
    items = requests.get(standins.onestop.url + "/_state/dossiers", timeout=T).json()["dossiers"]
    return {d["dossierNo"]: d for d in items}


def portal_dossiers(standins) -> dict[str, dict]:
    items = requests.get(standins.portal.url + "/_state/dossiers", timeout=T).json()["dossiers"]
    return {d["MaHoSo"]: d for d in items}


def portal_history(standins, code: str) -> list[dict]:
    return requests.get(standins.portal.url + f"/_state/dossiers/{code}", timeout=T).json()["history"]


def defective_codes(standins) -> set[str]:
    return {d["dossierNo"] for d in onestop_world(standins)["defective"]}


def run(run_id: str, batch_size: int = 50) -> tuple[dict, dict]:
    staged = tasks.stage_dossier_changes(connection_from_env, run_id=run_id, task_id="stage")
    delivered = tasks.deliver_dossier_statuses(connection_from_env, run_id=run_id, task_id="deliver",
                                               batch_size=batch_size)
    delivered.update(tasks.deliver_dossier_progress(connection_from_env, run_id=run_id, task_id="deliver"))
    return staged, delivered


def expected_portal_state(standins) -> dict[str, dict]:
    mapping = load_mapping(dossier_status.MAPPING)
    bad = defective_codes(standins)
    return {code: mapping.apply(d) for code, d in onestop_dossiers(standins).items() if code not in bad}


def store():
    return tasks.open_store(connection_from_env)


def test_first_run_delivers_exactly_the_mappable_dossiers_field_by_field(bus_env):
    staged, delivered = run("run-1", batch_size=7)
    expected = expected_portal_state(bus_env)
    held = portal_dossiers(bus_env)
    assert set(held) == set(expected)
    for code, record in expected.items():
        assert held[code] == record, code
    bad = defective_codes(bus_env)
    assert len(bad) == 2  # every 20th of the 40 seeded dossiers
    assert delivered["delivered_new"] == len(expected)
    assert delivered["delivered_update"] == 0
    assert delivered["rejected"] == len(bad)
    assert staged["staged"] == staged["events_read"] == onestop_world(bus_env)["lastSeq"]
    # each dossier was applied once, as an insert
    for code in expected:
        assert [h["isUpdating"] for h in portal_history(bus_env, code)] == ["False"], code


def test_unmappable_dossiers_are_dead_lettered_with_field_and_rule_and_do_not_stop_others(bus_env):
    run("run-1")
    letters = {d["record_key"]: d for d in store().dead_letters(dossier_status.FLOW)}
    world = {d["dossierNo"]: d["defect"] for d in onestop_world(bus_env)["defective"]}
    assert set(letters) == set(world)
    expected_field = {"missing_receive_date": ("NgayTiepNhan", "required"),
                      "unmapped_status": ("TrangThaiHoSo", "code_table"),
                      "empty_service_code": ("MaTTHC", "required")}
    for code, defect in world.items():
        letter = letters[code]
        assert letter["stage"] == "mapping"
        fields = {(e["field"], e["rule"]) for e in letter["errors"]}
        assert expected_field[defect] in fields, (code, defect, fields)
        # the original one-stop record is kept unmodified for replay
        assert letter["source_payload"]["dossierNo"] == code


def test_second_run_sends_nothing(bus_env):
    run("run-1")
    held_before = portal_dossiers(bus_env)
    staged, delivered = run("run-2")
    assert staged["staged"] == 0  # the inclusive bookmark re-reads the last page: nothing new
    assert staged["already_staged"] == staged["events_read"] > 0
    assert delivered["considered"] == 0
    assert delivered["portal_calls"] == 0 and delivered["progress_calls"] == 0
    assert portal_dossiers(bus_env) == held_before
    with store().engine.connect() as conn:
        ops = conn.execute(select(exchange_log.c.peer, exchange_log.c.operation)
                           .where(exchange_log.c.run_id == "run-2")).all()
    assert ops == [("onestop", "changes")]


def test_changes_are_delivered_as_updates_and_new_dossiers_as_inserts(bus_env):
    run("run-1")
    moved = requests.post(bus_env.onestop.url + "/_admin/advance", json={"new": 3, "changes": 6}, timeout=T).json()
    bad = defective_codes(bus_env)
    created = [c for c in moved["created"] if c not in bad]
    changed = {c["dossierNo"] for c in moved["changed"]} - bad - set(moved["created"])
    staged, delivered = run("run-2")
    assert delivered["delivered_new"] == len(created)
    assert delivered["delivered_update"] == len(changed)
    assert delivered["unchanged"] == 0
    expected = expected_portal_state(bus_env)
    held = portal_dossiers(bus_env)
    assert held == expected
    for code in changed:
        assert [h["isUpdating"] for h in portal_history(bus_env, code)] == ["False", "True"], code


def test_exchange_log_has_one_row_per_http_exchange_and_no_secrets(bus_env):
    staged, delivered = run("run-1", batch_size=10)
    with store().engine.connect() as conn:
        rows = conn.execute(select(exchange_log).where(exchange_log.c.run_id == "run-1")).mappings().all()
    by_op: dict[tuple[str, str], int] = {}
    for r in rows:
        by_op[(r["peer"], r["operation"])] = by_op.get((r["peer"], r["operation"]), 0) + 1
    assert by_op == {("onestop", "changes"): staged["pages"], ("national_portal", "login"): 2,
                     ("national_portal", "DongBoHoSoMC"): delivered["portal_calls"],
                     ("national_portal", "CapNhatTienDoHoSoMC"): delivered["progress_calls"]}
    calls = requests.get(bus_env.portal.url + "/_state/calls", timeout=T).json()
    assert sum(calls["DongBoHoSoMC"].values()) == delivered["portal_calls"]
    secrets = [json.loads(os.environ[f"AIRFLOW_CONN_{c}"]).get("password") for c in
               ("ONESTOP_DEFAULT", "NATIONAL_PORTAL_DEFAULT")]
    for r in rows:
        blob = read_body(r["request_body"]) + read_body(r["response_body"]) + json.dumps(
            [r["request_headers"], r["response_headers"], r["url"]]).encode()
        for secret in secrets:
            assert secret.encode() not in blob
        assert b'"session":"***"' in blob or b'"session"' not in blob
        assert r["request_sha256"] and r["response_sha256"]
        assert r["flow"] == "dossier_status" and r["task_id"] in {"stage", "deliver"}


def test_dossier_the_portal_already_holds_is_sent_as_an_update(bus_env):
    # Someone (an earlier system, a lost acknowledgement) already created one dossier on the portal.
    from connectors.national_portal.client import NationalPortalClient

    code, dossier = next((c, d) for c, d in onestop_dossiers(bus_env).items() if c not in defective_codes(bus_env))
    record = load_mapping(dossier_status.MAPPING).apply(dossier)
    portal = NationalPortalClient.from_connection(connection_from_env("national_portal_default"))
    assert portal.sync_dossiers([record], is_updating=False).accepted == [code]
    _, delivered = run("run-1")
    assert delivered["rejected"] == len(defective_codes(bus_env))
    assert [h["isUpdating"] for h in portal_history(bus_env, code)] == ["False", "True"]
    assert portal_dossiers(bus_env) == expected_portal_state(bus_env)


def test_portal_outage_loses_nothing_and_the_rerun_sends_each_dossier_once(bus_env):
    requests.post(bus_env.portal.url + "/_admin/faults",
                  json={"error_rate": 1.0, "http_status": 503, "operations": ["DongBoHoSoMC"]}, timeout=T)
    tasks.stage_dossier_changes(connection_from_env, run_id="run-1", task_id="stage")
    with pytest.raises(PeerUnavailable):
        tasks.deliver_dossier_statuses(connection_from_env, run_id="run-1", task_id="deliver")
    assert portal_dossiers(bus_env) == {}
    with store().engine.connect() as conn:
        pending = conn.execute(select(func.count()).select_from(outbox).where(outbox.c.state == "pending")).scalar()
    assert pending == len(onestop_dossiers(bus_env)) - len(defective_codes(bus_env))
    requests.post(bus_env.portal.url + "/_admin/faults", json={}, timeout=T)
    # Airflow's retry of the same task:
    tasks.deliver_dossier_statuses(connection_from_env, run_id="run-1", task_id="deliver")
    assert portal_dossiers(bus_env) == expected_portal_state(bus_env)
    for code in expected_portal_state(bus_env):
        assert len(portal_history(bus_env, code)) == 1, code


def test_answer_lost_after_the_portal_applied_a_batch_has_one_effect(bus_env):
    # The portal applies the insert, then answers 500: retries meet "đã tồn tại" and turn into
    # updates carrying the same content, so the portal ends with exactly one, correct record.
    requests.post(bus_env.portal.url + "/_admin/faults",
                  json={"ambiguous_rate": 1.0, "operations": ["DongBoHoSoMC"], "seed": 3}, timeout=T)
    tasks.stage_dossier_changes(connection_from_env, run_id="run-1", task_id="stage")
    with pytest.raises(PeerUnavailable):
        tasks.deliver_dossier_statuses(connection_from_env, run_id="run-1", task_id="deliver", batch_size=100)
    requests.post(bus_env.portal.url + "/_admin/faults", json={}, timeout=T)
    _, delivered = run("run-2", batch_size=100)
    expected = expected_portal_state(bus_env)
    assert portal_dossiers(bus_env) == expected
    assert delivered["delivered_new"] == 0
    assert delivered["delivered_update"] == len(expected)  # each insert came back as "đã tồn tại"
    for code, record in expected.items():
        history = portal_history(bus_env, code)
        assert history[0]["isUpdating"] == "False", code
        assert all(h["isUpdating"] == "True" for h in history[1:]), code
        assert all(h["record"] == record for h in history), code  # every application had the same content


def test_expired_session_is_renewed_without_losing_the_batch(bus_env):
    tasks.stage_dossier_changes(connection_from_env, run_id="run-1", task_id="stage")
    from connectors.national_portal.client import NationalPortalClient

    portal = NationalPortalClient.from_connection(connection_from_env("national_portal_default"))
    portal.login()
    requests.post(bus_env.portal.url + "/_admin/expire-sessions", timeout=T)
    report = dossier_status.deliver_pending(store(), portal, run_id="run-1")
    assert portal.logins == 2
    assert report.delivered_new == len(expected_portal_state(bus_env))
    assert portal_dossiers(bus_env) == expected_portal_state(bus_env)


def test_the_flow_on_postgresql_delivers_every_dossier_and_entry_once_and_a_rerun_sends_nothing(bus_env, monkeypatch):
    """The same path on a PostgreSQL bus database (the statements built once, the chunk taken by
    ``UPDATE … RETURNING``, the blocks read by a correlated ``EXISTS``): the portal holds exactly what
    the mapping makes, each progress entry once, and a second run changes nothing."""
    from urllib.parse import urlsplit

    from tests.conftest import postgres_database

    with postgres_database("lienthong_flow") as url:
        parts = urlsplit(url.replace("postgresql+psycopg2", "postgresql"))
        monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB", json.dumps({
            "conn_type": "postgres", "host": parts.hostname, "port": parts.port, "login": parts.username,
            "schema": parts.path.lstrip("/")}))
        bus = store()
        try:
            assert bus.engine.dialect.name == "postgresql"
            _, delivered = run("run-1", batch_size=7)
            expected = expected_portal_state(bus_env)
            assert portal_dossiers(bus_env) == expected
            world = requests.get(bus_env.portal.url + "/_state", timeout=T).json()["counts"]
            finished = sum(1 for code, d in onestop_dossiers(bus_env).items() if code in expected
                           for e in d.get("progress") or [] if e.get("finishedAt"))
            assert int(world["progress"]) == delivered["progress_sent"] == finished > 0
            assert delivered["progress_rejected"] == 0 and delivered["delivered_new"] == len(expected)
            _, again = run("run-2")
            assert again["portal_calls"] == again["progress_calls"] == 0
            assert int(requests.get(bus_env.portal.url + "/_state", timeout=T).json()["counts"]["progress"]) == finished
        finally:
            bus.dispose()


def test_a_worker_holds_one_batchs_leases_not_every_dossiers(bus_env):
    """At 1,000,000 dossiers the delivery held every dossier's lease until it ended, and renewing
    them (after half their life) re-leased all at once: 419 MB against 147 MB at 100,000 (the
    benchmark's memory line, issue #8). Settled dossiers' leases now go back batch by batch."""
    from datetime import timedelta

    from connectors.national_portal.client import NationalPortalClient
    from lienthong.exchange_log import BusRecorder
    from lienthong.leases import Leases
    from lienthong.store import delivery_lease

    class Counting(Leases):
        most = 0

        def ensure(self, keys, conn=None):
            mine = super().ensure(keys, conn)
            Counting.most = max(Counting.most, len(self.held))
            return mine

    tasks.stage_dossier_changes(connection_from_env, run_id="run-1")
    bus = store()
    portal = NationalPortalClient.from_connection(
        connection_from_env(tasks.NATIONAL_PORTAL_CONN_ID), recorder=BusRecorder(bus, dossier_status.FLOW, "run-1"))
    # renewing at every call (a lease life of zero) must not grow what is held either
    report = dossier_status.deliver_pending(bus, portal, run_id="run-1", batch_size=5,
                                            leases=Counting(bus, dossier_status.FLOW, "w1", ttl=timedelta(0)))
    assert report.delivered_new == len(expected_portal_state(bus_env))
    assert 0 < Counting.most <= 10
    Counting.most = 0
    progress = dossier_status.deliver_progress(bus, portal, run_id="run-1", chunk_size=4,
                                               leases=Counting(bus, dossier_status.FLOW, "w2", ttl=timedelta(0)))
    assert progress.sent > 0 and progress.rejected == []
    assert 0 < Counting.most <= 8
    with bus.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(delivery_lease)).scalar_one() == 0
    portal.close()
    assert portal_dossiers(bus_env) == expected_portal_state(bus_env)


class _RowlessPortal(ForwardingProxy):
    """A proxy in front of the portal stand-in that answers a refused ``service`` call (DongBoHoSoMC,
    or CapNhatTienDoHoSoMC) of several records as the portal's own clients read it (contract §3.3,
    §7.5): ``error_code`` and ``message`` only, no per-record ``result`` rows (a one-record call's
    too when ``strip_singles``). ``fail_after``: once
    that many one-record calls have been answered, every such call is answered 503 (not passed on)."""

    forwarded = ("content-type", "dstcode")

    def __init__(self, target: str, fail_after: int | None = None, service: str = "DongBoHoSoMC"):
        self.fail_after = fail_after
        self.service = service
        self.strip_singles = False  # True: a refused one-record call loses its rows too
        self.fail_after_calls: int | None = None  # as fail_after, counting every call passed on
        self.sent: list[list[str]] = []  # each call's records' MaHoSo
        self.calls: list[tuple[int, str]] = []  # (dossiers, error_code) of each call passed on
        self.keys: list[str | None] = []  # each call's dossier when it carried one
        self.singles = 0
        self.stripped = 0
        super().__init__(target, T)

    def answer(self, body, forward):
        kind = "application/json; charset=utf-8"
        request = json.loads(body)
        data = request.get("data") if request.get("service") == self.service else None
        if data is not None and (self.fail_after is not None and self.singles >= self.fail_after
                                 or self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls):
            return 503, b"", kind
        upstream = forward()
        content = upstream.content
        if data is not None:
            answer = upstream.json()
            self.calls.append((len(data), str(answer.get("error_code"))))
            self.keys.append(data[0]["MaHoSo"] if len(data) == 1 else None)
            self.sent.append([d["MaHoSo"] for d in data])
            if len(data) == 1:
                self.singles += 1
            if (len(data) > 1 or self.strip_singles) and str(answer.get("error_code")) != "0" and "result" in answer:
                del answer["result"]
                self.stripped += 1
                content = json.dumps(answer, ensure_ascii=False).encode()
        return upstream.status_code, content, kind


@pytest.fixture
def rowless_portal(bus_env, monkeypatch):
    proxy = _RowlessPortal(bus_env.portal.url)
    conn = json.loads(os.environ["AIRFLOW_CONN_NATIONAL_PORTAL_DEFAULT"])
    monkeypatch.setenv("AIRFLOW_CONN_NATIONAL_PORTAL_DEFAULT", json.dumps({**conn, "port": proxy.port}))
    yield proxy
    proxy.close()


def _created_beforehand(bus_env, count: int) -> list[str]:
    """``count`` mappable dossiers created on the portal by someone else (directly, not via the proxy)."""
    from connectors.connection import Secret
    from connectors.national_portal.client import NationalPortalClient

    conn = json.loads(os.environ["AIRFLOW_CONN_NATIONAL_PORTAL_DEFAULT"])
    portal = NationalPortalClient(bus_env.portal.url, conn["login"], Secret(conn["password"]),
                                  conn["extra"]["madonvi"])
    mapping = load_mapping(dossier_status.MAPPING)
    bad = defective_codes(bus_env)
    codes = sorted(c for c in onestop_dossiers(bus_env) if c not in bad)[3:3 + count]
    for code in codes:
        assert portal.sync_dossiers([mapping.apply(onestop_dossiers(bus_env)[code])],
                                    is_updating=False).accepted == [code]
    return codes


def _portal_calls(run_id: str) -> list[str]:
    with store().engine.connect() as conn:
        return [r.outcome for r in conn.execute(
            select(exchange_log.c.outcome).where(exchange_log.c.run_id == run_id,
                                                 exchange_log.c.operation == "DongBoHoSoMC")
            .order_by(exchange_log.c.id))]


def test_a_batch_refused_without_naming_a_dossier_is_sent_one_dossier_per_call(bus_env, rowless_portal):
    """A call of several dossiers refused "đã tồn tại" with no ``result`` rows was a ProtocolError
    for the whole call: the delivery step failed there on every run. Its dossiers now go again one
    per call; the one the portal holds is sent as an update, each of the others inserted once."""
    held = _created_beforehand(bus_env, 2)
    expected = expected_portal_state(bus_env)
    _, delivered = run("run-1", batch_size=50)
    assert rowless_portal.stripped == 1
    # the batch (refused, naming none), each of its dossiers alone, then the two held ones as one update
    alone = rowless_portal.keys[1:-1]
    assert sorted(alone) == sorted(expected)  # each once
    assert rowless_portal.calls == [(len(expected), "3")] + [(1, "3" if c in held else "0") for c in alone] \
        + [(2, "0")]
    assert delivered["portal_calls"] == len(expected) + 2
    assert delivered["delivered_new"] == len(expected) - 2 and delivered["delivered_update"] == 2
    assert delivered["rejected"] == len(defective_codes(bus_env))
    assert portal_dossiers(bus_env) == expected
    for code in expected:
        assert [h["isUpdating"] for h in portal_history(bus_env, code)] == (
            ["False", "True"] if code in held else ["False"]), code
    # the exchange log tells it as it went: every call, the refused ones as refused
    assert _portal_calls("run-1") == ["peer_error"] + ["peer_error" if c in held else "ok" for c in alone] \
        + ["ok"]
    assert run("run-2")[1]["portal_calls"] == 0


def test_a_dossier_accepted_in_a_split_batch_is_not_sent_again_after_an_outage(bus_env, rowless_portal):
    """The portal goes away in the middle of the one-per-call resend: the dossiers it accepted by
    then are acknowledged (not sent again), the rest go on the next run, each inserted once."""
    held = _created_beforehand(bus_env, 1)
    expected = expected_portal_state(bus_env)
    rowless_portal.fail_after = 5
    tasks.stage_dossier_changes(connection_from_env, run_id="run-1", task_id="stage")
    with pytest.raises(PeerUnavailable):
        tasks.deliver_dossier_statuses(connection_from_env, run_id="run-1", task_id="deliver", batch_size=50)
    first = rowless_portal.keys[1:6]
    assert len(first) == 5 and rowless_portal.calls[0] == (len(expected), "3")
    assert [c for c in first if c not in held] == [c for c in portal_dossiers(bus_env) if c not in held]
    with store().engine.connect() as conn:
        delivered = set(conn.execute(select(outbox.c.record_key).where(outbox.c.state == "delivered")).scalars())
    assert delivered == {c for c in first if c not in held}
    rowless_portal.fail_after = None
    _, report = run("run-2", batch_size=50)
    assert portal_dossiers(bus_env) == expected
    for code in expected:
        assert [h["isUpdating"] for h in portal_history(bus_env, code)] == (
            ["False", "True"] if code in held else ["False"]), code
    assert report["delivered_new"] + report["delivered_update"] == len(expected) - len(delivered)


def test_a_batch_refused_invalid_without_naming_a_dossier_dead_letters_only_the_invalid_one(
        bus_env, rowless_portal):
    """A call of several dossiers refused -1 (a field's rule: here a procedure the national
    catalogue lacks) with no ``result`` rows was a FatalConnectorError: the delivery step failed at
    once at that batch on every run and no dossier of it or behind it was delivered. Nothing of
    such a call is applied, so its dossiers go again one per call: the others are inserted once
    each, and the invalid one, refused -1 without rows too, is dead-lettered with the portal's
    message (MaHoSo, portal_code_-1)."""
    rowless_portal.strip_singles = True
    expected = expected_portal_state(bus_env)
    tasks.stage_dossier_changes(connection_from_env, run_id="run-1", task_id="stage")
    invalid = sorted(expected)[2]
    with store().begin() as conn:
        row = conn.execute(select(outbox.c.id, outbox.c.source_payload).where(
            outbox.c.record_key == invalid, outbox.c.state == "pending")).one()
        conn.execute(outbox.update().where(outbox.c.id == row.id).values(
            source_payload={**row.source_payload, "serviceCode": "1.999999.000.00.00.H49"}))
    delivered = tasks.deliver_dossier_statuses(connection_from_env, run_id="run-1", task_id="deliver",
                                               batch_size=50)
    alone = rowless_portal.keys[1:]
    assert sorted(alone) == sorted(expected)  # each once
    assert rowless_portal.calls == [(len(expected), "-1")] + [(1, "-1" if c == invalid else "0") for c in alone]
    assert rowless_portal.stripped == 2 and delivered["portal_calls"] == len(expected) + 1
    assert delivered["delivered_new"] == len(expected) - 1
    assert delivered["rejected"] == len(defective_codes(bus_env)) + 1
    del expected[invalid]
    assert portal_dossiers(bus_env) == expected
    letter = next(d for d in store().dead_letters(dossier_status.FLOW) if d["record_key"] == invalid)
    assert [(e["field"], e["rule"]) for e in letter["errors"]] == [("MaHoSo", "portal_code_-1")]
    assert "1.999999.000.00.00.H49" in letter["errors"][0]["message"] and letter["peer_code"] == "-1"
    assert _portal_calls("run-1") == ["peer_error"] + ["peer_error" if c == invalid else "ok" for c in alone]
    assert run("run-2")[1]["portal_calls"] == 0


@pytest.fixture
def rowless_progress(bus_env, monkeypatch):
    proxy = _RowlessPortal(bus_env.portal.url, service="CapNhatTienDoHoSoMC")
    conn = json.loads(os.environ["AIRFLOW_CONN_NATIONAL_PORTAL_DEFAULT"])
    monkeypatch.setenv("AIRFLOW_CONN_NATIONAL_PORTAL_DEFAULT", json.dumps({**conn, "port": proxy.port}))
    yield proxy
    proxy.close()


def _expected_progress(standins) -> dict[str, list[dict]]:
    mapping = load_mapping(dossier_status.PROGRESS_MAPPING)
    bad = defective_codes(standins)
    return {code: sorted((mapping.apply({**e, "dossierNo": code}) for e in d["progress"] if e["finishedAt"]),
                         key=lambda r: r["ThoiDiemXuLy"])
            for code, d in onestop_dossiers(standins).items() if code not in bad}


def _portal_progress(standins) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    items = requests.get(standins.portal.url + "/_state/progress", timeout=T).json()["progress"]
    for p in sorted(items, key=lambda p: p["seq"]):
        out.setdefault(p["MaHoSo"], []).append(p["record"])
    return out


def _refused_progress_setup(bus_env, *, finished: bool = True) -> tuple[str | None, str]:
    """Dossiers delivered, their progress staged, not sent; then the portal will refuse two dossiers'
    entries: ``F`` (final; another system already appended its final step: code 6) and ``U`` (its
    entries staged for a dossier the portal does not hold: code 4). Returns (F, U)."""
    from connectors.connection import Secret
    from connectors.national_portal.client import NationalPortalClient

    tasks.stage_dossier_changes(connection_from_env, run_id="run-1", task_id="stage")
    tasks.deliver_dossier_statuses(connection_from_env, run_id="run-1", task_id="deliver", batch_size=50)
    expected = _expected_progress(bus_env)
    final = None
    if finished:
        final = next(c for c, d in sorted(portal_dossiers(bus_env).items())
                     if d["TrangThaiHoSo"] in ("3", "7", "10") and len(expected[c]) >= 2)
        conn = json.loads(os.environ["AIRFLOW_CONN_NATIONAL_PORTAL_DEFAULT"])
        direct = NationalPortalClient(bus_env.portal.url, conn["login"], Secret(conn["password"]),
                                      conn["extra"]["madonvi"])
        foreign = {**expected[final][-1], "ThoiDiemXuLy": "20200101000000",
                   "TrangThai": portal_dossiers(bus_env)[final]["TrangThaiHoSo"]}
        assert direct.update_progress([foreign]).accepted == [0]
    base = next(d for c, d in sorted(onestop_dossiers(bus_env).items())
                if c in expected and len(expected[c]) >= 3 and c != final)
    unknown = base["dossierNo"].rsplit("-", 1)[0] + "-9902"
    item = dossier_status._Item(outbox_id=0, key=unknown, version=1, source={**base, "dossierNo": unknown},
                                record={}, digest="", attempts=0)
    with store().begin() as conn:
        dossier_status._stage_progress(conn, load_mapping(dossier_status.PROGRESS_MAPPING), [item], "run-1")
    return final, unknown


def _progress_states(key: str) -> list[str]:
    from lienthong.store import progress_outbox

    with store().engine.connect() as conn:
        return list(conn.execute(select(progress_outbox.c.state).where(progress_outbox.c.record_key == key)
                                 .order_by(progress_outbox.c.occurred_at, progress_outbox.c.step_id)).scalars())


def test_a_progress_chunk_refused_without_naming_an_entry_is_sent_one_dossier_then_one_entry_per_call(
        bus_env, rowless_progress):
    """A CapNhatTienDoHoSoMC chunk of several dossiers refused "finished" (6) or "unknown" (4) with
    no ``result`` rows was a ProtocolError: the progress step failed at that chunk on every run and
    no entry behind it was ever sent. Nothing of such a call was applied, so its entries now go
    again one dossier per call (one entry per call for a dossier refused so): every other dossier's
    entries land once each, the refused dossier's first entry is dead-lettered with its code and
    the rest of it held."""
    final, unknown = _refused_progress_setup(bus_env)
    expected = _expected_progress(bus_env)
    foreign = _portal_progress(bus_env)[final]
    report = tasks.deliver_dossier_progress(connection_from_env, run_id="p-1", task_id="progress", chunk_size=10)
    held = _portal_progress(bus_env)
    for code, entries in expected.items():  # each entry exactly once, in order
        assert held.get(code, []) == (foreign if code == final else entries), code
    assert unknown not in held
    letters = {d["record_key"]: d for d in store().dead_letters(dossier_status.PROGRESS_FLOW)}
    assert {k.split("#")[0]: [(e["field"], e["rule"]) for e in d["errors"]] for k, d in letters.items()} == {
        final: [("MaHoSo", "portal_code_6")], unknown: [("MaHoSo", "portal_code_4")]}
    n_final, n_unknown = len(expected[final]), len(_progress_states(unknown))
    assert _progress_states(final) == ["rejected"] + ["held"] * (n_final - 1)
    assert _progress_states(unknown) == ["rejected"] + ["held"] * (n_unknown - 1)
    good = sum(len(e) for c, e in expected.items() if c != final)
    assert report["progress_sent"] == good and report["progress_rejected"] == 2
    assert report["progress_held"] == n_final - 1 + n_unknown - 1
    # the refused calls: each stripped, then its entries again, a dossier per call; nothing accepted twice
    # the refused calls: the chunk, then the refused dossier's entries alone, then its first entry
    assert [code for _, code in rowless_progress.calls if code != "0"] == ["4", "4", "4", "6", "6", "6"]
    assert rowless_progress.stripped == 4 and report["progress_calls"] == len(rowless_progress.calls)
    for i, (n, code) in enumerate(rowless_progress.calls):
        dossiers = list(dict.fromkeys(rowless_progress.sent[i]))
        if code != "0" and len(dossiers) > 1:  # followed by its entries again, a dossier per call, in order
            assert rowless_progress.sent[i + 1:i + 1 + len(dossiers)] == [
                [k for k in rowless_progress.sent[i] if k == d] for d in dossiers]
    accepted = [k for (n, code), keys in zip(rowless_progress.calls, rowless_progress.sent) if code == "0"
                for k in keys]
    assert len(accepted) == good  # nothing accepted twice
    assert tasks.deliver_dossier_progress(connection_from_env, run_id="p-2", task_id="progress")[
        "progress_calls"] == 0


def test_progress_accepted_while_a_refused_chunk_is_sent_again_is_not_sent_again_after_an_outage(
        bus_env, rowless_progress):
    """The portal goes away while a chunk refused naming none of its entries is sent again dossier
    by dossier: the dossier accepted by then is acknowledged, the others (in flight) are reconciled
    by the portal's count on the next run and sent then, each entry held once."""
    _, unknown = _refused_progress_setup(bus_env, finished=False)
    expected = _expected_progress(bus_env)
    rowless_progress.fail_after_calls = 2  # the refused chunk, then its first dossier alone
    with pytest.raises(PeerUnavailable):
        tasks.deliver_dossier_progress(connection_from_env, run_id="p-1", task_id="progress", chunk_size=10)
    assert rowless_progress.calls == [(10, "4"), (len(rowless_progress.sent[1]), "0")]
    first = rowless_progress.sent[1][0]
    assert _portal_progress(bus_env) == {first: expected[first]}
    assert set(_progress_states(first)) == {"acked"}
    rowless_progress.fail_after_calls = None
    report = tasks.deliver_dossier_progress(connection_from_env, run_id="p-2", task_id="progress", chunk_size=10)
    held = _portal_progress(bus_env)
    for code, entries in expected.items():
        assert held.get(code, []) == entries, code
    assert unknown not in held and report["progress_rejected"] == 1
    assert report["progress_sent"] == sum(len(e) for e in expected.values()) - len(expected[first])
