"""Fault injection for the reliability harness (issue #7), against real running stand-ins over HTTP:
malformed bodies, slow replies (applied even when the client gave up), SOAP Faults on the ledger,
forced session expiry, lost and duplicate payment callbacks, and the per-plan and cumulative counters."""

from __future__ import annotations

import random
import time
from collections import Counter
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

from mocks.ministry_ledger import DEFAULT_PASSWORD, DEFAULT_USERNAME, MinistryLedgerMock
from mocks.payment_platform import PaymentPlatformMock
from mocks.server import PROXY_ERROR_PAGE, Faults, seeded_rng
from tests.mocks.conftest import OneStopCalls, PortalCalls, make_record

TIMEOUT = 5
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"


# ------------------------------------------------------------------------------------------------
# the documented fault stream, replayed independently
# ------------------------------------------------------------------------------------------------
def expected_kinds(plan: dict[str, Any], requests_made: int) -> Counter[str]:
    """What ``Faults`` must inject for ``requests_made`` covered requests, replayed from the streams
    the README documents: 3 draws of ``random.Random(seed)`` (drop, error, ambiguous) and 4 of
    ``seeded_rng(seed, "faults-extra")`` (slow, SOAP Fault, malformed, body choice) per request."""
    seed = plan.get("seed", 0)
    main, extra = random.Random(seed), seeded_rng(seed, "faults-extra")
    kinds: Counter[str] = Counter()
    for _ in range(requests_made):
        r_drop, r_error, r_amb = main.random(), main.random(), main.random()
        r_slow, r_soap, r_malformed = extra.random(), extra.random(), extra.random()
        extra.random()  # the fourth draw picks which broken body; not needed to predict the counts
        if r_slow < plan.get("slow_rate", 0):
            kinds["slow"] += 1
        if r_drop < plan.get("drop_rate", 0):
            kinds["drop"] += 1
        elif r_error < plan.get("error_rate", 0):
            kinds[f"http_{plan.get('http_status', 503)}"] += 1
        elif r_soap < plan.get("soap_fault_rate", 0):
            kinds["soap_fault"] += 1
        elif r_malformed < plan.get("malformed_rate", 0):
            kinds["malformed"] += 1
        elif r_amb < plan.get("ambiguous_rate", 0):
            kinds["ambiguous"] += 1
    return kinds


def test_new_rates_at_zero_keep_the_old_draw_sequence_and_the_main_stream_is_untouched_by_them():
    old = {"error_rate": 0.4, "drop_rate": 0.2, "ambiguous_rate": 0.3, "seed": 11}
    reference = random.Random(11)
    expected = []
    for _ in range(200):  # the pre-issue-#7 algorithm: three draws, drop > error > ambiguous
        r_drop, r_error, r_amb = reference.random(), reference.random(), reference.random()
        expected.append("drop" if r_drop < 0.2 else "http_503" if r_error < 0.4 else "ambiguous" if r_amb < 0.3
                        else None)

    def outcomes(spec: dict[str, Any]) -> list[str | None]:
        faults = Faults(ambiguous_supported=True)
        faults.configure(spec)
        result = []
        for _ in range(200):
            d = faults.draw("op")
            result.append("drop" if d.drop else f"http_{d.error_status}" if d.error_status
                          else "ambiguous" if d.ambiguous else None)
        return result

    assert outcomes(old) == expected
    # with new kinds switched on, drop/error decisions are exactly the old ones (their own stream)
    mixed = outcomes({**old, "slow_rate": 0.5, "slow_ms": 1, "malformed_rate": 0.3})
    assert [o for o in mixed if o in ("drop", "http_503")] == [o for o in expected if o in ("drop", "http_503")]
    assert [i for i, o in enumerate(mixed) if o in ("drop", "http_503")] == \
        [i for i, o in enumerate(expected) if o in ("drop", "http_503")]


# ------------------------------------------------------------------------------------------------
# malformed bodies
# ------------------------------------------------------------------------------------------------
def faults_of(url: str) -> dict[str, Any]:
    return requests.get(url + "/_admin/faults", timeout=TIMEOUT).json()["faults"]


