"""CapNhatTienDoHoSoMC, the reconciliation fields of TraCuuHoSo and the session-expiry fault switch
of the national portal stand-in (national-portal-contract.md §4.2, §4.4, §7.3, §7.4, §7.8, §8, §9)."""

from __future__ import annotations

import pytest
import requests

from mocks.national_portal import NationalPortalMock

TIMEOUT = 5
MA = "000.00.01.H49-261102-0001"
MA2 = "000.00.05.H49-261102-0003"
SESSION_GONE = {"error_code": 2, "message": "Phiên làm việc không hợp lệ hoặc đã hết hạn"}


def _held(pc, record, *codes: str) -> None:
    assert pc.sync([record(code) for code in codes or (MA,)])["error_code"] == 0


def _progress_door(pc) -> list[dict]:
    return requests.get(pc.url + "/_state/progress", timeout=TIMEOUT).json()["progress"]


# -- success, append-only, state doors, TraCuuHoSo -----------------------------------------------------
def test_entries_are_appended_and_shown_by_the_doors_and_the_lookup(pc, record, entry):
    _held(pc, record, MA, MA2)
    first = [entry(), entry(ThoiDiemXuLy="20261102093000", TrangThai="4", NoiDungXuLy="Chuyển xử lý")]
    assert pc.progress(first) == {"error_code": 0, "message": "Cập nhật tiến độ thành công 2 bản ghi"}
    assert pc.progress([entry(MA2, ThoiDiemXuLy="20261102100000")]) == {
        "error_code": 0, "message": "Cập nhật tiến độ thành công 1 bản ghi"}
    assert _progress_door(pc) == [
        {"MaHoSo": MA, "record": first[0], "seq": 1},
        {"MaHoSo": MA, "record": first[1], "seq": 2},
        {"MaHoSo": MA2, "record": entry(MA2, ThoiDiemXuLy="20261102100000"), "seq": 3},
    ]
    detail = pc.detail(MA).json()
    assert detail["progress"] == [{"MaHoSo": MA, "record": first[0], "seq": 1},
                                  {"MaHoSo": MA, "record": first[1], "seq": 2}]
    assert len(detail["history"]) == 1 and detail["current"]["versions"] == 1  # the snapshot is untouched
    row = pc.lookup(MA)["result"][0]
    assert list(row) == ["MaHoSo", "TrangThaiHoSo", "NgayCapNhat", "SoTienDo", "ThoiDiemXuLyCuoi"]
    assert (row["MaHoSo"], row["TrangThaiHoSo"], row["SoTienDo"], row["ThoiDiemXuLyCuoi"]) == (
        MA, "2", "2", "20261102093000")
    assert row["NgayCapNhat"] == "20261102080300"  # the time of the last DongBoHoSoMC, not of progress
    assert pc.state()["counts"]["progress"] == 3


def test_a_repeated_entry_is_stored_again(pc, record, entry):
    _held(pc, record)
    assert pc.progress([entry()])["error_code"] == 0
    assert pc.progress([entry()])["error_code"] == 0
    assert pc.progress([entry(), entry()]) == {"error_code": 0, "message": "Cập nhật tiến độ thành công 2 bản ghi"}
    assert [(p["seq"], p["record"]) for p in _progress_door(pc)] == [(n, entry()) for n in (1, 2, 3, 4)]
    assert pc.lookup(MA)["result"][0]["SoTienDo"] == "4"


def test_entries_of_equal_time_are_accepted(pc, record, entry):
    _held(pc, record)
    assert pc.progress([entry(TrangThai="2"), entry(TrangThai="4", NoiDungXuLy="Chuyển xử lý")])["error_code"] == 0
    assert pc.progress([entry(TrangThai="4", NoiDungXuLy="Phân công")])["error_code"] == 0
    assert pc.lookup(MA)["result"][0]["ThoiDiemXuLyCuoi"] == "20261102081500"


