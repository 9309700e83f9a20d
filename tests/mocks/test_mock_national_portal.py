"""The national portal stand-in answers like the adapter in national-portal-contract.md."""

from __future__ import annotations

import logging
import re
import threading
import time
import unicodedata

import pytest
import requests

from mocks.national_portal import NationalPortalMock, PortalAccount
from tests.mocks.conftest import make_entry, make_record

TIMEOUT = 5
MA = "000.00.01.H49-261102-0001"


# -- log-in and envelope ------------------------------------------------------------------------
def test_login_opens_a_session(portal, portal_calls):
    calls = portal_calls(portal)
    answer = calls.login()
    assert answer["error_code"] == 0
    assert answer["message"] == "Đăng nhập thành công"
    assert isinstance(answer["session"], str) and len(answer["session"]) >= 32
    other = portal_calls(portal)
    assert other.login()["session"] != answer["session"]


@pytest.mark.parametrize("username,password", [
    ("lienthong.h49", "wrong"), ("nobody", "demo-portal-secret"), ("lienthong.h49", ""), (None, None)])
def test_bad_credentials_get_code_1_and_no_session(portal, portal_calls, username, password):
    answer = portal_calls(portal, username=username, password=password).login()
    assert answer == {"error_code": 1, "message": "Tên đăng nhập hoặc mật khẩu không đúng"}


def test_body_that_is_not_json_is_http_400_with_code_minus_1(portal):
    for path in ("/auth", "/integration", "/share"):
        response = requests.post(portal.url + path, data=b"{not json", headers={"dstcode": "DVCQG"}, timeout=TIMEOUT)
        assert response.status_code == 400
        assert response.json()["error_code"] == -1
    response = requests.post(portal.url + "/integration", json=[1, 2], headers={"dstcode": "DVCQG"}, timeout=TIMEOUT)
    assert response.status_code == 400 and response.json()["error_code"] == -1


def test_session_expires_after_its_ttl(portal_factory, portal_calls):
    portal = portal_factory(session_ttl=0.3)
    calls = portal_calls(portal)
    calls.login()
    assert calls.lookup(MA)["error_code"] == 0
    time.sleep(0.4)
    assert calls.lookup(MA) == {"error_code": 2, "message": "Phiên làm việc không hợp lệ hoặc đã hết hạn"}
    calls.login()
    assert calls.lookup(MA)["error_code"] == 0


def test_admin_can_expire_every_session(pc):
    assert pc.lookup(MA)["error_code"] == 0
    assert pc.admin("expire-sessions").json() == {"expired": 1}
    assert pc.lookup(MA)["error_code"] == 2
    assert pc.state()["sessions"]["active"] == 0


def test_session_expire_every_1_lets_exactly_one_parallel_call_through(portal, portal_calls):
    """README: 'The N-th such call is answered normally, and then the session ends. The next call with it gets
    code 2, and nothing is applied.' The session used to be checked before the DB lock and the success counted
    after it, so parallel calls all passed the check and more than N of them were applied."""
    n, rounds = 12, 5
    sync = portal.services["integration"]["DongBoHoSoMC"]

    def slow_sync(env, session):  # widens the window a check before the lock leaves open, so the race shows
        time.sleep(0.02)
        return sync(env, session)

    portal.register_service("integration", "DongBoHoSoMC", slow_sync)
    applied_per_round = []
    for _ in range(rounds):
        requests.post(portal.url + "/_admin/reset", timeout=TIMEOUT)
        requests.post(portal.url + "/_admin/faults", json={"session_expire_every": 1}, timeout=TIMEOUT)
        calls = portal_calls(portal)
        session = calls.login()["session"]
        barrier = threading.Barrier(n)
        codes: list[int] = []

        def call(i: int, session=session, barrier=barrier, codes=codes) -> None:
            body = {"session": session, "madonvi": "000.00.01.H49", "service": "DongBoHoSoMC", "isUpdating": "False",
                    "data": [make_record(f"000.00.01.H49-261102-{i + 1:04d}")]}
            barrier.wait()
            try:
                codes.append(requests.post(portal.url + "/integration", json=body, headers={"dstcode": "DVCQG"},
                                           timeout=10).json()["error_code"])
            except requests.RequestException:
                pass  # a reset connection is never applied

        threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes) == [0] + [2] * (n - 1)
        applied_per_round.append(requests.get(portal.url + "/_state", timeout=TIMEOUT).json()["counts"]["dossiers"])
    assert applied_per_round == [1] * rounds


