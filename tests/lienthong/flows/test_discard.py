"""``lienthong deadletter discard`` against the stand-ins: a dead letter closed without resending
its record releases what it held back, each later record is sent once, the discarded one never."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta

import requests
from sqlalchemy import select

from connectors.connection import connection_from_env
from connectors.national_portal.client import NationalPortalClient
from lienthong import tasks
from lienthong.cli import main
from lienthong.flows import dossier_status
from lienthong.mapping import load_mapping
from lienthong.store import outbox, progress_outbox, utcnow

T = 10


def _get(env, peer, path):
    return requests.get((env.onestop.url if peer == "onestop" else env.portal.url) + path, timeout=T).json()


def _portal_progress(env, code):
    return [p["record"] for p in sorted(_get(env, "portal", "/_state/progress")["progress"], key=lambda p: p["seq"])
            if p["MaHoSo"] == code]


def _store():
    return tasks.open_store(connection_from_env)


def _stage_and_deliver(run_id):
    tasks.stage_dossier_changes(connection_from_env, run_id=run_id, task_id="stage")
    return tasks.deliver_dossier_statuses(connection_from_env, run_id=run_id, task_id="deliver")


def _progress(run_id):
    return tasks.deliver_dossier_progress(connection_from_env, run_id=run_id, task_id="progress")


def _progress_states(code):
    with _store().engine.connect() as conn:
        return conn.execute(select(progress_outbox.c.state).where(progress_outbox.c.record_key == code)
                            .order_by(progress_outbox.c.occurred_at)).scalars().all()


def test_a_discarded_progress_entry_is_never_sent_and_the_two_held_behind_it_go_once_each(bus_env, capsys):
    """Another system appended a step to the dossier after our first entry's time: the portal refuses
    that entry as out of order (dead-lettered) and our two later entries wait behind it. Replaying
    it would be refused again: the dossier was stuck. Discarded, the two later entries are sent on
    the next run, once each, and the discarded one never, not even with the dossier's next change."""
    dossier = copy.deepcopy(_get(bus_env, "onestop", "/_state/dossiers")["dossiers"][0])
    code = dossier["dossierNo"] = "000.00.03.H49-261120-0071"
    base = next(e for e in dossier["progress"] if e["finishedAt"])
    start = datetime.fromisoformat(base["finishedAt"])
    dossier["progress"] = [{**base, "stepId": i + 1, "startedAt": (start + timedelta(hours=2 * i - 1)).isoformat(),
                            "finishedAt": (start + timedelta(hours=2 * i)).isoformat()} for i in range(3)]
    assert requests.post(bus_env.onestop.url + "/_admin/dossiers/raw", json={"dossier": dossier},
                         timeout=T).status_code == 200
    _stage_and_deliver("r1")
    mapping = load_mapping(dossier_status.PROGRESS_MAPPING)
    ours = [mapping.apply({**e, "dossierNo": code}) for e in dossier["progress"]]
    # another system's step an hour after our first entry, an hour before our second
    other = {"MaHoSo": code, "NguoiXuLy": "Hệ thống khác", "ChucDanh": "Chuyên viên",
             "ThoiDiemXuLy": str(int(ours[0]["ThoiDiemXuLy"]) + 10000), "PhongBanXuLy": "Sở Tư pháp",
             "NoiDungXuLy": "Xác minh liên thông", "TrangThai": "4", "NgayBatDau": ours[0]["ThoiDiemXuLy"],
             "NgayKetThucTheoQuyDinh": ""}
    assert ours[0]["ThoiDiemXuLy"] < other["ThoiDiemXuLy"] < ours[1]["ThoiDiemXuLy"]
    portal = NationalPortalClient.from_connection(connection_from_env("national_portal_default"))
    assert portal.update_progress([other]).accepted == [0]
    _progress("r1")
    assert _progress_states(code) == ["rejected", "held", "held"]
    (letter,) = [d for d in _store().dead_letters(dossier_status.PROGRESS_FLOW) if d["record_key"].startswith(code)]
    assert letter["errors"][0]["field"] == "ThoiDiemXuLy"
    assert _progress("r2")["progress_sent"] == 0  # stuck while the letter stands

    assert main(["deadletter", "discard", str(letter["id"]), "--reason", "the other system's step covers it",
                 "--actor", "qa"]) == 0
    assert code in capsys.readouterr().out
    report = _progress("r3")
    assert (report["progress_sent"], report["progress_rejected"], report["progress_held"]) == (2, 0, 0)
    assert _portal_progress(bus_env, code) == [other, ours[1], ours[2]]  # once each, the discarded one never
    assert _progress_states(code) == ["discarded", "acked", "acked"]
    # the dossier's next change stages and sends none of its entries again
    requests.post(bus_env.onestop.url + "/_admin/dossiers/raw", timeout=T, json={"dossier": {
        **dossier, "version": dossier["version"] + 1, "briefNote": "Cập nhật trích yếu"}}).raise_for_status()
    assert _stage_and_deliver("r4")["delivered_update"] == 1
    assert _progress("r4")["progress_sent"] == 0
    assert _portal_progress(bus_env, code) == [other, ours[1], ours[2]]
    assert _progress_states(code) == ["discarded", "acked", "acked"]


