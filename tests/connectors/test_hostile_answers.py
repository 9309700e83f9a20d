"""Hostile and malformed answers from every peer (issue #7), served by a tiny local server.

Each answer must end in one error class from ``connectors.errors`` that names the peer, the
operation and what was wrong; never a ``RecursionError``, ``UnicodeDecodeError``, ``KeyError`` or
a value silently replaced; never more than the transport's cap held in memory; always written to
the exchange log; and never a secret in the message. An answer that cannot be read at all (empty,
not text, not well-formed: what a gateway or a peer under load gives now and then) is an
``UnreadableAnswer``, retried like a 5xx; one that reads but cannot be trusted (NaN, too deep, too
large, a wrong shape) is a ``ProtocolError``, never retried (the same request gets the same answer).
"""

from __future__ import annotations

import json
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from connectors.connection import ConnectionSpec, Secret
from connectors.errors import AuthenticationFailed, ProtocolError, UnreadableAnswer, UnsafeXml
from connectors.ministry_ledger import ReceiptLedgerClient
from connectors.national_portal.client import NationalPortalClient
from connectors.one_stop.client import OneStopClient
from connectors.payment_platform.client import PaymentPlatformClient
from connectors.transport import MAX_RESPONSE_BYTES, MemoryRecorder, RetryPolicy
from mocks.ministry_ledger import LEDGER_NS

API_KEY = "hostile-onestop-key-K7"
PORTAL_PASSWORD = "hostile-portal-secret-P3"
SESSION = "hostile-session-token-S9"
PAYMENT_SECRET = "hostile-payment-secret-M1"
LEDGER_PASSWORD = "hostile-ledger-secret-L5"
SECRETS = (API_KEY, PORTAL_PASSWORD, SESSION, PAYMENT_SECRET, LEDGER_PASSWORD)
RETRY = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0)
JSON = "application/json; charset=utf-8"
TEN_MB = 10 * 1000 * 1000


# --- the hostile server ------------------------------------------------------------------------
class Answer:
    """What the server sends: a status, a content type and a body (bytes, or a generator of chunks
    sent without Content-Length and ended by closing the connection)."""

    def __init__(self, body: bytes | Callable[[], Iterator[bytes]], content_type: str = JSON, status: int = 200):
        self.body, self.content_type, self.status = body, content_type, status


