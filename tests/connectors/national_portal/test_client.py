"""The portal client against the stand-in portal as a real server."""

import pytest
import requests

from connectors.connection import Secret
from connectors.errors import AuthenticationFailed, FatalConnectorError, PeerRejected, ProtocolError
from connectors.national_portal.client import (
    DossierAlreadyExists,
    DossierFinalised,
    DossierUnknown,
    NationalPortalClient,
)
from connectors.transport import MemoryRecorder, RetryPolicy
from tests.conftest import PORTAL_PASSWORD, PORTAL_USER, UNIT
from tests.connectors.local_peer import answer

T = 5


def client(standins, recorder=None, **kw):
    return NationalPortalClient(standins.portal.url, PORTAL_USER, Secret(PORTAL_PASSWORD), UNIT,
                                recorder=recorder, **kw)


def dossier(code="000.00.01.H49-261102-0001", **overrides):
    record = {
        "MaHoSo": code, "MaTTHC": None, "TenTTHC": "Đăng ký khai sinh", "MaLinhVuc": "G09-TP03",
        "TenLinhVuc": "Hộ tịch", "KenhThucHien": "1", "LoaiDoiTuong": "1", "ChuHoSo": "Nguyễn Văn An",
        "TrichYeuHoSo": "Đăng ký khai sinh cho con", "NgayTiepNhan": "20261102081500", "NgayHenTra": "",
        "TrangThaiHoSo": "2", "HinhThuc": "0", "DonViXuLy": "Sở Tư pháp tỉnh Quảng Nam",
    }
    record.update(overrides)
    return record


@pytest.fixture
def procedure_code(standins):
    """A procedure code the portal's catalogue holds (from the shared seed)."""
    import yaml

    from tests.conftest import REPO_ROOT

    seed = yaml.safe_load((REPO_ROOT / "fixtures" / "seed" / "quang_nam.yaml").read_text())
    return seed["procedures"][0]["code"]


def held(standins):
    return {d["MaHoSo"]: d for d in requests.get(standins.portal.url + "/_state/dossiers", timeout=T).json()["dossiers"]}


def test_insert_then_update(standins, procedure_code):
    c = client(standins)
    rec = dossier(MaTTHC=procedure_code)
    assert c.sync_dossiers([rec], is_updating=False).accepted == [rec["MaHoSo"]]
    changed = {**rec, "TrangThaiHoSo": "4"}
    assert c.sync_dossiers([changed], is_updating=True).accepted == [rec["MaHoSo"]]
    assert held(standins)[rec["MaHoSo"]] == changed
    assert c.lookup_dossier(rec["MaHoSo"])["TrangThaiHoSo"] == "4"
    assert c.lookup_dossier("000.00.01.H49-261102-0999") is None


def test_duplicate_insert_and_unknown_update_are_typed_refusals(standins, procedure_code):
    c = client(standins)
    rec = dossier(MaTTHC=procedure_code)
    c.sync_dossiers([rec], is_updating=False)
    dup = c.sync_dossiers([rec], is_updating=False)
    assert isinstance(dup.rejected[rec["MaHoSo"]], DossierAlreadyExists)
    assert "đã tồn tại" in dup.rejected[rec["MaHoSo"]].peer_message
    other = dossier("000.00.01.H49-261102-0002", MaTTHC=procedure_code)
    unknown = c.sync_dossiers([other], is_updating=True)
    assert isinstance(unknown.rejected[other["MaHoSo"]], DossierUnknown)


def test_batch_with_a_bad_record_delivers_the_others(standins, procedure_code):
    c = client(standins)
    good = [dossier(f"000.00.01.H49-261102-000{i}", MaTTHC=procedure_code) for i in range(1, 4)]
    bad = dossier("000.00.01.H49-261102-0009", MaTTHC=procedure_code, NgayTiepNhan="2026-11-02")
    result = c.sync_dossiers([good[0], bad, good[1], good[2]], is_updating=False)
    assert sorted(result.accepted) == sorted(g["MaHoSo"] for g in good)
    refusal = result.rejected[bad["MaHoSo"]]
    assert type(refusal) is PeerRejected
    assert refusal.errors[0].field == "NgayTiepNhan"
    assert result.calls == 2
    assert set(held(standins)) == {g["MaHoSo"] for g in good}


def test_final_status_is_not_overwritten(standins, procedure_code):
    c = client(standins)
    rec = dossier(MaTTHC=procedure_code, TrangThaiHoSo="10")
    c.sync_dossiers([rec], is_updating=False)
    result = c.sync_dossiers([{**rec, "TrangThaiHoSo": "4"}], is_updating=True)
    assert isinstance(result.rejected[rec["MaHoSo"]], DossierFinalised)