def test_optional_fields_may_be_absent_or_empty_and_unknown_fields_pass(pc, record, entry):
    _held(pc, record)
    bare = {k: v for k, v in entry().items() if k in ("MaHoSo", "NguoiXuLy", "ThoiDiemXuLy", "NoiDungXuLy",
                                                      "TrangThai")}
    empty = entry(ChucDanh="", PhongBanXuLy="", NgayBatDau="", NgayKetThucTheoQuyDinh="", TruongKhac="x")
    assert pc.progress([bare, empty])["error_code"] == 0
    assert [p["record"] for p in _progress_door(pc)] == [bare, empty]


# -- state refusals ---------------------------------------------------------------------------------------
def test_progress_of_a_dossier_the_portal_does_not_hold_is_code_4(pc, entry):
    text = f"Hồ sơ {MA} chưa được gửi, không thể cập nhật tiến độ"
    assert pc.progress([entry()]) == {
        "error_code": 4,
        "message": f"Cập nhật tiến độ thất bại: 1/1 bản ghi bị từ chối, không bản ghi nào được cập nhật. {text}",
        "result": [{"MaHoSo": MA, "index": 0, "error_code": 4, "field": "MaHoSo", "message": text}],
    }
    assert _progress_door(pc) == []


@pytest.mark.parametrize("final,text", [
    ("10", "đã trả kết quả, không được cập nhật trạng thái"),
    ("3", "bị từ chối. không thể cập nhật trạng thái"),
    ("7", "đã được rút theo yêu cầu của công dân, không được cập nhật trạng thái"),
])
def test_a_final_dossier_takes_its_history_up_to_its_final_step_then_code_6(pc, record, entry, final, text):
    pc.sync([record(TrangThaiHoSo=final)])  # first seen already finished: its history follows the snapshot
    assert pc.progress([entry(TrangThai="1"), entry(ThoiDiemXuLy="20261102100000")])["error_code"] == 0
    closing = entry(ThoiDiemXuLy="20261103080000", TrangThai=final)
    assert pc.progress([closing])["error_code"] == 0
    row = {"MaHoSo": MA, "index": 0, "error_code": 6, "field": "MaHoSo", "message": f"Hồ sơ {MA} {text}"}
    assert pc.progress([entry(ThoiDiemXuLy="20261103090000", TrangThai="4")]) == {
        "error_code": 6,
        "message": f"Cập nhật tiến độ thất bại: 1/1 bản ghi bị từ chối, không bản ghi nào được cập nhật. Hồ sơ {MA} "
                   f"{text}",
        "result": [row]}
    assert pc.progress([closing])["result"] == [row]  # not even the final step again
    assert pc.lookup(MA)["result"][0]["SoTienDo"] == "3"


def test_entries_after_the_final_step_in_the_same_call_are_code_6(pc, record, entry):
    pc.sync([record(TrangThaiHoSo="10")])
    calls = [entry(), entry(ThoiDiemXuLy="20261103080000", TrangThai="10"),
             entry(ThoiDiemXuLy="20261103080000", TrangThai="10")]
    answer = pc.progress(calls)
    assert [(r["index"], r["error_code"], r["message"]) for r in answer["result"]] == [
        (2, 6, f"Hồ sơ {MA} đã trả kết quả, không được cập nhật trạng thái")]
    assert _progress_door(pc) == []
    assert pc.progress(calls[:2])["error_code"] == 0


def test_a_final_step_held_before_the_dossier_became_final_closes_it(pc, record, entry):
    pc.sync([record(TrangThaiHoSo="9")])
    assert pc.progress([entry(TrangThai="10")])["error_code"] == 0  # not final yet: no effect
    assert pc.progress([entry(TrangThai="9")])["error_code"] == 0
    pc.sync([record(TrangThaiHoSo="10")], updating=True)
    assert pc.progress([entry(TrangThai="9")])["error_code"] == 6