@pytest.mark.parametrize("session", ["made-up-token", "", None, 42])
def test_unknown_session_is_code_2(pc, session):
    pc.session = session
    assert pc.lookup(MA) == {"error_code": 2, "message": "Phiên làm việc không hợp lệ hoặc đã hết hạn"}


@pytest.mark.parametrize("endpoint", ["integration", "share"])
@pytest.mark.parametrize("headers", [{}, {"dstcode": "DVCQG2"}, {"dstcode": ""}])
def test_dstcode_is_required_on_integration_and_share(pc, endpoint, headers):
    answer = pc.raw("TraCuuHoSo", endpoint=endpoint, headers=headers, mahoso=MA).json()
    assert answer == {"error_code": -1, "message": "Mã đích (dstcode) không hợp lệ"}


def test_dstcode_is_optional_on_auth_but_checked_when_sent(portal, portal_calls):
    assert portal_calls(portal, dstcode=None).login()["error_code"] == 0
    response = requests.post(portal.url + "/auth", json={"username": "lienthong.h49", "password": "demo-portal-secret"},
                             headers={"dstcode": "OTHER"}, timeout=TIMEOUT).json()
    assert response == {"error_code": -1, "message": "Mã đích (dstcode) không hợp lệ"}


def test_expected_dstcode_is_configurable(portal_factory, portal_calls):
    portal = portal_factory(dstcode="DVCQG-TEST")
    calls = portal_calls(portal, dstcode="DVCQG-TEST")
    calls.login()
    assert calls.lookup(MA)["error_code"] == 0


def test_madonvi_must_be_the_sessions_unit(pc):
    pc.unit = "000.00.02.H49"
    answer = pc.lookup(MA)
    assert answer["error_code"] == 5
    assert answer["message"] == "Mã đơn vị 000.00.02.H49 không khớp với tài khoản đăng nhập"


def test_accounts_are_configurable(portal_factory, portal_calls, record):
    portal = portal_factory(accounts=[PortalAccount("tamky", "s3cret", "000.00.05.H49")])
    assert portal_calls(portal).login()["error_code"] == 1  # the default account is gone
    calls = portal_calls(portal, username="tamky", password="s3cret", unit="000.00.05.H49")
    assert calls.login()["error_code"] == 0
    assert calls.sync([record("000.00.05.H49-261102-0001")])["error_code"] == 0
    mapping = portal_factory(state_dir=None, accounts={"a": ("pw", "000.00.01.H22")})
    assert portal_calls(mapping, username="a", password="pw", unit="000.00.01.H22").login()["error_code"] == 0


def test_a_short_agency_code_belongs_to_its_province(portal_factory, portal_calls, record):
    """Agency codes such as H56.14 occur beside the dotted 000.00.01.H56 (§6.3). The province is the
    H{pp} segment, not the last one: an account of unit H56.14 was taken for province "14", so every
    dossier of its own province was refused with code 5, and a MaHoSo headed H56.14 counted as "14"."""
    portal = portal_factory(accounts=[PortalAccount("thanhhoa", "s3cret", "H56.14")])
    assert portal.accounts["thanhhoa"].province == "H56"
    calls = portal_calls(portal, username="thanhhoa", password="s3cret", unit="H56.14")
    assert calls.login()["error_code"] == 0
    for code in ("000.00.01.H56-261102-0001", "H56.14-261102-0001", "H56-261102-0001"):
        assert calls.sync([record(code)]) == {"error_code": 0, "message": "Đồng bộ thành công 1 hồ sơ"}, code
    for code in ("000.00.01.H49-261102-0001", "H49.56-261102-0001", "000.00.01.H561-261102-0001"):
        answer = calls.sync([record(code)])
        assert answer["error_code"] == 5, code
        assert "không thuộc tỉnh/thành phố H56 của tài khoản đăng nhập" in answer["result"][0]["message"]
    assert calls.call("CapNhatTienDoHoSoMC", data=[make_entry("H56.14-261102-0001")])["error_code"] == 0


