"""The ministry receipt ledger stand-in, driven by zeep from its own WSDL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import zeep
from lxml import etree
from zeep.transports import Transport
from zeep.wsse.username import UsernameToken

from mocks.ministry_ledger import (
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    LEDGER_NS,
    MinistryLedgerMock,
)

TIMEOUT = 5
NS = {"l": LEDGER_NS}


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[MinistryLedgerMock]:
    mock = MinistryLedgerMock(tmp_path / "ledger", port=0).start()
    yield mock
    mock.stop()


def client(mock: MinistryLedgerMock, password: str = DEFAULT_PASSWORD) -> zeep.Client:
    transport = Transport(timeout=TIMEOUT, operation_timeout=TIMEOUT)
    return zeep.Client(mock.url + "/?wsdl", wsse=UsernameToken(DEFAULT_USERNAME, password), transport=transport)


def receipt(number: str = "BL2026-000001", **overrides: Any) -> dict[str, Any]:
    value = {"ReceiptNumber": number, "DossierCode": "000.00.01.H49-261102-0001",
             "PaymentReference": "dvc0000001H49261102000120261102081500", "AmountVND": 200000,
             "PaidAt": datetime.fromisoformat("2026-11-02T08:30:00+07:00"), "PayerName": "Nguyễn Thị Thu Hương",
             "AgencyCode": "000.00.01.H49", "PdfSha256": "ab" * 32}
    value.update(overrides)
    return value


def held(mock: MinistryLedgerMock) -> list[dict[str, Any]]:
    return requests.get(mock.url + "/_state/receipts", timeout=TIMEOUT).json()["receipts"]


def detail(fault: zeep.exceptions.Fault) -> tuple[str, dict[str, str]]:
    element = fault.detail[0]
    return etree.QName(element).localname, {etree.QName(c).localname: c.text for c in element}


def test_wsdl_is_served_with_the_mocks_own_address(ledger):
    text = requests.get(ledger.url + "/?wsdl", timeout=TIMEOUT).text
    assert f'<soap:address location="{ledger.url}/"/>' in text
    assert 'name="ReceiptLedgerService"' in text and "urn:vn:gov:mof:receiptledger:v1" in text
    c = client(ledger)
    assert sorted(c.service._binding._operations) == ["GetReceipt", "ListReceipts", "SubmitReceipts"]
    assert c.service._binding_options["address"] == ledger.url + "/"


def test_submit_then_idempotent_resubmit_then_get_and_list(ledger):
    c = client(ledger)
    answer = c.service.SubmitReceipts(Receipt=[receipt(), receipt("BL2026-000002", AmountVND=50000)])
    assert (answer.Accepted, answer.Unchanged) == (2, 0)
    assert [(r.ReceiptNumber, r.Status) for r in answer.Result] == [("BL2026-000001", "accepted"),
                                                                    ("BL2026-000002", "accepted")]
    # the same content again (even written in another offset) is accepted idempotently
    same = receipt(PaidAt=datetime.fromisoformat("2026-11-02T01:30:00+00:00"))
    again = c.service.SubmitReceipts(Receipt=[same, receipt("BL2026-000003")])
    assert (again.Accepted, again.Unchanged) == (1, 1)
    assert [r.Status for r in again.Result] == ["unchanged", "accepted"]
    assert [r["ReceiptNumber"] for r in held(ledger)] == ["BL2026-000001", "BL2026-000002", "BL2026-000003"]
    got = c.service.GetReceipt(ReceiptNumber="BL2026-000002")
    assert (got.AmountVND, got.PayerName, got.PdfSha256) == (50000, "Nguyễn Thị Thu Hương", "ab" * 32)
    assert got.PaidAt == datetime.fromisoformat("2026-11-02T08:30:00+07:00")
    assert c.service.GetReceipt(ReceiptNumber="BL2026-999999") is None
    listed = c.service.ListReceipts(From=datetime.fromisoformat("2026-11-02T00:00:00+07:00"),
                                    To=datetime.fromisoformat("2026-11-03T00:00:00+07:00"))
    assert [r.ReceiptNumber for r in listed] == ["BL2026-000001", "BL2026-000002", "BL2026-000003"]
    assert c.service.ListReceipts(From=datetime.fromisoformat("2026-11-02T08:30:01+07:00"),
                                  To=datetime.fromisoformat("2026-11-03T00:00:00+07:00")) == []


def test_list_receipts_windows_are_exact_to_the_microsecond_in_any_offset(ledger):
    """ListReceipts reads a window through an index on the stored +07:00 time: a receipt is listed
    when From <= PaidAt < To exactly, whatever offset either was written in, microseconds and the
    ends of the calendar included."""
    c = client(ledger)
    times = ["2026-11-02T08:30:00+07:00", "2026-11-02T08:30:00.000001+07:00", "2026-11-02T01:30:00.5+00:00",
             "2026-11-02T08:29:59.999999+07:00", "2026-11-01T23:59:59+00:00", "2026-11-03T06:59:59.999999+07:00"]
    c.service.SubmitReceipts(Receipt=[receipt(f"BL2026-{i:06d}", PaidAt=datetime.fromisoformat(t))
                                      for i, t in enumerate(times, 1)])
    paid = {f"BL2026-{i:06d}": datetime.fromisoformat(t) for i, t in enumerate(times, 1)}
    bounds = [datetime.fromisoformat(t) for t in (
        "0001-01-01T00:00:00+00:00", "2026-11-02T08:30:00+07:00", "2026-11-02T01:30:00.000001+00:00",
        "2026-11-02T08:30:00.5+07:00", "2026-11-02T08:30:00.500001+07:00", "2026-11-02T07:00:00+07:00",
        "2026-11-02T00:00:00+00:00", "2026-11-03T07:00:00+07:00", "9999-12-31T23:59:59+07:00")]
    for start in bounds:
        for end in bounds:
            if start > end:
                continue
            listed = [r.ReceiptNumber for r in c.service.ListReceipts(From=start, To=end) or []]
            assert listed == [n for n, t in paid.items() if start <= t < end], (start, end)


def test_same_number_with_different_content_is_a_duplicate_fault_and_nothing_is_stored(ledger):
    c = client(ledger)
    c.service.SubmitReceipts(Receipt=[receipt()])
    with pytest.raises(zeep.exceptions.Fault) as info:
        c.service.SubmitReceipts(Receipt=[receipt("BL2026-000009"), receipt(AmountVND=210000, PayerName="Lê Văn Tám")])
    name, fields = detail(info.value)
    assert name == "DuplicateReceiptFault" and info.value.code == "soap:Client"
    assert fields["Code"] == "DUPLICATE_RECEIPT" and fields["ReceiptNumber"] == "BL2026-000001"
    assert fields["Fields"] == "AmountVND,PayerName"
    assert [r["ReceiptNumber"] for r in held(ledger)] == ["BL2026-000001"]  # all or nothing


def test_the_same_name_in_decomposed_unicode_is_the_same_receipt(ledger):
    """Vietnamese text is compared after NFC: the same receipt resent with its PayerName decomposed
    (NFD: a base letter and combining marks, as some keyboards and OS file dialogs write it) is an
    idempotent repeat, not a DUPLICATE_RECEIPT; PayerName's 200 characters are counted after NFC."""
    import unicodedata

    c = client(ledger)
    name = "Nguyễn Thị Thu Hương"
    decomposed = unicodedata.normalize("NFD", name)
    assert decomposed != name and len(decomposed) > len(name)
    assert (c.service.SubmitReceipts(Receipt=[receipt()]).Accepted) == 1
    again = c.service.SubmitReceipts(Receipt=[receipt(PayerName=decomposed)])
    assert (again.Accepted, again.Unchanged) == (0, 1)
    long_name = "Nguyễn " * 28 + "Hương"
    composed = unicodedata.normalize("NFC", long_name)[:200]
    assert len(composed) == 200 and len(unicodedata.normalize("NFD", composed)) > 200
    first = c.service.SubmitReceipts(Receipt=[receipt("BL2026-000002", PayerName=unicodedata.normalize("NFD",
                                                                                                      composed))])
    assert (first.Accepted, first.Unchanged) == (1, 0)
    assert [r["PayerName"] for r in held(ledger)] == [name, composed]  # held as NFC
    with pytest.raises(zeep.exceptions.Fault) as info:  # another name is still another content
        c.service.SubmitReceipts(Receipt=[receipt(PayerName=unicodedata.normalize("NFD", "Lê Văn Tám"))])
    assert detail(info.value)[1]["Fields"] == "PayerName"


