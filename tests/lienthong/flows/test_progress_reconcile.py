"""Progress entries in flight after an outage are reconciled against the portal stand-in's
``TraCuuHoSo`` (``SoTienDo``, ``ThoiDiemXuLyCuoi``) when another system also appends progress to the
dossier (contract §7.4: append-only; the stand-in refuses an entry earlier than its latest one).

The invariant: every one-stop entry lands exactly once, whatever the other system appended; an
entry whose landing the portal's answer cannot prove is sent again, never taken as landed."""

from __future__ import annotations

import pytest
import requests
from sqlalchemy import select

from connectors.connection import connection_from_env
from connectors.errors import RetriableConnectorError
from connectors.national_portal.client import NationalPortalClient
from lienthong import tasks
from lienthong.flows import dossier_status
from lienthong.mapping import load_mapping
from lienthong.store import progress_outbox

T = 10


def _post(env, path, body=None):
    return requests.post(env.portal.url + path, json=body or {}, timeout=T).json()


def _expected(env) -> dict[str, list[dict]]:
    mapping = load_mapping(dossier_status.PROGRESS_MAPPING)
    bad = {d["dossierNo"] for d in requests.get(env.onestop.url + "/_state", timeout=T).json()["defective"]}
    out = {}
    for d in requests.get(env.onestop.url + "/_state/dossiers", timeout=T).json()["dossiers"]:
        if d["dossierNo"] not in bad:
            entries = [mapping.apply({**e, "dossierNo": d["dossierNo"]}) for e in d["progress"] if e["finishedAt"]]
            out[d["dossierNo"]] = sorted(entries, key=lambda r: r["ThoiDiemXuLy"])
    return {k: v for k, v in out.items() if v}


def _held(env) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in sorted(requests.get(env.portal.url + "/_state/progress", timeout=T).json()["progress"],
                    key=lambda p: p["seq"]):
        out.setdefault(p["MaHoSo"], []).append(p["record"])
    return out


def _in_flight() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with tasks.open_store(connection_from_env).engine.connect() as conn:
        for key, at in conn.execute(select(progress_outbox.c.record_key, progress_outbox.c.occurred_at)
                                    .where(progress_outbox.c.state == "in_flight")
                                    .order_by(progress_outbox.c.record_key, progress_outbox.c.occurred_at)):
            out.setdefault(key, []).append(at)
    return out


def _other_system_appends(code: str, at: str) -> dict:
    """Another system of the province appends a step to the dossier (a direct CapNhatTienDoHoSoMC)."""
    entry = {"MaHoSo": code, "NguoiXuLy": "Hệ thống khác", "ChucDanh": "Chuyên viên", "ThoiDiemXuLy": at,
             "PhongBanXuLy": "Sở Tư pháp", "NoiDungXuLy": "Xác minh liên thông", "TrangThai": "4",
             "NgayBatDau": at, "NgayKetThucTheoQuyDinh": ""}
    portal = NationalPortalClient.from_connection(connection_from_env("national_portal_default"))
    assert portal.update_progress([entry]).accepted == [0]
    return entry


def _dossiers_then_progress_fault(env, fault: dict) -> None:
    tasks.stage_dossier_changes(connection_from_env, run_id="r1", task_id="stage")
    tasks.deliver_dossier_statuses(connection_from_env, run_id="r1", task_id="deliver")
    _post(env, "/_admin/faults", {**fault, "operations": ["CapNhatTienDoHoSoMC"]})
    with pytest.raises(RetriableConnectorError):
        tasks.deliver_dossier_progress(connection_from_env, run_id="r1", task_id="progress")
    _post(env, "/_admin/faults", {})


def _earlier(at: str) -> str:
    return at[:-4] + "0000" if at[-4:] != "0000" else str(int(at) - 10000)


def test_entries_that_never_landed_are_sent_after_another_system_appended_a_step(bus_env):
    """The chunk never reached the portal; another system appends one step (earlier than ours) to
    one of its dossiers; the count alone said one of our entries had landed, so it was marked
    acknowledged and never sent: lost."""
    _dossiers_then_progress_fault(bus_env, {"error_rate": 1.0, "http_status": 503})
    assert _held(bus_env) == {}
    flying = _in_flight()
    code = next(iter(flying))
    other = _other_system_appends(code, _earlier(flying[code][0]))
    report = tasks.deliver_dossier_progress(connection_from_env, run_id="r2", task_id="progress")
    expected = _expected(bus_env)
    held = _held(bus_env)
    assert held[code] == [other, *expected[code]]  # each of ours once, after the other system's step
    for key, entries in expected.items():
        if key != code:
            assert held.get(key, []) == entries, key
    assert report["progress_reconciled"] == 0 and report["progress_rejected"] == 0