class HostileServer:
    """Answers each path with its :class:`Answer` (``/auth`` logs in); counts the hits per path."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def _any(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?", 1)[0]
                outer.hits[path] = outer.hits.get(path, 0) + 1
                answer = outer.answers.get(path) or outer.answers["*"]
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                try:
                    if callable(answer.body):
                        self.end_headers()
                        for chunk in answer.body():
                            self.wfile.write(chunk)
                    else:
                        self.send_header("Content-Length", str(len(answer.body)))
                        self.end_headers()
                        self.wfile.write(answer.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client refused to read on: what it must do with a huge answer

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.answers["/auth"] = Answer(json.dumps({"error_code": 0, "message": "ok", "session": SESSION}).encode())
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[HostileServer]:
    s = HostileServer()
    yield s
    s.close()


# --- hostile bodies ---------------------------------------------------------------------------
def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def streamed(total: int) -> Callable[[], Iterator[bytes]]:
    """``total`` bytes of a JSON string, sent in 1 MB chunks without a Content-Length."""
    def chunks() -> Iterator[bytes]:
        yield b'{"error_code": 0, "message": "'
        sent = 0
        while sent < total:
            yield b"A" * 1_000_000
            sent += 1_000_000
        yield b'"}'
    return chunks


BAD_JSON = {
    # case: (body, content type, error class, what the message says)
    "not-json": (b"<html><body>502 Bad Gateway</body></html>", "text/html", UnreadableAnswer,
                 "answer is not JSON (Expecting value at line 1 column 1)"),
    "truncated": (b'{"error_code": 0, "message": "Th', JSON, UnreadableAnswer, "answer is not JSON (Unterminated string"),
    "empty": (b"", JSON, UnreadableAnswer, "answer is empty, not JSON"),
    "invalid-utf8": ('{"error_code": 0, "message": "Nguy'.encode() + b"\xe1\xbb" + b'n"}', JSON, UnreadableAnswer,
                     "answer is not valid utf-8 text (byte 0xe1 at offset 34)"),
    "latin1-declared-utf8": ('{"message": "Lê Văn"}'.encode("cp1258", "replace"), JSON, UnreadableAnswer,
                             "answer is not valid utf-8 text"),
    "nan": (b'{"error_code": NaN, "items": []}', JSON, ProtocolError, "answer is not JSON (NaN is not a JSON value)"),
    "deep-10000": (deep(10_000), JSON, ProtocolError, "answer nests JSON deeper than 64 levels"),
    "deep-100": (deep(100), JSON, ProtocolError, "answer nests JSON deeper than 64 levels"),
    "ten-mb": (b'{"error_code": 0, "message": "' + b"A" * TEN_MB + b'"}', JSON, ProtocolError,
               f"answer larger than {MAX_RESPONSE_BYTES} bytes (HTTP 200); refused unread"),
}
#: How many times a retried call is sent (RETRY) and how many times one that is never retried is.
SENT = {UnreadableAnswer: RETRY.max_attempts, ProtocolError: 1}


def check(exc: BaseException, peer: str, operation: str, expected: str, recorder: MemoryRecorder,
          error: type[Exception] = ProtocolError) -> None:
    """The error names peer and operation, says what was wrong, hides secrets; the attempt is logged."""
    assert type(exc) is error, repr(exc)
    assert (exc.peer, exc.operation) == (peer, operation)
    assert str(exc).startswith(f"{peer} {operation}")
    assert expected in str(exc)
    assert not any(secret in str(exc) for secret in SECRETS)
    assert len(str(exc)) < 300
    last = recorder.exchanges[-1]
    assert (last.peer, last.operation) == (peer, operation)
    assert len(last.response_body) <= 16 * 1024 * 1024


# --- the one-stop system --------------------------------------------------------------------------
def onestop(server: HostileServer, recorder: MemoryRecorder) -> OneStopClient:
    return OneStopClient(server.url, Secret(API_KEY), recorder=recorder, retry=RETRY)


@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_onestop_unreadable_answer_is_retried_and_an_untrusted_one_is_not(server, case):
    body, content_type, error, expected = BAD_JSON[case]
    server.answers["*"] = Answer(body, content_type)
    recorder = MemoryRecorder()
    with pytest.raises((UnreadableAnswer, ProtocolError)) as info:
        onestop(server, recorder).changes()
    check(info.value, "onestop", "changes", expected, recorder, error)
    assert server.hits == {"/api/v1/dossiers/changes": SENT[error]}
    assert [e.outcome for e in recorder.exchanges] == ["protocol_error"] * SENT[error]
    assert [e.error.split(":")[0] for e in recorder.exchanges] == [error.__name__] * SENT[error]


def test_an_answer_unreadable_once_is_read_on_the_next_attempt(server):
    """A gateway's error page between two good answers costs one attempt, not the run; each
    attempt is in the exchange log with what it met."""
    good = json.dumps({"items": [], "nextCursor": "c0", "hasMore": False}).encode()
    pages = iter([Answer(b"<html><body>502 Bad Gateway</body></html>", "text/html"), Answer(good)])
    served: list[Answer] = []

    class Once(dict):
        def get(self, key, default=None):
            if key == "/api/v1/dossiers/changes":
                served.append(next(pages, served[-1] if served else None))
                return served[-1]
            return super().get(key, default)

    server.answers = Once(server.answers)
    recorder = MemoryRecorder()
    page = onestop(server, recorder).changes()
    assert (page.events, page.next_cursor, page.has_more) == ([], "c0", False)
    assert [(e.attempt, e.outcome) for e in recorder.exchanges] == [(1, "protocol_error"), (2, "ok")]
    assert recorder.exchanges[0].error.startswith("UnreadableAnswer: onestop changes: answer is not JSON")


CHANGE_SHAPES = {
    "array": ([], "answer is a array, not an object"),
    "items-missing": ({"nextCursor": "c", "hasMore": False}, "items is missing"),
    "items-string": ({"items": "[]", "nextCursor": "c", "hasMore": False}, "items is a string, not an array"),
    "cursor-number": ({"items": [], "nextCursor": 7, "hasMore": False}, "nextCursor is a int, not a string"),
    "hasmore-string": ({"items": [], "nextCursor": "c", "hasMore": "false"}, "hasMore is a string, not a boolean"),
    "item-string": ({"items": ["x"], "nextCursor": "c", "hasMore": False}, "items[0] is a string, not an object"),
    "seq-string": ({"items": [{"seq": "1", "changedAt": "t", "dossier": {}}], "nextCursor": "c", "hasMore": False},
                   "items[0].seq is a string, not an integer"),
    "seq-float": ({"items": [{"seq": 1.5, "changedAt": "t", "dossier": {}}], "nextCursor": "c", "hasMore": False},
                  "items[0].seq is a float, not an integer"),
    "seq-bool": ({"items": [{"seq": True, "changedAt": "t", "dossier": {}}], "nextCursor": "c", "hasMore": False},
                 "items[0].seq is a boolean, not an integer"),
    "dossier-list": ({"items": [{"seq": 1, "changedAt": "t", "dossier": [["dossierNo", "x"]]}], "nextCursor": "c",
                      "hasMore": False}, "items[0].dossier is a array, not an object"),
    "dossier-missing": ({"items": [{"seq": 1, "changedAt": "t"}], "nextCursor": "c", "hasMore": False},
                        "items[0].dossier is missing"),
}


@pytest.mark.parametrize("case", sorted(CHANGE_SHAPES))
def test_onestop_change_feed_with_wrong_types_or_missing_fields(server, case):
    body, expected = CHANGE_SHAPES[case]
    server.answers["*"] = Answer(json.dumps(body).encode())
    recorder = MemoryRecorder()
    with pytest.raises(ProtocolError) as info:
        onestop(server, recorder).changes()
    check(info.value, "onestop", "changes", f"unexpected answer shape ({expected})", recorder)


def test_onestop_change_feed_with_extra_fields_is_read(server):
    """Unknown fields are the peer's business (a newer API version): read, and kept in the dossier."""
    body = {"items": [{"seq": 1, "changedAt": "2026-11-02T08:00:00+07:00", "dossier": {"dossierNo": "X", "new": 1},
                       "extra": True}], "nextCursor": "c1", "hasMore": False, "apiVersion": "2"}
    server.answers["*"] = Answer(json.dumps(body).encode())
    page = onestop(server, MemoryRecorder()).changes()
    assert [(e.seq, e.dossier) for e in page.events] == [(1, {"dossierNo": "X", "new": 1})]


