"""The receipt ledger client (zeep, local WSDL) against the stand-in ledger as a real server, and
against a tiny local server that answers hostile XML."""

from __future__ import annotations

import json
import logging
import resource
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import zeep.exceptions
import zeep.loader

from connectors.connection import ConnectionSpec, Secret
from connectors.errors import (
    AuthenticationFailed,
    ConfigurationError,
    DuplicateReceipt,
    FatalConnectorError,
    PeerRejected,
    PeerUnavailable,
    ProtocolError,
    RecordRejected,
    UnreadableAnswer,
    UnsafeXml,
)
from connectors.ministry_ledger import PEER, ReceiptInvalid, ReceiptLedgerClient, SubmitResult
from connectors.ministry_ledger import client as ledger_module
from connectors.transport import MemoryRecorder, RetryPolicy
from mocks.ministry_ledger import LEDGER_NS, MinistryLedgerMock
from tests.connectors.local_peer import answer, trickle

T = 5
USER = "lienthong.h49"
PASSWORD = "test-ledger-secret-&<Zr8"  # XML-special characters: escaped on the wire, still redacted
FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[MinistryLedgerMock]:
    mock = MinistryLedgerMock(tmp_path / "ledger", port=0, username=USER, password=PASSWORD).start()
    yield mock
    mock.stop()


@pytest.fixture
def recorder() -> MemoryRecorder:
    return MemoryRecorder()


def client(url: str, recorder=None, password: str = PASSWORD, **kw: Any) -> ReceiptLedgerClient:
    kw.setdefault("retry", FAST)
    kw.setdefault("operation_timeout", 2.0)
    return ReceiptLedgerClient(url, USER, Secret(password), recorder=recorder, **kw)


def receipt(number: str = "BL2026-000001", **overrides: Any) -> dict[str, Any]:
    value = {"ReceiptNumber": number, "DossierCode": "000.00.01.H49-261102-0001",
             "PaymentReference": "dvc0000001H49261102000120261102081500", "AmountVND": 200000,
             "PaidAt": datetime.fromisoformat("2026-11-02T08:30:00+07:00"), "PayerName": "Nguyễn Thị Thu Hương",
             "AgencyCode": "000.00.01.H49", "PdfSha256": "ab" * 32}
    value.update(overrides)
    return value


THREE = [receipt("BL2026-000001"), receipt("BL2026-000002", AmountVND=50000),
         receipt("BL2026-000003", DossierCode="000.00.01.H49-261102-0003")]


def held(mock: MinistryLedgerMock) -> list[dict[str, Any]]:
    return requests.get(mock.url + "/_state/receipts", timeout=T).json()["receipts"]


def faults(mock: MinistryLedgerMock, plan: dict[str, Any]) -> None:
    assert requests.post(mock.url + "/_admin/faults", json=plan, timeout=T).status_code == 200


def recorded_bytes(recorder: MemoryRecorder) -> bytes:
    out = b""
    for e in recorder.exchanges:
        out += e.request_body + e.response_body + e.url.encode()
        out += json.dumps([e.request_headers, e.response_headers, e.error, e.record_keys]).encode()
    return out


# -- submit, idempotency, reads ------------------------------------------------------------------
def test_submit_three_then_resubmit_is_unchanged_and_the_ledger_holds_three(ledger, recorder):
    c = client(ledger.url, recorder)
    first = c.submit_receipts(THREE, record_keys=["batch-1"])
    assert first == SubmitResult(accepted=3, unchanged=0, statuses={
        "BL2026-000001": "accepted", "BL2026-000002": "accepted", "BL2026-000003": "accepted"})
    again = c.submit_receipts(THREE)
    assert (again.accepted, again.unchanged) == (0, 3) and set(again.statuses.values()) == {"unchanged"}
    rows = held(ledger)
    assert [r["ReceiptNumber"] for r in rows] == ["BL2026-000001", "BL2026-000002", "BL2026-000003"]
    assert rows[1]["AmountVND"] == 50000 and rows[0]["PaidAt"] == "2026-11-02T08:30:00+07:00"

    exchange = recorder.exchanges[0]
    assert (exchange.peer, exchange.operation, exchange.method, exchange.outcome) == \
        (PEER, "SubmitReceipts", "POST", "ok")
    assert exchange.url == ledger.url + "/" and exchange.response_status == 200 and exchange.attempt == 1
    assert exchange.record_keys == ("BL2026-000001", "BL2026-000002", "BL2026-000003", "batch-1")
    assert b"<wsse:Password" in exchange.request_body and b">***</wsse:Password>" in exchange.request_body
    assert b"SubmitReceiptsResponse" in exchange.response_body


