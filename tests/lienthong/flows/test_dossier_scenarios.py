"""Scenario tests of the complete dossier flow (issue: dossier status sync, complete), stand-ins as
real servers. Each scenario checks the portal's own state field by field: dossiers equal to the
mapping of the one-stop's current snapshot, every progress entry held exactly once and in order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from connectors.connection import connection_from_env
from connectors.errors import RetriableConnectorError
from lienthong import tasks
from lienthong.flows import dossier_status
from lienthong.mapping import load_mapping
from lienthong.store import outbox, utcnow

T = 10
REPO = Path(__file__).resolve().parents[3]


# --- helpers -------------------------------------------------------------------------------------
def get(standins, peer, path):
    base = standins.onestop.url if peer == "onestop" else standins.portal.url
    return requests.get(base + path, timeout=T).json()


def post(standins, peer, path, body=None):
    base = standins.onestop.url if peer == "onestop" else standins.portal.url
    return requests.post(base + path, json=body or {}, timeout=T).json()


def store():
    return tasks.open_store(connection_from_env)


def run(run_id, **kw):
    staged = tasks.stage_dossier_changes(connection_from_env, run_id=run_id, task_id="stage",
                                         feed_from=kw.pop("feed_from", None), window_from=kw.pop("window_from", None),
                                         window_to=kw.pop("window_to", None))
    delivered = tasks.deliver_dossier_statuses(connection_from_env, run_id=run_id, task_id="deliver", **kw)
    delivered.update(tasks.deliver_dossier_progress(connection_from_env, run_id=run_id, task_id="progress"))
    return staged, delivered


def run_until_done(prefix, attempts=40, **kw):
    """What Airflow's retries do: rerun the failed step until it passes."""
    for i in range(attempts):
        try:
            return run(f"{prefix}-{i}", **kw)
        except RetriableConnectorError:
            continue
    raise AssertionError(f"no clean run in {attempts} attempts")


def defective(standins):
    return {d["dossierNo"] for d in get(standins, "onestop", "/_state")["defective"]}


def expected_dossiers(standins):
    mapping = load_mapping(dossier_status.MAPPING)
    return {d["dossierNo"]: mapping.apply(d) for d in get(standins, "onestop", "/_state/dossiers")["dossiers"]
            if d["dossierNo"] not in defective(standins)}


def expected_progress(standins):
    """Every finished one-stop progress step of every deliverable dossier, mapped, in time order."""
    mapping = load_mapping(dossier_status.PROGRESS_MAPPING)
    out = {}
    for d in get(standins, "onestop", "/_state/dossiers")["dossiers"]:
        if d["dossierNo"] in defective(standins):
            continue
        entries = [mapping.apply({**e, "dossierNo": d["dossierNo"]}) for e in d["progress"] if e["finishedAt"]]
        out[d["dossierNo"]] = sorted(entries, key=lambda r: r["ThoiDiemXuLy"])
    return out


def portal_dossiers(standins):
    return {d["MaHoSo"]: d for d in get(standins, "portal", "/_state/dossiers")["dossiers"]}


def portal_progress(standins):
    out: dict[str, list] = {}
    for p in sorted(get(standins, "portal", "/_state/progress")["progress"], key=lambda p: p["seq"]):
        out.setdefault(p["MaHoSo"], []).append(p["record"])
    return out


def assert_portal_agrees(standins):
    """The invariant: the portal holds exactly the one-stop world, each progress entry once."""
    assert portal_dossiers(standins) == expected_dossiers(standins)
    held = portal_progress(standins)
    for code, entries in expected_progress(standins).items():
        assert held.get(code, []) == entries, code
    assert set(held) <= set(expected_progress(standins))


def histories(standins, code):
    return get(standins, "portal", f"/_state/dossiers/{code}")["history"]