def set_faults(url: str, plan: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(url + "/_admin/faults", json=plan, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()["faults"]


def test_onestop_malformed_rate_gives_exact_seeded_counts_and_broken_200_bodies(os_calls: OneStopCalls):
    plan = {"malformed_rate": 0.4, "seed": 7, "operations": ["dossier"]}
    set_faults(os_calls.url, plan)
    number = os_calls.dossiers()[0]["dossierNo"]
    bodies, broken = [], 0
    for _ in range(30):
        response = os_calls.get(f"/api/v1/dossiers/{number}")
        assert response.status_code == 200
        try:
            ok = response.json().get("dossierNo") == number
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            broken += 1
            bodies.append(response.content)
    assert os_calls.get("/api/v1/dossiers/changes").status_code == 200  # not covered: no draw, no fault
    assert broken == expected_kinds(plan, 30)["malformed"] == 11
    assert faults_of(os_calls.url)["injected"] == {"malformed": 11}
    assert set(bodies) == {b'{"dossierNo":"000.00.01.H49-261102-0001","status":"', PROXY_ERROR_PAGE, b"[]", b""}
    assert os_calls.mock.faults.injected_total == {"malformed": 11}


def test_portal_malformed_answer_is_200_with_a_broken_body_and_nothing_is_applied(pc: PortalCalls):
    set_faults(pc.url, {"malformed_rate": 1.0, "operations": ["DongBoHoSoMC"]})
    contents = set()
    for n in range(1, 9):
        response = pc.raw("DongBoHoSoMC", isUpdating="False", data=[make_record(f"000.00.01.H49-261102-000{n}")])
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")
        contents.add(response.content)
        with pytest.raises((ValueError, AttributeError, TypeError)):
            assert response.json()["error_code"] is not None  # never a readable adapter reply
    assert pc.held() == []  # not applied
    assert len(contents) == 4 and PROXY_ERROR_PAGE in contents
    assert pc.calls()["DongBoHoSoMC"] == {"fault_malformed": 8}
    assert faults_of(pc.url)["injected"] == {"malformed": 8}
    answer = pc.lookup("000.00.01.H49-261102-0001")  # TraCuuHoSo is not covered: a real answer
    assert answer["error_code"] == 0 and answer["result"] == []


# ------------------------------------------------------------------------------------------------
# slow replies
# ------------------------------------------------------------------------------------------------
def test_a_slow_request_past_the_client_timeout_times_out_but_is_applied(pc: PortalCalls):
    set_faults(pc.url, {"slow_rate": 1.0, "slow_ms": 700, "operations": ["DongBoHoSoMC"]})
    envelope = {"session": pc.session, "madonvi": pc.unit, "service": "DongBoHoSoMC", "isUpdating": "False",
                "data": [make_record()]}
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(pc.url + "/integration", json=envelope, headers=pc.headers, timeout=(2, 0.2))
    assert time.monotonic() - started < 0.6
    deadline = time.monotonic() + 5
    while not pc.held() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r["MaHoSo"] for r in pc.held()] == ["000.00.01.H49-261102-0001"]  # the server finished the work
    assert faults_of(pc.url)["injected"] == {"slow": 1}
    assert pc.calls()["DongBoHoSoMC"] == {"0": 1}  # the server answered code 0, to nobody
    assert pc.mock.running and pc.lookup("000.00.01.H49-261102-0001")["error_code"] == 0


def test_slow_rate_delays_the_seeded_share_and_a_slow_reply_under_the_timeout_succeeds(os_calls: OneStopCalls):
    plan = {"slow_rate": 0.5, "slow_ms": 120, "seed": 5, "operations": ["changes"]}
    set_faults(os_calls.url, plan)
    slow = 0
    for _ in range(10):
        started = time.monotonic()
        response = os_calls.get("/api/v1/dossiers/changes", limit=1)
        assert response.status_code == 200 and response.json()["items"]
        slow += time.monotonic() - started >= 0.12
    assert slow == expected_kinds(plan, 10)["slow"] == faults_of(os_calls.url)["injected"]["slow"]
    assert 0 < slow < 10


# ------------------------------------------------------------------------------------------------
# the ministry ledger: SOAP Faults and broken XML
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[MinistryLedgerMock]:
    mock = MinistryLedgerMock(tmp_path / "ledger", port=0).start()
    yield mock
    mock.stop()


def ledger_client(mock: MinistryLedgerMock) -> zeep.Client:
    transport = Transport(timeout=TIMEOUT, operation_timeout=TIMEOUT)
    return zeep.Client(mock.url + "/?wsdl", wsse=UsernameToken(DEFAULT_USERNAME, DEFAULT_PASSWORD),
                       transport=transport)


def receipt(number: str) -> dict[str, Any]:
    return {"ReceiptNumber": number, "DossierCode": "000.00.01.H49-261102-0001",
            "PaymentReference": "dvc0000001H49261102000120261102081500", "AmountVND": 200000,
            "PaidAt": datetime.fromisoformat("2026-11-02T08:30:00+07:00"), "PayerName": "Nguyễn Thị Thu Hương",
            "AgencyCode": "000.00.01.H49", "PdfSha256": "ab" * 32}


def held_receipts(mock: MinistryLedgerMock) -> list[str]:
    rows = requests.get(mock.url + "/_state/receipts", timeout=TIMEOUT).json()["receipts"]
    return [r["ReceiptNumber"] for r in rows]


def test_ledger_soap_fault_is_a_soap11_server_fault_with_http_500_and_nothing_is_stored(ledger):
    client = ledger_client(ledger)
    set_faults(ledger.url, {"soap_fault_rate": 1.0, "operations": ["SubmitReceipts"]})
    with pytest.raises(zeep.exceptions.Fault) as info:
        client.service.SubmitReceipts(Receipt=[receipt("BL2026-000001")])
    assert info.value.code == "soap:Server" and "nothing was stored" in info.value.message
    assert held_receipts(ledger) == []
    # the raw answer: HTTP 500, text/xml, a SOAP 1.1 envelope holding the Fault
    node = client.create_message(client.service, "SubmitReceipts", Receipt=[receipt("BL2026-000001")])
    response = requests.post(ledger.url + "/", data=etree.tostring(node), timeout=TIMEOUT,
                             headers={"Content-Type": "text/xml; charset=utf-8",
                                      "SOAPAction": '"urn:vn:gov:mof:receiptledger:v1/SubmitReceipts"'})
    assert response.status_code == 500 and response.headers["Content-Type"].startswith("text/xml")
    root = etree.fromstring(response.content)
    assert root.tag == f"{{{SOAP_NS}}}Envelope"
    fault = root.find(f"{{{SOAP_NS}}}Body/{{{SOAP_NS}}}Fault")
    assert fault.findtext("faultcode") == "soap:Server" and fault.find("detail") is None
    assert held_receipts(ledger) == []
    assert faults_of(ledger.url)["injected"] == {"soap_fault": 2}
    assert client.service.GetReceipt(ReceiptNumber="BL2026-000001") is None  # GetReceipt is not covered


def test_ledger_soap_fault_and_malformed_rates_give_exact_seeded_counts(ledger):
    client = ledger_client(ledger)
    plan = {"soap_fault_rate": 0.3, "malformed_rate": 0.3, "seed": 3, "operations": ["SubmitReceipts"]}
    set_faults(ledger.url, plan)
    stored, faults, broken = [], 0, 0
    for n in range(1, 21):
        number = f"BL2026-{n:06d}"
        try:
            client.service.SubmitReceipts(Receipt=[receipt(number)])
            stored.append(number)
        except zeep.exceptions.Fault as fault:
            assert fault.code == "soap:Server"
            faults += 1
        except (zeep.exceptions.Error, etree.LxmlError, ValueError, AttributeError, TypeError):
            broken += 1  # 200 with garbage: zeep cannot read it
    expected = expected_kinds(plan, 20)
    assert (faults, broken) == (expected["soap_fault"], expected["malformed"]) == (3, 4)
    assert held_receipts(ledger) == stored and len(stored) == 13  # neither kind stored anything
    assert faults_of(ledger.url)["injected"] == {"soap_fault": 3, "malformed": 4}


def test_ledger_error_rate_still_answers_the_html_503_page(ledger):
    set_faults(ledger.url, {"error_rate": 1.0})
    response = requests.post(ledger.url + "/", data=b"<x/>", timeout=TIMEOUT)
    assert response.status_code == 503 and response.headers["Content-Type"].startswith("text/html")


# ------------------------------------------------------------------------------------------------
# portal session expiry and payment callbacks, counted
# ------------------------------------------------------------------------------------------------
def test_portal_counts_each_forced_session_expiry(pc: PortalCalls):
    set_faults(pc.url, {"session_expire_every": 2})
    codes = []
    for _ in range(2):
        codes += [pc.lookup("000.00.01.H49-261102-0001")["error_code"] for _ in range(3)]
        pc.login()
    assert codes == [0, 0, 2, 0, 0, 2]  # the second success ends the session: the third call gets code 2
    assert faults_of(pc.url)["injected"] == {"session_expired": 2}
    set_faults(pc.url, {})
    snapshot = faults_of(pc.url)
    assert snapshot["injected"] == {} and snapshot["injected_total"] == {"session_expired": 2}


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[PaymentPlatformMock]:
    mock = PaymentPlatformMock(tmp_path / "pay", port=0, seed=49, seed_dossiers=40, lost_share=0.5,
                               duplicate_callbacks=True, callback_url="http://127.0.0.1:9/confirm",
                               callback_timeout=0.5).start()
    yield mock
    mock.stop()


def test_payment_platform_counts_lost_and_duplicate_callbacks(platform):
    settled = requests.post(platform.url + "/_admin/payments/settle", json={"n": 11}, timeout=TIMEOUT).json()
    outcomes = Counter(s["callback"] for s in settled["settled"])
    assert outcomes["lost"] + outcomes["queued"] == 11 and outcomes["lost"] > 0 and outcomes["queued"] > 0
    injected = faults_of(platform.url)["injected"]
    assert injected == {"callback_lost": outcomes["lost"], "callback_duplicate": outcomes["queued"]}
    assert platform.wait_callbacks(10)
    logged = Counter(c["outcome"] for c in platform.callbacks())
    assert logged["lost"] == outcomes["lost"] and logged["error"] == 2 * outcomes["queued"]  # nobody listens
    requests.post(platform.url + "/_admin/reset", timeout=TIMEOUT)  # clears the plan, not the totals
    assert faults_of(platform.url)["injected_total"] == injected


def test_payment_platform_malformed_bill_is_a_broken_pdf(platform):
    set_faults(platform.url, {"malformed_rate": 1.0, "operations": ["GET_BILL"]})
    response = requests.post(platform.url + "/api/payment", json={"LoaiBanTin": "GET_BILL"}, timeout=TIMEOUT)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/pdf"
    assert b"%%EOF" not in response.content
    response = requests.post(platform.url + "/api/payment", json={"LoaiBanTin": "QUERY"}, timeout=TIMEOUT)
    assert response.status_code == 200 and "MaLoi" in response.text  # QUERY not covered: a real answer


# ------------------------------------------------------------------------------------------------
# counters across plans, and validation
# ------------------------------------------------------------------------------------------------
def test_injected_restarts_per_plan_and_injected_total_accumulates_by_kind(os_calls: OneStopCalls):
    number = os_calls.dossiers()[0]["dossierNo"]
    first = {"drop_rate": 0.2, "error_rate": 0.2, "malformed_rate": 0.2, "slow_rate": 0.3, "slow_ms": 1,
             "seed": 9, "operations": ["dossier"]}
    second = {"error_rate": 0.5, "http_status": 502, "seed": 4, "operations": ["dossier"]}
    totals: Counter[str] = Counter()
    for plan in (first, second):
        set_faults(os_calls.url, plan)
        for _ in range(25):
            try:
                os_calls.get(f"/api/v1/dossiers/{number}")
            except requests.exceptions.ConnectionError:
                pass  # a dropped connection
        expected = expected_kinds(plan, 25)
        assert faults_of(os_calls.url)["injected"] == dict(expected)
        totals += expected
    snapshot = faults_of(os_calls.url)
    assert snapshot["injected_total"] == dict(totals)
    assert {"drop", "http_503", "malformed", "slow", "http_502"} <= set(totals)
    assert os_calls.post("/_admin/reset").status_code == 200
    snapshot = faults_of(os_calls.url)
    assert snapshot["injected"] == {} and snapshot["injected_total"] == dict(totals)
    assert os_calls.state()["faults"]["injected_total"] == dict(totals)


@pytest.mark.parametrize("plan,message", [
    ({"malformed_rate": 1.5}, "malformed_rate must be a number between 0 and 1"),
    ({"malformed_rate": True}, "malformed_rate must be a number between 0 and 1"),
    ({"slow_rate": -0.1, "slow_ms": 10}, "slow_rate must be a number between 0 and 1"),
    ({"slow_rate": 0.5}, "slow_rate needs slow_ms"),
    ({"slow_rate": 0.5, "slow_ms": 120_001}, "slow_ms must be a number of milliseconds between 0 and 120000"),
    ({"slow_rate": 0.5, "slow_ms": "100"}, "slow_ms must be a number of milliseconds"),
    ({"soap_fault_rate": 0.5}, "soap_fault_rate is not supported by this mock (ministry ledger only)"),
    ({"slowrate": 0.5}, "unknown fault setting(s): slowrate"),
])
def test_bad_settings_are_refused_with_400_and_a_clear_message(os_calls: OneStopCalls, plan, message):
    set_faults(os_calls.url, {"error_rate": 0.1})
    response = os_calls.post("/_admin/faults", plan)
    assert response.status_code == 400 and message in response.json()["message"]
    assert faults_of(os_calls.url)["error_rate"] == 0.1  # the old plan stays


def test_snapshots_show_only_the_settings_each_mock_supports(os_calls: OneStopCalls, portal, ledger):
    onestop = faults_of(os_calls.url)
    assert {"malformed_rate", "slow_rate", "slow_ms", "injected", "injected_total"} <= set(onestop)
    assert "soap_fault_rate" not in onestop and "session_expire_every" not in onestop
    assert "soap_fault_rate" in faults_of(ledger.url) and "session_expire_every" in faults_of(portal.url)
    assert requests.post(portal.url + "/_admin/faults", json={"soap_fault_rate": 0.1},
                         timeout=TIMEOUT).status_code == 400
    assert set_faults(ledger.url, {"soap_fault_rate": 0.25, "slow_rate": 0.1, "slow_ms": 5})["soap_fault_rate"] == 0.25