def test_get_and_list_receipts(ledger):
    c = client(ledger.url)
    c.submit_receipts(THREE)
    got = c.get_receipt("BL2026-000002")
    assert got is not None and got["AmountVND"] == 50000 and got["PayerName"] == "Nguyễn Thị Thu Hương"
    assert got["PaidAt"] == datetime.fromisoformat("2026-11-02T08:30:00+07:00") and got["PaidAt"].tzinfo
    assert c.get_receipt("BL2026-999999") is None
    day = (datetime.fromisoformat("2026-11-02T00:00:00+07:00"), datetime.fromisoformat("2026-11-03T00:00:00+07:00"))
    assert [r["ReceiptNumber"] for r in c.list_receipts(*day)] == ["BL2026-000001", "BL2026-000002", "BL2026-000003"]
    assert c.list_receipts(datetime.fromisoformat("2026-11-03T00:00:00+07:00"), day[1]) == []
    with pytest.raises(ValueError, match="aware"):
        c.list_receipts(datetime(2026, 11, 2), datetime(2026, 11, 3))  # noqa: DTZ001 - the point of the test


# -- faults → classes ------------------------------------------------------------------------------
def test_changed_amount_is_a_duplicate_receipt_naming_the_field(ledger, recorder):
    c = client(ledger.url, recorder)
    c.submit_receipts(THREE)
    with pytest.raises(DuplicateReceipt) as info:
        c.submit_receipts([receipt("BL2026-000004"), receipt("BL2026-000002", AmountVND=51000)])
    exc = info.value
    assert isinstance(exc, PeerRejected) and exc.record_key == "BL2026-000002"
    assert exc.fields == ("AmountVND",) and [e.field for e in exc.errors] == ["AmountVND"]
    assert exc.peer_code == "DUPLICATE_RECEIPT" and "AmountVND" in exc.peer_message
    assert len(held(ledger)) == 3  # all or nothing
    last = recorder.exchanges[-1]
    assert (last.outcome, last.peer_code, last.response_status) == ("peer_error", "DUPLICATE_RECEIPT", 500)


def test_bad_dossier_code_is_rejected_naming_field_rule_and_index(ledger, recorder):
    with pytest.raises(PeerRejected) as info:
        client(ledger.url, recorder).submit_receipts([receipt(), receipt("BL2026-000002", DossierCode="HS-1")])
    exc = info.value
    assert isinstance(exc, ReceiptInvalid) and exc.record_key == "BL2026-000002" and exc.index == 1
    assert exc.errors[0].field == "DossierCode"
    assert exc.errors[0].rule == r"pattern:[0-9]{3}\.[0-9]{2}\.[0-9]{2}\.H[0-9]{2}-[0-9]{6}-[0-9]{4,5}"
    assert exc.peer_code == "VALIDATION_FAILED" and held(ledger) == []
    assert recorder.exchanges[-1].peer_code == "VALIDATION_FAILED" and len(recorder.exchanges) == 1


def test_a_receipt_missing_a_field_is_rejected_before_sending(ledger, recorder):
    bad = receipt("BL2026-000009")
    del bad["PdfSha256"]
    with pytest.raises(RecordRejected) as info:
        client(ledger.url, recorder).submit_receipts([receipt(), bad])
    assert info.value.record_key == "BL2026-000009" and info.value.errors[0].field == "PdfSha256"
    with pytest.raises(RecordRejected, match="PaidAt"):
        client(ledger.url, recorder).submit_receipts([receipt(PaidAt=datetime(2026, 11, 2, 8))])  # noqa: DTZ001
    assert recorder.exchanges == []