# --- scenarios -----------------------------------------------------------------------------------
def test_new_dossiers_status_changes_and_progress_steps(bus_env):
    _, first = run("r1", batch_size=9)
    assert_portal_agrees(bus_env)
    assert first["progress_sent"] == sum(len(v) for v in expected_progress(bus_env).values())
    moved = post(bus_env, "onestop", "/_admin/advance", {"new": 4, "changes": 8})
    _, second = run("r2")
    assert_portal_agrees(bus_env)
    changed = {c["dossierNo"] for c in moved["changed"]} - defective(bus_env) - set(moved["created"])
    assert second["delivered_update"] == len(changed)
    assert second["delivered_new"] == len(set(moved["created"]) - defective(bus_env))
    # only the new steps were sent: one per transition, plus the new dossiers' histories
    new_steps = len(moved["changed"]) - sum(1 for c in moved["changed"] if c["dossierNo"] in defective(bus_env))
    new_dossier_steps = sum(len(expected_progress(bus_env)[c]) for c in set(moved["created"]) - defective(bus_env))
    assert second["progress_sent"] == new_steps + new_dossier_steps - sum(
        1 for c in moved["changed"] if c["dossierNo"] in set(moved["created"]))


def test_progress_is_sent_in_chunks_after_the_dossier(bus_env):
    _, delivered = run("r1")
    total = sum(len(v) for v in expected_progress(bus_env).values())
    assert delivered["progress_calls"] == -(-total // 10)  # chunks of 10 (connection default)
    calls = [e for e in get(bus_env, "portal", "/_state/calls")]
    assert "CapNhatTienDoHoSoMC" in calls


def test_session_expiry_mid_run_loses_nothing(bus_env):
    post(bus_env, "portal", "/_admin/faults", {"session_expire_every": 2})
    run("r1", batch_size=5)
    assert_portal_agrees(bus_env)
    logins = get(bus_env, "portal", "/_state/calls")["login"]
    assert sum(logins.values()) > 4


@pytest.mark.parametrize("faults", [
    {"error_rate": 0.35, "http_status": 503, "seed": 11},
    {"drop_rate": 0.3, "seed": 12},
    {"ambiguous_rate": 0.3, "seed": 13},
], ids=["5xx", "resets", "lost-answers"])
def test_injected_faults_lose_nothing_and_duplicate_nothing(bus_env, faults):
    post(bus_env, "portal", "/_admin/faults", faults)
    run_until_done("r", batch_size=6)
    post(bus_env, "portal", "/_admin/faults", {})
    post(bus_env, "onestop", "/_admin/advance", {"new": 2, "changes": 5})
    post(bus_env, "portal", "/_admin/faults", faults)
    run_until_done("s", batch_size=6)
    post(bus_env, "portal", "/_admin/faults", {})
    assert_portal_agrees(bus_env)
    for code, record in expected_dossiers(bus_env).items():
        history = histories(bus_env, code)
        assert history[0]["isUpdating"] == "False", code
        # every application after the first changed something or repeated the same content
        assert history[-1]["record"] == record


def test_replies_slower_than_the_client_timeout_are_reconciled(bus_env, monkeypatch):
    conn = json.loads(os.environ["AIRFLOW_CONN_NATIONAL_PORTAL_DEFAULT"])
    conn["extra"].update({"read_timeout": 0.4, "max_attempts": 1})
    monkeypatch.setenv("AIRFLOW_CONN_NATIONAL_PORTAL_DEFAULT", json.dumps(conn))
    post(bus_env, "portal", "/_admin/faults", {"latency_ms": 900, "operations": ["DongBoHoSoMC"]})
    with pytest.raises(RetriableConnectorError):
        run("r1", batch_size=100)
    time.sleep(1.0)  # the portal finishes the call the client gave up on
    post(bus_env, "portal", "/_admin/faults", {})
    _, delivered = run("r2", batch_size=100)
    assert delivered["looked_up"] == len(expected_dossiers(bus_env))
    assert_portal_agrees(bus_env)
    for code, record in expected_dossiers(bus_env).items():
        history = histories(bus_env, code)
        assert len(history) <= 2 and all(h["record"] == record for h in history), code


def test_unmappable_dossier_is_dead_lettered_and_replayed_after_a_mapping_fix(bus_env, tmp_path, monkeypatch):
    run("r1")
    unmapped = next(d["dossierNo"] for d in get(bus_env, "onestop", "/_state")["defective"]
                    if d["defect"] == "unmapped_status")
    assert unmapped not in portal_dossiers(bus_env)
    # the engineer maps 'interoperating' to "4" (Đang xử lý) in a copy of the mappings, no Python
    _map_interoperating(tmp_path, monkeypatch)
    assert load_mapping(dossier_status.MAPPING).apply(
        get(bus_env, "onestop", f"/_state/dossiers/{unmapped}")["dossier"])["TrangThaiHoSo"] == "4"
    letters = [d for d in store().dead_letters(dossier_status.FLOW) if d["record_key"] == unmapped]
    result = dossier_status.replay(store(), dead_letter_ids=[letters[0]["id"]])
    assert result.requeued == [unmapped]
    _, delivered = run("r2")
    assert delivered["delivered_new"] == 1
    assert portal_dossiers(bus_env)[unmapped]["TrangThaiHoSo"] == "4"
    assert len(histories(bus_env, unmapped)) == 1
    _, again = run("r3")  # replayed once, not again
    assert again["portal_calls"] == 0
    assert store().dead_letters(dossier_status.FLOW, unresolved_only=True) == [
        d for d in store().dead_letters(dossier_status.FLOW) if d["record_key"] != unmapped]


def _late_snapshot(key, dossier, *, version, seq, status=None, **changes):
    snapshot = {**dossier, **changes, "version": version}
    if status:
        snapshot["dossierStatus"] = status
    return {"flow": dossier_status.FLOW, "record_key": key, "source_seq": seq, "source_version": version,
            "source_payload": snapshot, "state": "pending", "attempts": 0, "staged_at": utcnow()}


def test_dossier_in_error_holds_back_its_own_later_changes_only(bus_env):
    run("r1")
    missing = next(d["dossierNo"] for d in get(bus_env, "onestop", "/_state")["defective"]
                   if d["defect"] == "missing_receive_date")
    dossier = get(bus_env, "onestop", f"/_state/dossiers/{missing}")["dossier"]
    # the one-stop sends a later change of the same dossier (still defective) and others move on
    s = store()
    with s.begin() as conn:
        conn.execute(outbox.insert().values(**_late_snapshot(missing, dossier, version=dossier["version"] + 1,
                                                             seq=10_000, briefNote="Bổ sung lần 2")))
    post(bus_env, "onestop", "/_admin/advance", {"new": 2, "changes": 3})
    _, delivered = run("r2")
    assert delivered["held"] == 1  # held back, not re-rejected
    assert delivered["delivered_new"] + delivered["delivered_update"] >= 2  # the others went through
    assert missing not in portal_dossiers(bus_env)
    # the one-stop fixes the dossier; still held until the dead letter is replayed
    with s.begin() as conn:
        conn.execute(outbox.insert().values(**_late_snapshot(
            missing, dossier, version=dossier["version"] + 2, seq=10_001,
            receiveDate="2026-11-03T09:00:00+07:00")))
    assert run("r3")[1]["held"] == 1 and missing not in portal_dossiers(bus_env)
    dossier_status.replay(s, record_key=missing)
    _, delivered = run("r4")
    assert delivered["delivered_new"] == 1
    held = portal_dossiers(bus_env)[missing]
    assert held["NgayTiepNhan"] == "20261103090000"
    assert len(histories(bus_env, missing)) == 1


def test_out_of_order_updates_never_regress_a_final_status(bus_env):
    run("r1")
    done = next(d for d in get(bus_env, "onestop", "/_state/dossiers")["dossiers"]
                if d["dossierStatus"] == "done" and d["dossierNo"] not in defective(bus_env))
    code = done["dossierNo"]
    assert portal_dossiers(bus_env)[code]["TrangThaiHoSo"] == "10"
    s = store()
    with s.begin() as conn:  # an older snapshot arrives late
        conn.execute(outbox.insert().values(**_late_snapshot(code, done, version=done["version"] - 1, seq=20_000,
                                                             status="releasing")))
    _, delivered = run("r2")
    assert delivered["stale"] == 1 and delivered["portal_calls"] == 0
    assert portal_dossiers(bus_env)[code]["TrangThaiHoSo"] == "10"
    with s.begin() as conn:  # a newer snapshot that would reopen a returned dossier
        conn.execute(outbox.insert().values(**_late_snapshot(code, done, version=done["version"] + 1, seq=20_001,
                                                             status="processing")))
    _, delivered = run("r3")
    assert delivered["rejected"] == 1 and delivered["portal_calls"] == 0
    letter = [d for d in s.dead_letters(dossier_status.FLOW) if d["record_key"] == code][0]
    assert letter["stage"] == "guard" and letter["errors"][0]["rule"] == "final_status"
    assert portal_dossiers(bus_env)[code]["TrangThaiHoSo"] == "10"


def test_lost_answer_on_progress_is_reconciled_not_resent(bus_env):
    post(bus_env, "portal", "/_admin/faults", {"ambiguous_rate": 1.0, "operations": ["CapNhatTienDoHoSoMC"]})
    with pytest.raises(RetriableConnectorError):
        run("r1")
    post(bus_env, "portal", "/_admin/faults", {})
    _, delivered = run("r2")
    assert delivered["progress_reconciled"] > 0
    assert_portal_agrees(bus_env)


def test_crash_between_staging_and_delivery_then_rerun_delivers_exactly_once(bus_env):
    """The task process is killed (SIGKILL) mid-delivery; a rerun finishes the job, once."""
    post(bus_env, "portal", "/_admin/faults", {"latency_ms": 150, "operations": ["DongBoHoSoMC"]})
    env = {**os.environ}
    proc = subprocess.Popen([sys.executable, "-m", "lienthong", "run", "dossier-status", "--batch-size", "3"],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(portal_dossiers(bus_env)) < 6:
            assert proc.poll() is None, "the run finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    post(bus_env, "portal", "/_admin/faults", {})
    partial = len(portal_dossiers(bus_env))
    assert 6 <= partial < len(expected_dossiers(bus_env))
    run("rerun")
    assert_portal_agrees(bus_env)
    for code, record in expected_dossiers(bus_env).items():
        history = histories(bus_env, code)
        assert history[0]["isUpdating"] == "False"
        assert all(h["record"] == record for h in history), code  # no second effect with other content
        assert len(history) <= 2, code


def test_backfill_window_and_full_resend(bus_env):
    run("r1")
    held_before = {c: len(histories(bus_env, c)) for c in expected_dossiers(bus_env)}
    # a window over the whole world: everything staged again, nothing re-sent (already acknowledged)
    staged, delivered = run("r2", window_from="2026-01-01T00:00:00+07:00", window_to="2027-01-01T00:00:00+07:00")
    assert staged["window_events_read"] == len(get(bus_env, "onestop", "/_state/dossiers")["dossiers"])
    assert delivered["portal_calls"] == 0 and delivered["unchanged"] == len(expected_dossiers(bus_env))
    # after the portal lost data: a window with resend_acknowledged delivers it again, as updates
    post(bus_env, "portal", "/_admin/reset")
    staged, delivered = run("r3", window_from="2026-01-01T00:00:00+07:00", window_to="2027-01-01T00:00:00+07:00",
                            resend_acknowledged=True)
    assert delivered["delivered_new"] == len(expected_dossiers(bus_env))  # "không tồn tại" → insert
    assert_portal_agrees(bus_env)  # dossiers and their whole progress history are back
    for code in expected_dossiers(bus_env):
        assert len(histories(bus_env, code)) == 1, code
    assert held_before  # the first run delivered something to compare with


def test_backfill_from_the_feed_and_full_resend(bus_env):
    """The DAG's documented recovery: feed_from="beginning" re-reads the whole feed (nothing the
    portal acknowledged is re-sent), and with resend_acknowledged after the portal lost data,
    everything goes in again. Re-read events were all "already staged" and finished, so nothing
    was pending and the portal stayed empty while the run reported success."""
    run("r1")
    expected = expected_dossiers(bus_env)
    staged, delivered = run("r2", feed_from="beginning")
    refused = len(store().dead_letters(dossier_status.FLOW))  # stay with their dead letter until replayed
    assert refused and staged["already_staged"] == refused
    assert staged["staged"] == staged["events_read"] - refused > 0
    assert delivered["portal_calls"] == 0 and delivered["unchanged"] == len(expected)
    post(bus_env, "portal", "/_admin/reset")
    assert portal_dossiers(bus_env) == {}
    staged, delivered = run("r3", feed_from="beginning", resend_acknowledged=True)
    assert delivered["delivered_new"] == len(expected)  # "không tồn tại" → insert
    assert_portal_agrees(bus_env)  # dossiers and their whole progress history are back
    for code in expected:
        assert len(histories(bus_env, code)) == 1, code
    staged, delivered = run("r4")  # and the bookmark goes on where the feed ends: nothing more
    assert staged["staged"] == 0 and delivered["portal_calls"] == 0


def test_a_window_backfill_stages_every_dossier_of_the_window_while_others_change(bus_env, monkeypatch):
    """The listing is paged by offset over a filter on modifiedAt (docs/wire/onestop.md): a dossier
    of the window that clerks change while the backfill reads leaves it, the dossiers after it move
    up a place, and the first of each next page slid into a page already read: never staged."""
    from datetime import datetime, timedelta

    from connectors.one_stop.client import OneStopClient

    before = get(bus_env, "onestop", "/_state/dossiers")["dossiers"]
    window_to = (max(datetime.fromisoformat(d["modifiedAt"]) for d in before) + timedelta(seconds=1)).isoformat()
    real_page = OneStopClient._page
    moved: list[str] = []

    def page_then_clerks_work(self, path, operation, params):
        result = real_page(self, path, operation, params)
        if operation == "dossiers" and params.get("page") == 1 and not moved:
            world = post(bus_env, "onestop", "/_admin/advance", {"new": 0, "changes": 10})
            moved.extend(c["dossierNo"] for c in world["changed"])
        return result

    monkeypatch.setattr(OneStopClient, "_page", page_then_clerks_work)
    conn = json.loads(os.environ["AIRFLOW_CONN_ONESTOP_DEFAULT"])
    conn["extra"] = {**conn.get("extra", {}), "page_size": 10}  # a few pages over the world's dossiers
    monkeypatch.setenv("AIRFLOW_CONN_ONESTOP_DEFAULT", json.dumps(conn))
    staged, _ = run("window-1", window_from="2000-01-01T00:00:00+07:00", window_to=window_to)
    with store().engine.connect() as db:
        listed = set(db.execute(select(outbox.c.record_key).where(
            outbox.c.staged_run_id == "window-1", outbox.c.source_seq <= 0)).scalars())
    assert moved
    unchanged = {d["dossierNo"] for d in before} - set(moved)
    assert sorted(unchanged - listed) == []
    assert staged["window_events_read"] == len(listed)  # each listed once, none twice


def test_a_snapshot_back_to_the_acknowledged_content_after_a_send_without_answer_is_sent(bus_env):
    """Found by make reliability: a dossier acknowledged as 'processing' went to 'waiting'; that
    snapshot reached the portal but its answer was lost (sent, attempts 1, no acknowledgement);
    then it went back to 'processing' before the next delivery. The newer snapshot replaced the
    unsent one and inherited its mark, yet equalled the acknowledged content, so it was marked
    'unchanged' and never sent: the portal kept 'waiting' for good."""
    import copy

    from lienthong.flows.dossier_status import StageReport, _row, _stage_rows

    run("r1")
    expected = expected_dossiers(bus_env)
    snapshots = {d["dossierNo"]: d for d in get(bus_env, "onestop", "/_state/dossiers")["dossiers"]}
    code = next(c for c, record in expected.items() if snapshots[c]["dossierStatus"] == "processing")
    current = snapshots[code]
    away = copy.deepcopy(current)
    away.update(version=current["version"] + 1, dossierStatus="waiting")
    back = copy.deepcopy(current)
    back["version"] = current["version"] + 2
    bus = store()
    _stage_rows(bus, [_row(away, seq=10_001, run_id="r2")], "r2", StageReport())
    post(bus_env, "portal", "/_admin/faults", {"ambiguous_rate": 1.0, "operations": ["DongBoHoSoMC"], "seed": 3})
    with pytest.raises(RetriableConnectorError):  # applied by the portal, every answer lost
        tasks.deliver_dossier_statuses(connection_from_env, run_id="r2", task_id="deliver")
    post(bus_env, "portal", "/_admin/faults", {})
    assert portal_dossiers(bus_env)[code]["TrangThaiHoSo"] != expected[code]["TrangThaiHoSo"]
    _stage_rows(bus, [_row(back, seq=10_002, run_id="r3")], "r3", StageReport())
    tasks.deliver_dossier_statuses(connection_from_env, run_id="r3", task_id="deliver")
    assert portal_dossiers(bus_env)[code] == expected[code]


def test_dead_letters_keep_attempts(bus_env):
    run("r1")
    letters = store().dead_letters(dossier_status.FLOW)
    assert letters and all(d["attempts"] == 0 for d in letters)  # mapping failures never reached the portal


def test_dossier_without_procedure_name_is_filled_from_the_catalogue(bus_env):
    """Content Enricher: the catalogue flow's snapshot supplies what the one-stop left empty."""
    from lienthong.store import catalogue_current

    dossier = next(d for d in get(bus_env, "onestop", "/_state/dossiers")["dossiers"]
                   if d["dossierNo"] not in defective(bus_env))
    s = store()
    with s.begin() as conn:
        conn.execute(catalogue_current.insert().values(
            procedure_code=dossier["serviceCode"], record={"procedure_code": dossier["serviceCode"],
                                                           "procedure_name": "Tên thủ tục theo danh mục quốc gia",
                                                           "domain_code": "G09-TP03", "domain_name": "Hộ tịch"},
            record_hash="h", published=True, updated_at=utcnow()))
        conn.execute(outbox.insert().values(**_late_snapshot(dossier["dossierNo"], dossier, version=1, seq=1,
                                                             serviceName="", domainName="")))
    tasks.deliver_dossier_statuses(connection_from_env, run_id="r1", task_id="deliver")
    held = portal_dossiers(bus_env)[dossier["dossierNo"]]
    assert held["TenTTHC"] == "Tên thủ tục theo danh mục quốc gia"  # filled: the one-stop sent none
    assert held["TenLinhVuc"] == "Hộ tịch"
    assert held["MaLinhVuc"] == dossier["domainCode"]  # the one-stop's own value is never overridden
    letter_payloads = [d["source_payload"] for d in s.dead_letters(dossier_status.FLOW)]
    assert all(p.get("serviceName") != "Tên thủ tục theo danh mục quốc gia" for p in letter_payloads)


def test_a_step_finished_inside_the_same_status_still_reaches_the_portal(bus_env):
    """Found by the reliability harness (#7): a snapshot whose mapped status equals the one the
    portal acknowledged ("unchanged") may still carry steps finished since; they are sent."""
    run("r1")
    base = next(d for d in get(bus_env, "onestop", "/_state/dossiers")["dossiers"]
                if d["dossierNo"] not in defective(bus_env) and sum(1 for e in d["progress"] if e["finishedAt"]) >= 2)
    finished = [e for e in base["progress"] if e["finishedAt"]]
    code = base["dossierNo"].rsplit("-", 1)[0] + "-9901"
    first = {**base, "dossierNo": code, "version": 1, "progress": finished[:1]}
    post(bus_env, "onestop", "/_admin/dossiers/raw", {"dossier": first})
    run("r2")
    assert len(portal_progress(bus_env)[code]) == 1
    # the next snapshot: the same status fields, one more finished step
    post(bus_env, "onestop", "/_admin/dossiers/raw", {"dossier": {**first, "version": 2, "progress": finished[:2]}})
    _, delivered = run("r3")
    assert delivered["unchanged"] == 1
    held = portal_progress(bus_env)[code]
    mapping = load_mapping(dossier_status.PROGRESS_MAPPING)
    assert held == [mapping.apply({**e, "dossierNo": code}) for e in finished[:2]]


def test_an_older_snapshot_committed_late_after_an_unchanged_newer_one_is_stale(bus_env):
    """v delivered; v+2 maps to what the portal holds (status 4 -> 5 -> 4) and is 'unchanged';
    v+1 (status 5) arrives late on the re-read feed page. It must be stale, not sent over the
    portal's newer content (it was: the acknowledgement still said v; found in review)."""
    run("late-1")
    d = next(x for x in get(bus_env, "onestop", "/_state/dossiers")["dossiers"]
             if x["dossierStatus"] == "processing" and x["dossierNo"] not in defective(bus_env))
    code, v = d["dossierNo"], d["version"]
    s = store()
    with s.begin() as conn:  # v+2: back in processing, the same mapped content as the portal holds
        conn.execute(outbox.insert().values(**_late_snapshot(code, d, version=v + 2, seq=30_002)))
    _, delivered = run("late-2")
    assert delivered["unchanged"] == 1 and delivered["portal_calls"] == 0
    with s.begin() as conn:  # v+1 (waiting for documents), committed late by the feed
        conn.execute(outbox.insert().values(**_late_snapshot(code, d, version=v + 1, seq=30_001, status="waiting")))
    _, delivered = run("late-3")
    assert delivered["stale"] == 1 and delivered["portal_calls"] == 0
    assert portal_dossiers(bus_env)[code]["TrangThaiHoSo"] == "4"


def test_replay_while_a_newer_snapshot_is_pending_delivers_only_the_newest(bus_env, tmp_path, monkeypatch):
    """The unmapped (interoperating) dossier is dead-lettered; its next snapshot is staged before
    the mapping is fixed and the dead letter replayed. Replay put the refused snapshot back beside
    the pending one, both went in one DongBoHoSoMC, and the portal refused both as a dossier given
    twice (found in review); now the newest alone is delivered, once."""
    run("rp-1")
    code = next(d["dossierNo"] for d in get(bus_env, "onestop", "/_state")["defective"]
                if d["defect"] == "unmapped_status")
    d = get(bus_env, "onestop", f"/_state/dossiers/{code}")["dossier"]
    s = store()
    with s.begin() as conn:  # the one-stop moves it on (still interoperating); staged, not yet delivered
        conn.execute(outbox.insert().values(**_late_snapshot(code, d, version=d["version"] + 1, seq=40_000,
                                                             briefNote="Bổ sung")))
    _map_interoperating(tmp_path, monkeypatch)
    assert load_mapping(dossier_status.MAPPING).apply(d)["TrangThaiHoSo"] == "4"
    dossier_status.replay(s, record_key=code)
    # what `lienthong deadletter replay` does next: deliver at once (no staging in between)
    delivered = tasks.deliver_dossier_statuses(connection_from_env, run_id="rp-2", task_id="replay")
    assert [x for x in s.dead_letters(dossier_status.FLOW) if x["record_key"] == code] == []
    assert delivered["delivered_new"] + delivered["delivered_update"] == 1 and delivered["rejected"] == 0
    assert code in portal_dossiers(bus_env)
    assert len(histories(bus_env, code)) == 1


def _map_interoperating(tmp_path, monkeypatch) -> None:
    """What an engineer does for the seeded unmapped dossier: map 'interoperating' to "4" (Đang xử
    lý) in a copy of the mappings, no Python, and point the bus at it."""
    import shutil

    fixed = tmp_path / "mappings"
    shutil.copytree(REPO / "mappings", fixed)
    for path in fixed.rglob("*.yaml"):
        text = path.read_text()
        if "interoperating:" in text and "not_mapped" in text:
            text = text.replace("      processing: \"4\"", "      processing: \"4\"\n      interoperating: \"4\"", 1)
            text = text.replace("    not_mapped:\n      interoperating:", "    not_mapped:\n      interoperating_old:")
            path.write_text(text)
    monkeypatch.setenv("LIENTHONG_MAPPINGS_DIR", str(fixed))


def test_a_backfill_from_a_cursor_past_the_bookmark_leaves_the_bookmark_alone(bus_env):
    """A backfill re-reads the feed from a cursor; it must not move the bookmark. Given a cursor
    past the bookmark (an operator re-reading only the newest events), it set the bookmark there,
    and the events between the old bookmark and that cursor were never staged by any run."""
    from mocks.one_stop.app import encode_cursor

    run("r1")
    first_last = get(bus_env, "onestop", "/_state")["lastSeq"]
    post(bus_env, "onestop", "/_admin/advance", {"new": 4, "changes": 4})
    last = get(bus_env, "onestop", "/_state")["lastSeq"]
    assert last - first_last == 8
    staged, _ = run("r2", feed_from=encode_cursor(last - 2))  # only the last two events
    assert staged["events_read"] == 2
    run("r3")  # the schedule goes on from its bookmark: the six events in between are staged too
    with store().engine.connect() as conn:
        seqs = set(conn.execute(select(outbox.c.source_seq).where(outbox.c.flow == dossier_status.FLOW)).scalars())
    assert seqs == set(range(1, last + 1))
    assert_portal_agrees(bus_env)