@pytest.mark.parametrize(("override", "field", "rule"), [
    ({"AmountVND": 0}, "AmountVND", "range:1..1000000000000"),
    ({"PdfSha256": "XYZ"}, "PdfSha256", r"pattern:[0-9a-f]{64}"),
    ({"AgencyCode": "H49"}, "AgencyCode", r"pattern:[0-9]{3}\.[0-9]{2}\.[0-9]{2}\.H[0-9]{2}"),
    ({"AgencyCode": "٠٠٠.٠٠.٠١.H٤٩"}, "AgencyCode", r"pattern:[0-9]{3}\.[0-9]{2}\.[0-9]{2}\.H[0-9]{2}"),
    ({"PayerName": "   "}, "PayerName", "required"),
])
def test_validation_fault_names_receipt_field_and_rule(ledger, override, field, rule):
    with pytest.raises(zeep.exceptions.Fault) as info:
        client(ledger).service.SubmitReceipts(Receipt=[receipt(), receipt("BL2026-000002", **override)])
    name, fields = detail(info.value)
    assert name == "ValidationFault"
    assert (fields["Code"], fields["ReceiptNumber"], fields["Index"], fields["Field"], fields["Rule"]) == \
        ("VALIDATION_FAILED", "BL2026-000002", "1", field, rule)
    assert held(ledger) == []