def test_wrong_password_is_authentication_failed(ledger, recorder):
    wrong = "wrong-ledger-password-Pq4"
    with pytest.raises(AuthenticationFailed) as info:
        client(ledger.url, recorder, password=wrong).get_receipt("BL2026-000001")
    assert "unknown user or wrong password" in str(info.value)
    assert wrong not in f"{info.value!r} {info.value}" and PASSWORD not in str(info.value)
    assert wrong.encode() not in recorded_bytes(recorder)
    assert recorder.exchanges[-1].peer_code == "AUTHENTICATION_FAILED" and len(recorder.exchanges) == 1


def test_latency_past_operation_timeout_is_retried_then_peer_unavailable(ledger, recorder):
    faults(ledger, {"latency_ms": 700, "operations": ["SubmitReceipts"]})
    c = client(ledger.url, recorder, operation_timeout=0.25, retry=RetryPolicy(max_attempts=2, base_delay=0.01))
    started = time.monotonic()
    with pytest.raises(PeerUnavailable) as info:
        c.submit_receipts(THREE)
    assert time.monotonic() - started < 5
    assert "no answer within 0.25s" in str(info.value)
    assert [(e.attempt, e.outcome, e.response_status) for e in recorder.exchanges] == \
        [(1, "transport_error", None), (2, "transport_error", None)]
    faults(ledger, {})
    time.sleep(0.8)  # the slow answers land after we gave up: the "did it land?" case
    again = client(ledger.url).submit_receipts(THREE)  # resubmitting is safe: same content is unchanged
    assert again.accepted + again.unchanged == 3 and len(held(ledger)) == 3


def test_a_503_once_then_success_delivers_exactly_once(ledger, recorder):
    faults(ledger, {"error_rate": 1.0, "operations": ["SubmitReceipts"]})
    waits: list[float] = []

    def sleep(delay: float) -> None:  # the fault clears while the client backs off
        waits.append(delay)
        faults(ledger, {})

    result = client(ledger.url, recorder, sleep=sleep).submit_receipts(THREE)
    assert (result.accepted, result.unchanged) == (3, 0) and len(waits) == 1
    assert [(e.attempt, e.outcome, e.response_status) for e in recorder.exchanges] == \
        [(1, "http_error", 503), (2, "ok", 200)]
    assert [r["ReceiptNumber"] for r in held(ledger)] == ["BL2026-000001", "BL2026-000002", "BL2026-000003"]
    assert {r["batch"] for r in held(ledger)} == {1}


def test_persistent_503_and_drops_are_peer_unavailable_after_every_attempt(ledger, recorder):
    faults(ledger, {"error_rate": 1.0})
    with pytest.raises(PeerUnavailable) as info:
        client(ledger.url, recorder).get_receipt("BL2026-000001")
    assert info.value.status == 503 and [e.outcome for e in recorder.exchanges] == ["http_error"] * 3
    faults(ledger, {"drop_rate": 1.0})
    with pytest.raises(PeerUnavailable):
        client(ledger.url, recorder).get_receipt("BL2026-000001")
    assert [e.outcome for e in recorder.exchanges[3:]] == ["transport_error"] * 3


def test_nothing_listening_is_peer_unavailable():
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        port = probe.server_address[1]
    with pytest.raises(PeerUnavailable, match="connection failed"):
        client(f"http://127.0.0.1:{port}").get_receipt("BL2026-000001")


# -- the password stays secret -------------------------------------------------------------------
def test_the_password_never_reaches_the_log_exceptions_or_output(ledger, recorder, caplog):
    caplog.set_level(logging.DEBUG)
    c = client(ledger.url, recorder)
    c.submit_receipts(THREE)
    c.get_receipt("BL2026-000001")
    c.list_receipts(datetime.fromisoformat("2026-11-01T00:00:00+07:00"),
                    datetime.fromisoformat("2026-11-03T00:00:00+07:00"))
    texts = []
    for call in (lambda: c.submit_receipts([receipt(AmountVND=1)]),
                 lambda: c.submit_receipts([receipt("BL2026-000010", AgencyCode="x")])):
        with pytest.raises(PeerRejected) as info:
            call()
        texts.append(f"{info.value!r} {info.value}")
    faults(ledger, {"error_rate": 1.0})
    with pytest.raises(PeerUnavailable) as info:
        c.get_receipt("BL2026-000001")
    texts.append(str(info.value))
    blob = recorded_bytes(recorder)
    assert len(recorder.exchanges) >= 8
    escaped = PASSWORD.replace("&", "&amp;").replace("<", "&lt;")
    for form in (PASSWORD, escaped):
        assert form.encode() not in blob
        assert form not in " ".join(texts) + caplog.text + repr(c) + repr(vars(c)) + repr(c.zeep.wsse)
    assert blob.count(b">***</wsse:Password>") == sum(1 for e in recorder.exchanges)