def test_an_entry_older_than_the_latest_stored_one_is_code_minus_1(pc, record, entry):
    _held(pc, record)
    assert pc.progress([entry(ThoiDiemXuLy="20261102100000")])["error_code"] == 0
    message = (f"Bản ghi tiến độ data[0] của hồ sơ {MA}: logic xử lý không hợp lệ, ThoiDiemXuLy 20261102095959 sớm "
               f"hơn tiến độ đã có của hồ sơ (20261102100000); tiến độ phải được gửi theo thứ tự thời gian")
    assert pc.progress([entry(ThoiDiemXuLy="20261102095959")]) == {
        "error_code": -1,
        "message": f"Cập nhật tiến độ thất bại: 1/1 bản ghi bị từ chối, không bản ghi nào được cập nhật. {message}",
        "result": [{"MaHoSo": MA, "index": 0, "error_code": -1, "field": "ThoiDiemXuLy", "message": message}],
    }
    assert pc.lookup(MA)["result"][0]["SoTienDo"] == "1"


def test_entries_of_one_call_must_be_in_time_order_per_dossier(pc, record, entry):
    _held(pc, record, MA, MA2)
    calls = [
        entry(ThoiDiemXuLy="20261102090000"),
        entry(MA2, ThoiDiemXuLy="20261102070000"),  # another dossier: its own order
        entry(ThoiDiemXuLy="20261102085959"),  # older than data[0] of the same dossier
        entry(ThoiDiemXuLy="20261102090000"),  # equal to data[0]: fine
    ]
    answer = pc.progress(calls)
    assert answer["error_code"] == -1
    assert [(r["MaHoSo"], r["index"], r["error_code"], r["field"]) for r in answer["result"]] == [
        (MA, 2, -1, "ThoiDiemXuLy")]
    assert "(20261102090000)" in answer["result"][0]["message"]
    assert _progress_door(pc) == []
    del calls[2]
    assert pc.progress(calls)["error_code"] == 0


def test_batch_is_all_or_nothing_and_lists_each_refused_entry(pc, record, entry):
    _held(pc, record, MA)
    pc.sync([record(MA2, TrangThaiHoSo="10")])
    assert pc.progress([entry(MA2, TrangThai="10")])["error_code"] == 0  # MA2's final step is held
    batch = [
        entry(),
        entry("000.00.01.H49-261102-0404"),
        entry(NguoiXuLy="Nguyễn Văn " + "A" * 40),
        entry(MA2),
        entry("000.00.01.H22-261102-0001"),
        entry(ThoiDiemXuLy="20261102081600"),
    ]
    answer = pc.progress(batch)
    assert answer["error_code"] == 4  # the first refused entry's code
    assert answer["message"].startswith("Cập nhật tiến độ thất bại: 4/6 bản ghi bị từ chối, "
                                        "không bản ghi nào được cập nhật. Hồ sơ 000.00.01.H49-261102-0404 chưa")
    assert "thành công" not in answer["message"]
    assert answer["result"] == [
        {"MaHoSo": "000.00.01.H49-261102-0404", "index": 1, "error_code": 4, "field": "MaHoSo",
         "message": "Hồ sơ 000.00.01.H49-261102-0404 chưa được gửi, không thể cập nhật tiến độ"},
        {"MaHoSo": MA, "index": 2, "error_code": -1, "field": "NguoiXuLy",
         "message": f"Bản ghi tiến độ data[2] của hồ sơ {MA}: trường NguoiXuLy dài 51 ký tự, vượt quá độ dài tối đa "
                    f"50 ký tự"},
        {"MaHoSo": MA2, "index": 3, "error_code": 6, "field": "MaHoSo",
         "message": f"Hồ sơ {MA2} đã trả kết quả, không được cập nhật trạng thái"},
        {"MaHoSo": "000.00.01.H22-261102-0001", "index": 4, "error_code": 5, "field": "MaHoSo",
         "message": "Bản ghi tiến độ data[4] của hồ sơ 000.00.01.H22-261102-0001: mã đơn vị 000.00.01.H22 trong "
                    "MaHoSo không thuộc tỉnh/thành phố H49 của tài khoản đăng nhập"},
    ]
    assert len(_progress_door(pc)) == 1
    good = [batch[0], batch[5]]
    assert pc.progress(good) == {"error_code": 0, "message": "Cập nhật tiến độ thành công 2 bản ghi"}


