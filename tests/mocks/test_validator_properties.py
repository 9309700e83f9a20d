"""Property-based tests of the stand-ins' validators (issue #7).

1. For any generated payload, a stand-in refuses per record, naming the field (and the rule where
   its protocol has one), and never crashes: a crash would be a 500 from the mock. The handlers
   are called in-process through the mock's own router (the same code the HTTP server runs) so an
   exception reaches the test instead of becoming a 500.
2. The two sides agree: a payload our mapping engine produces from a valid source record is
   accepted by the stand-in's validator.

Covered: the national portal's record rules (``mocks/national_portal/rules.py``) and its
DongBoHoSoMC / CapNhatTienDoHoSoMC services; the ministry ledger's SOAP receipt validation; the
one-stop's catalogue upsert, payment-result and confirm-callback checks; the payment platform's
INIT / QUERY / GET_BILL request checks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from lxml import etree

import tests.lienthong.test_mapping_properties as mp
from lienthong.mapping import RecordInvalid, load_mapping
from mocks.ministry_ledger.app import LEDGER_NS, PASSWORD_TEXT, SOAP_NS, WSSE_NS, MinistryLedgerMock
from mocks.national_portal import DEFAULT_ACCOUNT, NationalPortalMock
from mocks.one_stop import DEFAULT_API_KEY, OneStopMock
from mocks.payment_platform.app import (
    ANSWER_ORDERS,
    DEFAULT_PARTNER,
    DEFAULT_SECRET,
    REQUEST_ORDERS,
    PaymentPlatformMock,
    checksum,
)
from mocks.server import Request, Response

EXAMPLES = mp.EXAMPLES * 2
PROPERTY = settings(deadline=None, max_examples=EXAMPLES,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


# --- the stand-ins, in-process -------------------------------------------------------------------
def call(mock: Any, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
         headers: dict[str, str] | None = None) -> Response:
    """Run the mock's handler for ``method path`` directly: an exception propagates (no 500)."""
    route, params, _known = mock.router.match(method, path)
    assert route is not None, f"{mock.name} has no route {method} {path}"
    payload = raw if raw is not None else (b"" if body is None else json.dumps(body, ensure_ascii=False).encode())
    request = Request(method=method, path=path, query={}, headers=headers or {}, body=payload, params=params)
    response = route.handler(request)
    assert isinstance(response, Response)
    assert response.status < 500 or mock.name == "ministry_ledger", f"{mock.name} answered {response.status}"
    return response


def answer(response: Response) -> Any:
    return json.loads(response.body.decode("utf-8")) if response.body else None


@pytest.fixture(scope="module")
def mocks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state = tmp_path_factory.mktemp("validator-mocks")
    made = {
        "portal": NationalPortalMock(state_dir=state),
        "onestop": OneStopMock(state_dir=state, seed_dossiers=5),
        "ledger": MinistryLedgerMock(state_dir=state),
        "platform": PaymentPlatformMock(state_dir=state, seed_dossiers=5),
    }
    for mock in made.values():
        mock.open_state()
    login = answer(call(made["portal"], "POST", "/auth", {"username": DEFAULT_ACCOUNT.username,
                                                          "password": DEFAULT_ACCOUNT.password}))
    made["portal_session"] = login["session"]
    yield made
    for name in ("portal", "onestop", "ledger", "platform"):
        made[name].close()


# --- payloads ------------------------------------------------------------------------------------
def mapped_samples(mapping_name: str) -> list[dict]:
    """What the mapping makes of every valid sample of its source: the skeletons to spoil."""
    mapping = load_mapping(mapping_name)
    out = []
    for sample in mp.samples(mapping.source["system"], mapping.source["record"]):
        try:
            out.append(mapping.apply(sample))
        except RecordInvalid:
            continue
    assert out
    return out


@st.composite
def spoiled_payloads(draw: Any, mapping_name: str) -> Any:
    return mp._spoil(draw(st.sampled_from(mapped_samples(mapping_name))), draw)