# -- hostile XML -------------------------------------------------------------------------------------
ENVELOPE = ('<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:l="' + LEDGER_NS + '">'
            "<soap:Body><l:GetReceiptResponse><l:Receipt><l:ReceiptNumber>{value}</l:ReceiptNumber>"
            "<l:DossierCode>000.00.01.H49-261102-0001</l:DossierCode><l:PaymentReference>r</l:PaymentReference>"
            "<l:AmountVND>1</l:AmountVND><l:PaidAt>2026-11-02T08:30:00+07:00</l:PaidAt><l:PayerName>p</l:PayerName>"
            "<l:AgencyCode>000.00.01.H49</l:AgencyCode><l:PdfSha256>{sha}</l:PdfSha256></l:Receipt>"
            "</l:GetReceiptResponse></soap:Body></soap:Envelope>")


def envelope(value: str) -> str:
    return ENVELOPE.format(value=value, sha="ab" * 32)


def billion_laughs() -> str:
    lines = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10)]
    return '<?xml version="1.0"?>\n<!DOCTYPE soap:Envelope [' + "".join(lines) + "]>\n" + envelope("&lol9;")


class Hostile:
    """A tiny local server: every POST gets ``body``; every request path is remembered."""

    def __init__(self, body: bytes, content_type: str = "text/xml; charset=utf-8", status: int = 200):
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):  # noqa: N802 - stdlib name
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append(("POST", self.path))
                self._answer(outer.body)

            def do_GET(self):  # noqa: N802 - stdlib name
                outer.requests.append(("GET", self.path))
                self._answer(b'<!ENTITY leak "FETCHED-DTD">')

            def log_message(self, *args):
                return None

        self.body = body
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def marker_file(tmp_path: Path) -> tuple[Path, str]:
    marker = "SECRET-FILE-MARKER-7f3a9c"
    path = tmp_path / "marker.txt"
    path.write_text(marker)
    return path, marker


def hostile_bodies(marker_path: Path, port_url: str) -> dict[str, str]:
    return {
        "external-entity": ('<?xml version="1.0"?>\n<!DOCTYPE soap:Envelope [<!ENTITY xxe SYSTEM "'
                            + marker_path.as_uri() + '">]>\n' + envelope("&xxe;")),
        "external-dtd": ('<?xml version="1.0"?>\n<!DOCTYPE soap:Envelope SYSTEM "' + port_url + '/evil.dtd">\n'
                         + envelope("&leak;")),
        "billion-laughs": billion_laughs(),
    }


@pytest.mark.parametrize("case", ["external-entity", "external-dtd", "billion-laughs"])
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
@pytest.mark.parametrize("precheck", [True, False], ids=["precheck", "zeep-settings-only"])
def test_hostile_xml_is_refused_unread(marker_file, recorder, caplog, monkeypatch, case, encoding, precheck):
    """Refused with UnsafeXml by the transport's check and, without it, by zeep's hardened settings;
    the file is never read, the DTD never fetched, nothing expands."""
    caplog.set_level(logging.DEBUG)
    if not precheck:
        monkeypatch.setattr(ledger_module.LedgerTransport, "refuse_unread", staticmethod(lambda content: False))
    path, marker = marker_file
    server = Hostile(b"")
    try:
        text = hostile_bodies(path, server.url)[case]
        server.body = text.replace('<?xml version="1.0"?>', f'<?xml version="1.0" encoding="{encoding}"?>') \
            .encode(encoding)
        c = client(server.url, recorder)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.monotonic()
        with pytest.raises(UnsafeXml) as info:
            c.get_receipt("BL2026-000001")
        assert time.monotonic() - started < 2
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 64 * 1024  # KiB: < 64 MiB
        assert isinstance(info.value, ProtocolError)
        assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)
        everything = f"{info.value!r} {info.value}" + caplog.text + recorded_bytes(recorder).decode("latin-1")
        assert marker not in everything and "FETCHED-DTD" not in everything
        assert "lollollol" not in everything
        assert server.requests == [("POST", "/")]  # one attempt, no retry, no DTD fetched
        assert len(recorder.exchanges) == 1
        if precheck:
            assert recorder.exchanges[0].outcome == "protocol_error"
    finally:
        server.close()


