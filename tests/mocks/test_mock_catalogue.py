"""The catalogue side of the stand-ins: the generated national catalogue, the portal's catalogue services,
publishing changes, and the one-stop's procedure API."""

from __future__ import annotations

import re

import pytest
import requests

from mocks.national_portal import NationalPortalMock
from mocks.national_portal import catalogue as cat
from mocks.one_stop import DEFAULT_API_KEY
from mocks.server import load_seed
from tests.mocks.conftest import TIMEOUT, PortalCalls

SEED = load_seed()
MALFORMED = [("2.005293.000.00.00.H49", "empty_code", 499), ("1.003290.000.00.00.H49", "unparsable_fee", 999),
             ("2.011845.000.00.00.H49", "unknown_agency", 1499), ("2.004805.000.00.00.H49", "empty_code", 1999),
             ("1.005677.000.00.00.H49", "unparsable_fee", 2499), ("1.009682.000.00.00.H49", "unknown_agency", 2999)]
CODE = re.compile(r"^[123]\.\d{6}\.000\.00\.00\.H49$")
RECORD_KEYS = {"ID", "MATTHC", "TENTTHC", "LOAITTHC", "TRANGTHAI", "MACOQUANCONGBO", "IDQUYETDINHCONGBO", "QUYETDINH",
               "YEUCAU", "TUKHOA", "MOTA", "MOTADOITUONGTHUCHIEN", "MOTACOQUANTHUCHIEN", "MOTACOQUANTHAMQUYEN",
               "DIACHITIEPNHAN", "LINHVUCTHUCHIEN", "CAPTHUCHIEN", "CACHTHUCTHUCHIEN", "THANHPHANHOSO",
               "TRINHTUTHUCHIEN", "DOITUONGTHUCHIEN", "KETQUATHUCHIEN", "CANCUPHAPLY", "COQUANTHUCHIEN",
               "COQUANCOTHAMQUYEN", "COQUANDUOCUYQUYEN", "COQUANPHOIHOP", "TTHCLIENQUAN", "TTHCLIENTHONG"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One portal for the read-only checks (the catalogue is written to its state once)."""
    mock = NationalPortalMock(tmp_path_factory.mktemp("catalogue") / "portal", port=0).start()
    calls = PortalCalls(mock)
    assert calls.login()["error_code"] == 0
    yield calls
    mock.stop()


# -- the generator -------------------------------------------------------------------------------
def test_generator_is_deterministic_sized_and_keeps_the_seed_procedures():
    a, b = cat.generate(SEED, 49), cat.generate(SEED, 49)
    assert a == b and len(a.rows) == 3000 and len(set(a.codes)) == 3000
    assert all(CODE.match(c) for c in a.codes)
    assert a.codes[:15] == [p["code"] for p in SEED["procedures"]] == list(a.seed_codes)
    assert [(r[1], r[4], r[0]) for r in a.rows if r[4]] == MALFORMED
    assert cat.generate(SEED, 50).codes[15:20] != a.codes[15:20]
    assert len(cat.generate(SEED, 49, size=100).rows) == 100
    assert "1.999999.000.00.00.H49" not in a.codes


def test_seed_procedures_are_unchanged_in_code_name_and_domain(world):
    for p in SEED["procedures"]:
        record = world.call("LayThuTuc", maTTHC=p["code"])["result"][0]
        assert (record["MATTHC"], record["TENTTHC"]) == (p["code"], p["name"])
        assert record["LINHVUCTHUCHIEN"] == [{"MALINHVUC": p["domain"]["code"], "TENLINHVUC": p["domain"]["name"]}]
        assert [u["MADONVI"] for u in record["COQUANTHUCHIEN"]] == p["units"]
        assert record["TRANGTHAI"] == 1


def test_fee_texts_are_free_text():
    import random

    texts = {cat.fee_text(random.Random(i), 50000)[0] for i in range(200)}
    assert texts == {"50.000", "50.000 đồng", "50.000 đồng/bản", "50000"}
    assert {cat.fee_text(random.Random(i), 0)[0] for i in range(200)} == {"Không", "0", "Miễn phí"}


# -- portal services ---------------------------------------------------------------------------------
def test_lay_danh_sach_tthc_lists_every_published_procedure(world):
    answer = world.call("LayDanhSachTTHC", endpoint="share")
    assert (answer["error_code"], answer["message"]) == (0, "Thành công")
    rows = answer["result"]
    assert len(rows) == 3000 and set(rows[0]) == {"MATTHC", "TENTTHC"}
    assert rows[0] == {"MATTHC": "2.000488.000.00.00.H49", "TENTTHC": SEED["procedures"][0]["name"]}


def test_lay_thu_tuc_full_record_and_unknown_code(world):
    record = world.call("LayThuTuc", maTTHC="2.000488.000.00.00.H49")["result"][0]
    assert set(record) == RECORD_KEYS
    assert record["ID"] == "70000" and record["CAPTHUCHIEN"] == [{"CAPTHUCHIEN": "1", "TENCAP": "Cấp Tỉnh"}]
    fee = record["CACHTHUCTHUCHIEN"][0]["THOIGIAN"][0]
    assert fee["THOIGIANGIAIQUYET"] == "10" and fee["PHILEPHI"][0]["MAPHILEPHI"] == "LLTP-01"
    assert {"KENH", "THOIGIAN"} == set(record["CACHTHUCTHUCHIEN"][0])
    assert set(record["THANHPHANHOSO"][0]["GIAYTO"][0]) == {"MAGIAYTO", "TENGIAYTO", "TENMAUDON", "URL", "SOBANCHINH",
                                                             "SOBANSAO", "MA_KQ_THAYTHE"}
    assert world.call("LayThuTuc", maTTHC="1.999999.000.00.00.H49") == {"error_code": 0, "message": "Thành công",
                                                                          "result": []}
    assert world.call("LayThuTuc")["error_code"] == -1
    assert world.call("LayThuTuc", endpoint="share", maTTHC="x")["error_code"] == -1  # integration only


def test_malformed_procedures_carry_their_defect(world):
    state = requests.get(world.url + "/_state/catalogue", timeout=TIMEOUT).json()
    assert [(m["code"], m["defect"], m["index"]) for m in state["malformed"]] == MALFORMED
    assert state["counts"] == {"procedures": 3000, "published": 3000, "withdrawn": 0, "malformed": 6,
                               "agencies": 65, "domains": 28, "publishes": 0}
    agencies = {a["MADONVI"] for a in world.call("LayDanhMucCoQuan", endpoint="share")["result"]}
    empty = world.call("LayThuTuc", maTTHC=MALFORMED[0][0])["result"][0]
    assert empty["MATTHC"] == ""
    fee = world.call("LayThuTuc", maTTHC=MALFORMED[1][0])["result"][0]
    assert fee["CACHTHUCTHUCHIEN"][0]["THOIGIAN"][0]["PHILEPHI"][0]["SOTIEN"] == "liên hệ"
    agency = world.call("LayThuTuc", maTTHC=MALFORMED[2][0])["result"][0]
    assert agency["COQUANTHUCHIEN"][0]["MADONVI"] == "000.00.99.H49" not in agencies
    good = world.call("LayThuTuc", maTTHC="2.000488.000.00.00.H49")["result"][0]
    assert {u["MADONVI"] for u in good["COQUANTHUCHIEN"]} <= agencies


def test_lay_dvc_and_dictionaries(world):
    answer = world.call("LayDVC")
    data = answer["result"]["data"]
    assert len(data) == 3000
    first = data[0]
    assert set(first) == {"MADVC", "TENDVC", "MATTHC", "TENTTHC", "TENCOQUANBANHANH", "TENLINHVUC", "APDUNGDVC"}
    assert first["MADVC"] == "2.000488.000.00.00.H49.01" and first["TENCOQUANBANHANH"] == "Bộ Tư pháp"
    assert first["APDUNGDVC"] == [{"MACOQUANTHUCHIEN": "000.00.01.H49", "MUCDO": 4}]
    levels = {a["MUCDO"] for row in data for a in row["APDUNGDVC"]}
    assert levels == {2, 3, 4, "Một phần", "Toàn trình"}
    one = world.call("LayDVC", maTTHC="1.001193.000.00.00.H49")["result"]["data"]
    assert [r["MATTHC"] for r in one] == ["1.001193.000.00.00.H49"]
    agencies = world.call("LayDanhMucCoQuan", endpoint="share")["result"]
    assert agencies[1] == {"MADONVI": "000.00.01.H49", "TENDONVI": "Sở Tư pháp tỉnh Quảng Nam", "CAPDONVI": "1"}
    assert {a["CAPDONVI"] for a in agencies} == {"0", "1", "2", "3"}
    domains = world.call("LayDanhMucLinhVuc", endpoint="share")["result"]
    assert {"MALINHVUC": "G09-TP03", "TENLINHVUC": "Hộ tịch", "MANGANH": "G09"} in domains
    assert world.call("LayDanhMucLinhVuc")["error_code"] == -1  # share only


def test_catalogue_services_get_faults_per_service(world):
    assert world.admin("faults", {"error_rate": 1.0, "operations": ["LayDVC"]}).status_code == 200
    try:
        assert world.raw("LayDVC").status_code == 503
        assert world.call("LayDanhMucLinhVuc", endpoint="share")["error_code"] == 0
    finally:
        world.admin("faults", {})


def test_generated_codes_are_accepted_by_dong_bo_ho_so(pc, record):
    code = pc.call("LayDanhSachTTHC", endpoint="share")["result"][100]["MATTHC"]
    assert pc.sync([record(MaTTHC=code)])["error_code"] == 0


# -- publishing ------------------------------------------------------------------------------------------
def test_publish_is_deterministic_and_exact(portal_factory, tmp_path):
    answers = []
    for name in ("a", "b"):
        mock = portal_factory(state_dir=tmp_path / name)
        answers.append(requests.post(mock.url + "/_admin/catalogue/publish",
                                     json={"add": 2, "amend": 3, "withdraw": 2, "seed": 5}, timeout=TIMEOUT).json())
    assert answers[0] == answers[1]
    published = answers[0]
    assert published == {
        "added": ["3.018464.000.00.00.H49", "1.014909.000.00.00.H49"],
        "amended": [{"code": "1.006085.000.00.00.H49", "fields": ["TENTTHC"]},
                    {"code": "1.004776.000.00.00.H49", "fields": ["TENTTHC"]},
                    {"code": "1.001159.000.00.00.H49",
                     "fields": ["CACHTHUCTHUCHIEN[].THOIGIAN[].PHILEPHI[].SOTIEN", "CANCUPHAPLY"]}],
        "withdrawn": ["2.002738.000.00.00.H49", "2.004696.000.00.00.H49"]}
    calls = PortalCalls(mock)
    calls.login()
    listed = {r["MATTHC"]: r["TENTTHC"] for r in calls.call("LayDanhSachTTHC", endpoint="share")["result"]}
    assert len(listed) == 3000 and set(published["added"]) <= set(listed)
    assert not set(published["withdrawn"]) & set(listed)
    assert listed["1.006085.000.00.00.H49"].endswith(" (sửa đổi, bổ sung lần 1)")
    withdrawn = calls.call("LayThuTuc", maTTHC=published["withdrawn"][0])["result"][0]
    assert withdrawn["TRANGTHAI"] == 0
    fee = calls.call("LayThuTuc", maTTHC="1.001159.000.00.00.H49")["result"][0]
    assert fee["CACHTHUCTHUCHIEN"][0]["THOIGIAN"][0]["PHILEPHI"][0]["SOTIEN"].endswith(" đồng")
    detail = requests.get(f"{mock.url}/_state/catalogue/1.001159.000.00.00.H49", timeout=TIMEOUT).json()
    assert (detail["version"], detail["published"], detail["defect"]) == (2, True, None)
    assert detail["changes"] == [{"publish": 1, "seed": 5, "kind": "amended",
                                  "fields": ["CACHTHUCTHUCHIEN[].THOIGIAN[].PHILEPHI[].SOTIEN", "CANCUPHAPLY"]}]
    state = requests.get(mock.url + "/_state/catalogue", timeout=TIMEOUT).json()["counts"]
    assert (state["procedures"], state["published"], state["withdrawn"], state["publishes"]) == (3002, 3000, 2, 1)
    assert calls.sync([make(published["added"][0])])["error_code"] == 0
    assert requests.get(mock.url + "/_state/catalogue/9.9", timeout=TIMEOUT).status_code == 404
    bad = requests.post(mock.url + "/_admin/catalogue/publish", json={"add": -1}, timeout=TIMEOUT)
    assert bad.status_code == 400
    assert requests.post(mock.url + "/_admin/catalogue/publish", json={"x": 1}, timeout=TIMEOUT).status_code == 400
    mock.reset()
    assert requests.get(mock.url + "/_state/catalogue", timeout=TIMEOUT).json()["counts"]["procedures"] == 3000


def make(code):
    from tests.mocks.conftest import make_record

    return make_record("000.00.01.H49-261102-0077", MaTTHC=code)


def test_seed_procedures_are_never_amended_or_withdrawn(pc):
    answer = pc.admin("catalogue/publish", {"amend": 200, "withdraw": 200, "seed": 1}).json()
    seeds = {p["code"] for p in SEED["procedures"]}
    assert len(answer["amended"]) == 200 and len(answer["withdrawn"]) == 200
    assert not seeds & ({a["code"] for a in answer["amended"]} | set(answer["withdrawn"]))
    assert not {m[0] for m in MALFORMED} & set(answer["withdrawn"])


# -- one-stop procedure API ------------------------------------------------------------------------------
PROC = {
    "serviceCode": "2.000488.000.00.00.H49",
    "serviceName": "Cấp Phiếu lý lịch tư pháp cho công dân Việt Nam, người nước ngoài đang cư trú tại Việt Nam",
    "domainCode": "G09-TP06", "domainName": "Lý lịch tư pháp",
    "agencyCode": "000.00.01.H49", "agencyName": "Sở Tư pháp tỉnh Quảng Nam", "level": "full",
    "channels": [{"channel": "counter", "processingDays": 10, "timeUnit": "workingDay",
                  "fees": [{"feeCode": "LLTP-01", "feeName": "Phí", "amount": 200000, "rawText": "200.000 đồng"}]}],
    "components": [{"case": None, "docCode": "000488.01", "docName": "Tờ khai", "templateName": None,
                    "templateUrl": None, "originals": 1, "copies": 0}],
    "steps": [{"case": None, "name": "Nộp hồ sơ"}], "results": [{"resultCode": "KQ.G09.000061", "resultName": "Phiếu"}],
    "legalBasis": [{"number": "28/2009/QH12", "title": "Luật Lý lịch tư pháp", "issuer": "Quốc hội",
                    "issuedDate": "17/06/2009", "effectiveDate": "01/07/2010"}],
    "status": "active",
}


def _put(os_calls, body, code=PROC["serviceCode"], key=True):
    return requests.put(f"{os_calls.url}/api/v1/procedures/{code}", json=body,
                        headers={"X-Api-Key": DEFAULT_API_KEY} if key else {}, timeout=TIMEOUT)


def test_one_stop_upsert_get_list_withdraw(os_calls):
    assert os_calls.get("/api/v1/procedures").json() == {"items": [], "page": 1, "size": 100, "total": 0}
    created = _put(os_calls, PROC)
    assert created.status_code == 201 and created.json() == {**PROC, "version": 1}
    again = _put(os_calls, {**PROC, "version": 7})
    assert again.status_code == 200 and again.json()["version"] == 1  # unchanged: same version, still counted
    changed = dict(PROC, serviceName="Tên mới")
    assert _put(os_calls, changed).json()["version"] == 2
    assert os_calls.get(f"/api/v1/procedures/{PROC['serviceCode']}").json() == {**changed, "version": 2}
    assert os_calls.get("/api/v1/procedures/9.9").status_code == 404
    url = f"{os_calls.url}/api/v1/procedures/{PROC['serviceCode']}/withdraw"
    withdrawn = requests.post(url, headers={"X-Api-Key": DEFAULT_API_KEY}, timeout=TIMEOUT).json()
    assert (withdrawn["status"], withdrawn["version"]) == ("withdrawn", 3)
    assert requests.post(url, headers={"X-Api-Key": DEFAULT_API_KEY}, timeout=TIMEOUT).json()["version"] == 3
    assert requests.post(f"{os_calls.url}/api/v1/procedures/9.9/withdraw", headers={"X-Api-Key": DEFAULT_API_KEY},
                         timeout=TIMEOUT).status_code == 404
    minimal = _put(os_calls, {"serviceCode": "1.1", "serviceName": "X"}, code="1.1").json()
    assert minimal == {"serviceCode": "1.1", "serviceName": "X", "domainCode": None, "domainName": None,
                       "agencyCode": None, "agencyName": None, "level": None, "channels": [], "components": [],
                       "steps": [], "results": [], "legalBasis": [], "status": "active", "version": 1}
    page = os_calls.get("/api/v1/procedures", page=2, size=1).json()
    assert (page["total"], [p["serviceCode"] for p in page["items"]]) == (2, ["1.1"])
    state = os_calls.get("/_state/procedures", key=False).json()
    assert state["upserts"] == {PROC["serviceCode"]: 3, "1.1": 1}
    assert state["withdrawals"] == {PROC["serviceCode"]: 2}
    assert state["counts"] == {"procedures": 2, "active": 1, "withdrawn": 1, "upserts": 4, "withdrawals": 2}
    assert [(o["op"], o["changed"]) for o in state["log"]] == [
        ("upsert", True), ("upsert", False), ("upsert", True), ("withdraw", True), ("withdraw", False), ("upsert", True)]
    assert state["procedures"][0]["status"] == "withdrawn"
    os_calls.post("/_admin/reset")
    assert os_calls.get("/_state/procedures", key=False).json()["counts"]["procedures"] == 0


@pytest.mark.parametrize("body,field", [
    ({k: v for k, v in PROC.items() if k != "serviceCode"}, "serviceCode"),
    ({k: v for k, v in PROC.items() if k != "serviceName"}, "serviceName"),
    (dict(PROC, serviceName="  "), "serviceName"),
    (dict(PROC, serviceCode="1.000001.000.00.00.H49"), "serviceCode"),
    (dict(PROC, channels=[{"channel": "counter", "fees": [{"amount": "200.000"}]}]), "channels[0].fees[0].amount"),
    (dict(PROC, channels=[{"channel": "counter", "fees": [{"amount": 1.5}]}]), "channels[0].fees[0].amount"),
    (dict(PROC, channels=[{"channel": "fax"}]), "channels[0].channel"),
    (dict(PROC, level="4"), "level"),
    (dict(PROC, status="deleted"), "status"),
    (dict(PROC, extra=1), "extra"),
    (dict(PROC, components=[{"docName": "A", "copies": True}]), "components[0].copies"),
    ([], "<record>"),
])
def test_one_stop_upsert_validation_names_the_field(os_calls, body, field):
    answer = _put(os_calls, body)
    assert answer.status_code == 422
    assert answer.json()["error"] == "validation_failed" and answer.json()["field"] == field
    assert os_calls.get("/_state/procedures", key=False).json()["upserts"] == {}


def test_one_stop_procedures_need_the_key_and_get_faults(os_calls):
    assert _put(os_calls, PROC, key=False).status_code == 401
    assert os_calls.get("/api/v1/procedures", key=False).status_code == 401
    assert os_calls.post("/_admin/faults", {"error_rate": 1.0, "operations": ["upsert_procedure"]}).status_code == 200
    assert _put(os_calls, PROC).status_code == 503
    assert os_calls.get("/api/v1/procedures").status_code == 200
    assert os_calls.get("/_state/procedures", key=False).json()["upserts"] == {}


@pytest.mark.parametrize("service,name", [("LayThuTuc", "maTTHC"), ("LayDVC", "maTTHC"), ("TraCuuHoSo", "mahoso")])
@pytest.mark.parametrize("value,kind", [(2000488, "số (number)"), (["2.000488.000.00.00.H49"], "mảng (array)"),
                                        (None, "null"), (True, "giá trị logic (boolean)")])
def test_a_lookup_parameter_of_the_wrong_type_is_named_not_ignored(world, service, name, value, kind):
    """A look-up key that is not a string is refused naming the key and its type. LayDVC used to
    drop such a filter and answer the whole catalogue as if asked for everything, and LayThuTuc and
    TraCuuHoSo said the key was missing when it was there."""
    assert world.call(service, **{name: value}) == {
        "error_code": -1, "message": f"Tham số {name} phải là chuỗi (string), không phải {kind}"}
    if service == "LayDVC":  # no filter at all, or an empty one, is still "every procedure"
        assert len(world.call("LayDVC", maTTHC="")["result"]["data"]) == len(world.call("LayDVC")["result"]["data"])
    else:
        assert world.call(service) == {"error_code": -1, "message": f"Thiếu tham số {name}"}