@pytest.mark.parametrize("body, expected", [
    ({"items": [{"dossierNo": "A"}, 3], "page": 1, "size": 2, "total": 2}, "items[1] is a int, not an object"),
    ({"items": [], "page": 1, "size": 2}, "total is missing"),
    ({"items": [], "page": 1, "size": 2, "total": "2"}, "total is a string, not an integer"),
    ({"items": [], "total": -1}, "total is -1, not a count"),
])
def test_onestop_dossier_pages_with_wrong_types(server, body, expected):
    server.answers["*"] = Answer(json.dumps(body).encode())
    recorder = MemoryRecorder()
    with pytest.raises(ProtocolError) as info:
        list(onestop(server, recorder).iter_dossiers())
    check(info.value, "onestop", "dossiers", f"unexpected answer shape ({expected})", recorder)


def test_onestop_single_dossier_must_be_an_object(server):
    server.answers["*"] = Answer(b'["000.00.01.H49-261102-0001"]')
    recorder = MemoryRecorder()
    with pytest.raises(ProtocolError) as info:
        onestop(server, recorder).get_dossier("000.00.01.H49-261102-0001")
    check(info.value, "onestop", "dossier", "answer is a array, not an object", recorder)


def test_an_endless_answer_without_length_is_cut_at_the_cap(server):
    """64 MB streamed without Content-Length: reading stops at the cap; memory stays bounded."""
    server.answers["*"] = Answer(streamed(64_000_000))
    recorder = MemoryRecorder()
    client = onestop(server, recorder)
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as info:
            client.changes()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    check(info.value, "onestop", "changes", f"answer larger than {MAX_RESPONSE_BYTES} bytes", recorder)
    assert peak < 3 * MAX_RESPONSE_BYTES  # never the 64 MB
    assert len(recorder.exchanges[-1].response_body) == 4096  # the log keeps a prefix, not the body


# --- the national portal -------------------------------------------------------------------------
def portal(server: HostileServer, recorder: MemoryRecorder) -> NationalPortalClient:
    return NationalPortalClient(server.url, "lienthong.h49", Secret(PORTAL_PASSWORD), "000.00.01.H49",
                                recorder=recorder, retry=RETRY)


RECORD = {"MaHoSo": "000.00.01.H49-261102-0001", "TrangThaiHoSo": "2"}