def test_the_zeep_settings_alone_refuse_dtds_and_entities(marker_file):
    path, marker = marker_file
    c = client("http://127.0.0.1:9")
    assert (c.settings.strict, c.settings.xml_huge_tree, c.settings.forbid_dtd, c.settings.forbid_entities,
            c.settings.forbid_external) == (True, False, True, True, True)
    assert c.zeep.settings is c.settings
    for body in hostile_bodies(path, "http://127.0.0.1:9").values():
        # the bomb is already refused by libxml2's amplification limit, the others by zeep's checks
        with pytest.raises((zeep.exceptions.DTDForbidden, zeep.exceptions.EntitiesForbidden,
                            zeep.exceptions.XMLSyntaxError)) as info:
            zeep.loader.parse_xml(body.encode(), c.transport, settings=c.settings)
        assert marker not in str(info.value)


def test_a_request_fault_is_a_protocol_error(recorder):
    fault = ('<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault>'
             "<faultcode>soap:Client</faultcode><faultstring>Malformed XML</faultstring><detail>"
             f'<l:RequestFault xmlns:l="{LEDGER_NS}"><l:Code>MALFORMED_XML</l:Code><l:Message>bad</l:Message>'
             "</l:RequestFault></detail></soap:Fault></soap:Body></soap:Envelope>").encode()
    server = Hostile(fault, status=500)
    try:
        with pytest.raises(ProtocolError, match="MALFORMED_XML") as info:
            client(server.url, recorder).get_receipt("BL2026-000001")
        assert not isinstance(info.value, UnsafeXml) and len(server.requests) == 1
        assert (recorder.exchanges[-1].outcome, recorder.exchanges[-1].peer_code) == ("peer_error", "MALFORMED_XML")
    finally:
        server.close()