def _soap_submit(number: str, paid_at: str, amount: str = "200000") -> bytes:
    """A SubmitReceipts envelope written by hand, so PaidAt and AmountVND go as the text given."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:l="{LEDGER_NS}">
 <soap:Header><wsse:Security xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">
  <wsse:UsernameToken><wsse:Username>{DEFAULT_USERNAME}</wsse:Username>
   <wsse:Password>{DEFAULT_PASSWORD}</wsse:Password></wsse:UsernameToken></wsse:Security></soap:Header>
 <soap:Body><l:SubmitReceiptsRequest><l:Receipt>
  <l:ReceiptNumber>{number}</l:ReceiptNumber><l:DossierCode>000.00.01.H49-261102-0001</l:DossierCode>
  <l:PaymentReference>dvc0000001H49261102000120261102081500</l:PaymentReference><l:AmountVND>{amount}</l:AmountVND>
  <l:PaidAt>{paid_at}</l:PaidAt><l:PayerName>Nguyễn Thị Thu Hương</l:PayerName>
  <l:AgencyCode>000.00.01.H49</l:AgencyCode><l:PdfSha256>{"ab" * 32}</l:PdfSha256>
 </l:Receipt></l:SubmitReceiptsRequest></soap:Body></soap:Envelope>""".encode()


def _submit(ledger: MinistryLedgerMock, body: bytes) -> requests.Response:
    return requests.post(ledger.url + "/", data=body, timeout=TIMEOUT,
                         headers={"Content-Type": "text/xml; charset=utf-8",
                                  "SOAPAction": f'"{LEDGER_NS}/SubmitReceipts"'})


@pytest.mark.parametrize("paid_at", ["2026-11-02", "2026-11-02 08:30:00", "20261102T083000", "2026-W45-1",
                                     "2026-11-02T08:30:00+0700", "2026-11-02T08:30+07:00",
                                     "٢٠٢٦-١١-٠٢T08:30:00+07:00", "2026-11-02T24:00:01+07:00"],
                         ids=["date-only", "space", "basic-format", "week-date", "offset-without-colon",
                              "no-seconds", "arabic-indic-digits", "past-24h"])