def test_expired_session_is_renewed_once_and_the_call_repeated(standins, procedure_code):
    rec_log = MemoryRecorder()
    c = client(standins, recorder=rec_log)
    c.login()
    requests.post(standins.portal.url + "/_admin/expire-sessions", timeout=T)
    rec = dossier(MaTTHC=procedure_code)
    assert c.sync_dossiers([rec], is_updating=False).accepted == [rec["MaHoSo"]]
    assert c.logins == 2
    assert [e.operation for e in rec_log.exchanges] == ["login", "DongBoHoSoMC", "login", "DongBoHoSoMC"]
    assert rec_log.exchanges[1].peer_code == "2"


def test_session_renewed_before_it_ages_out(standins, procedure_code):
    now = [0.0]
    c = client(standins, session_max_age=540, clock=lambda: now[0])
    c.lookup_dossier("000.00.01.H49-261102-0001")
    now[0] = 600
    c.lookup_dossier("000.00.01.H49-261102-0001")
    assert c.logins == 2


def test_bad_credentials_are_fatal_and_never_logged(standins):
    rec_log = MemoryRecorder()
    c = NationalPortalClient(standins.portal.url, PORTAL_USER, Secret("wrong-PASSWORD-123"), UNIT,
                             recorder=rec_log)
    with pytest.raises(AuthenticationFailed) as info:
        c.login()
    assert "wrong-PASSWORD-123" not in str(info.value)
    assert b"wrong-PASSWORD-123" not in rec_log.exchanges[0].request_body


def test_session_token_never_reaches_the_log(standins):
    rec_log = MemoryRecorder()
    c = client(standins, recorder=rec_log)
    c.lookup_dossier("000.00.01.H49-261102-0001")
    token = c._session.reveal()
    assert token
    for e in rec_log.exchanges:
        assert token.encode() not in e.request_body + e.response_body
        assert PORTAL_PASSWORD.encode() not in e.request_body


def progress(code, when, status="4", **overrides):
    entry = {"MaHoSo": code, "NguoiXuLy": "Trần Thị Bình", "ChucDanh": "Chuyên viên", "ThoiDiemXuLy": when,
             "PhongBanXuLy": "Phòng Hộ tịch", "NoiDungXuLy": "Thẩm định hồ sơ", "TrangThai": status,
             "NgayBatDau": "", "NgayKetThucTheoQuyDinh": ""}
    entry.update(overrides)
    return entry


def test_progress_is_appended_and_a_refusal_holds_the_rest_unsent(standins, procedure_code):
    c = client(standins)
    rec = dossier(MaTTHC=procedure_code)
    c.sync_dossiers([rec], is_updating=False)
    code = rec["MaHoSo"]
    ok = c.update_progress([progress(code, "20261102090000"), progress(code, "20261102100000")])
    assert ok.accepted == [0, 1] and ok.calls == 1
    assert c.lookup_dossier(code)["SoTienDo"] == "2"
    mixed = c.update_progress([progress(code, "20261102110000", NguoiXuLy="x" * 51),
                               progress(code, "20261102120000")])
    assert list(mixed.rejected) == [0] and mixed.accepted == [] and mixed.calls == 1
    assert mixed.rejected[0].errors[0].field == "NguoiXuLy"
    assert c.lookup_dossier(code)["SoTienDo"] == "2"  # nothing of the refused call was applied


def test_progress_is_never_repeated_by_the_transport(standins, procedure_code):
    from connectors.errors import PeerUnavailable

    rec_log = MemoryRecorder()
    c = client(standins, recorder=rec_log)
    rec = dossier(MaTTHC=procedure_code)
    c.sync_dossiers([rec], is_updating=False)
    requests.post(standins.portal.url + "/_admin/faults",
                  json={"ambiguous_rate": 1.0, "operations": ["CapNhatTienDoHoSoMC"]}, timeout=T)
    with pytest.raises(PeerUnavailable):
        c.update_progress([progress(rec["MaHoSo"], "20261102090000")])
    sent = [e for e in rec_log.exchanges if e.operation == "CapNhatTienDoHoSoMC"]
    assert len(sent) == 1  # one attempt: the answer was lost, the caller reconciles
    assert c.lookup_dossier(rec["MaHoSo"])["SoTienDo"] == "1"