def test_entries_that_landed_after_another_systems_step_are_not_sent_again(bus_env):
    """Another system appends a step before our chunk; the chunk lands but its answer is lost: the
    portal's last entry is ours, so the entries are taken as landed, not sent twice."""
    tasks.stage_dossier_changes(connection_from_env, run_id="r0", task_id="stage")
    tasks.deliver_dossier_statuses(connection_from_env, run_id="r0", task_id="deliver")
    expected = _expected(bus_env)
    code = min(expected)  # the first chunk holds the first dossier's entries
    other = _other_system_appends(code, _earlier(expected[code][0]["ThoiDiemXuLy"]))
    _dossiers_then_progress_fault(bus_env, {"ambiguous_rate": 1.0})
    assert code in _in_flight()
    report = tasks.deliver_dossier_progress(connection_from_env, run_id="r2", task_id="progress")
    held = _held(bus_env)
    assert held[code] == [other, *expected[code]]
    for key, entries in expected.items():
        if key != code:
            assert held.get(key, []) == entries, key
    assert report["progress_reconciled"] > 0 and report["progress_rejected"] == 0


def test_entries_whose_landing_cannot_be_proven_are_never_held_twice(bus_env):
    """The chunk lands, its answer is lost, then another system appends a later step: the answer
    (one more entry, the last one not ours) cannot tell whether ours landed. They are sent again;
    the portal refuses entries earlier than its latest one, so they are dead-lettered with that
    rule, never held twice."""
    tasks.stage_dossier_changes(connection_from_env, run_id="r0", task_id="stage")
    tasks.deliver_dossier_statuses(connection_from_env, run_id="r0", task_id="deliver")
    _dossiers_then_progress_fault(bus_env, {"ambiguous_rate": 1.0})
    flying = _in_flight()
    code = next(iter(flying))
    expected = _expected(bus_env)
    other = _other_system_appends(code, str(int(flying[code][-1]) + 100))  # a minute after ours
    report = tasks.deliver_dossier_progress(connection_from_env, run_id="r2", task_id="progress")
    held = _held(bus_env)
    assert held[code] == [*expected[code][:len(flying[code])], other]  # ours once each, no duplicate
    for key in flying:
        if key != code:
            assert held.get(key, []) == expected[key], key
    # each is refused as out of order and dead-lettered naming the field; later ones wait behind them
    letters = tasks.open_store(connection_from_env).dead_letters(dossier_status.PROGRESS_FLOW)
    assert len(letters) == report["progress_rejected"] == len(flying[code])
    for letter in letters:
        assert letter["record_key"].startswith(f"{code}#") and letter["errors"][0]["field"] == "ThoiDiemXuLy"
    assert report["progress_reconciled"] == sum(len(v) for k, v in flying.items() if k != code)


@pytest.mark.parametrize(("row", "landed"), [
    (None, 0),                                                       # the portal does not hold the dossier
    ({"SoTienDo": "5", "ThoiDiemXuLyCuoi": "20261106090000"}, 0),    # no more than we acknowledged
    ({"SoTienDo": "7", "ThoiDiemXuLyCuoi": "20261106083000"}, 2),    # the count and the last time agree
    ({"SoTienDo": "9", "ThoiDiemXuLyCuoi": "20261106090000"}, 3),    # others' steps before ours, ours last
    ({"SoTienDo": "6", "ThoiDiemXuLyCuoi": "20261106070000"}, 0),    # another system's step, earlier: none of ours
    ({"SoTienDo": "6", "ThoiDiemXuLyCuoi": "20261106083000"}, 0),    # one new at entry 2's time: entry 1 cannot be it
    ({"SoTienDo": "9", "ThoiDiemXuLyCuoi": "20261106100000"}, 0),    # the last is not ours: cannot tell
    ({"SoTienDo": "7"}, 0),                                          # no last time: the count alone proves nothing
    ({"SoTienDo": "7", "ThoiDiemXuLyCuoi": "2026-11-06"}, 0),
    ({"SoTienDo": None, "ThoiDiemXuLyCuoi": "20261106083000"}, 0),
])
def test_an_entry_is_taken_as_landed_only_when_the_lookup_proves_it(row, landed):
    """5 entries acknowledged, 3 in flight (08:00, 08:30, 09:00)."""
    times = ["20261106080000", "20261106083000", "20261106090000"]
    assert dossier_status._landed("D-1", times, 5, row) == landed


def test_entries_of_one_second_are_taken_as_landed_up_to_the_count():
    times = ["20261106080000", "20261106080000", "20261106080000"]
    assert dossier_status._landed("D-1", times, 0, {"SoTienDo": "2", "ThoiDiemXuLyCuoi": "20261106080000"}) == 2