def test_ledger_refuses_a_paidat_that_is_not_an_xsd_datetime(ledger, paid_at):
    """ReceiptLedger.xsd: PaidAt is xsd:dateTime (YYYY-MM-DDThh:mm:ss[.s][tz]); README: rule `dateTime`.
    datetime.fromisoformat (3.11) reads any ISO 8601 form, so the stand-in stored a date-only value as
    midnight and accepted forms a schema-validating SOAP service refuses."""
    response = _submit(ledger, _soap_submit("BL2026-900001", paid_at))
    assert response.status_code == 500, response.text[-300:]
    assert b"VALIDATION_FAILED" in response.content and b"<tns:Field>PaidAt</tns:Field>" in response.content
    assert b"<tns:Rule>dateTime</tns:Rule>" in response.content
    assert held(ledger) == []


@pytest.mark.parametrize(("paid_at", "stored"), [
    ("2026-11-02T08:30:00+07:00", "2026-11-02T08:30:00+07:00"),
    ("2026-11-02T01:30:00Z", "2026-11-02T08:30:00+07:00"),
    ("2026-11-02T08:30:00", "2026-11-02T08:30:00+07:00"),  # no offset: Viet Nam time (I)
    ("2026-11-02T08:30:00.1234567+07:00", "2026-11-02T08:30:00.123456+07:00"),  # a fraction of any length
    ("2026-11-01T24:00:00+07:00", "2026-11-02T00:00:00+07:00"),  # the end of a day is the next one's start
])
def test_ledger_takes_every_xsd_datetime_form(ledger, paid_at, stored):
    response = _submit(ledger, _soap_submit("BL2026-900004", paid_at))
    assert response.status_code == 200, response.text[-300:]
    assert [r["PaidAt"] for r in held(ledger)] == [stored]


def test_ledger_reads_amountvnd_as_an_xsd_long(ledger):
    """AmountVND is xsd:long, whose lexical form is [+-]?[0-9]+ (ASCII digits). The stand-in's `-?\\d+` took
    Arabic-Indic digits (stored as 200) and refused the valid '+200000'."""
    foreign = _submit(ledger, _soap_submit("BL2026-900002", "2026-11-02T08:30:00+07:00", amount="٢٠٠"))
    assert foreign.status_code == 500 and b"<tns:Field>AmountVND</tns:Field>" in foreign.content
    plus = _submit(ledger, _soap_submit("BL2026-900003", "2026-11-02T08:30:00+07:00", amount="+200000"))
    assert plus.status_code == 200, plus.text[-300:]
    assert [(r["ReceiptNumber"], r["AmountVND"]) for r in held(ledger)] == [("BL2026-900003", 200000)]


def test_list_receipts_bounds_are_xsd_datetimes_too(ledger):
    body = _soap_submit("x", "y").decode()
    start = body.index("<l:SubmitReceiptsRequest>")
    listing = body[:start] + ("<l:ListReceiptsRequest><l:From>2026-11-02</l:From>"
                              "<l:To>2026-11-03T00:00:00+07:00</l:To></l:ListReceiptsRequest></soap:Body></soap:Envelope>")
    response = requests.post(ledger.url + "/", data=listing.encode(), timeout=TIMEOUT,
                             headers={"Content-Type": "text/xml; charset=utf-8",
                                      "SOAPAction": f'"{LEDGER_NS}/ListReceipts"'})
    assert response.status_code == 500 and b"<tns:Field>From</tns:Field>" in response.content