@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_portal_unreadable_answer_is_retried_and_an_untrusted_one_is_not(server, case):
    body, content_type, error, expected = BAD_JSON[case]
    server.answers["*"] = Answer(body, content_type)
    recorder = MemoryRecorder()
    with pytest.raises((UnreadableAnswer, ProtocolError)) as info:
        portal(server, recorder).sync_dossiers([RECORD], is_updating=False)
    check(info.value, "national_portal", "DongBoHoSoMC", expected, recorder, error)
    assert server.hits == {"/auth": 1, "/integration": SENT[error]}
    assert [e.outcome for e in recorder.exchanges[1:]] == ["protocol_error"] * SENT[error]
    # the log-in answer's session never reaches the exchange log, even beside a broken answer
    assert not any(SESSION.encode() in e.request_body + e.response_body for e in recorder.exchanges)


GATEWAY_404 = b"<html><head><title>404 Not Found</title></head><body>nginx</body></html>"


def test_portal_4xx_error_page_is_the_refusal_of_a_misconfigured_call_not_an_unreadable_answer(server):
    """Only a success's body can arrive garbled: a 4xx page (a wrong endpoint path, a body too
    large for a gateway) is what the same call gets again, so it fails the task at once."""
    server.answers["/integration"] = Answer(GATEWAY_404, "text/html", status=404)
    recorder = MemoryRecorder()
    with pytest.raises((UnreadableAnswer, ProtocolError)) as info:
        portal(server, recorder).lookup_dossier(RECORD["MaHoSo"])
    check(info.value, "national_portal", "TraCuuHoSo", "answer is not JSON", recorder, ProtocolError)
    assert str(info.value).endswith("(HTTP 404)")
    assert server.hits == {"/auth": 1, "/integration": 1}


@pytest.mark.parametrize("status", [300, 304])
def test_onestop_unfollowed_3xx_is_not_asked_again(server, status):
    """A 3xx is refused by the transport, whatever its body: redirects are never followed."""
    server.answers["*"] = Answer(b"", "text/html", status=status)
    recorder = MemoryRecorder()
    with pytest.raises((UnreadableAnswer, ProtocolError)) as info:
        onestop(server, recorder).changes()
    check(info.value, "onestop", "changes", f"HTTP {status} redirect without a Location refused", recorder,
          ProtocolError)
    assert server.hits == {"/api/v1/dossiers/changes": 1}


def test_portal_progress_unreadable_answer_is_not_repeated(server):
    """Appending progress is not idempotent: an unreadable answer leaves it unknown whether the
    portal applied it, so the transport never repeats it (the flow asks the portal instead); the
    error is still an UnreadableAnswer, which Airflow retries."""
    server.answers["*"] = Answer(b'{"error_code": 0, "mess', JSON)
    recorder = MemoryRecorder()
    with pytest.raises(UnreadableAnswer) as info:
        portal(server, recorder).update_progress([{"MaHoSo": RECORD["MaHoSo"]}])
    check(info.value, "national_portal", "CapNhatTienDoHoSoMC", "answer is not JSON", recorder, UnreadableAnswer)
    assert server.hits == {"/auth": 1, "/integration": 1}


@pytest.mark.parametrize("body, expected", [
    ({"message": "Thành công"}, "answer has no error_code"),
    ({"error_code": "không", "message": "x"}, "error_code 'không' is not a number"),
    ({"error_code": [0], "message": "x"}, "error_code [0] is not a number"),
    ({"error_code": 0, "message": ["Thành công"]}, "message is a list, not text"),
    ([{"error_code": 0}], "answer has no error_code"),
])
def test_portal_answer_with_wrong_types_or_missing_fields(server, body, expected):
    server.answers["*"] = Answer(json.dumps(body, ensure_ascii=False).encode())
    recorder = MemoryRecorder()
    with pytest.raises(ProtocolError) as info:
        portal(server, recorder).sync_dossiers([RECORD], is_updating=False)
    check(info.value, "national_portal", "DongBoHoSoMC", expected, recorder)


def test_portal_lookup_with_a_result_that_is_not_rows(server):
    server.answers["*"] = Answer(json.dumps({"error_code": 0, "message": "x", "result": ["MaHoSo"]}).encode())
    recorder = MemoryRecorder()
    with pytest.raises(ProtocolError) as info:
        portal(server, recorder).lookup_dossier(RECORD["MaHoSo"])
    check(info.value, "national_portal", "TraCuuHoSo", f"TraCuuHoSo {RECORD['MaHoSo']}: result is not a list "
                                                         "of objects", recorder)