def payloads(mapping_name: str) -> st.SearchStrategy[Any]:
    """Mapped payloads with keys dropped, added and replaced by junk; and pure junk."""
    return st.one_of(spoiled_payloads(mapping_name), spoiled_payloads(mapping_name), mp.junk,
                     st.dictionaries(st.text(max_size=12), mp.junk, max_size=6))


def valid_mapped(draw: Any, mapping_name: str) -> dict | None:
    """A payload the mapping made from a generated, structurally valid source record (or None; a
    canonical source record must also keep its JSON Schema)."""
    mapping = load_mapping(mapping_name)
    record = draw(mp.structured_records(mapping.source["system"], mapping.source["record"]))
    if mp._breaks_source_schema(mapping, record):  # not a canonical record: nothing is owed for it
        return None
    try:
        return mapping.apply(record)
    except RecordInvalid:
        return None


# --- 1. the national portal ----------------------------------------------------------------------
PORTAL_SERVICES = {"DongBoHoSoMC": "onestop__national_portal/dossier",
                   "CapNhatTienDoHoSoMC": "onestop__national_portal/progress"}


def _rules(mock: NationalPortalMock, service: str) -> Any:
    return mock.rules if service == "DongBoHoSoMC" else mock.progress_rules


@pytest.mark.parametrize("service", sorted(PORTAL_SERVICES))
@PROPERTY
@given(data=st.data())
def test_portal_rules_name_the_field_never_crash(mocks: dict, service: str, data: Any) -> None:
    payload = data.draw(payloads(PORTAL_SERVICES[service]), label="payload")
    error = _rules(mocks["portal"], service).check(payload, 1)
    if error is not None:
        assert error.field and error.rule and error.message
        assert error.field in error.message, f"the portal's message must name the field: {error}"


@pytest.mark.parametrize("service", sorted(PORTAL_SERVICES))
@PROPERTY
@given(data=st.data())
def test_portal_services_refuse_per_record_never_crash(mocks: dict, service: str, data: Any) -> None:
    portal = mocks["portal"]
    records = data.draw(st.lists(payloads(PORTAL_SERVICES[service]), min_size=1, max_size=3), label="data")
    body = {"session": mocks["portal_session"], "madonvi": DEFAULT_ACCOUNT.unit, "service": service,
            "isUpdating": "False", "data": records}
    response = call(portal, "POST", "/integration", body, headers={"dstcode": portal.dstcode})
    reply = answer(response)
    assert isinstance(reply, dict) and "error_code" in reply, reply
    for refusal in reply.get("result") or []:
        assert refusal.get("field") and refusal.get("message"), refusal


@pytest.mark.parametrize("service", sorted(PORTAL_SERVICES))
@PROPERTY
@given(data=st.data())
def test_portal_accepts_what_the_mapping_makes(mocks: dict, service: str, data: Any) -> None:
    payload = valid_mapped(data.draw, PORTAL_SERVICES[service])
    if payload is None:
        return
    error = _rules(mocks["portal"], service).check(payload, 1)
    # the catalogue rule looks the code up in the portal's state, not at the record's form
    assert error is None or error.rule == "catalogue", f"the portal refuses a mapped record: {error}\n{payload}"


def test_portal_format_rule_matches_the_whole_value(mocks: dict) -> None:
    """A date-time with a trailing new line is not ``yyyyMMddHHmmss`` (``$`` matches before one)."""
    good = mapped_samples("onestop__national_portal/dossier")[0]
    assert mocks["portal"].rules.check(good, 1) is None
    error = mocks["portal"].rules.check({**good, "NgayTiepNhan": good["NgayTiepNhan"] + "\n"}, 1)
    assert error is not None and (error.field, error.rule) == ("NgayTiepNhan", "format")


# --- 2. the ministry ledger ----------------------------------------------------------------------
LEDGER_FIELDS = ("ReceiptNumber", "DossierCode", "PaymentReference", "AmountVND", "PaidAt", "PayerName",
                 "AgencyCode", "PdfSha256")