@pytest.mark.parametrize("service,endpoint", [
    ("KhongCo", "integration"), ("DongBoHoSoMC", "share"), ("LayDanhSachTTHCDonVi", "share"), ("LayThuTuc", "share"), ("", "integration")])
def test_unknown_service_is_code_minus_1(pc, service, endpoint):
    answer = pc.call(service, endpoint=endpoint)
    assert answer["error_code"] == -1
    assert answer["message"] == f"Dịch vụ {service or '(trống)'} không được hỗ trợ"


def test_health(portal):
    assert requests.get(portal.url + "/health", timeout=TIMEOUT).json() == {"status": "ok"}


# -- DongBoHoSoMC: create, update, refusals ----------------------------------------------------------
def test_insert_then_duplicate_insert_is_code_3(pc, record):
    assert pc.sync([record()]) == {"error_code": 0, "message": "Đồng bộ thành công 1 hồ sơ"}
    assert pc.held() == [record()]
    current = pc.detail(MA).json()["current"]
    assert current["versions"] == 1 and current["TrangThaiHoSo"] == "2"
    again = pc.sync([record(TrangThaiHoSo="4")])
    assert again["error_code"] == 3
    assert "đã tồn tại" in again["message"]
    assert again["result"] == [{"MaHoSo": MA, "error_code": 3, "field": "MaHoSo",
                                "message": f"Hồ sơ {MA} đã tồn tại trên hệ thống"}]
    assert pc.held() == [record()]  # unchanged
    assert pc.state()["counts"]["history"] == 1


def test_update_replaces_the_snapshot_and_keeps_history(pc, record):
    pc.sync([record()])
    assert pc.sync([record(TrangThaiHoSo="4", GhiChu="Đang xử lý")], updating=True) == {
        "error_code": 0, "message": "Đồng bộ thành công 1 hồ sơ"}
    detail = pc.detail(MA).json()
    assert pc.held() == [record(TrangThaiHoSo="4", GhiChu="Đang xử lý")]
    assert detail["current"]["TrangThaiHoSo"] == "4" and detail["current"]["versions"] == 2
    assert detail["current"]["record"]["GhiChu"] == "Đang xử lý"
    assert [(h["seq"], h["isUpdating"], h["record"]["TrangThaiHoSo"]) for h in detail["history"]] == [
        (1, "False", "2"), (2, "True", "4")]
    assert re.fullmatch(r"2026110\d{7}", detail["current"]["NgayCapNhat"])
    assert detail["history"][0]["NgayCapNhat"] < detail["history"][1]["NgayCapNhat"]


def test_update_of_an_unknown_dossier_is_code_4(pc, record):
    answer = pc.sync([record()], updating=True)
    assert answer["error_code"] == 4
    assert answer["result"] == [{"MaHoSo": MA, "error_code": 4, "field": "MaHoSo",
                                 "message": f"Hồ sơ {MA} không tồn tại trên hệ thống"}]
    assert pc.held() == []


@pytest.mark.parametrize("ma", ["000.00.01.H22-261102-0001", "H56-261102-0001", "000.00.01.H491-261102-0001"])
def test_dossier_of_another_province_is_code_5(pc, record, ma):
    answer = pc.sync([record(ma)])
    assert answer["error_code"] == 5
    row = answer["result"][0]
    assert row["MaHoSo"] == ma and row["error_code"] == 5 and row["field"] == "MaHoSo"
    assert "không thuộc tỉnh/thành phố H49" in row["message"]
    assert pc.held() == []


def test_any_unit_of_the_callers_province_is_accepted(pc, record):
    assert pc.sync([record("000.00.08.H49-261102-0001")])["error_code"] == 0


@pytest.mark.parametrize("final,text", [
    ("10", "đã trả kết quả, không được cập nhật trạng thái"),
    ("3", "bị từ chối. không thể cập nhật trạng thái"),
    ("7", "đã được rút theo yêu cầu của công dân, không được cập nhật trạng thái"),
])
def test_status_of_a_final_dossier_cannot_change_code_6(pc, record, final, text):
    pc.sync([record()])
    assert pc.sync([record(TrangThaiHoSo=final)], updating=True)["error_code"] == 0
    answer = pc.sync([record(TrangThaiHoSo="4")], updating=True)
    assert answer["error_code"] == 6
    assert answer["result"] == [{"MaHoSo": MA, "error_code": 6, "field": "TrangThaiHoSo",
                                 "message": f"Hồ sơ {MA} {text}"}]
    assert pc.held()[0]["TrangThaiHoSo"] == final and pc.detail(MA).json()["current"]["TrangThaiHoSo"] == final
    # the same final status with other changes is still accepted
    assert pc.sync([record(TrangThaiHoSo=final, GhiChu="Bổ sung ghi chú")], updating=True)["error_code"] == 0