def test_a_log_in_answer_cut_short_keeps_no_session_token_in_the_exchange_log(peers):
    """The portal opened a session and its answer was cut short before the token's closing quote:
    the body is not JSON, redaction fell back to a pattern that needed the closing quote, and the
    whole token went into the exchange log (the transport then asked again, so nobody noticed)."""
    token = "cut-session-token-T2"
    calls = []

    def handle(h, body):
        calls.append(1)
        if len(calls) == 1:
            answer(h, 200, ('{"error_code":0,"message":"Thành công","session":"' + token).encode())
        else:
            answer(h, 200, {"error_code": 0, "message": "Thành công", "session": token + "-2"})

    peer = peers(handle)
    recorder = MemoryRecorder()
    NationalPortalClient(peer.url, PORTAL_USER, Secret(PORTAL_PASSWORD), UNIT, recorder=recorder,
                         retry=RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0)).login()
    assert [e.outcome for e in recorder.exchanges] == ["protocol_error", "ok"]
    logged = b"".join(e.response_body for e in recorder.exchanges)
    assert token.encode() not in logged, f"the session token is in the exchange log: {logged!r}"
    assert recorder.exchanges[0].response_body.endswith(b'"session":"***')


@pytest.mark.parametrize("status", [307, 308])
def test_a_redirect_never_replays_the_log_in_to_another_host(peers, status):
    """A 307/308 keeps method and body: the log-in ({username, password}) was POSTed again,
    password and all, to whatever host the Location named."""
    elsewhere = peers(lambda h, body: answer(h, 200, {"error_code": 0, "message": "ok", "session": "s"}))
    portal = peers(lambda h, body: answer(h, status, b"", "text/html",
                                          headers={"Location": f"http://localhost:{elsewhere.port}/auth"}))
    recorder = MemoryRecorder()
    with pytest.raises(ProtocolError, match=f"HTTP {status} redirect to host localhost refused"):
        NationalPortalClient(portal.url, PORTAL_USER, Secret(PORTAL_PASSWORD), UNIT, recorder=recorder).login()
    assert elsewhere.requests == [] and len(portal.requests) == 1
    assert PORTAL_PASSWORD.encode() not in recorder.exchanges[0].request_body


def _scripted_portal(peers, refusal):
    """A portal that opens sessions and answers every DongBoHoSoMC with ``refusal``."""
    import json

    def handle(h, body):
        request = json.loads(body)
        if "service" not in request:
            answer(h, 200, {"error_code": 0, "message": "Thành công", "session": "s-1"})
        else:
            answer(h, 200, refusal(request))

    return peers(handle)


@pytest.mark.parametrize("code", [3, -3, "-3"])
def test_a_duplicate_insert_answered_3_or_minus_3_is_already_exists(peers, code):
    """Contract §5.9/§7.2/§9.1: a duplicate insert is answered error_code 3 or -3 with "đã tồn tại".
    -3 was a plain refusal (dead-lettered instead of sent again as an update)."""
    key = "000.00.01.H49-261102-0001"
    peer = _scripted_portal(peers, lambda r: {
        "error_code": code, "message": f"Hồ sơ {key} đã tồn tại trên hệ thống",
        "result": [{"MaHoSo": key, "error_code": code, "message": f"Hồ sơ {key} đã tồn tại trên hệ thống"}]})
    c = NationalPortalClient(peer.url, PORTAL_USER, Secret(PORTAL_PASSWORD), UNIT)
    result = c.sync_dossiers([dossier(key)], is_updating=False)
    assert result.accepted == [] and isinstance(result.rejected[key], DossierAlreadyExists)


def test_a_refusal_without_per_record_rows_is_the_single_record_s(peers):
    """The portal's clients read only error_code and message (contract §3.3, §7.2: one dossier per
    call); a refusal with no ``result`` rows for a one-record call is that record's, not a
    ProtocolError failing the whole step at every run."""
    key = "000.00.01.H49-261102-0001"
    peer = _scripted_portal(peers, lambda r: {"error_code": -3, "message": f"Hồ sơ {key} đã tồn tại"})
    c = NationalPortalClient(peer.url, PORTAL_USER, Secret(PORTAL_PASSWORD), UNIT)
    result = c.sync_dossiers([dossier(key)], is_updating=False)
    assert result.accepted == [] and isinstance(result.rejected[key], DossierAlreadyExists)
    assert result.rejected[key].peer_code == "-3"
    assert [(e.field, e.rule) for e in result.rejected[key].errors] == [("MaHoSo", "portal_code_-3")]


@pytest.mark.parametrize("code", [3, -3, 4, 6])
def test_a_refusal_of_several_records_without_rows_names_them_unattributed(peers, code):
    """A call of several dossiers refused with a dossier's code but no ``result`` rows names no
    culprit: it was a ProtocolError failing the step on every run; its dossiers now come back as
    unattributed (neither accepted nor refused), after the one call, for the caller to send alone."""
    keys = ["000.00.01.H49-261102-0001", "000.00.01.H49-261102-0002"]
    peer = _scripted_portal(peers, lambda r: {"error_code": code, "message": "Hồ sơ đã tồn tại"})
    c = NationalPortalClient(peer.url, PORTAL_USER, Secret(PORTAL_PASSWORD), UNIT)
    result = c.sync_dossiers([dossier(k) for k in keys], is_updating=False)
    assert (result.accepted, result.rejected, result.unattributed, result.calls) == ([], {}, keys, 1)
    # another code, or rows naming none of the call's dossiers, is still the whole call's
    other = _scripted_portal(peers, lambda r: {"error_code": 4, "message": "?", "result": [{"MaHoSo": "x"}]})
    with pytest.raises(ProtocolError):
        NationalPortalClient(other.url, PORTAL_USER, Secret(PORTAL_PASSWORD), UNIT).sync_dossiers(
            [dossier(k) for k in keys], is_updating=False)


