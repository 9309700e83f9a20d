"""The stand-ins as receivers of hostile and malformed requests (issue #7): each says no the way the
real peer does, and nothing of the refused request is stored.

Already covered elsewhere and not repeated here: the portal's answer to a body that is not JSON
(test_mock_national_portal.py), the one-stop's refusal of a forged or tampered confirm callback
(test_mock_one_stop_payments.py), the ledger's refusal of a DTD/entity and of a request over 1 MB
(test_mock_ministry_ledger.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from lxml import etree

from connectors.connection import Secret
from connectors.errors import FatalConnectorError
from connectors.national_portal.client import NationalPortalClient
from mocks.national_portal import NationalPortalMock, PortalAccount
from mocks.national_portal.app import MAX_REQUEST_BYTES, MSG_TOO_LARGE
from mocks.one_stop import OneStopMock
from mocks.payment_platform import ANSWER_ORDERS, BAD_CHECKSUM, DEFAULT_PARTNER, DEFAULT_SECRET, checksum
from mocks.payment_platform import PaymentPlatformMock
from tests.mocks.conftest import PortalCalls, make_record

TIMEOUT = 10
NOT_JSON = {"error_code": -1, "message": "Dữ liệu gửi lên không đúng định dạng JSON"}
UNIT_A = PortalAccount("tamky", "secret-A-7x", "000.00.05.H49")  # a district of Quảng Nam
UNIT_B = PortalAccount("hoian", "secret-B-3q", "000.00.06.H49")  # another district, same province
UNIT_C = PortalAccount("hagiang", "secret-C-9z", "000.00.01.H22")  # another province
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture
def portal(tmp_path: Path):
    mock = NationalPortalMock(tmp_path / "portal", port=0, accounts=[UNIT_A, UNIT_B, UNIT_C]).start()
    yield mock
    mock.stop()


def calls(portal, account: PortalAccount, unit: str | None = None) -> PortalCalls:
    c = PortalCalls(portal, username=account.username, password=account.password, unit=unit or account.unit)
    assert c.login()["error_code"] == 0
    return c


def counts(c: PortalCalls) -> dict:
    return c.state()["counts"]


# --- the national portal ------------------------------------------------------------------------
def test_a_session_issued_to_another_unit_is_refused_and_stores_nothing(portal):
    mine = calls(portal, UNIT_A)
    assert mine.sync([make_record("000.00.05.H49-261102-0001")])["error_code"] == 0
    before = counts(mine)
    # B's session presented with A's unit code: the session belongs to B, so the portal says no
    borrowed = calls(portal, UNIT_B, unit=UNIT_A.unit)
    for answer in (borrowed.sync([make_record("000.00.05.H49-261102-0002")]),
                   borrowed.sync([make_record("000.00.05.H49-261102-0001", TrangThaiHoSo="4")], updating=True),
                   borrowed.lookup("000.00.05.H49-261102-0001"),
                   borrowed.call("LayDanhSachTTHC", endpoint="share")):
        assert answer == {"error_code": 5,
                          "message": "Mã đơn vị 000.00.05.H49 không khớp với tài khoản đăng nhập"}  # no result leaks
    # a session from another province, with its own unit code, cannot touch this province's dossiers
    other = calls(portal, UNIT_C)
    refused = other.sync([make_record("000.00.05.H49-261102-0003")])
    assert refused["error_code"] == 5
    assert refused["result"] == [{"MaHoSo": "000.00.05.H49-261102-0003", "error_code": 5, "field": "MaHoSo",
                                  "message": "Hồ sơ 000.00.05.H49-261102-0003: mã đơn vị 000.00.05.H49 trong "
                                             "MaHoSo không thuộc tỉnh/thành phố H22 của tài khoản đăng nhập"}]
    # a token nobody was issued, or one of the wrong type
    for token in ("x" * 43, {"session": "x"}, None):
        stranger = PortalCalls(portal, unit=UNIT_A.unit)
        stranger.session = token  # type: ignore[assignment]
        assert stranger.call("TraCuuHoSo", mahoso="000.00.05.H49-261102-0001") == {
            "error_code": 2, "message": "Phiên làm việc không hợp lệ hoặc đã hết hạn"}
    assert counts(mine) == {**before, "calls": counts(mine)["calls"]}
    assert [d["MaHoSo"] for d in mine.held()] == ["000.00.05.H49-261102-0001"]
    assert mine.held()[0]["TrangThaiHoSo"] == "2"


def test_a_10_mb_request_is_refused_with_413_and_the_session_survives(portal):
    c = calls(portal, UNIT_A)
    huge = make_record("000.00.05.H49-261102-0001", TrichYeuHoSo="A" * 10_000_000)
    response = c.raw("DongBoHoSoMC", isUpdating="False", data=[huge])
    assert response.status_code == 413
    assert response.json() == {"error_code": -1, "message": MSG_TOO_LARGE}
    assert MSG_TOO_LARGE == "Dữ liệu gửi lên vượt quá dung lượng cho phép (4 MB)"
    assert c.held() == []
    assert c.calls()["DongBoHoSoMC"] == {"http_413": 1}
    login = requests.post(portal.url + "/auth", data=b'{"username": "' + b"u" * MAX_REQUEST_BYTES + b'"}',
                          headers={"dstcode": "DVCQG"}, timeout=TIMEOUT)
    assert (login.status_code, login.json()) == (413, {"error_code": -1, "message": MSG_TOO_LARGE})
    # just under the limit is read (and judged on its content)
    assert c.sync([make_record("000.00.05.H49-261102-0001")])["error_code"] == 0
    # the client reports it as a call-level, non-retriable refusal naming the service
    client = NationalPortalClient(portal.url, UNIT_A.username, Secret(UNIT_A.password), UNIT_A.unit)
    with pytest.raises(FatalConnectorError) as info:
        client.sync_dossiers([{**huge, "MaHoSo": "000.00.05.H49-261102-0002"}], is_updating=False)
    assert str(info.value) == f"national_portal DongBoHoSoMC refused the whole call (error_code -1): {MSG_TOO_LARGE}"
    assert UNIT_A.password not in str(info.value)
    assert [d["MaHoSo"] for d in c.held()] == ["000.00.05.H49-261102-0001"]


@pytest.mark.parametrize("body", [
    b'{"session": "x", "service": "DongBoHoSoMC", "data": [',
    b'{"session": "x", "madonvi": "000.00.05.H49", "service": "L\xea"}',
    DEEP,
    b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b"\xef\xbb\xbf\xff",
    b"",
], ids=["truncated", "invalid-utf8", "deep-array", "deep-field", "bom-then-garbage", "empty"])
def test_malformed_or_deeply_nested_json_is_refused_as_not_json(portal, body):
    c = calls(portal, UNIT_A)
    for path in ("/integration", "/share", "/auth"):
        response = requests.post(portal.url + path, data=body, headers={"dstcode": "DVCQG"}, timeout=TIMEOUT)
        assert (response.status_code, response.json()) == (400, NOT_JSON), path
    assert c.calls()["<integration>"] == {"http_400": 1} and c.calls()["<share>"] == {"http_400": 1}
    assert c.lookup("000.00.05.H49-261102-0001")["error_code"] == 0  # still answering


def test_wrong_types_in_the_envelope_are_refused_with_the_field_named(portal):
    c = calls(portal, UNIT_A)
    assert c.call("DongBoHoSoMC", isUpdating=False, data=[make_record("000.00.05.H49-261102-0001")]) == {
        "error_code": -1, "message": 'Tham số isUpdating phải là chuỗi "True" hoặc "False"'}
    assert c.call("DongBoHoSoMC", isUpdating="False", data={"MaHoSo": "x"}) == {
        "error_code": -1, "message": "Trường data phải là mảng hồ sơ không rỗng"}
    assert c.call(["DongBoHoSoMC"]) == {"error_code": -1, "message": "Dịch vụ (trống) không được hỗ trợ"}
    sql = "000.00.05.H49-261102-0001'; DROP TABLE dossiers;--"
    answer = c.call("TraCuuHoSo", mahoso=sql)
    assert answer == {"error_code": 0, "message": "Thành công", "result": []}  # a value, never SQL
    assert c.sync([make_record("000.00.05.H49-261102-0001")])["error_code"] == 0


# --- the payment platform -----------------------------------------------------------------------
@pytest.fixture
def platform(tmp_path: Path):
    mock = PaymentPlatformMock(tmp_path / "platform", port=0).start()
    yield mock
    mock.stop()


@pytest.mark.parametrize("body", [DEEP, b'{"LoaiBanTin": "QUERY", "x": ' + b"{" * 3000 + b"}" * 3000 + b"}",
                                  b'{"LoaiBanTin": "QU\xff"}'], ids=["deep", "deep-field", "invalid-utf8"])
def test_platform_refuses_malformed_json_with_its_own_error(platform, body):
    response = requests.post(platform.url + "/api/payment", data=body, timeout=TIMEOUT)
    assert (response.status_code, response.json()) == (400, {"MaLoi": "99",
                                                             "MoTaLoi": "Dữ liệu gửi lên không đúng định dạng JSON"})


# --- the one-stop's confirm-callback receiver ------------------------------------------------------
FIRST_REF = "dvc0000006H49261102000120261104123827"


def signed_confirm(secret: str = DEFAULT_SECRET, **overrides) -> dict:
    body = {"LoaiBanTin": "CONFIRM", "MaLoi": "00", "MaDoiTac": DEFAULT_PARTNER, "MaThamChieu": FIRST_REF,
            "SoTien": 2000, "MaTienTe": "VND", "MaGiaoDich": "GD26110412345678", "MaNganHang": "VCB",
            "ThoiGianGD": "20261104125000", "ThongTinGiaoDich": "THANH TOAN HO SO 000.00.06.H49-261102-0001"}
    body.update(overrides)
    body["MaXacThuc"] = checksum(body, ANSWER_ORDERS["CONFIRM"], secret)
    return body


@pytest.fixture
def one(tmp_path: Path):
    mock = OneStopMock(tmp_path / "onestop", port=0).start()
    yield mock
    mock.stop()


def test_forged_checksums_in_every_form_are_refused_and_change_nothing(one):
    before = requests.get(one.url + "/_state/payments", timeout=TIMEOUT).json()["payments"]
    genuine = signed_confirm()
    forged = [
        signed_confirm(secret="not-the-secret"),
        {**genuine, "MaXacThuc": genuine["MaXacThuc"].upper()},
        {**genuine, "MaXacThuc": [genuine["MaXacThuc"]]},
        {**genuine, "MaXacThuc": None},
        {k: v for k, v in genuine.items() if k != "MaXacThuc"},
        {**genuine, "ThongTinGiaoDich": "'; DROP TABLE payment_requests;-- 100% \\"},  # signed fields changed
    ]
    outcomes = []
    for body in forged:
        answer = requests.post(one.url + "/api/v1/payments/confirm", json=body, timeout=TIMEOUT).json()
        outcomes.append((answer["MaLoi"], answer["MoTaLoi"]))
    assert outcomes == [("99", BAD_CHECKSUM)] * len(forged)
    after = requests.get(one.url + "/_state/payments", timeout=TIMEOUT).json()
    assert after["payments"] == before
    assert [(c["outcome"], c["checksumOk"]) for c in after["callbacks"]] == [("bad_checksum", False)] * len(forged)
    assert after["counts"]["callbacks"]["applied"] == 0


def test_deeply_nested_callback_is_refused_as_not_json(one):
    response = requests.post(one.url + "/api/v1/payments/confirm", data=DEEP, timeout=TIMEOUT)
    assert response.status_code == 400 and response.json()["MaLoi"] == "99"


# --- the ministry ledger --------------------------------------------------------------------------
ENVELOPE = ('<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:l="urn:vn:gov:mof:receiptledger:v1"><soap:Body><l:GetReceiptRequest>'
            "<l:ReceiptNumber>{value}</l:ReceiptNumber></l:GetReceiptRequest></soap:Body></soap:Envelope>")
NS = {"l": "urn:vn:gov:mof:receiptledger:v1"}


def laughs() -> str:
    lines = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10)]
    return '<?xml version="1.0"?><!DOCTYPE soap:Envelope [' + "".join(lines) + "]>" + ENVELOPE.format(value="&lol9;")


@pytest.fixture
def ledger(tmp_path: Path):
    from mocks.ministry_ledger import MinistryLedgerMock

    mock = MinistryLedgerMock(tmp_path / "ledger", port=0).start()
    yield mock
    mock.stop()


@pytest.mark.parametrize("case, body, code", [
    ("billion-laughs", laughs().encode(), "DTD_FORBIDDEN"),
    ("billion-laughs-utf16", laughs().replace('version="1.0"?>', 'version="1.0" encoding="utf-16"?>')
     .encode("utf-16"), "DTD_FORBIDDEN"),
    ("external-entity", ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                         + ENVELOPE.format(value="&e;")).encode(), "DTD_FORBIDDEN"),
    ("parameter-entity", ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x">%p;]>'
                          + ENVELOPE.format(value="a")).encode(), "DTD_FORBIDDEN"),
    ("invalid-utf8", ENVELOPE.format(value="BL\xff").encode("latin-1"), "MALFORMED_XML"),
    ("deep", ENVELOPE.format(value="<a>" * 5000 + "</a>" * 5000).encode(), "MALFORMED_XML"),
    ("truncated", ENVELOPE.format(value="x").encode()[:-30], "MALFORMED_XML"),
    ("ten-mb", ENVELOPE.format(value="A" * 10_000_000).encode(), "REQUEST_TOO_LARGE"),
])
def test_ledger_refuses_hostile_xml_with_a_client_fault(ledger, case, body, code):
    before = requests.get(ledger.url + "/_state/receipts", timeout=TIMEOUT).json()
    response = requests.post(ledger.url + "/", data=body, timeout=TIMEOUT,
                             headers={"Content-Type": "text/xml; charset=utf-8",
                                      "SOAPAction": '"urn:vn:gov:mof:receiptledger:v1/GetReceipt"'})
    assert response.status_code == 500
    assert b"lollol" not in response.content and b"root:" not in response.content
    root = etree.fromstring(response.content)
    assert root.findtext(".//faultcode") == "soap:Client"
    assert root.findtext(".//l:RequestFault/l:Code", namespaces=NS) == code, response.content[:400]
    assert requests.get(ledger.url + "/_state/receipts", timeout=TIMEOUT).json() == before


# --- JSON's non-numbers ---------------------------------------------------------------------------
NON_JSON_NUMBERS = [b"NaN", b"Infinity", b"-Infinity"]


@pytest.mark.parametrize("constant", NON_JSON_NUMBERS, ids=["nan", "inf", "-inf"])
def test_nan_and_infinity_are_not_json_to_any_stand_in(portal, platform, one, constant):
    """RFC 8259 has no NaN or Infinity; Python's json reads them, the peers' parsers do not. A body
    carrying one is refused as not JSON, and nothing of it is stored (a stored NaN would later be
    served back as a body no JSON client can read)."""
    c = calls(portal, UNIT_A)
    envelope = (b'{"session": "' + c.session.encode() + b'", "madonvi": "000.00.05.H49", "service": "TraCuuHoSo", '
                b'"mahoso": "000.00.05.H49-261102-0001", "x": ' + constant + b"}")
    response = requests.post(portal.url + "/integration", data=envelope, headers={"dstcode": "DVCQG"},
                             timeout=TIMEOUT)
    assert (response.status_code, response.json()) == (400, NOT_JSON)

    response = requests.post(platform.url + "/api/payment", data=b'{"LoaiBanTin": "QUERY", "SoTien": ' + constant
                             + b"}", timeout=TIMEOUT)
    assert (response.status_code, response.json()) == (400, {"MaLoi": "99",
                                                             "MoTaLoi": "Dữ liệu gửi lên không đúng định dạng JSON"})

    headers = {"X-Api-Key": "demo-onestop-key", "Content-Type": "application/json"}
    record = (b'{"serviceCode": "1.000001", "serviceName": "Th\xe1\xbb\xa7 t\xe1\xbb\xa5c", "channels": '
              b'[{"channel": "counter", "processingDays": ' + constant + b', "fees": []}]}')
    response = requests.put(one.url + "/api/v1/procedures/1.000001", data=record, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 400 and response.json()["error"] == "bad_request"
    assert requests.get(one.url + "/_state/procedures", timeout=TIMEOUT).json()["counts"]["procedures"] == 0
    response = requests.post(one.url + "/_admin/dossiers/raw", data=b'{"dossier": {"dossierNo": "x", "fee": '
                             + constant + b"}}", timeout=TIMEOUT)
    assert response.status_code == 400
    assert requests.get(one.url + "/_state/events", timeout=TIMEOUT).json()["events"][-1]["dossier"]["dossierNo"] != "x"


# --- lone UTF-16 surrogates -----------------------------------------------------------------------
@pytest.mark.parametrize("escape", [b"\\ud800", b"\\uDFFF", b"x\\udc00y"], ids=["high", "low", "inside"])
def test_a_lone_surrogate_escape_is_not_json_to_any_stand_in(portal, platform, one, escape):
    """``"\\ud800"`` is a JSON escape of half a UTF-16 pair: no Unicode text, so no UTF-8 store can
    hold it. Python's json reads it; the stand-ins used to answer 500 (a failure a client retries
    for ever) or fail when storing it. A body carrying one is refused as not JSON, nothing is
    stored, and a proper pair (an emoji) is still read."""
    c = calls(portal, UNIT_A)
    session = c.session.encode()
    lookup = (b'{"session": "' + session + b'", "madonvi": "000.00.05.H49", "service": "TraCuuHoSo", '
              b'"mahoso": "000.00.05.H49-261102-0001' + escape + b'"}')
    response = requests.post(portal.url + "/integration", data=lookup, headers={"dstcode": "DVCQG"}, timeout=TIMEOUT)
    assert (response.status_code, response.json()) == (400, NOT_JSON)
    sync = (b'{"session": "' + session + b'", "madonvi": "000.00.05.H49", "service": "DongBoHoSoMC", '
            b'"isUpdating": "False", "data": [' + json_dumps_record("000.00.05.H49-261102-0002", escape) + b"]}")
    response = requests.post(portal.url + "/integration", data=sync, headers={"dstcode": "DVCQG"}, timeout=TIMEOUT)
    assert (response.status_code, response.json()) == (400, NOT_JSON)
    assert c.held() == []
    assert c.calls()["<integration>"] == {"http_400": 2}
    pair = lookup.replace(escape, b"\\ud83d\\ude00")
    response = requests.post(portal.url + "/integration", data=pair, headers={"dstcode": "DVCQG"}, timeout=TIMEOUT)
    assert response.json() == {"error_code": 0, "message": "Thành công", "result": []}

    response = requests.post(platform.url + "/api/payment", data=b'{"LoaiBanTin": "QUERY", "MaThamChieu": "a'
                             + escape + b'"}', timeout=TIMEOUT)
    assert (response.status_code, response.json()) == (400, {"MaLoi": "99",
                                                             "MoTaLoi": "Dữ liệu gửi lên không đúng định dạng JSON"})

    headers = {"X-Api-Key": "demo-onestop-key", "Content-Type": "application/json"}
    record = (b'{"serviceCode": "1.000001", "serviceName": "Th\xe1\xbb\xa7 t\xe1\xbb\xa5c' + escape
              + b'", "channels": [{"channel": "counter", "processingDays": 5, "fees": []}]}')
    response = requests.put(one.url + "/api/v1/procedures/1.000001", data=record, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 400 and response.json()["error"] == "bad_request"
    assert requests.get(one.url + "/_state/procedures", timeout=TIMEOUT).json()["counts"]["procedures"] == 0


def json_dumps_record(ma_ho_so: str, escape: bytes) -> bytes:
    """A valid DongBoHoSoMC record as JSON bytes whose ChuHoSo ends with ``escape`` (kept as written)."""
    text = json.dumps(make_record(ma_ho_so, ChuHoSo="Nguyễn Văn A@@"), ensure_ascii=False).encode("utf-8")
    return text.replace(b"@@", escape)