def test_non_final_statuses_move_freely(pc, record):
    pc.sync([record(TrangThaiHoSo="9")])
    assert pc.sync([record(TrangThaiHoSo="8")], updating=True)["error_code"] == 0
    assert pc.sync([record(TrangThaiHoSo="4")], updating=True)["error_code"] == 0


def test_batch_is_all_or_nothing_and_lists_each_bad_record(pc, record):
    batch = [
        record("000.00.01.H49-261102-0001"),
        record("000.00.01.H49-261102-0002", NgayTiepNhan="02/11/2026 08:15"),
        record("000.00.05.H49-261102-0001"),
        record("000.00.01.H56-261102-0004"),
        record("000.00.01.H49-261102-0005", LoaiDoiTuong=1),
    ]
    answer = pc.sync(batch)
    assert answer["error_code"] == -1  # the first failing record's code
    assert answer["message"].startswith("Đồng bộ thất bại: 3/5 hồ sơ bị từ chối, không hồ sơ nào được cập nhật.")
    assert "000.00.01.H49-261102-0002" in answer["message"] and "NgayTiepNhan" in answer["message"]
    assert "thành công" not in answer["message"]
    assert [(r["MaHoSo"], r["error_code"], r["field"]) for r in answer["result"]] == [
        ("000.00.01.H49-261102-0002", -1, "NgayTiepNhan"),
        ("000.00.01.H56-261102-0004", 5, "MaHoSo"),
        ("000.00.01.H49-261102-0005", -1, "LoaiDoiTuong"),
    ]
    assert pc.held() == [] and pc.state()["counts"]["history"] == 0
    good = [r for r in batch if r["MaHoSo"] in {"000.00.01.H49-261102-0001", "000.00.05.H49-261102-0001"}]
    assert pc.sync(good) == {"error_code": 0, "message": "Đồng bộ thành công 2 hồ sơ"}
    assert pc.held() == good


def test_mixed_state_refusals_in_one_batch(pc, record):
    pc.sync([record("000.00.01.H49-261102-0001")])
    answer = pc.sync([record("000.00.01.H49-261102-0002"), record("000.00.01.H49-261102-0001")])
    assert answer["error_code"] == 3
    assert [r["MaHoSo"] for r in answer["result"]] == ["000.00.01.H49-261102-0001"]
    assert len(pc.held()) == 1


def test_same_dossier_twice_in_one_call_is_code_minus_1(pc, record):
    answer = pc.sync([record(), record("000.00.01.H49-261102-0002"), record(TrangThaiHoSo="4")])
    assert answer["error_code"] == -1
    assert len(answer["result"]) == 1
    row = answer["result"][0]
    assert row["MaHoSo"] == MA and row["field"] == "MaHoSo"
    assert "xuất hiện nhiều lần" in row["message"] and "thứ 1 và thứ 3" in row["message"]
    assert pc.held() == []


@pytest.mark.parametrize("fields,message", [
    ({"isUpdating": "true", "data": [{}]}, 'Tham số isUpdating phải là chuỗi "True" hoặc "False"'),
    ({"isUpdating": True, "data": [{}]}, 'Tham số isUpdating phải là chuỗi "True" hoặc "False"'),
    ({"data": [{}]}, 'Tham số isUpdating phải là chuỗi "True" hoặc "False"'),
    ({"isUpdating": "False", "data": []}, "Trường data phải là mảng hồ sơ không rỗng"),
    ({"isUpdating": "False"}, "Trường data phải là mảng hồ sơ không rỗng"),
    ({"isUpdating": "False", "data": {"MaHoSo": MA}}, "Trường data phải là mảng hồ sơ không rỗng"),
])
def test_call_level_parameters(pc, fields, message):
    assert pc.call("DongBoHoSoMC", **fields) == {"error_code": -1, "message": message}