def test_portal_login_with_a_session_that_is_not_a_token(server):
    """A session of the wrong type is refused without showing it (it would be a token if it were one)."""
    server.answers["/auth"] = Answer(json.dumps({"error_code": 0, "message": "ok",
                                                 "session": {"token": SESSION}}).encode())
    recorder = MemoryRecorder()
    with pytest.raises(ProtocolError) as info:
        portal(server, recorder).sync_dossiers([RECORD], is_updating=False)
    check(info.value, "national_portal", "login", "the answer's session is a dict, not a token", recorder)


def test_portal_login_answer_that_is_too_deep_keeps_password_and_session_out_of_the_log(server):
    """A body the redactor cannot walk is still redacted key by key before it is logged."""
    body = b"[" * 5000 + json.dumps({"session": SESSION, "password": PORTAL_PASSWORD}).encode() + b"]" * 5000
    server.answers["/auth"] = Answer(body)
    recorder = MemoryRecorder()
    with pytest.raises(ProtocolError) as info:
        portal(server, recorder).sync_dossiers([RECORD], is_updating=False)
    check(info.value, "national_portal", "login", "answer nests JSON deeper than 64 levels", recorder)
    logged = recorder.exchanges[-1]
    assert SESSION.encode() not in logged.response_body and PORTAL_PASSWORD.encode() not in logged.request_body
    assert b'"session":"***"' in logged.response_body.replace(b" ", b"")


# --- the payment platform -------------------------------------------------------------------------
def payments(server: HostileServer, recorder: MemoryRecorder) -> PaymentPlatformClient:
    return PaymentPlatformClient(server.url, "DVC_H49", Secret(PAYMENT_SECRET), recorder=recorder, retry=RETRY)


@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_payment_platform_unreadable_answer_is_retried_and_an_untrusted_one_is_not(server, case):
    body, content_type, error, expected = BAD_JSON[case]
    server.answers["*"] = Answer(body, content_type)
    recorder = MemoryRecorder()
    with pytest.raises((UnreadableAnswer, ProtocolError)) as info:
        payments(server, recorder).query("DVC49REF0001")
    check(info.value, "payment_platform", "QUERY", expected, recorder, error)
    assert server.hits == {"/api/payment": SENT[error]}


@pytest.mark.parametrize("status", [404, 408, 413])
def test_payment_platform_error_page_labelled_pdf_is_never_the_receipt(server, status):
    """A gateway's 4xx page that keeps the receipt's Content-Type is refused (it was kept as the
    receipt, without a number, for a moment in 960e30f: found in review)."""
    server.answers["*"] = Answer(GATEWAY_404, "application/pdf", status=status)
    recorder = MemoryRecorder()
    with pytest.raises((UnreadableAnswer, ProtocolError)) as info:
        payments(server, recorder).get_bill("DVC49REF0001", transaction_time=datetime.fromisoformat(
            "2026-11-02T08:00:00+07:00"))
    check(info.value, "payment_platform", "GET_BILL", f"HTTP {status} with a PDF body; not kept as the receipt",
          recorder, ProtocolError)
    assert server.hits == {"/api/payment": 1}


@pytest.mark.parametrize("body, expected", [
    ([{"MaLoi": "00"}], "answer has no MaLoi"),
    ({"LoaiBanTin": "QUERY"}, "answer has no MaLoi"),
])
def test_payment_platform_answer_without_its_fields(server, body, expected):
    server.answers["*"] = Answer(json.dumps(body).encode())
    recorder = MemoryRecorder()
    with pytest.raises(ProtocolError) as info:
        payments(server, recorder).query("DVC49REF0001")
    check(info.value, "payment_platform", "QUERY", expected, recorder)


def test_payment_platform_unsigned_answer_is_never_trusted(server):
    """A well-formed success with a MaXacThuc of the wrong type is a checksum mismatch, not a success."""
    from connectors.errors import ChecksumMismatch

    server.answers["*"] = Answer(json.dumps({"MaLoi": "00", "MaThamChieu": "DVC49REF0001", "TrangThaiGD": "1",
                                             "MaXacThuc": ["00"]}).encode())
    with pytest.raises(ChecksumMismatch) as info:
        payments(server, MemoryRecorder()).query("DVC49REF0001")
    assert (info.value.peer, info.value.operation) == ("payment_platform", "QUERY")