@pytest.mark.parametrize("code", [4, 6])
def test_a_progress_call_of_several_entries_refused_without_rows_names_them_unattributed(peers, code):
    """A CapNhatTienDoHoSoMC call of several entries refused "unknown" (4) or "finished" (6) with
    no ``result`` rows was a ProtocolError for the whole call, so progress delivery failed there on
    every run; nothing of it was applied (all-or-nothing), so its entries come back unattributed
    (neither accepted nor refused) after that one call, never repeated by the client."""
    keys = ["000.00.01.H49-261102-0001", "000.00.01.H49-261102-0001", "000.00.01.H49-261102-0002"]
    calls = []
    peer = _scripted_portal(peers, lambda r: calls.append(r["data"]) or {"error_code": code, "message": "?"})
    c = NationalPortalClient(peer.url, PORTAL_USER, Secret(PORTAL_PASSWORD), UNIT)
    result = c.update_progress([progress(k, f"2026110209000{i}") for i, k in enumerate(keys)])
    assert (result.accepted, result.rejected, result.unattributed, result.calls) == ([], {}, [0, 1, 2], 1)
    assert [len(d) for d in calls] == [3]
    # one entry alone is that entry's refusal
    alone = c.update_progress([progress(keys[0], "20261102090000")])
    assert alone.unattributed == [] and [(e.field, e.rule) for e in alone.rejected[0].errors] == [
        ("MaHoSo", f"portal_code_{code}")]


def test_a_validation_refusal_without_rows_is_unattributed_then_the_named_record_s(peers):
    """A call of several records refused -1 (a field's rule; the portal applies a call all or
    nothing) with no ``result`` rows was a FatalConnectorError for the whole call, failing the step
    at once on every run: its records now come back unattributed after that one call, and a
    one-record -1 whose message names the record is that record's refusal (rule portal_code_-1),
    while a -1 naming no record (a malformed call: unknown service, bad isUpdating) stays the call's."""
    keys = ["000.00.01.H49-261102-0001", "000.00.01.H49-261102-0002"]
    said = f"Đồng bộ thất bại: 1/1 hồ sơ bị từ chối. Hồ sơ {keys[1]}: trường NgayTiepNhan không đúng định dạng"
    calls = []
    peer = _scripted_portal(peers, lambda r: calls.append(r["data"]) or {"error_code": -1, "message": said})
    c = NationalPortalClient(peer.url, PORTAL_USER, Secret(PORTAL_PASSWORD), UNIT)
    result = c.sync_dossiers([dossier(k) for k in keys], is_updating=False)
    assert (result.accepted, result.rejected, result.unattributed, result.calls) == ([], {}, keys, 1)
    entries = c.update_progress([progress(k, f"2026110209000{i}") for i, k in enumerate(keys)])
    assert (entries.accepted, entries.rejected, entries.unattributed, entries.calls) == ([], {}, [0, 1], 1)
    assert [len(d) for d in calls] == [2, 2]
    alone = c.sync_dossiers([dossier(keys[1])], is_updating=False)
    assert alone.unattributed == [] and list(alone.rejected) == [keys[1]]
    refusal = alone.rejected[keys[1]]
    assert type(refusal) is PeerRejected and refusal.peer_code == "-1" and refusal.peer_message == said
    assert [(e.field, e.rule, e.message) for e in refusal.errors] == [("MaHoSo", "portal_code_-1", said)]
    entry = c.update_progress([progress(keys[1], "20261102090000")])
    assert [(e.field, e.rule) for e in entry.rejected[0].errors] == [("MaHoSo", "portal_code_-1")]
    # a -1 naming another record, or none, is the call's: the step fails at once, nothing dead-lettered
    with pytest.raises(FatalConnectorError, match="error_code -1"):
        c.sync_dossiers([dossier(keys[0])], is_updating=False)
    bad_call = _scripted_portal(peers, lambda r: {"error_code": -1, "message": "Tham số isUpdating phải là chuỗi"})
    with pytest.raises(FatalConnectorError, match="isUpdating"):
        NationalPortalClient(bad_call.url, PORTAL_USER, Secret(PORTAL_PASSWORD), UNIT).update_progress(
            [progress(keys[0], "20261102090000")])