xml_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)


def _xml_safe(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return "".join(ch for ch in text if ch in "\t\n" or (ord(ch) >= 32 and not 0xD800 <= ord(ch) <= 0xDFFF
                                                           and ord(ch) not in (0xFFFE, 0xFFFF)))


def _q(name: str, ns: str = LEDGER_NS) -> str:
    return f"{{{ns}}}{name}"


def soap_request(operation: str, *, username: str = "lienthong.h49",
                 password: str = "demo-ledger-secret") -> tuple[etree._Element, etree._Element]:
    """A SOAP envelope with a UsernameToken and an empty ``<operation>Request``: (envelope, request)."""
    env = etree.Element(_q("Envelope", SOAP_NS), nsmap={"soap": SOAP_NS, "tns": LEDGER_NS, "wsse": WSSE_NS})
    header = etree.SubElement(env, _q("Header", SOAP_NS))
    token = etree.SubElement(etree.SubElement(header, _q("Security", WSSE_NS)), _q("UsernameToken", WSSE_NS))
    etree.SubElement(token, _q("Username", WSSE_NS)).text = username
    etree.SubElement(token, _q("Password", WSSE_NS), Type=PASSWORD_TEXT).text = password
    return env, etree.SubElement(etree.SubElement(env, _q("Body", SOAP_NS)), _q(f"{operation}Request"))


def soap_submit(receipts: list[dict[str, Any]]) -> bytes:
    env, request = soap_request("SubmitReceipts")
    for receipt in receipts:
        element = etree.SubElement(request, _q("Receipt"))
        for name, value in receipt.items():
            tag = name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name) else "NotAName"
            etree.SubElement(element, _q(tag)).text = _xml_safe(value)
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def ledger_fault(response: Response) -> dict[str, str] | None:
    """The detail of a SOAP Fault answer as ``{tag: text}``, or None for a 200."""
    root = etree.fromstring(response.body)
    fault = root.find(f".//{{{SOAP_NS}}}Fault")
    if fault is None:
        assert response.status == 200
        return None
    assert response.status == 500  # SOAP 1.1 faults travel as HTTP 500: the fault, not a crash
    detail = fault.find("detail")
    assert detail is not None and len(detail), etree.tostring(fault)
    kind = detail[0]
    out = {etree.QName(child).localname: child.text or "" for child in kind}
    out["_kind"] = etree.QName(kind).localname
    return out


@st.composite
def ledger_receipts(draw: Any) -> dict[str, Any]:
    base = draw(st.one_of(st.sampled_from(mapped_samples("payment_platform__ministry_ledger/receipt")),
                          st.fixed_dictionaries({name: xml_text for name in LEDGER_FIELDS})))
    return mp._spoil(dict(base), draw)


@PROPERTY
@given(receipts=st.lists(ledger_receipts(), min_size=1, max_size=3))
@example(receipts=[{"ReceiptNumber": "BL1", "AmountVND": "１２３"}])
# found: a dateTime whose instant leaves the years 1..9999 in Viet Nam time crashed the ledger (500)
@example(receipts=[{**mapped_samples("payment_platform__ministry_ledger/receipt")[0], "PaidAt": "9999-12-31T23:59:59-12:00"}])
def test_ledger_refuses_a_receipt_naming_the_field_never_crashes(mocks: dict, receipts: list) -> None:
    fault = ledger_fault(call(mocks["ledger"], "POST", "/", raw=soap_submit(receipts)))
    if fault is not None and fault["_kind"] == "ValidationFault":
        assert fault["Field"] and fault["Rule"] and fault["Field"] in fault.get("Message", "") + fault["Field"]