# --- the ministry ledger (SOAP) -------------------------------------------------------------------
ENVELOPE = ('<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:l="' + LEDGER_NS + '">'
            "<soap:Body><l:GetReceiptResponse><l:Receipt{attr}><l:ReceiptNumber>BL2026-000001</l:ReceiptNumber>"
            "<l:DossierCode>000.00.01.H49-261102-0001</l:DossierCode><l:PaymentReference>r</l:PaymentReference>"
            "<l:AmountVND>{amount}</l:AmountVND><l:PaidAt>2026-11-02T08:30:00+07:00</l:PaidAt>"
            "<l:PayerName>{payer}</l:PayerName><l:AgencyCode>000.00.01.H49</l:AgencyCode>"
            "<l:PdfSha256>" + "ab" * 32 + "</l:PdfSha256></l:Receipt></l:GetReceiptResponse></soap:Body>"
            "</soap:Envelope>")
XML = "text/xml; charset=utf-8"


def soap(attr: str = "", amount: str = "150000", payer: str = "Lê Văn An") -> bytes:
    return ENVELOPE.format(attr=attr, amount=amount, payer=payer).encode()


def ledger(server: HostileServer, recorder: MemoryRecorder) -> ReceiptLedgerClient:
    return ReceiptLedgerClient(server.url, "lienthong.h49", Secret(LEDGER_PASSWORD), recorder=recorder,
                               retry=RETRY, operation_timeout=5.0)


LEDGER_CASES = {
    # case: (body, error class, what the message says)
    "well-formed": (soap(), None, ""),
    "attribute-100kB": (soap(attr=' note="' + "A" * 100_000 + '"'), UnsafeXml,
                        "the answer carries an attribute value longer than 4096 characters; refused unread"),
    "attribute-9MB": (soap(attr=" note='" + "A" * 9_000_000 + "'"), ProtocolError,
                      f"answer larger than {MAX_RESPONSE_BYTES} bytes (HTTP 200); refused unread"),
    "ten-mb-text": (soap(payer="A" * TEN_MB), ProtocolError, f"answer larger than {MAX_RESPONSE_BYTES} bytes"),
    "malformed": (soap()[:-20], UnreadableAnswer, "unreadable answer: not well-formed XML (line 1, column "),
    "invalid-utf8": (soap(payer="Lê Văn An").replace("Lê".encode(), b"L\xc3"), UnreadableAnswer,
                     "unreadable answer: not well-formed XML (line 1, column "),
    "deep": (soap(payer="<b>" * 5000 + "</b>" * 5000), ProtocolError,
             "the answer is past the XML parser's limits (line 1, column "),
    "deep-300": (soap(payer="<b>" * 300 + "</b>" * 300), ProtocolError,
                 "the answer is past the XML parser's limits (line 1, column "),
    "html": (b"<html><body>oops</body></html>", UnreadableAnswer,
             "unreadable answer: not a SOAP envelope (its root is <html>) (HTTP 200)"),
    "amount-wrong-type": (soap(amount="many"), ProtocolError,
                          "GetReceipt BL2026-000001: the answer's AmountVND is missing or not of its XSD type"),
}


@pytest.mark.parametrize("case", sorted(LEDGER_CASES))
def test_ledger_hostile_or_malformed_answer(server, case):
    body, error, expected = LEDGER_CASES[case]
    server.answers["*"] = Answer(body, XML)
    recorder = MemoryRecorder()
    client = ledger(server, recorder)
    if error is None:
        assert client.get_receipt("BL2026-000001")["PayerName"] == "Lê Văn An"
        return
    with pytest.raises((UnreadableAnswer, ProtocolError)) as info:
        client.get_receipt("BL2026-000001")
    exc = info.value
    assert type(exc) is error, repr(exc)
    assert (exc.peer, exc.operation) == ("ministry_ledger", "GetReceipt")
    assert str(exc).startswith("ministry_ledger GetReceipt") and expected in str(exc)
    assert LEDGER_PASSWORD not in str(exc)
    assert server.hits == {"/": SENT.get(error, 1)}  # only an unreadable answer is asked again
    if error is UnreadableAnswer:
        assert [e.outcome for e in recorder.exchanges] == ["protocol_error"] * RETRY.max_attempts
    logged = recorder.exchanges[-1]
    assert len(logged.response_body) <= 1_000_000 and LEDGER_PASSWORD.encode() not in logged.request_body