@pytest.mark.parametrize(("body", "content_type", "status", "expected", "attempts"), [
    (b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html", 502, PeerUnavailable, 3),
    (b"<html><body><h1>500 Internal Server Error</h1></body></html>", "text/html", 500, PeerUnavailable, 3),
    (b"not xml at all", "text/xml", 500, PeerUnavailable, 3),
    (b"not xml at all", "text/xml", 200, UnreadableAnswer, 3),
    (b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault>'
     b"<faultcode>soap:Server</faultcode><faultstring>database busy</faultstring></soap:Fault></soap:Body>"
     b"</soap:Envelope>", "text/xml", 500, PeerUnavailable, 3),
    (b"<a>well-formed but not SOAP</a>", "text/xml", 200, UnreadableAnswer, 3),
], ids=["html-502", "html-500", "garbage-500", "garbage-200", "server-fault-500", "not-soap-200"])
def test_error_pages_and_garbage(recorder, body, content_type, status, expected, attempts):
    server = Hostile(body, content_type=content_type, status=status)
    try:
        with pytest.raises(expected):
            client(server.url, recorder).get_receipt("BL2026-000001")
        assert len(server.requests) == attempts
    finally:
        server.close()


# -- construction --------------------------------------------------------------------------------
def test_the_wsdl_is_local_and_the_address_is_bound_to_base_url(recorder):
    c = client("http://127.0.0.1:9/", recorder)  # nothing listens: construction needs no network
    assert c.service._binding_options["address"] == "http://127.0.0.1:9/"
    assert c.transport.operation_timeout == 2.0 and recorder.exchanges == []
    with pytest.raises(ConfigurationError, match="local file"):
        client("http://127.0.0.1:9", wsdl="http://127.0.0.1:9/?wsdl")


def test_from_connection():
    spec = ConnectionSpec(conn_id="ministry_ledger_default", conn_type="http", host="127.0.0.1", port=18084,
                          schema="http", login=USER, password=Secret(PASSWORD),
                          extra={"operation_timeout": 4, "connect_timeout": 1.5, "max_attempts": 5})
    c = ReceiptLedgerClient.from_connection(spec)
    assert c.base_url == "http://127.0.0.1:18084" and c.username == USER
    assert (c.transport.operation_timeout, c.transport.connect_timeout, c.retry.max_attempts) == (4.0, 1.5, 5)
    assert c.service._binding_options["address"] == "http://127.0.0.1:18084/"
    with pytest.raises(ConfigurationError, match="password"):
        ReceiptLedgerClient.from_connection(ConnectionSpec(conn_id="l", conn_type="http", host="h", login="u"))


# -- credential headers, redirects, the session -------------------------------------------------
def test_credential_headers_of_answers_never_reach_the_exchange_log(peers, recorder):
    """The ledger's response headers were logged as they came: a gateway's Set-Cookie and a
    WWW-Authenticate challenge went whole into the exchange log."""
    cookie, challenge = "ledger-gateway-cookie-C7", "ledger-challenge-token-W3"
    peer = peers(lambda h, body: answer(h, 503, b"busy", "text/plain", headers={
        "Set-Cookie": f"LB={cookie}; Path=/", "WWW-Authenticate": f'Negotiate {challenge}'}))
    with pytest.raises(PeerUnavailable):
        client(peer.url, recorder, retry=RetryPolicy(max_attempts=1)).get_receipt("BL2026-000001")
    e = recorder.exchanges[0]
    logged = json.dumps([e.request_headers, e.response_headers])
    assert cookie not in logged and challenge not in logged, logged
    assert e.response_headers["Set-Cookie"] == e.response_headers["WWW-Authenticate"] == "***"
    assert e.response_headers["Content-Type"] == "text/plain"


def test_a_password_cut_short_before_its_closing_tag_is_blanked_to_the_end():
    """redact_soap needed the element's closing tag: a body cut inside the Password (an oversized
    answer's kept prefix, an echo cut short) kept it."""
    cut = b'<wsse:UsernameToken><wsse:Password Type="x">' + PASSWORD.replace("&", "&amp;").encode()[:12]
    assert ledger_module.redact_soap(cut) == b'<wsse:UsernameToken><wsse:Password Type="x">***'
    whole = b"<wsse:Nonce>n0nce</wsse:Nonce><wsse:Password>pw</wsse:Password><x>kept</x>"
    assert ledger_module.redact_soap(whole) == (
        b"<wsse:Nonce>***</wsse:Nonce><wsse:Password>***</wsse:Password><x>kept</x>")


# -- the session --------------------------------------------------------------------------------
def test_the_ledger_sends_no_credentials_from_netrc(peers, tmp_path, monkeypatch):
    """README: '~/.netrc is not [read]: each connection carries its own credentials'. The HTTP
    transport set trust_env=False; the ledger's zeep session did not, so requests added
    'Authorization: Basic <netrc login:password>' to every SOAP call (and the exchange log, which
    blanks Authorization, did not show it)."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-secret-N1\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    peer = peers(lambda h, body: answer(h, 503, b"busy", "text/plain"))
    with pytest.raises(PeerUnavailable):
        client(peer.url, retry=RetryPolicy(max_attempts=1)).get_receipt("BL2026-000001")
    sent = [headers for _m, _p, headers, _b in peer.requests]
    assert sent and not any("Authorization" in h for h in sent), f"the ledger sent {sent}"


def test_the_environment_proxy_is_read_once_for_the_ledger(monkeypatch):
    """Like the HTTP transport: the proxy for the ledger's address, read when the client is made."""
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    c = client("http://ledger.example:8080")
    assert c.transport.session.trust_env is False
    assert c.transport.session.proxies.get("http") == "http://proxy.example:3128"


@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_never_carries_the_ws_security_password_to_another_host(peers, recorder, status):
    """zeep's session followed redirects: a 307 re-POSTed the envelope, UsernameToken and all, to
    whatever host the Location named."""
    elsewhere = peers(lambda h, body: answer(h, 500, b"", "text/plain"))
    peer = peers(lambda h, body: answer(h, status, b"", "text/html",
                                        headers={"Location": f"http://localhost:{elsewhere.port}/"}))
    with pytest.raises(ProtocolError, match=f"HTTP {status} redirect to host localhost refused"):
        client(peer.url, recorder).get_receipt("BL2026-000001")
    assert elsewhere.requests == [] and len(peer.requests) == 1
    assert [(e.response_status, e.outcome) for e in recorder.exchanges] == [(status, "protocol_error")]


# -- Retry-After --------------------------------------------------------------------------------
def test_a_retry_after_longer_than_the_call_waits_ends_it_at_once(peers, recorder):
    """The ledger's 503 'Retry-After: 30' was asked again after the jittered back-off."""
    peer = peers(lambda h, body: answer(h, 503, b"maintenance", "text/plain", headers={"Retry-After": "30"}))
    sleeps: list[float] = []
    with pytest.raises(PeerUnavailable) as info:
        client(peer.url, recorder, retry=RetryPolicy(max_attempts=3), sleep=sleeps.append).get_receipt("BL2026-000001")
    assert (info.value.status, info.value.retry_after) == (503, 30.0)
    assert sleeps == [] and len(peer.requests) == 1 and len(recorder.exchanges) == 1


def test_a_retry_after_within_the_cap_is_waited(peers, recorder):
    """Once the wait asked is within max_delay, it is waited (not the shorter back-off) and the call goes on."""
    calls = []

    def handle(h, body):
        calls.append(1)
        if len(calls) == 1:
            answer(h, 503, b"busy", "text/plain", headers={"Retry-After": "2"})
        else:
            answer(h, 200, envelope("BL2026-000001").encode(), "text/xml; charset=utf-8")

    peer = peers(handle)
    sleeps: list[float] = []
    c = client(peer.url, recorder, retry=RetryPolicy(max_attempts=2), sleep=sleeps.append)
    assert c.get_receipt("BL2026-000001")["ReceiptNumber"] == "BL2026-000001"
    assert sleeps == [2.0] and len(calls) == 2
    assert [e.response_status for e in recorder.exchanges] == [503, 200]


# -- a trickling answer -------------------------------------------------------------------------
def test_a_trickling_answer_does_not_hold_a_call_past_its_deadline(peers, recorder):
    """operation_timeout bounds each socket read: a ledger sending its envelope's last bytes one
    every 0.3 s never tripped it. An attempt now ends at total_timeout (2 s here), retriable."""
    peer = peers(trickle(envelope("BL2026-000001").encode(), tail=20, every=0.3,
                         content_type="text/xml; charset=utf-8"))
    c = client(peer.url, recorder, operation_timeout=1.0, total_timeout=2.0, retry=RetryPolicy(max_attempts=1))
    assert c.transport.total_timeout == 2.0
    t0 = time.monotonic()
    with pytest.raises(PeerUnavailable, match="answer not complete within 2s"):
        c.get_receipt("BL2026-000001")
    assert time.monotonic() - t0 < 5.0  # the ledger would take 6 s; room for a busy machine
    assert [(e.outcome, e.response_status) for e in recorder.exchanges] == [("transport_error", None)]


def test_trickling_headers_do_not_hold_a_call_past_its_deadline(peers, recorder):
    """The ledger sending its header lines one every 0.3 s held a call with total_timeout=1s
    until http.client counted 100 of them (24 s here); the connection is closed at the deadline."""
    from tests.connectors.test_transport import trickled_headers

    peer = peers(trickled_headers(80, 0.3))
    c = client(peer.url, recorder, operation_timeout=1.0, total_timeout=1.0, retry=RetryPolicy(max_attempts=1))
    t0 = time.monotonic()
    with pytest.raises(PeerUnavailable, match="answer not complete within 1s"):
        c.get_receipt("BL2026-000001")
    assert time.monotonic() - t0 < 5.0
    assert [(e.outcome, e.response_status) for e in recorder.exchanges] == [("transport_error", None)]


def test_total_timeout_from_the_connection():
    spec = ConnectionSpec(conn_id="ministry_ledger_default", conn_type="http", host="127.0.0.1", port=18084,
                          login=USER, password=Secret(PASSWORD), extra={"operation_timeout": 4})
    assert ReceiptLedgerClient.from_connection(spec).transport.total_timeout == 24.0
    spec = ConnectionSpec(conn_id="ministry_ledger_default", conn_type="http", host="127.0.0.1", port=18084,
                          login=USER, password=Secret(PASSWORD), extra={"operation_timeout": 4, "total_timeout": 30})
    assert ReceiptLedgerClient.from_connection(spec).transport.total_timeout == 30.0


def test_the_ledger_treats_a_garbage_retry_after_as_absent_not_as_a_fatal_protocol_error(peers):
    """Same byte on the ledger's 503: the ValueError from retry_after_seconds() goes through zeep and
    ReceiptLedgerClient._call maps ValueError to a *fatal* ProtocolError ('does not follow the WSDL'):
    a maintenance page is no longer retried (nor retried by Airflow: NO_RETRY), and no exchange is
    recorded for the attempt."""
    peer = peers(lambda h, body: answer(h, 503, b"<html>maintenance</html>", "text/html",
                                        headers={"Retry-After": "\xb2"}))
    rec = MemoryRecorder()
    ledger = ReceiptLedgerClient(peer.url, "lienthong.h49", Secret("pw"), recorder=rec, operation_timeout=2.0,
                                 retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02))
    try:
        with pytest.raises(PeerUnavailable):  # was a fatal ProtocolError
            ledger.get_receipt("BL2026-000001")
        assert [e.response_status for e in rec.exchanges] == [503, 503]
    finally:
        ledger.close()