# -- validation ---------------------------------------------------------------------------------------------
REQUIRED = ["MaHoSo", "NguoiXuLy", "ThoiDiemXuLy", "NoiDungXuLy", "TrangThai"]


def _refused(pc, bad, field, message):
    answer = pc.progress([bad])
    assert answer["error_code"] == -1, answer
    assert answer["result"] == [{"MaHoSo": bad.get("MaHoSo") if isinstance(bad.get("MaHoSo"), str) else "",
                                 "index": 0, "error_code": -1, "field": field, "message": message}]
    assert answer["message"].endswith(message)
    assert _progress_door(pc) == []


def test_rules_file_lists_the_fields_in_contract_order(portal):
    assert portal.progress_rules.field_names() == [
        "MaHoSo", "NguoiXuLy", "ChucDanh", "ThoiDiemXuLy", "PhongBanXuLy", "NoiDungXuLy", "TrangThai",
        "NgayBatDau", "NgayKetThucTheoQuyDinh"]
    assert str(portal.progress_rules.path).endswith("fixtures/schemas/national_portal/CapNhatTienDoHoSoMC.rules.json")


@pytest.mark.parametrize("field", REQUIRED)
def test_each_required_field_must_be_present(pc, record, entry, field):
    _held(pc, record)
    bad = entry()
    del bad[field]
    label = "Bản ghi tiến độ data[0]" if field == "MaHoSo" else f"Bản ghi tiến độ data[0] của hồ sơ {MA}"
    _refused(pc, bad, field, f"{label}: thiếu trường bắt buộc {field}")


@pytest.mark.parametrize("field", REQUIRED)
def test_each_required_field_must_not_be_blank(pc, record, entry, field):
    _held(pc, record)
    label = "Bản ghi tiến độ data[0]" if field == "MaHoSo" else f"Bản ghi tiến độ data[0] của hồ sơ {MA}"
    _refused(pc, entry(**{field: " "}), field, f"{label}: trường {field} không được để trống")


def test_length_limits(pc, record, entry):
    _held(pc, record)
    label = f"Bản ghi tiến độ data[0] của hồ sơ {MA}"
    _refused(pc, entry(NguoiXuLy="ễ" * 51), "NguoiXuLy",
             f"{label}: trường NguoiXuLy dài 51 ký tự, vượt quá độ dài tối đa 50 ký tự")
    _refused(pc, entry(NoiDungXuLy="ả" * 2001), "NoiDungXuLy",
             f"{label}: trường NoiDungXuLy dài 2001 ký tự, vượt quá độ dài tối đa 2000 ký tự")
    assert pc.progress([entry(NguoiXuLy="ễ" * 50, NoiDungXuLy="ả" * 2000)])["error_code"] == 0


@pytest.mark.parametrize("value", ["0", "11", "04", "Đang xử lý"])
def test_trang_thai_is_1_to_10(pc, record, entry, value):
    _held(pc, record)
    _refused(pc, entry(TrangThai=value), "TrangThai",
             f'Bản ghi tiến độ data[0] của hồ sơ {MA}: trường TrangThai có giá trị "{value}" không hợp lệ '
             f"(chỉ nhận từ 1 đến 10)")


@pytest.mark.parametrize("field", ["ThoiDiemXuLy", "NgayBatDau", "NgayKetThucTheoQuyDinh"])
def test_dates_must_be_real_yyyyMMddHHmmss(pc, record, entry, field):
    _held(pc, record)
    label = f"Bản ghi tiến độ data[0] của hồ sơ {MA}"
    _refused(pc, entry(**{field: "2026-11-02 08:15:00"}), field,
             f"{label}: trường {field} không đúng định dạng yyyyMMddHHmmss")
    _refused(pc, entry(**{field: "20261131081500"}), field,
             f'{label}: trường {field} có giá trị "20261131081500" không phải ngày giờ có thật '
             f"(định dạng yyyyMMddHHmmss)")