REQUIRED = ["MaHoSo", "MaTTHC", "TenTTHC", "MaLinhVuc", "TenLinhVuc", "KenhThucHien", "LoaiDoiTuong",
            "TrichYeuHoSo", "NgayTiepNhan", "TrangThaiHoSo", "HinhThuc", "DonViXuLy"]


def _refused(pc, rec, field, *fragments):
    answer = pc.sync([rec])
    assert answer["error_code"] == -1, answer
    assert len(answer["result"]) == 1
    row = answer["result"][0]
    assert row["error_code"] == -1
    assert row["field"] == field
    assert row["message"].startswith("Hồ sơ ")
    assert field in row["message"]
    for fragment in fragments:
        assert fragment in row["message"], row["message"]
    assert row["message"] in answer["message"]
    assert pc.held() == []
    return row


@pytest.mark.parametrize("field", REQUIRED)
def test_each_required_field_must_be_present(pc, record, field):
    rec = record()
    del rec[field]
    row = _refused(pc, rec, field, f"thiếu trường bắt buộc {field}")
    if field == "MaHoSo":
        assert row["MaHoSo"] == "" and row["message"].startswith("Hồ sơ thứ 1 trong data")
    else:
        assert row["MaHoSo"] == MA and row["message"].startswith(f"Hồ sơ {MA}: ")


@pytest.mark.parametrize("field", REQUIRED)
def test_each_required_field_must_not_be_blank(pc, record, field):
    _refused(pc, record(**{field: "  "}), field, "không được để trống")


@pytest.mark.parametrize("field,value,allowed", [
    ("TrangThaiHoSo", "11", "từ 1 đến 10"), ("TrangThaiHoSo", "0", "từ 1 đến 10"),
    ("TrangThaiHoSo", "04", "từ 1 đến 10"),
    ("KenhThucHien", "4", "1, 2 hoặc 3"), ("LoaiDoiTuong", "5", "1, 2, 3 hoặc 4"), ("HinhThuc", "2", "0 hoặc 1"),
])
def test_code_fields_take_only_their_values(pc, record, field, value, allowed):
    _refused(pc, record(**{field: value}), field, f'"{value}" không hợp lệ', allowed)


@pytest.mark.parametrize("field", ["NgayTiepNhan", "NgayHenTra", "NgayTra", "NgayKetThucXuLy", "NgayNopHoSo",
                                   "NgayTuChoi"])
@pytest.mark.parametrize("value", ["2026-11-02 08:15:00", "202611020815", "2026110208150a", "20261102081500 "])
def test_dates_must_be_yyyyMMddHHmmss(pc, record, field, value):
    _refused(pc, record(**{field: value}), field, "không đúng định dạng yyyyMMddHHmmss")


@pytest.mark.parametrize("value", ["20261131081500", "20261302081500", "20261102250000", "20261102086000",
                                   "20270229120000", "00001102081500"])
def test_dates_must_be_real_calendar_times(pc, record, value):
    _refused(pc, record(NgayHenTra=value), "NgayHenTra", f'"{value}" không phải ngày giờ có thật')


def test_optional_dates_may_be_empty_and_leap_days_exist(pc, record):
    rec = record(NgayHenTra="", NgayTra="", NgayKetThucXuLy="", NgayNopHoSo="", NgayTuChoi="",
                 NgayTiepNhan="20280229235959")
    assert pc.sync([rec])["error_code"] == 0


@pytest.mark.parametrize("field,limit", [("TrichYeuHoSo", 1000), ("NguoiXuLy", 50), ("GhiChu", 2000)])
def test_length_limits(pc, record, field, limit):
    _refused(pc, record(**{field: "ả" * (limit + 1)}), field, f"dài {limit + 1} ký tự", f"tối đa {limit} ký tự")
    assert pc.sync([record(**{field: "ả" * limit})])["error_code"] == 0


def test_length_counts_characters_after_nfc(pc, record):
    decomposed = unicodedata.normalize("NFD", "ệ") * 1000  # 3000 code points, 1000 characters
    assert len(decomposed) == 3000
    assert pc.sync([record(TrichYeuHoSo=decomposed)])["error_code"] == 0