def test_a_discarded_dossier_snapshot_is_not_resent_and_the_held_change_goes_once(bus_env, capsys):
    """A snapshot refused by the mapping holds back the dossier's later change; discarded, the held
    change is delivered once on the next run and the refused snapshot is never sent; with nothing
    held, discard sends nothing and the dossier's next change goes normally."""
    tasks.stage_dossier_changes(connection_from_env, run_id="r1", task_id="stage")
    tasks.deliver_dossier_statuses(connection_from_env, run_id="r1", task_id="deliver")
    letters = {d["record_key"]: d for d in _store().dead_letters(dossier_status.FLOW)}
    assert len(letters) == 2
    (held_code,) = [k for k, d in letters.items() if d["errors"][0]["field"] == "NgayTiepNhan"]  # receiveDate
    (alone_code,) = set(letters) - {held_code}
    portal_calls = lambda code: [e for e in _get(bus_env, "portal", "/_state/dossiers")["dossiers"]  # noqa: E731
                                 if e["MaHoSo"] == code]
    dossier = _get(bus_env, "onestop", f"/_state/dossiers/{held_code}")["dossier"]
    fixed = {**dossier, "version": dossier["version"] + 1, "receiveDate": "2026-11-03T09:00:00+07:00",
             "briefNote": "Bổ sung hồ sơ"}
    with _store().begin() as conn:
        conn.execute(outbox.insert().values(flow=dossier_status.FLOW, record_key=held_code, source_seq=10_000,
                                            source_version=fixed["version"], source_payload=fixed, state="pending",
                                            attempts=0, staged_at=utcnow()))
    assert _stage_and_deliver("r2")["held"] == 1 and not portal_calls(held_code)

    assert main(["deadletter", "discard", str(letters[held_code]["id"]), str(letters[alone_code]["id"]),
                 "--reason", "checked by hand"]) == 0
    assert f"released for the next dossier-status run: {held_code}" in capsys.readouterr().out
    delivered = _stage_and_deliver("r3")
    assert (delivered["delivered_new"], delivered["rejected"], delivered["held"]) == (1, 0, 0)
    (at_portal,) = portal_calls(held_code)
    assert at_portal["NgayTiepNhan"] == "20261103090000"  # the fixed change, not the refused one
    assert not portal_calls(alone_code)  # nothing held: nothing sent, the refused one not resent
    assert _stage_and_deliver("r4")["portal_calls"] == 0
    with _store().engine.connect() as conn:
        states = conn.execute(select(outbox.c.record_key, outbox.c.state).where(
            outbox.c.record_key.in_([held_code, alone_code])).order_by(outbox.c.id)).all()
    # (older snapshots of the feed were superseded at staging)
    assert [s for s in states if s[1] != "superseded"] == [(held_code, "discarded"), (alone_code, "discarded"),
                                                            (held_code, "delivered")]
    assert _store().dead_letters(dossier_status.FLOW) == []