@pytest.mark.parametrize("field,value,kind", [
    ("TrangThai", 4, "số (number)"), ("ChucDanh", None, "null"), ("ThoiDiemXuLy", 20261102081500, "số (number)"),
    ("PhongBanXuLy", ["x"], "mảng (array)")])
def test_values_must_be_strings(pc, record, entry, field, value, kind):
    _held(pc, record)
    _refused(pc, entry(**{field: value}), field,
             f"Bản ghi tiến độ data[0] của hồ sơ {MA}: trường {field} phải là chuỗi (string), không phải {kind}")


def test_an_element_that_is_not_an_object(pc, record, entry):
    _held(pc, record)
    answer = pc.progress([entry(), MA])
    assert answer["result"] == [{"MaHoSo": "", "index": 1, "error_code": -1, "field": "data[1]",
                                 "message": "Bản ghi tiến độ data[1]: phần tử data[1] phải là đối tượng (object), "
                                            "không phải chuỗi (string)"}]


@pytest.mark.parametrize("fields", [{}, {"data": []}, {"data": {"MaHoSo": MA}}, {"data": "x"}])
def test_data_must_be_a_non_empty_array(pc, fields):
    assert pc.call("CapNhatTienDoHoSoMC", **fields) == {
        "error_code": -1, "message": "Trường data phải là mảng bản ghi tiến độ không rỗng"}


def test_envelope_checks_come_first(pc, entry):
    pc.unit = "000.00.02.H49"
    assert pc.progress([entry()])["error_code"] == 5
    pc.unit = "000.00.01.H49"
    assert pc.raw("CapNhatTienDoHoSoMC", headers={}, data=[entry()]).json()["error_code"] == -1
    pc.session = "stale"
    assert pc.progress([entry()]) == SESSION_GONE
    assert pc.call("CapNhatTienDoHoSoMC", endpoint="share", data=[entry()]) == SESSION_GONE


# -- faults, counters, reset, restart ------------------------------------------------------------------------
def test_ambiguous_fault_stores_the_entries_then_answers_500(pc, record, entry):
    _held(pc, record)
    pc.admin("faults", {"ambiguous_rate": 1.0, "operations": ["CapNhatTienDoHoSoMC"]})
    response = pc.raw("CapNhatTienDoHoSoMC", data=[entry(), entry(ThoiDiemXuLy="20261102090000")])
    assert response.status_code == 500 and response.headers["Content-Type"].startswith("text/html")
    row = pc.lookup(MA)["result"][0]  # TraCuuHoSo is not faulted: the client can reconcile
    assert (row["SoTienDo"], row["ThoiDiemXuLyCuoi"]) == ("2", "20261102090000")
    pc.admin("faults", {})
    assert pc.progress([entry(ThoiDiemXuLy="20261102090000")])["error_code"] == 0  # a blind resend: stored again
    assert pc.lookup(MA)["result"][0]["SoTienDo"] == "3"
    assert pc.calls()["CapNhatTienDoHoSoMC"] == {"ambiguous_500": 1, "0": 1}


def test_error_and_drop_faults_apply_nothing(pc, record, entry):
    _held(pc, record)
    pc.admin("faults", {"error_rate": 1.0, "http_status": 502, "operations": ["CapNhatTienDoHoSoMC"]})
    assert pc.raw("CapNhatTienDoHoSoMC", data=[entry()]).status_code == 502
    assert pc.sync([record(TrangThaiHoSo="4")], updating=True)["error_code"] == 0  # other services unaffected
    pc.admin("faults", {"drop_rate": 1.0, "operations": ["CapNhatTienDoHoSoMC"]})
    with pytest.raises(requests.ConnectionError):
        pc.raw("CapNhatTienDoHoSoMC", data=[entry()])
    assert _progress_door(pc) == []
    assert pc.calls()["CapNhatTienDoHoSoMC"] == {"fault_http_502": 1, "fault_drop": 1}