def test_authentication_failures_are_not_protocol_errors(server):
    """The portal's refusal of our credentials stays AuthenticationFailed (a person must act)."""
    server.answers["/auth"] = Answer(json.dumps({"error_code": 1, "message": "Sai mật khẩu"},
                                                ensure_ascii=False).encode())
    with pytest.raises(AuthenticationFailed) as info:
        portal(server, MemoryRecorder()).login()
    assert PORTAL_PASSWORD not in str(info.value)


# --- every client call, every odd shape ---------------------------------------------------------
ODD_BODIES = [None, [], {}, "x", 1, True, {"error_code": 0, "result": None}, {"error_code": 0, "result": "x"},
              {"error_code": 0, "result": [1]}, {"error_code": 0, "result": {"data": "x"}},
              {"error_code": 0, "result": {"data": [1, {"a": 1}]}},
              {"error_code": 1, "result": [{"MaHoSo": {}, "index": "0", "error_code": None}]},
              {"error_code": 1, "result": [{"MaHoSo": RECORD["MaHoSo"], "index": 99, "error_code": [1], "field": {}}]},
              {"items": None, "total": 1}, {"items": [{}], "total": "x"}, {"applied": "yes", "payment": {}},
              {"MaLoi": "00"}, {"MaLoi": None}, {"MaLoi": "99", "MoTaLoi": {"x": 1}}, {"MaLoi": "00", "MaXacThuc": 5},
              {"error": {"x": 1}, "message": [1], "field": None}]