# -- answers retrying cannot change ---------------------------------------------------------------
@pytest.mark.parametrize("status", [401, 403])
def test_an_http_refusal_of_our_credentials_without_a_fault_is_authentication_failed(peers, recorder, status):
    """A gateway before the ledger refusing the log-in with a bare 401/403 (no SOAP fault) became a
    ProtocolError ('unreadable answer'), which sends whoever reads it to the ledger's WSDL instead of
    the connection's user and password."""
    peer = peers(lambda h, body: answer(h, status, b"<html>Unauthorized</html>", "text/html"))
    with pytest.raises(AuthenticationFailed, match=f"HTTP {status} without a SOAP fault") as info:
        client(peer.url, recorder, retry=RetryPolicy(max_attempts=3)).get_receipt("BL2026-000001")
    assert info.value.status == status
    assert len(peer.requests) == 1
    assert [(e.response_status, e.outcome) for e in recorder.exchanges] == [(status, "http_error")]
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize("status", [501, 505])
def test_a_5xx_saying_the_request_is_not_done_at_all_is_not_retried(peers, recorder, status):
    """501 Not Implemented / 505 HTTP Version Not Supported were retried like a 503 (three calls, then
    PeerUnavailable and the task's own retries): asking again cannot change them."""
    peer = peers(lambda h, body: answer(h, status, b"not here", "text/plain"))
    with pytest.raises(FatalConnectorError, match=f"HTTP {status}.*not retried") as info:
        client(peer.url, recorder, retry=RetryPolicy(max_attempts=3)).get_receipt("BL2026-000001")
    assert not isinstance(info.value, PeerUnavailable) and info.value.status == status
    assert len(peer.requests) == 1
    assert [(e.response_status, e.outcome) for e in recorder.exchanges] == [(status, "http_error")]


def test_a_submission_the_exchange_log_cannot_write_is_exchange_not_recorded_and_sent_once(ledger):
    """A recorder failing with a ValueError (a driver refusing a value: psycopg's NUL refusal) was
    caught as an answer that "does not follow the WSDL": a fatal ProtocolError blaming the ledger
    for the bus's own database. It is the retriable ExchangeNotRecorded, and the batch, which the
    ledger has stored, is not sent again within the call."""
    from connectors.errors import ExchangeNotRecorded

    class Refusing:
        attempts = 0

        def record(self, exchange):
            Refusing.attempts += 1
            raise ValueError("A string literal cannot contain NUL (0x00) characters.")

    c = client(ledger.url, Refusing())
    with pytest.raises(ExchangeNotRecorded) as failed:
        c.submit_receipts(THREE, record_keys=["batch-1"])
    assert (failed.value.peer, failed.value.operation, failed.value.status) == (PEER, "SubmitReceipts", 200)
    assert "ValueError: A string literal cannot contain NUL" in str(failed.value)
    assert [r["ReceiptNumber"] for r in held(ledger)] == ["BL2026-000001", "BL2026-000002", "BL2026-000003"]
    assert Refusing.attempts == 1  # one attempt: not asked again within the call