def test_ma_ho_so_length_limit(pc, record):
    long_code = "0" * 35 + ".H49-261102-0001"  # 51 characters, of the form
    _refused(pc, record(long_code), "MaHoSo", "dài 51 ký tự", "tối đa 50 ký tự")


@pytest.mark.parametrize("code", [
    f" {MA}", f"{MA} ", f"{MA}\n", "000.00.01.H49 -261102-0001", "000.00.01.H49", "H49", "000.00.01.H49-2611-0001",
    "000.00.01.H49-261102-001", "000.00.01.H49-261102-000001", "000.00.01.H49-261102-0001-01",
    "000.00.01.H49-２６１１０２-0001", "000.00.01.H49-261102-٠٠٠١",
])
def test_ma_ho_so_must_have_the_dossier_code_form(pc, record, code):
    """MaHoSo is {MaDinhDanh}-{yyMMdd}-{NNNN} (§6.2; NNNNN from the 2025 client): a code padded with a
    space or written in other digits used to be stored as a second dossier beside the real one."""
    _refused(pc, record(code), "MaHoSo", "không đúng định dạng MaDinhDanh-yyMMdd-NNNN")


def test_a_padded_code_is_not_a_second_dossier(pc, record):
    assert pc.sync([record()])["error_code"] == 0
    answer = pc.sync([record(f"{MA} ")])
    assert answer["error_code"] == -1 and answer["result"][0]["field"] == "MaHoSo"
    answer = pc.call("CapNhatTienDoHoSoMC", data=[make_entry(f" {MA}")])
    assert answer["error_code"] == -1 and answer["result"][0]["field"] == "MaHoSo"
    assert [d["MaHoSo"] for d in pc.held()] == [MA] and pc.state()["counts"]["progress"] == 0
    assert pc.sync([record("000.00.01.H49-261102-12345")])["error_code"] == 0  # the 2025 client's random suffix


def test_file_and_result_names_have_limits(pc, record):
    files = [{"TenTepDinhKem": "a" * 4001, "IsDeleted": "False"}]
    _refused(pc, record(TaiLieuNop=files), "TaiLieuNop[0].TenTepDinhKem", "tối đa 4000 ký tự")
    results = [{"TenGiayTo": "Giấy phép"}, {"TenGiayTo": "b" * 2001}]
    _refused(pc, record(DanhSachGiayToKetQua=results), "DanhSachGiayToKetQua[1].TenGiayTo", "tối đa 2000 ký tự")


def test_procedure_must_be_in_the_national_catalogue(pc, record):
    _refused(pc, record(MaTTHC="1.999999.000.00.00.H49"), "MaTTHC", '"1.999999.000.00.00.H49"',
             "không có trong Cơ sở dữ liệu quốc gia về thủ tục hành chính")


@pytest.mark.parametrize("field,value,kind", [
    ("LoaiDoiTuong", 1, "số (number)"), ("TrangThaiHoSo", None, "null"), ("HinhThuc", True, "giá trị logic (boolean)"),
    ("NgayTiepNhan", 20261102081500, "số (number)"), ("ChuHoSo", ["x"], "mảng (array)"),
    ("SoBienNhan", {"a": 1}, "đối tượng (object)"),
])
def test_values_must_be_strings(pc, record, field, value, kind):
    _refused(pc, record(**{field: value}), field, "phải là chuỗi (string)", f"không phải {kind}")


@pytest.mark.parametrize("field", ["TaiLieuNop", "DanhSachLePhi", "DanhSachGiayToKetQua", "DinhDanhCHS"])
def test_nested_lists_must_be_arrays_of_objects(pc, record, field):
    _refused(pc, record(**{field: "abc"}), field, "phải là mảng (array) các đối tượng", "không phải chuỗi")
    _refused(pc, record(**{field: {"x": "1"}}), field, "phải là mảng (array)")
    row = _refused(pc, record(**{field: [{}, "x"]}), f"{field}[1]", "phải là đối tượng (object)")
    assert row["field"] == f"{field}[1]"


def test_nested_values_must_be_strings(pc, record):
    _refused(pc, record(DanhSachLePhi=[{"TenPhiLePhi": "Lệ phí", "Gia": 200000}]), "DanhSachLePhi[0].Gia",
             "phải là chuỗi (string)")