def test_wrong_password_is_an_authentication_fault(ledger):
    with pytest.raises(zeep.exceptions.Fault) as info:
        client(ledger, password="wrong").service.GetReceipt(ReceiptNumber="BL2026-000001")
    name, fields = detail(info.value)
    assert name == "AuthenticationFault" and fields == {"Code": "AUTHENTICATION_FAILED",
                                                        "Message": "unknown user or wrong password"}
    plain = zeep.Client(ledger.url + "/?wsdl", transport=Transport(timeout=TIMEOUT, operation_timeout=TIMEOUT))
    with pytest.raises(zeep.exceptions.Fault) as info:
        plain.service.GetReceipt(ReceiptNumber="BL2026-000001")
    assert detail(info.value)[1]["Message"] == "a WS-Security UsernameToken header is required"


ENTITY_BOMB = """<?xml version="1.0"?>
<!DOCTYPE soap:Envelope [<!ENTITY boom "EXPANDED-ENTITY">]>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:l="urn:vn:gov:mof:receiptledger:v1"
  xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">
 <soap:Header><wsse:Security><wsse:UsernameToken><wsse:Username>lienthong.h49</wsse:Username>
  <wsse:Password>demo-ledger-secret</wsse:Password></wsse:UsernameToken></wsse:Security></soap:Header>
 <soap:Body><l:GetReceiptRequest><l:ReceiptNumber>&boom;</l:ReceiptNumber></l:GetReceiptRequest></soap:Body>
</soap:Envelope>"""


def test_a_doctype_or_entity_is_refused_with_a_fault_and_never_expanded(ledger):
    for body in (ENTITY_BOMB, ENTITY_BOMB.replace("<!DOCTYPE", "<!doctype")):
        response = requests.post(ledger.url + "/", data=body.encode(), timeout=TIMEOUT,
                                 headers={"Content-Type": "text/xml; charset=utf-8",
                                          "SOAPAction": '"urn:vn:gov:mof:receiptledger:v1/GetReceipt"'})
        assert response.status_code == 500 and b"EXPANDED-ENTITY" not in response.content
        root = etree.fromstring(response.content)
        assert root.findtext(".//faultcode") == "soap:Client"
        assert root.findtext(".//l:RequestFault/l:Code", namespaces=NS) == "DTD_FORBIDDEN"
    too_big = b"<x>" + b"a" * (1024 * 1024 + 1) + b"</x>"
    response = requests.post(ledger.url + "/", data=too_big, timeout=TIMEOUT)
    assert etree.fromstring(response.content).findtext(".//l:RequestFault/l:Code", namespaces=NS) == \
        "REQUEST_TOO_LARGE"


def test_faults_switch_and_state_survive_a_restart(tmp_path):
    mock = MinistryLedgerMock(tmp_path / "l", port=0).start()
    try:
        client(mock).service.SubmitReceipts(Receipt=[receipt()])
        requests.post(mock.url + "/_admin/faults", json={"error_rate": 1.0, "operations": ["SubmitReceipts"]},
                      timeout=TIMEOUT)
        with pytest.raises(zeep.exceptions.Fault) as info:  # zeep reads the 503 HTML page as an unknown fault
            client(mock).service.SubmitReceipts(Receipt=[receipt("BL2026-000002")])
        assert info.value.message == "Unknown fault occured" and b"503 Service Unavailable" in info.value.detail
        state = requests.get(mock.url + "/_state", timeout=TIMEOUT).json()
        assert state["faults"]["injected"] == {"http_503": 1} and state["counts"]["receipts"] == 1
        assert client(mock).service.GetReceipt(ReceiptNumber="BL2026-000001").AmountVND == 200000
    finally:
        mock.stop()
    mock = MinistryLedgerMock(tmp_path / "l", port=0).start()
    try:
        assert [r["ReceiptNumber"] for r in held(mock)] == ["BL2026-000001"]
    finally:
        mock.stop()


def test_the_hardened_parser_itself_never_expands_entities():
    from mocks.ministry_ledger import hardened_parser

    root = etree.fromstring(ENTITY_BOMB.encode(), hardened_parser())
    number = root.find(".//l:ReceiptNumber", namespaces=NS)
    assert "EXPANDED-ENTITY" not in etree.tostring(number, encoding="unicode").replace("&boom;", "")
    assert number.text is None  # the reference stays an unexpanded entity node