def test_calls_are_counted_per_outcome(pc, record, entry):
    pc.progress([entry()])
    _held(pc, record)
    pc.progress([entry()])
    pc.progress([entry(TrangThai="12")])
    assert pc.calls() == {"login": {"0": 1}, "DongBoHoSoMC": {"0": 1},
                          "CapNhatTienDoHoSoMC": {"-1": 1, "0": 1, "4": 1}}


def test_reset_forgets_progress_and_restart_keeps_it(tmp_path, portal_calls, record, entry):
    first = NationalPortalMock(tmp_path / "p", port=0).start()
    try:
        calls = portal_calls(first)
        calls.login()
        _held(calls, record)
        assert calls.progress([entry()])["error_code"] == 0
    finally:
        first.stop()
    second = NationalPortalMock(tmp_path / "p", port=0).start()
    try:
        calls = portal_calls(second)
        calls.login()
        assert calls.progress([entry(ThoiDiemXuLy="20261102080000")])["error_code"] == -1  # order survives too
        assert calls.lookup(MA)["result"][0]["SoTienDo"] == "1"
        calls.admin("reset")
        assert _progress_door(calls) == [] and calls.state()["counts"]["progress"] == 0
    finally:
        second.stop()


# -- session expiry mid-run ------------------------------------------------------------------------------------
def test_sessions_expire_after_n_successful_calls(pc, portal, portal_calls, record, entry):
    assert pc.admin("faults", {"session_expire_every": 3}).json()["faults"]["session_expire_every"] == 3
    other = portal_calls(portal)
    other.login()
    assert pc.sync([record()])["error_code"] == 0  # 1
    assert pc.sync([record()])["error_code"] == 3  # refused: does not count
    assert pc.progress([entry()])["error_code"] == 0  # 2
    assert pc.lookup(MA)["error_code"] == 0  # 3: answered, then the session ends
    assert pc.lookup(MA) == SESSION_GONE
    assert pc.progress([entry()]) == SESSION_GONE  # nothing applied
    assert other.lookup(MA)["error_code"] == 0  # every session has its own count
    for _ in range(2):  # a long run meets code 2 again and again
        assert pc.login()["error_code"] == 0
        assert [pc.lookup(MA)["error_code"] for _ in range(4)] == [0, 0, 0, 2]
    assert len(_progress_door(pc)) == 1
    assert pc.calls()["TraCuuHoSo"] == {"0": 8, "2": 3}


def test_session_expiry_switch_is_cleared_by_empty_plan_and_restarts_counts(pc):
    pc.admin("faults", {"session_expire_every": 2})
    assert pc.lookup(MA)["error_code"] == 0
    pc.admin("faults", {"session_expire_every": 2})  # a new plan: counts start again
    assert [pc.lookup(MA)["error_code"] for _ in range(3)] == [0, 0, 2]
    pc.login()
    pc.admin("faults", {})
    assert pc.state()["faults"]["session_expire_every"] is None
    assert [pc.lookup(MA)["error_code"] for _ in range(5)] == [0] * 5


def test_session_expiry_ignores_operations_and_combines_with_other_faults(pc, record):
    pc.admin("faults", {"session_expire_every": 1, "error_rate": 1.0, "operations": ["DongBoHoSoMC"]})
    assert pc.lookup(MA)["error_code"] == 0
    assert pc.lookup(MA) == SESSION_GONE
    pc.login()
    pc.admin("faults", {"session_expire_every": 1, "ambiguous_rate": 1.0, "operations": ["DongBoHoSoMC"]})
    assert pc.raw("DongBoHoSoMC", isUpdating="False", data=[record()]).status_code == 500  # applied: it counts
    assert pc.lookup(MA) == SESSION_GONE