def test_a_data_element_that_is_not_an_object(pc, record):
    answer = pc.sync([record(), "000.00.01.H49-261102-0002"])
    assert answer["error_code"] == -1
    assert answer["result"] == [{"MaHoSo": "", "error_code": -1, "field": "data[1]",
                                 "message": "Hồ sơ thứ 2 trong data: phần tử data[1] phải là đối tượng (object), "
                                            "không phải chuỗi (string)"}]


def test_unknown_fields_are_accepted(pc, record):
    assert pc.sync([record(TruongMoi="giá trị", SoLuongKhac=3)])["error_code"] == 0


def test_rules_file_lists_the_required_fields_in_order(portal):
    names = portal.rules.field_names()
    assert [n for n in names if n in REQUIRED] == REQUIRED


# -- TraCuuHoSo --------------------------------------------------------------------------------------
def test_lookup_known_and_unknown(pc, record):
    pc.sync([record(TrangThaiHoSo="4")])
    answer = pc.lookup(MA)
    assert answer["error_code"] == 0 and answer["message"] == "Thành công"
    assert len(answer["result"]) == 1
    row = answer["result"][0]
    assert list(row) == ["MaHoSo", "TrangThaiHoSo", "NgayCapNhat", "SoTienDo", "ThoiDiemXuLyCuoi"]
    assert row["MaHoSo"] == MA and row["TrangThaiHoSo"] == "4" and re.fullmatch(r"\d{14}", row["NgayCapNhat"])
    assert row["SoTienDo"] == "0" and row["ThoiDiemXuLyCuoi"] == ""
    assert pc.lookup("000.00.01.H49-261102-0404") == {"error_code": 0, "message": "Thành công", "result": []}
    assert pc.call("TraCuuHoSo") == {"error_code": -1, "message": "Thiếu tham số mahoso"}


# -- faults --------------------------------------------------------------------------------------------
def test_error_fault_answers_http_status_before_doing_anything(pc, record):
    assert pc.admin("faults", {"error_rate": 1.0, "http_status": 503, "operations": ["DongBoHoSoMC"]}).ok
    response = pc.raw("DongBoHoSoMC", isUpdating="False", data=[record()])
    assert response.status_code == 503
    assert response.headers["Content-Type"].startswith("text/html")
    assert pc.lookup(MA)["result"] == []  # other services unaffected, nothing applied
    assert pc.held() == []
    assert pc.calls()["DongBoHoSoMC"] == {"fault_http_503": 1}


def test_drop_fault_closes_the_socket_and_applies_nothing(pc, record):
    pc.admin("faults", {"drop_rate": 1.0, "operations": ["DongBoHoSoMC"]})
    with pytest.raises(requests.ConnectionError):
        pc.raw("DongBoHoSoMC", isUpdating="False", data=[record()])
    assert pc.held() == []
    assert pc.calls()["DongBoHoSoMC"] == {"fault_drop": 1}


def test_ambiguous_fault_applies_then_answers_500(pc, record):
    pc.admin("faults", {"ambiguous_rate": 1.0, "operations": ["DongBoHoSoMC"]})
    response = pc.raw("DongBoHoSoMC", isUpdating="False", data=[record()])
    assert response.status_code == 500
    assert pc.lookup(MA)["result"][0]["TrangThaiHoSo"] == "2"  # it did land
    pc.admin("faults", {})
    retry = pc.sync([record()])
    assert retry["error_code"] == 3 and "đã tồn tại" in retry["message"]
    assert pc.calls()["DongBoHoSoMC"] == {"ambiguous_500": 1, "3": 1}


def test_login_can_be_faulted_too(pc, portal, portal_calls):
    pc.admin("faults", {"error_rate": 1.0, "http_status": 502, "operations": ["login"]})
    response = requests.post(portal.url + "/auth", json={"username": "lienthong.h49", "password": "x"}, timeout=TIMEOUT)
    assert response.status_code == 502
    assert pc.lookup(MA)["error_code"] == 0


def test_faulted_test_doors_still_answer(pc):
    pc.admin("faults", {"error_rate": 1.0, "drop_rate": 1.0})
    assert pc.state()["faults"]["error_rate"] == 1.0
    assert pc.held() == []
    assert pc.admin("reset").ok