CALLS = {
    "onestop.changes": lambda s, r: onestop(s, r).changes(),
    "onestop.dossiers": lambda s, r: list(onestop(s, r).iter_dossiers()),
    "onestop.dossier": lambda s, r: onestop(s, r).get_dossier("X"),
    "onestop.upsert_procedure": lambda s, r: onestop(s, r).upsert_procedure({"serviceCode": "1"}),
    "onestop.withdraw_procedure": lambda s, r: onestop(s, r).withdraw_procedure("1"),
    "onestop.payments": lambda s, r: list(onestop(s, r).iter_payments()),
    "onestop.fees": lambda s, r: onestop(s, r).get_fees("X"),
    "onestop.payment_result": lambda s, r: onestop(s, r).record_payment_result(
        "R", result="paid", transaction_id="T", amount=1, paid_at="2026-11-02T08:00:00+07:00", bank="B"),
    "portal.sync_dossiers": lambda s, r: portal(s, r).sync_dossiers([RECORD], is_updating=False),
    "portal.update_progress": lambda s, r: portal(s, r).update_progress([RECORD]),
    "portal.lookup_dossier": lambda s, r: portal(s, r).lookup_dossier("X"),
    "portal.list_procedures": lambda s, r: portal(s, r).list_procedures(),
    "portal.get_procedure": lambda s, r: portal(s, r).get_procedure("X"),
    "portal.list_services": lambda s, r: portal(s, r).list_services(),
    "payment.query": lambda s, r: payments(s, r).query("R"),
    "payment.get_bill": lambda s, r: payments(s, r).get_bill(
        "R", transaction_time=datetime.fromisoformat("2026-11-02T08:00:00+07:00")),
    "payment.init": lambda s, r: payments(s, r).init(reference="R", amount=1, info="i"),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_no_error_outside_the_error_tree_escapes_whatever_the_answer(server, call):
    """Each odd JSON shape under each status a connector reads (200, 404, 409, 422): an answer, or
    an error of ``connectors.errors``; never a KeyError, TypeError, AttributeError..."""
    from connectors.errors import IntegrationError

    escaped = []
    for body in ODD_BODIES:
        for status in (200, 404, 409, 422):
            server.answers["*"] = Answer(json.dumps(body).encode(), status=status)
            try:
                CALLS[call](server, MemoryRecorder())
            except IntegrationError as exc:
                assert not any(secret in str(exc) for secret in SECRETS)
            except Exception as exc:  # noqa: BLE001 - what this test looks for
                escaped.append((json.dumps(body), status, f"{type(exc).__name__}: {exc}"))
    assert escaped == []


# --- what we would send: values XML cannot carry ----------------------------------------------------
def test_a_receipt_with_a_character_xml_cannot_carry_is_rejected_before_sending(tmp_path):
    """A NUL (or another C0 control) in a payer name would make lxml refuse the whole envelope, which
    looked like an unreadable answer and stopped the run: it is the record's fault, named as such."""

    from connectors.errors import RecordRejected
    from mocks.ministry_ledger import MinistryLedgerMock

    ledger_mock = MinistryLedgerMock(tmp_path / "ledger", port=0, username="lienthong.h49",
                                     password=LEDGER_PASSWORD).start()
    recorder = MemoryRecorder()
    client = ReceiptLedgerClient(ledger_mock.url, "lienthong.h49", Secret(LEDGER_PASSWORD), recorder=recorder,
                                 retry=RETRY, operation_timeout=5.0)
    good = {"ReceiptNumber": "BL2026-000001", "DossierCode": "000.00.01.H49-261102-0001",
            "PaymentReference": "dvc0000001H49261102000120261102081500", "AmountVND": 200000,
            "PaidAt": datetime.fromisoformat("2026-11-02T08:30:00+07:00"), "PayerName": "Lê Văn An",
            "AgencyCode": "000.00.01.H49", "PdfSha256": "ab" * 32}
    try:
        with pytest.raises(RecordRejected) as info:
            client.submit_receipts([good, {**good, "ReceiptNumber": "BL2026-000002", "PayerName": "Lê\x00Văn\x1bAn"}])
        assert type(info.value) is RecordRejected and info.value.record_key == "BL2026-000002"
        assert info.value.error_dicts() == [{"field": "PayerName", "rule": "xml_character",
                                             "message": "holds U+0000 at position 2, which XML cannot carry"}]
        assert recorder.exchanges == []  # nothing was sent
        sql = {**good, "PayerName": "x'; DROP TABLE receipts;-- 100% \\ \"q\""}
        assert client.submit_receipts([sql]).accepted == 1
        assert client.get_receipt("BL2026-000001")["PayerName"] == sql["PayerName"]  # verbatim, never SQL
    finally:
        client.close()
        ledger_mock.stop()


# --- the answer-size cap as a connection extra -----------------------------------------------------
def _spec(server: HostileServer, conn_id: str, login: str, password: str, **extra) -> ConnectionSpec:
    host, port = server.url.removeprefix("http://").split(":")
    return ConnectionSpec(conn_id=conn_id, conn_type="http", host=host, port=int(port), schema="http", login=login,
                          password=Secret(password), extra={"max_attempts": 1, **extra})


CAPPED = {
    # client: (build from a connection with extra.max_response_bytes, call, peer, operation, body, type)
    "onestop": (lambda s, r, **x: OneStopClient.from_connection(_spec(s, "onestop_default", "", API_KEY, **x),
                                                                recorder=r),
                lambda c: c.changes(), "onestop", "changes", None, JSON),
    "portal": (lambda s, r, **x: NationalPortalClient.from_connection(
                   _spec(s, "national_portal_default", "lienthong.h49", PORTAL_PASSWORD,
                         madonvi="000.00.01.H49", **x), recorder=r),
               lambda c: c.lookup_dossier("000.00.01.H49-261120-0001"), "national_portal", "TraCuuHoSo", None, JSON),
    "payments": (lambda s, r, **x: PaymentPlatformClient.from_connection(
                     _spec(s, "payment_platform_default", "DVC_H49", PAYMENT_SECRET, **x), recorder=r),
                 lambda c: c.query("DVC-H49-000001"), "payment_platform", None, None, JSON),
    "ledger": (lambda s, r, **x: ReceiptLedgerClient.from_connection(
                   _spec(s, "ministry_ledger_default", "lienthong.h49", LEDGER_PASSWORD, **x), recorder=r),
               lambda c: c.get_receipt("BL2026-000001"), "ministry_ledger", "GetReceipt", soap(payer="A" * 6000), XML),
}


@pytest.mark.parametrize("client", sorted(CAPPED))
def test_the_answer_cap_is_a_connection_extra_for_every_peer(server, client):
    """``extra.max_response_bytes`` of a connection caps what its client reads: an answer over it
    is a ProtocolError naming the cap, refused unread, whatever the peer."""
    build, call, peer, operation, body, content_type = CAPPED[client]
    server.answers["*"] = Answer(body or (b'{"error_code": 0, "message": "' + b"A" * 6000 + b'"}'), content_type)
    server.answers["/auth"] = Answer(json.dumps({"session": SESSION, "error_code": 0}).encode())
    recorder = MemoryRecorder()
    capped = build(server, recorder, max_response_bytes=4096)
    with pytest.raises(ProtocolError) as info:
        call(capped)
    assert info.value.peer == peer and (operation is None or info.value.operation == operation)
    assert "answer larger than 4096 bytes" in str(info.value)
    assert not any(secret in str(info.value) for secret in SECRETS)