@pytest.mark.parametrize("value", [0, -1, True, "3", 1.5, 1_000_001])
def test_session_expiry_setting_is_validated(pc, value):
    response = pc.admin("faults", {"session_expire_every": value})
    assert response.status_code == 400
    assert "session_expire_every" in response.json()["message"]


def test_session_expiry_is_portal_only(os_calls):
    response = os_calls.post("/_admin/faults", {"session_expire_every": 3})
    assert response.status_code == 400
    assert "session_expire_every" not in os_calls.get("/_admin/faults", key=False).json()["faults"]


# -- the one-stop's histories are what the portal takes -----------------------------------------------------
STATUS_CODE = {"receiving": "1", "new": "2", "denied": "3", "processing": "4", "waiting": "5", "paying": "6",
               "cancelled": "7", "unresolved": "8", "releasing": "9", "done": "10"}


def _portal_time(iso: str | None) -> str:
    return "" if not iso else iso[:19].replace("-", "").replace("T", "").replace(":", "")


def _as_entry(dossier_no: str, step: dict) -> dict:
    return {"MaHoSo": dossier_no, "NguoiXuLy": step["actor"], "ChucDanh": step["actorTitle"],
            "ThoiDiemXuLy": _portal_time(step["finishedAt"]), "PhongBanXuLy": step["department"],
            "NoiDungXuLy": f"{step['action']}-{step['note']}", "TrangThai": STATUS_CODE[step["status"]],
            "NgayBatDau": _portal_time(step["startedAt"]), "NgayKetThucTheoQuyDinh": _portal_time(step["dueAt"])}


@pytest.mark.parametrize("replay", ["event_by_event", "current_snapshots_then_chunks_of_10"])
def test_every_one_stop_history_is_accepted_in_full(os_calls, pc, record, replay):
    """Snapshot first, then its progress in time order (§7.3, §7.4): nothing is refused, not even
    the steps of a dossier that was already finished when it was first sent."""
    os_calls.advance(new=20, changes=40)
    defective = {d["dossierNo"] for d in os_calls.state()["defective"]}
    sent: dict[str, int] = {}
    if replay == "event_by_event":
        for event in os_calls.events():
            d = event["dossier"]
            if d["dossierNo"] in defective:
                continue
            answer = pc.sync([record(d["dossierNo"], TrangThaiHoSo=STATUS_CODE[d["dossierStatus"]])],
                             updating=d["dossierNo"] in sent)
            assert answer["error_code"] == 0, answer
            new = d["progress"][sent.get(d["dossierNo"], 0):]
            assert pc.progress([_as_entry(d["dossierNo"], s) for s in new])["error_code"] == 0
            sent[d["dossierNo"]] = len(d["progress"])
    else:
        current = [d for d in os_calls.dossiers() if d["dossierNo"] not in defective]
        assert pc.sync([record(d["dossierNo"], TrangThaiHoSo=STATUS_CODE[d["dossierStatus"]]) for d in current])[
            "error_code"] == 0
        steps = sorted(((s["finishedAt"], d["dossierNo"], s) for d in current for s in d["progress"]),
                       key=lambda t: t[:2])
        for i in range(0, len(steps), 10):
            answer = pc.progress([_as_entry(no, s) for _, no, s in steps[i:i + 10]])
            assert answer["error_code"] == 0, answer
        sent = {d["dossierNo"]: len(d["progress"]) for d in current}
    finished = 0
    for d in os_calls.dossiers():
        if d["dossierNo"] in defective:
            continue
        row = pc.lookup(d["dossierNo"])["result"][0]
        assert row["SoTienDo"] == str(len(d["progress"])) == str(sent[d["dossierNo"]])
        assert row["ThoiDiemXuLyCuoi"] == _portal_time(d["progress"][-1]["finishedAt"])
        if row["TrangThaiHoSo"] in ("3", "7", "10"):
            finished += 1
            late = _as_entry(d["dossierNo"], {**d["progress"][-1], "status": "processing"})
            assert pc.progress([late])["error_code"] == 6  # after its final step: nothing more
    assert finished >= 5