def test_seeded_portal_faults_repeat(pc):
    def run() -> list[int]:
        pc.admin("faults", {"error_rate": 0.3, "http_status": 503, "seed": 11, "operations": ["TraCuuHoSo"]})
        return [pc.raw("TraCuuHoSo", mahoso=MA).status_code for _ in range(20)]

    first = run()
    assert 503 in first and 200 in first
    assert run() == first


def test_fault_settings_are_validated(pc):
    for body in ({"error_rate": 1.5}, {"http_status": 200}, {"drop_rate": "x"}, {"operations": "DongBoHoSoMC"},
                 {"latency": 5}):
        response = pc.admin("faults", body)
        assert response.status_code == 400, body


# -- state, persistence, secrets ----------------------------------------------------------------------
def test_call_counters(pc, record):
    pc.sync([record()])
    pc.sync([record()])
    pc.sync([record()], updating=True)
    pc.lookup(MA)
    assert pc.calls() == {"login": {"0": 1}, "DongBoHoSoMC": {"0": 2, "3": 1}, "TraCuuHoSo": {"0": 1}}
    assert pc.state()["counts"]["calls"] == 5
    requests.post(pc.url + "/integration", data=b"<xml/>", timeout=TIMEOUT)
    pc.call("KhongCo")
    assert pc.calls()["<integration>"] == {"http_400": 1} and pc.calls()["KhongCo"] == {"-1": 1}


def test_state_door_for_one_dossier(pc, record):
    assert pc.detail(MA).status_code == 404
    pc.sync([record()])
    detail = pc.detail(MA).json()
    assert detail["MaHoSo"] == MA and len(detail["history"]) == 1 and detail["history"][0]["record"] == record()


def test_portal_state_survives_restart_but_sessions_do_not(tmp_path, portal_calls, record):
    first = NationalPortalMock(tmp_path / "p", port=0).start()
    try:
        calls = portal_calls(first)
        calls.login()
        assert calls.sync([record()])["error_code"] == 0
        assert calls.sync([record(TrangThaiHoSo="4")], updating=True)["error_code"] == 0
        session = calls.session
    finally:
        first.stop()
    second = NationalPortalMock(tmp_path / "p", port=0).start()
    try:
        calls = portal_calls(second)
        calls.session = session
        assert calls.lookup(MA)["error_code"] == 2
        calls.login()
        assert calls.lookup(MA)["result"][0]["TrangThaiHoSo"] == "4"
        assert calls.sync([record()])["error_code"] == 3
        state = calls.state()
        assert state["counts"]["dossiers"] == 1 and state["counts"]["history"] == 2
        assert calls.calls()["DongBoHoSoMC"] == {"0": 2, "3": 1}
    finally:
        second.stop()


def test_reset_forgets_everything_but_sessions(pc, record):
    pc.sync([record()])
    assert pc.admin("reset").json() == {"reset": True}
    assert pc.held() == [] and pc.calls() == {}
    assert pc.state()["clock"] == "2026-11-02T08:00:00+07:00"
    assert pc.sync([record()])["error_code"] == 0


def test_no_password_or_session_in_logs_or_state(portal, portal_calls, record, caplog):
    caplog.set_level(logging.DEBUG, logger="mocks")
    calls = portal_calls(portal)
    calls.login()
    calls.sync([record()])
    calls.sync([record("000.00.01.H22-261102-0001")])
    exposed = caplog.text + requests.get(portal.url + "/_state", timeout=TIMEOUT).text + \
        requests.get(portal.url + "/_state/calls", timeout=TIMEOUT).text + repr(portal.accounts)
    assert calls.session and calls.session not in exposed
    assert "demo-portal-secret" not in exposed
    assert "POST /integration" in caplog.text  # the access log is there, just without secrets


def test_parallel_callers_are_serialised_safely(pc, record):
    from concurrent.futures import ThreadPoolExecutor

    def push(i: int) -> int:
        return pc.sync([record(f"000.00.0{1 + i % 8}.H49-261103-{i:04d}")])["error_code"]

    with ThreadPoolExecutor(max_workers=12) as pool:
        codes = list(pool.map(push, range(1, 61)))
    assert codes == [0] * 60
    state = pc.state()["counts"]
    assert state["dossiers"] == 60 and state["history"] == 60
    assert pc.calls()["DongBoHoSoMC"] == {"0": 60}