@PROPERTY
@given(bounds=st.tuples(st.one_of(mp.iso_texts, xml_text), st.one_of(mp.iso_texts, xml_text)))
@example(bounds=("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00"))
def test_ledger_list_refuses_bad_bounds_naming_the_field(mocks: dict, bounds: tuple[str, str]) -> None:
    env, request = soap_request("ListReceipts")
    for name, value in zip(("From", "To"), bounds):
        etree.SubElement(request, _q(name)).text = _xml_safe(value)
    fault = ledger_fault(call(mocks["ledger"], "POST", "/", raw=etree.tostring(env)))
    if fault is not None and fault["_kind"] == "ValidationFault":
        assert fault["Field"] in ("From", "To") and fault["Rule"], fault


@PROPERTY
@given(body=st.one_of(st.binary(max_size=200), xml_text.map(str.encode),
                      st.sampled_from([b"<a/>", b"<?xml version='1.0'?><!DOCTYPE a [<!ENTITY e 'x'>]><a>&e;</a>"])))
def test_ledger_answers_any_body_with_a_fault_never_a_crash(mocks: dict, body: bytes) -> None:
    ledger_fault(call(mocks["ledger"], "POST", "/", raw=body))


@PROPERTY
@given(data=st.data())
def test_ledger_accepts_what_the_mapping_makes(mocks: dict, data: Any) -> None:
    payload = valid_mapped(data.draw, "payment_platform__ministry_ledger/receipt")
    if payload is None:
        return
    from datetime import datetime

    wire = {**payload, "PaidAt": datetime.fromisoformat(payload["PaidAt"]).isoformat()}  # as zeep writes it
    fault = ledger_fault(call(mocks["ledger"], "POST", "/", raw=soap_submit([wire])))
    assert fault is None or fault["_kind"] != "ValidationFault", f"the ledger refuses a mapped receipt: {fault}"


# --- 3. the one-stop -----------------------------------------------------------------------------
ONESTOP = {"X-Api-Key": DEFAULT_API_KEY}


@PROPERTY
@given(body=payloads("canonical__onestop/procedure"))
def test_onestop_catalogue_refuses_naming_the_field(mocks: dict, body: Any) -> None:
    code = body.get("serviceCode") if isinstance(body, dict) else None
    code = code if isinstance(code, str) and code.strip() and "/" not in code else "1.000894.000.00.00.H49"
    response = call(mocks["onestop"], "PUT", f"/api/v1/procedures/{code}", body, headers=ONESTOP)
    if response.status == 422:  # the field is named; an unknown key may be any text, even ""
        reply = answer(response)
        assert isinstance(reply.get("field"), str) and reply["message"], reply
    else:
        assert response.status in (200, 201, 400), response.status


@PROPERTY
@given(data=st.data())
def test_onestop_accepts_what_the_mapping_makes(mocks: dict, data: Any) -> None:
    payload = valid_mapped(data.draw, "canonical__onestop/procedure")
    if payload is None or "/" in payload["serviceCode"]:
        return
    response = call(mocks["onestop"], "PUT", f"/api/v1/procedures/{payload['serviceCode']}", payload, headers=ONESTOP)
    assert response.status in (200, 201), answer(response)


def _a_payment_reference(mock: OneStopMock) -> str:
    rows = mock.require_db().conn.execute("SELECT reference FROM payment_requests LIMIT 1").fetchall()
    if rows:
        return rows[0][0]
    return "unknown-reference"


payment_results = st.one_of(
    mp.junk,
    st.fixed_dictionaries({"result": st.sampled_from(["paid", "failed"])},
                          optional={"transactionId": st.one_of(st.text(max_size=10), mp.junk),
                                    "bank": st.one_of(st.sampled_from(["VCB", ""]), mp.junk),
                                    "amount": st.one_of(st.integers(-(10**20), 10**20), mp.junk),
                                    "paidAt": st.one_of(mp.iso_texts, mp.junk),
                                    "receiptNo": st.one_of(st.none(), st.text(max_size=10), mp.junk)}),
)


@PROPERTY
@given(body=payment_results)
def test_onestop_payment_result_refuses_naming_the_field(mocks: dict, body: Any) -> None:
    reference = _a_payment_reference(mocks["onestop"])
    response = call(mocks["onestop"], "POST", f"/api/v1/payments/{reference}/result", body, headers=ONESTOP)
    if response.status == 422:  # the field is named; an unknown key may be any text, even ""
        reply = answer(response)
        assert isinstance(reply.get("field"), str) and reply["message"], reply


def _signed(body: dict[str, Any], order: tuple[str, ...], secret: str = DEFAULT_SECRET) -> dict[str, Any]:
    return {**body, "MaXacThuc": checksum(body, order, secret)}


confirm_bodies = st.fixed_dictionaries(
    {"LoaiBanTin": st.just("CONFIRM"), "MaDoiTac": st.just(DEFAULT_PARTNER)},
    optional={"MaLoi": st.one_of(st.sampled_from(["00", "99"]), mp.junk),
              "MaThamChieu": st.one_of(st.text(min_size=1, max_size=12), mp.junk),
              "SoTien": st.one_of(st.integers(-(10**20), 10**20), st.text("0123456789²³١", min_size=1, max_size=22),
                                  mp.junk),
              "MaTienTe": st.just("VND"),
              "MaGiaoDich": st.one_of(st.text(min_size=1, max_size=12), mp.junk),
              "MaNganHang": st.one_of(st.sampled_from(["VCB"]), mp.junk),
              "ThoiGianGD": st.one_of(mp.portal_texts, mp.junk),
              "ThongTinGiaoDich": st.one_of(st.text(max_size=30), mp.junk)},
).map(lambda body: _signed(body, ANSWER_ORDERS["CONFIRM"]))

_CONFIRM_CRASH = _signed({"LoaiBanTin": "CONFIRM", "MaDoiTac": DEFAULT_PARTNER, "MaLoi": "00", "MaThamChieu": "x",
                          "SoTien": "²", "MaGiaoDich": "GD1", "MaNganHang": "VCB", "ThoiGianGD": "20261102081500"},
                         ANSWER_ORDERS["CONFIRM"])
_CONFIRM_OVERFLOW = {**_CONFIRM_CRASH, "SoTien": str(10**20)}
_CONFIRM_OVERFLOW = _signed({k: v for k, v in _CONFIRM_OVERFLOW.items() if k != "MaXacThuc"}, ANSWER_ORDERS["CONFIRM"])


@PROPERTY
@given(body=confirm_bodies)
@example(body=_CONFIRM_CRASH)
@example(body=_CONFIRM_OVERFLOW)
def test_onestop_confirm_callback_never_crashes(mocks: dict, body: dict) -> None:
    response = call(mocks["onestop"], "POST", "/api/v1/payments/confirm", body)
    assert isinstance(answer(response), dict)


# --- 4. the payment platform ---------------------------------------------------------------------
def platform_bodies(kind: str) -> st.SearchStrategy[dict]:
    fields = {name: st.one_of(st.text(max_size=20), mp.junk, mp.number_texts, mp.portal_texts)
              for name in REQUEST_ORDERS[kind]}
    fields.update(LoaiBanTin=st.just(kind), PhienBan=st.sampled_from(["1.0.6", "1.0.5"]),
                  MaDoiTac=st.sampled_from([DEFAULT_PARTNER, DEFAULT_PARTNER, "other"]))
    return st.fixed_dictionaries({}, optional=fields).map(
        lambda body: _signed({**body, "LoaiBanTin": kind}, REQUEST_ORDERS[kind]))


@PROPERTY
@given(body=st.one_of(platform_bodies("INIT"), platform_bodies("QUERY"), platform_bodies("GET_BILL"), mp.junk))
def test_payment_platform_refuses_in_its_words_never_crashes(mocks: dict, body: Any) -> None:
    response = call(mocks["platform"], "POST", "/api/payment", body)
    if response.content_type.startswith("application/json"):
        reply = answer(response)
        assert reply.get("MaLoi") in ("00", "99"), reply
        if reply["MaLoi"] == "99":
            assert reply.get("MoTaLoi"), reply
