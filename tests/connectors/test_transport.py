"""The transport against a real local HTTP server: timeouts, retries, redaction, recording."""

import gzip
import json
import threading
import time
import zlib
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from connectors.errors import (
    ConfigurationError,
    FatalConnectorError,
    PeerUnavailable,
    ProtocolError,
    RetriableConnectorError,
    UnreadableAnswer,
)
from connectors.transport import MAX_RESPONSE_BYTES, HttpTransport, MemoryRecorder, RetryPolicy, transport_options
from tests.connectors.local_peer import JSON, answer, trickle


class ScriptedServer:
    """Answers each request with the next scripted (status, body, delay) step."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                outer.requests.append((self.command, self.path, self.rfile.read(length), dict(self.headers)))
                status, body, delay = outer.script.pop(0) if outer.script else (200, {"ok": True}, 0)
                if delay:
                    time.sleep(delay)
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server_factory():
    servers = []

    def make(script):
        s = ScriptedServer(script)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def transport(url, recorder, **kw):
    return HttpTransport(peer="peer", base_url=url, recorder=recorder, seed=1, sleep=lambda s: None, **kw)


def test_retries_5xx_then_succeeds_recording_every_attempt(server_factory):
    server = server_factory([(503, {"e": 1}, 0), (502, {"e": 2}, 0), (200, {"ok": 1}, 0)])
    rec = MemoryRecorder()
    response = transport(server.url, rec, retry=RetryPolicy(max_attempts=3)).send(
        "POST", "/x", operation="op", json_body={"a": 1}, record_keys=["K1", "K2"])
    assert response.json() == {"ok": 1}
    assert [(e.attempt, e.response_status, e.outcome) for e in rec.exchanges] == [
        (1, 503, "http_error"), (2, 502, "http_error"), (3, 200, "ok")]
    assert all(e.record_keys == ("K1", "K2") for e in rec.exchanges)
    assert len(server.requests) == 3


def test_4xx_is_returned_not_retried(server_factory):
    server = server_factory([(400, {"bad": True}, 0)])
    rec = MemoryRecorder()
    response = transport(server.url, rec).send("GET", "/x", operation="op")
    assert response.status_code == 400
    assert len(server.requests) == 1
    assert rec.exchanges[0].outcome == "http_error"


def test_gives_up_after_max_attempts_with_a_retriable_error(server_factory):
    server = server_factory([(500, {}, 0)] * 5)
    rec = MemoryRecorder()
    with pytest.raises(PeerUnavailable) as info:
        transport(server.url, rec, retry=RetryPolicy(max_attempts=2)).send("GET", "/x", operation="op")
    assert info.value.status == 500
    assert len(server.requests) == 2 and len(rec.exchanges) == 2


def test_read_timeout_is_explicit_and_retriable(server_factory):
    server = server_factory([(200, {}, 1.0)])
    rec = MemoryRecorder()
    with pytest.raises(PeerUnavailable, match="no answer within 0.2s"):
        transport(server.url, rec, read_timeout=0.2, retry=RetryPolicy(max_attempts=1)).send(
            "GET", "/x", operation="op")
    assert rec.exchanges[0].outcome == "transport_error"
    assert rec.exchanges[0].response_status is None


def test_connection_refused_is_retriable():
    rec = MemoryRecorder()
    with pytest.raises(PeerUnavailable, match="connection failed"):
        transport("http://127.0.0.1:9", rec, retry=RetryPolicy(max_attempts=2)).send("GET", "/x", operation="op")
    assert [e.attempt for e in rec.exchanges] == [1, 2]


def test_secrets_are_redacted_in_bodies_and_headers(server_factory):
    server = server_factory([(200, {"session": "tok-SECRET", "error_code": 0}, 0)])
    rec = MemoryRecorder()
    t = transport(server.url, rec, redact_keys=("password", "session"), redact_headers=("X-Api-Key",),
                  default_headers={"X-Api-Key": "key-SECRET"})
    t.send("POST", "/auth", operation="login", json_body={"username": "u", "password": "pw-SECRET"})
    # the peer received the real values
    method, path, body, headers = server.requests[0]
    assert json.loads(body)["password"] == "pw-SECRET" and headers["X-Api-Key"] == "key-SECRET"
    # the log did not
    e = rec.exchanges[0]
    logged = e.request_body + e.response_body + json.dumps(e.request_headers).encode()
    assert b"SECRET" not in logged
    assert json.loads(e.request_body) == {"username": "u", "password": "***"}
    assert json.loads(e.response_body) == {"session": "***", "error_code": 0}
    assert e.request_headers["X-Api-Key"] == "***"


def test_environment_proxy_and_ca_bundle_are_read_once_for_the_peer(monkeypatch, tmp_path):
    """The proxy and CA bundle requests would take from the environment are taken once, when the
    transport is made (requests would rescan os.environ on every call); NO_PROXY still applies."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.tinh.gov.vn:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    bundle = tmp_path / "tinh-ca.pem"
    bundle.write_text("")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    far = HttpTransport(peer="portal", base_url="https://dichvucong.gov.vn")
    near = HttpTransport(peer="onestop", base_url="http://127.0.0.1:8081")
    assert far.session.proxies["https"] == "http://proxy.tinh.gov.vn:3128"
    assert "https" not in near.session.proxies and "http" not in near.session.proxies
    assert far.session.verify == str(bundle)
    assert far.session.trust_env is False and near.session.trust_env is False
    # what requests itself would have chosen for a call to each peer
    reference = requests.Session()
    assert reference.merge_environment_settings("https://dichvucong.gov.vn/x", {}, None, None, None)["proxies"][
        "https"] == far.session.proxies["https"]
    monkeypatch.setenv("HTTPS_PROXY", "http://changed:1")  # read once: a later change is not picked up per call
    assert far.session.merge_environment_settings("https://dichvucong.gov.vn/x", {}, None, None, None)[
        "proxies"]["https"] == "http://proxy.tinh.gov.vn:3128"


# --- transport extras of a connection -------------------------------------------------------------
def test_transport_extras_default_to_what_every_client_used():
    options = transport_options({})
    assert (options["connect_timeout"], options["read_timeout"], options["retry"].max_attempts,
            options["max_response_bytes"]) == (3.05, 10.0, 3, MAX_RESPONSE_BYTES)
    # Airflow's connection form and URIs hand extras over as text
    options = transport_options({"connect_timeout": "1.5", "read_timeout": 30, "max_attempts": "5",
                                 "max_response_bytes": "1048576"})
    assert (options["connect_timeout"], options["read_timeout"], options["retry"].max_attempts,
            options["max_response_bytes"]) == (1.5, 30.0, 5, 1_048_576)


@pytest.mark.parametrize(("extra", "says"), [
    ({"read_timeout": "soon"}, "extra.read_timeout must be a number from 0.001 to 3600, not 'soon'"),
    ({"read_timeout": 0}, "extra.read_timeout must be a number from 0.001 to 3600, not 0"),
    ({"connect_timeout": -1}, "extra.connect_timeout must be a number from 0.001 to 600, not -1"),
    ({"connect_timeout": True}, "extra.connect_timeout must be a number from 0.001 to 600, not True"),
    ({"max_attempts": 2.5}, "extra.max_attempts must be a whole number from 1 to 20, not 2.5"),
    ({"max_attempts": "3.0"}, "extra.max_attempts must be a whole number from 1 to 20, not '3.0'"),
    ({"max_attempts": 0}, "extra.max_attempts must be a whole number from 1 to 20, not 0"),
    ({"max_response_bytes": 100}, "extra.max_response_bytes must be a whole number from 1,024 to 1,073,741,824, not 100"),
    ({"max_response_bytes": [1]}, "extra.max_response_bytes must be a whole number from 1,024 to 1,073,741,824, not [1]"),
])
def test_a_transport_extra_out_of_range_names_the_connection_the_extra_and_the_rule(extra, says):
    with pytest.raises(ConfigurationError) as info:
        transport_options(extra, conn_id="national_portal_default")
    assert str(info.value).startswith("connection national_portal_default: ")
    assert says in str(info.value)


def test_credential_headers_of_answers_never_reach_the_exchange_log(peers):
    """The transport blanked Authorization and Cookie, not what a peer or its gateway sends back:
    Set-Cookie (the credential the next call presents) was written whole into the exchange log,
    and so were WWW-Authenticate challenges and a Proxy-Authorization sent."""
    cookie, challenge, proxy = "gateway-cookie-C6", "token-in-challenge-W2", "proxy-credential-P5"
    peer = peers(lambda h, body: answer(h, 200, {"ok": True}, headers={
        "Set-Cookie": f"JSESSIONID={cookie}; Path=/; HttpOnly",
        "WWW-Authenticate": f'Bearer realm="x", error="{challenge}"'}))
    rec = MemoryRecorder()
    transport(peer.url, rec).send("GET", "/x", operation="op", headers={"Proxy-Authorization": f"Basic {proxy}"})
    assert peer.requests[0][2]["Proxy-Authorization"] == f"Basic {proxy}"  # sent, as asked
    e = rec.exchanges[0]
    logged = json.dumps([e.request_headers, e.response_headers])
    assert cookie not in logged and challenge not in logged and proxy not in logged, logged
    assert e.response_headers["Set-Cookie"] == e.response_headers["WWW-Authenticate"] == "***"
    assert e.request_headers["Proxy-Authorization"] == "***"
    assert e.response_headers["Content-Type"] == JSON  # the rest as it came


@pytest.mark.parametrize("body, logged", [
    (b'{"error_code":0,"session":"tok-SECRET', b'{"error_code":0,"session":"***'),  # cut inside the value
    (b'{"session":"tok-\\"SECRET', b'{"session":"***'),  # ... after an escaped quote
    (b'{"session":"tok-SECRET\\', b'{"session":"***'),  # ... in the middle of an escape
    (b'{"session" : "tok-\\\nSECRET', b'{"session" : "***'),  # ... after a broken escape
    (b'{"session":"tok-SECRET","a":[1', b'{"session":"***","a":[1'),  # whole value, body cut later
    (b'{"password": 4417SECRET, "a":', b'{"password": ***, "a":'),  # a bare value
    (b'{"a":1,"session":', b'{"a":1,"session":'),  # cut before the value: nothing to blank
])
def test_a_body_cut_short_inside_a_secret_keeps_none_of_it(body, logged):
    """The fallback for bodies that are not JSON needed the value's closing quote: a log-in answer
    cut short inside its session token kept the token in the exchange log."""
    from connectors.transport import _redact_body

    assert _redact_body(body, frozenset({"session", "password"})) == logged


def test_the_prefix_kept_of_an_oversized_answer_keeps_no_secret_it_cuts(peers):
    """An answer found too large while streaming (no Content-Length) keeps its first 4,096 bytes in
    the exchange log: a token straddling that cut was kept (all but its end)."""
    body = json.dumps({"pad": "x" * (4096 - 30), "session": "tok-" + "SECRET" * 20, "more": "y" * 2048}).encode()

    def handle(h, _body):
        h.send_response(200)
        h.send_header("Content-Type", JSON)
        h.send_header("Connection", "close")  # no Content-Length: the size is found by reading
        h.end_headers()
        h.wfile.write(body)
        h.close_connection = True

    peer = peers(handle)
    rec = MemoryRecorder()
    with pytest.raises(ProtocolError, match="answer larger than 4096 bytes"):
        transport(peer.url, rec, redact_keys=("session",), max_response_bytes=4096).send("GET", "/x", operation="op")
    kept = rec.exchanges[0].response_body
    assert kept.endswith(b'"session": "***') and b"SECRET" not in kept


NAME = "Nguyễn Thị Hồng"


@pytest.mark.parametrize("body, content_type", [
    (json.dumps({"n": NAME}, ensure_ascii=False).encode(), "application/json;charset=ISO-8859-1"),  # mislabelled
    (json.dumps({"n": NAME}, ensure_ascii=False).encode(), "application/json; charset=windows-1258"),
    (json.dumps({"n": NAME}, ensure_ascii=False).encode(), "application/json; charset=nonesuch"),
    (json.dumps({"n": NAME}, ensure_ascii=False).encode(), "application/json"),
    (json.dumps({"n": NAME}, ensure_ascii=False).encode("utf-16"), "application/json; charset=utf-16"),  # followed
    (json.dumps({"n": NAME}, ensure_ascii=False).encode("utf-32-le"), "application/json; charset=UTF-32LE"),
])
def test_json_that_is_utf8_is_read_as_utf8_whatever_its_label(body, content_type):
    """A UTF-8 body labelled ISO-8859-1 was decoded as Latin-1: mojibake that no check catches."""
    from connectors.transport import parse_json

    assert parse_json(body, peer="p", operation="o", content_type=content_type) == {"n": NAME}


def test_json_that_is_not_utf8_follows_its_label():
    from connectors.transport import parse_json

    cp1258 = json.dumps({"n": "Lê Văn"}, ensure_ascii=False).encode("cp1258")
    assert parse_json(cp1258, peer="p", operation="o", content_type="application/json; charset=windows-1258") \
        == {"n": "Lê Văn"}
    latin1 = json.dumps({"n": "Müller"}, ensure_ascii=False).encode("latin-1")
    assert parse_json(latin1, peer="p", operation="o", content_type="application/json; charset=iso-8859-1") \
        == {"n": "Müller"}


def test_a_request_requests_refuses_is_a_fatal_error_naming_only_the_type(server_factory):
    """requests' own errors (InvalidHeader quoting the value, InvalidURL...) escaped the error tree
    with their text; now they are a FatalConnectorError with the type only, and recorded."""
    server = server_factory([])
    rec = MemoryRecorder()
    with pytest.raises(FatalConnectorError) as info:
        transport(server.url, rec).send("GET", "/x", operation="op", headers={"X-Trace": "tok-SECRET\r\nX-Evil: 1"})
    assert str(info.value) == "peer op: the request could not be sent (InvalidHeader)"
    assert type(info.value) is FatalConnectorError and not isinstance(info.value, RetriableConnectorError)
    assert (rec.exchanges[0].outcome, rec.exchanges[0].error) == (
        "transport_error", "FatalConnectorError: peer op: the request could not be sent (InvalidHeader)")
    with pytest.raises(FatalConnectorError, match=r"could not be sent \(InvalidURL\)"):
        transport("http://127.0.0.1:99999", MemoryRecorder()).send("GET", "/x", operation="op")
    assert server.requests == []


def test_a_secret_default_header_that_is_not_a_header_value_is_refused_before_any_call():
    says = "peer: the value of the X-Api-Key header has leading or trailing"
    with pytest.raises(ConfigurationError, match=says) as info:
        transport("http://127.0.0.1:9", MemoryRecorder(), redact_headers=("X-Api-Key",),
                  default_headers={"X-Api-Key": "key-SECRET\n"})
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_recorded_and_refused_never_followed(peers, status):
    """requests followed redirects (its default), sending default headers (X-Api-Key) and, on a
    307/308, the body to whatever host the Location named; Authorization alone was stripped."""
    elsewhere = peers(lambda h, body: answer(h, 200, {"ok": True}))
    location = f"http://localhost:{elsewhere.port}/steal?ticket=tk-SECRET"
    peer = peers(lambda h, body: answer(h, status, b"", "text/html", headers={"Location": location}))
    rec = MemoryRecorder()
    t = transport(peer.url, rec, redact_headers=("X-Api-Key",), default_headers={"X-Api-Key": "key-SECRET"})
    with pytest.raises(ProtocolError) as info:
        t.send("POST", "/x", operation="op", json_body={"password": "pw-SECRET"})
    assert str(info.value) == f"peer op: HTTP {status} redirect to host localhost refused: redirects are not followed"
    assert info.value.status == status and elsewhere.requests == [] and len(peer.requests) == 1
    assert [(e.response_status, e.outcome) for e in rec.exchanges] == [(status, "protocol_error")]
    # the answer is logged, its Location cut to scheme and host: the path or query may carry a ticket
    assert rec.exchanges[0].response_headers["Location"] == f"http://localhost:{elsewhere.port}/***"


@pytest.mark.parametrize("location, says", [
    ("/elsewhere", "to another path of the same host"),
    ("", "without a Location"),
    ("http://user:pw-SECRET@[bad/x", "to an unreadable location"),
])
def test_a_redirect_error_names_at_most_the_host(peers, location, says):
    headers = {"Location": location} if location else {}
    peer = peers(lambda h, body: answer(h, 302, b"", "text/html", headers=headers))
    with pytest.raises(ProtocolError, match=f"HTTP 302 redirect {says} refused") as info:
        transport(peer.url, MemoryRecorder()).send("GET", "/x", operation="op")
    assert "SECRET" not in str(info.value)


def test_the_session_never_follows_nor_reads_a_redirect_even_when_a_call_would(peers):
    """With allow_redirects=False alone requests still reads a 3xx body whole (past the size cap)
    to prepare Response.next; the peer session sees no redirect target at all."""
    elsewhere = peers(lambda h, body: answer(h, 200, {"ok": True}))
    peer = peers(lambda h, body: answer(h, 302, b"x" * 4096, "text/html",
                                        headers={"Location": f"http://localhost:{elsewhere.port}/"}))
    t = transport(peer.url, MemoryRecorder())
    response = t.session.get(peer.url, timeout=2, stream=True)  # allow_redirects=True, requests' default
    assert response.status_code == 302 and response.next is None and not response._content_consumed
    response.close()
    assert elsewhere.requests == []


def test_a_retry_after_longer_than_the_call_waits_ends_it_at_once(peers):
    """A 429 'Retry-After: 30' was asked again after a jittered 0-0.5 s, three times in a row: the
    peer said when it would take the call again, and the transport hammered it instead. Now a wait
    longer than the policy's max_delay ends the call at once, telling Airflow's retry how long."""
    peer = peers(lambda h, body: answer(h, 429, {"error": "rate_limited"}, headers={"Retry-After": "30"}))
    sleeps: list[float] = []
    rec = MemoryRecorder()
    t = HttpTransport(peer="onestop", base_url=peer.url, recorder=rec, retry=RetryPolicy(max_attempts=3),
                      sleep=sleeps.append, seed=1)
    with pytest.raises(PeerUnavailable) as info:
        t.send("GET", "/api/v1/dossiers/changes", operation="changes")
    assert (info.value.status, info.value.retry_after) == (429, 30.0)
    assert str(info.value) == "onestop changes: HTTP 429; Retry-After 30s"
    assert sleeps == [] and len(peer.requests) == 1 and [e.response_status for e in rec.exchanges] == [429]


@pytest.mark.parametrize("status, retry_after, waited", [
    (503, "5", 5.0),  # within max_delay (8 s): waited, not the shorter back-off
    (429, "0", None),  # nothing to wait for: the back-off
    (503, "soon", None),  # unreadable: ignored, the back-off
    (502, "5", None),  # only 429 and 503 carry one
])
def test_a_retry_after_within_the_cap_is_waited(peers, status, retry_after, waited):
    calls = []

    def handle(h, body):
        calls.append(1)
        if len(calls) == 1:
            answer(h, status, {"error": "busy"}, headers={"Retry-After": retry_after})
        else:
            answer(h, 200, {"ok": True})

    peer = peers(handle)
    sleeps: list[float] = []
    t = HttpTransport(peer="p", base_url=peer.url, retry=RetryPolicy(max_attempts=2), sleep=sleeps.append, seed=1)
    assert t.send("GET", "/x", operation="op").status_code == 200
    assert len(sleeps) == 1
    if waited is None:
        assert sleeps[0] < 0.5  # the first back-off: 0 to base_delay
    else:
        assert sleeps[0] == waited


def test_retry_after_reads_seconds_and_http_dates():
    from datetime import datetime

    from connectors.transport import retry_after_seconds

    now = datetime(2026, 11, 30, 8, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds(" 7 ", now) == 7.0
    assert retry_after_seconds("Mon, 30 Nov 2026 08:02:00 GMT", now) == 120.0
    assert retry_after_seconds("Mon, 30 Nov 2026 07:00:00 GMT", now) == 0.0  # past: now
    assert retry_after_seconds("9" * 40, now) == 1e12  # absurd: more than any call waits
    for unreadable in (None, "", "-5", "1.5", "soon", "Mon, 99 Nov 2026 08:02:00 GMT"):
        assert retry_after_seconds(unreadable, now) is None, unreadable


def test_an_http_date_retry_after_far_off_ends_the_call_at_once(peers):
    from email.utils import format_datetime

    later = format_datetime(datetime.now(UTC) + timedelta(minutes=10), usegmt=True)
    peer = peers(lambda h, body: answer(h, 503, {"error": "maintenance"}, headers={"Retry-After": later}))
    sleeps: list[float] = []
    with pytest.raises(PeerUnavailable) as info:
        HttpTransport(peer="p", base_url=peer.url, sleep=sleeps.append).send("GET", "/x", operation="op")
    assert 590 < info.value.retry_after <= 600 and sleeps == [] and len(peer.requests) == 1


def test_a_trickling_answer_does_not_hold_the_call_past_its_deadline(peers):
    """read_timeout bounds each socket read: a peer sending its last bytes one every 0.4 s never
    tripped a 1-second read timeout, and the call lasted as long as the peer liked (6.4 s here;
    an 8 MiB answer at that pace, for months). An attempt now ends at total_timeout (2 s here),
    retriable, its connection closed."""
    peer = peers(trickle(json.dumps({"items": [], "hasMore": False}).encode(), tail=16, every=0.4))
    rec = MemoryRecorder()
    t = HttpTransport(peer="p", base_url=peer.url, recorder=rec, connect_timeout=1.0, read_timeout=1.0,
                      total_timeout=2.0, retry=RetryPolicy(max_attempts=1))
    t0 = time.monotonic()
    with pytest.raises(PeerUnavailable) as info:
        t.send("GET", "/x", operation="op")
    elapsed = time.monotonic() - t0
    assert 2.0 <= elapsed < 5.0, f"a call with read_timeout=1s lasted {elapsed:.1f}s"  # the peer: 6.4 s
    assert str(info.value) == "p op: answer not complete within 2s (total_timeout); connection closed"
    assert [(e.outcome, e.response_status) for e in rec.exchanges] == [("transport_error", None)]


def trickled_headers(lines: int, every: float):
    """A handler answering 200 whose header lines come one every ``every`` seconds (each read
    quick, the headers as a whole slow)."""
    def handle(h, _body):
        h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        h.wfile.flush()
        for i in range(lines):
            time.sleep(every)
            h.wfile.write(b"X-Slow-%d: 1\r\n" % i)
            h.wfile.flush()
        h.wfile.write(b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
        h.wfile.flush()

    return handle


def test_trickling_headers_do_not_hold_the_call_past_its_deadline(peers):
    """The deadline was looked at only once the headers were in: a peer sending a header line
    every 0.3 s held a call with total_timeout=1s for as long as it liked (24 s here, then
    "connection failed" when http.client counted 100 headers). The connection is now closed at
    the deadline, while it waits for the status line and headers too."""
    peer = peers(trickled_headers(80, 0.3))
    rec = MemoryRecorder()
    t = HttpTransport(peer="p", base_url=peer.url, recorder=rec, connect_timeout=1.0, read_timeout=1.0,
                      total_timeout=1.0, retry=RetryPolicy(max_attempts=1))
    t0 = time.monotonic()
    with pytest.raises(PeerUnavailable) as info:
        t.send("GET", "/x", operation="op")
    elapsed = time.monotonic() - t0
    assert 1.0 <= elapsed < 5.0, f"a call with total_timeout=1s lasted {elapsed:.1f}s"
    assert str(info.value) == "p op: answer not complete within 1s (total_timeout); connection closed"
    assert [(e.outcome, e.response_status) for e in rec.exchanges] == [("transport_error", None)]
    # the next call is answered on a fresh connection, the closed one is not reused
    quick = peers(lambda h, _b: answer(h, 200, {"ok": True}))
    t2 = HttpTransport(peer="p", base_url=quick.url, total_timeout=1.0, read_timeout=1.0)
    for _ in range(3):
        assert t2.send("GET", "/x", operation="op").json() == {"ok": True}


def test_total_timeout_is_the_connections_and_the_attempt_is_retried(peers):
    calls = []
    # the first answer takes 6 s, past the 2 s total; the second is at once (2 s leaves room for a busy machine)
    slow = trickle(json.dumps({"ok": True}).encode(), tail=12, every=0.5)

    def handle(h, body):
        calls.append(1)
        slow(h, body) if len(calls) == 1 else answer(h, 200, {"ok": True})

    peer = peers(handle)
    options = transport_options({"read_timeout": 5, "total_timeout": "2"})
    assert (options["read_timeout"], options["total_timeout"]) == (5.0, 2.0)
    rec = MemoryRecorder()
    t = transport(peer.url, rec, **options)
    assert t.send("GET", "/x", operation="op").json() == {"ok": True}
    assert [e.outcome for e in rec.exchanges] == ["transport_error", "ok"]


def encoded_answer(payload: bytes, encoding: str, chunked: bool):
    """A handler sending ``payload`` content-encoded (``identity``, ``gzip``, ``deflate``), with a
    Content-Length or in HTTP/1.1 chunks."""
    data = gzip.compress(payload) if encoding == "gzip" else zlib.compress(payload) if encoding == "deflate" \
        else payload

    def handle(h, _body):
        h.send_response(200)
        h.send_header("Content-Type", JSON)
        if encoding != "identity":
            h.send_header("Content-Encoding", encoding)
        if chunked:
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            for i in range(0, len(data), 50_000):
                piece = data[i:i + 50_000]
                h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            h.wfile.write(b"0\r\n\r\n")
        else:
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)

    return handle


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("encoding", ["identity", "gzip", "deflate"])
def test_a_large_answer_read_at_once_is_whole_within_the_deadline(peers, encoding, chunked):
    """Reading a piece per socket read, and looking at the clock between pieces, changes nothing for
    an answer that comes at once (a 6 MB catalogue page), content-encoded or not, chunked or not."""
    items = [{"code": f"1.{i:06d}", "name": "Đăng ký khai sinh " * 8} for i in range(25_000)]
    payload = json.dumps({"items": items}, ensure_ascii=False).encode()
    peer = peers(encoded_answer(payload, encoding, chunked))
    response = transport(peer.url, MemoryRecorder(), read_timeout=5).send("GET", "/x", operation="op")
    assert response.content == payload


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_a_compressed_answer_larger_than_the_cap_once_decoded_is_refused(peers, chunked):
    peer = peers(encoded_answer(b'{"a":"' + b"A" * (3 * 1024 * 1024) + b'"}', "gzip", chunked))
    rec = MemoryRecorder()
    with pytest.raises(ProtocolError, match="answer larger than 1048576 bytes"):
        transport(peer.url, rec, max_response_bytes=1024 * 1024).send("GET", "/x", operation="op")
    assert len(rec.exchanges[0].response_body) == 4096


def test_a_corrupt_compressed_answer_is_unreadable(peers):
    def handle(h, _body):
        answer(h, 200, b"\x1f\x8b\x08\x00garbage-not-gzip" * 10, headers={"Content-Encoding": "gzip"})

    peer = peers(handle)
    with pytest.raises(UnreadableAnswer, match="content encoding cannot be decoded"):
        transport(peer.url, MemoryRecorder(), retry=RetryPolicy(max_attempts=1)).send("GET", "/x", operation="op")


def test_transport_extras_default_total_timeout_to_six_times_the_read_timeout():
    assert transport_options({})["total_timeout"] is None
    assert HttpTransport(peer="p", base_url="http://127.0.0.1:9", read_timeout=7).total_timeout == 42.0
    with pytest.raises(ConfigurationError, match="extra.total_timeout must be a number from 0.001 to 86400, not 0"):
        transport_options({"total_timeout": 0}, conn_id="x")


def test_a_retry_after_of_latin1_superscript_digits_is_ignored_not_a_raw_valueerror(peers):
    """http.client decodes header bytes as Latin-1, so a byte 0xB2 in Retry-After is '²', for which
    str.isdigit() is True and int() raises ValueError. retry_after_seconds() promises None for an
    unreadable value; instead the raw ValueError escapes HttpTransport.send (outside the error tree,
    the attempt not even recorded in the exchange log)."""
    calls = []

    def handle(h, body):
        calls.append(1)
        if len(calls) == 1:
            answer(h, 503, {"error": "maintenance"}, headers={"Retry-After": "\xb2"})
        else:
            answer(h, 200, {"ok": True})

    peer = peers(handle)
    rec = MemoryRecorder()
    sleeps: list[float] = []
    t = HttpTransport(peer="onestop", base_url=peer.url, recorder=rec, retry=RetryPolicy(max_attempts=2),
                      sleep=sleeps.append, seed=1)
    response = t.send("GET", "/api/v1/dossiers/changes", operation="changes")  # was a raw ValueError
    assert response.status_code == 200
    assert [e.response_status for e in rec.exchanges] == [503, 200]


def test_a_steady_answer_whose_reads_never_wait_long_is_not_cut_by_the_default_deadline(peers):
    """With total_timeout defaulting to 2 x read_timeout, an answer arriving steadily (a piece every
    0.1 s, read_timeout 1 s: no read comes near its timeout) but taking longer than 2 s in all was
    dropped on every attempt (at read_timeout 10 s: any answer slower than ~400 KiB/s). The default
    is six times the read timeout (review)."""
    piece = b"x" * 10_000
    pieces = 30
    payload = b'{"a":"' + piece * pieces + b'"}'

    def handle(h, _body):
        h.send_response(200)
        h.send_header("Content-Type", JSON)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload[:6])
        h.wfile.flush()
        for i in range(pieces):
            time.sleep(0.1)
            h.wfile.write(piece)
            h.wfile.flush()
        h.wfile.write(b'"}')
        h.wfile.flush()

    peer = peers(handle)
    t = HttpTransport(peer="p", base_url=peer.url, read_timeout=1.0, retry=RetryPolicy(max_attempts=1))
    response = t.send("GET", "/list", operation="list")  # was cut: 'not complete within 2s'
    assert response.content == payload


def test_a_refused_redirects_location_query_never_reaches_the_exchange_log(peers):
    """redirect_refused() names only the Location's host because 'its path or query ... may carry a
    ticket'; but the same attempt's Exchange keeps the whole Location header in response_headers
    (3xx answers were never recorded before: requests followed them). The ticket the error hides
    is in the exchange log."""
    ticket = "ST-5512-Hq8vTicketSecret"
    peer = peers(lambda h, body: answer(h, 302, b"", "text/html",
                                        headers={"Location": f"https://sso.example/cb?ticket={ticket}"}))
    rec = MemoryRecorder()
    t = HttpTransport(peer="p", base_url=peer.url, recorder=rec, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(ProtocolError) as info:
        t.send("GET", "/x", operation="op")
    assert ticket not in str(info.value)
    (exchange,) = rec.exchanges
    assert ticket not in repr(exchange.response_headers)


@pytest.mark.parametrize("status", [501, 505])
def test_a_5xx_saying_the_request_is_not_done_at_all_is_not_retried(server_factory, status):
    """501 Not Implemented and 505 HTTP Version Not Supported were retried like a 503 and ended as
    PeerUnavailable, which the task retries again: nothing a retry can change. They end the call at
    once, a FatalConnectorError naming the status, recorded as the http_error it is."""
    server = server_factory([(status, {"e": 1}, 0)] * 3)
    rec = MemoryRecorder()
    with pytest.raises(FatalConnectorError, match=f"peer op: HTTP {status}.*not retried") as info:
        transport(server.url, rec, retry=RetryPolicy(max_attempts=3)).send("GET", "/x", operation="op")
    assert not isinstance(info.value, PeerUnavailable) and info.value.status == status
    assert len(server.requests) == 1
    assert [(e.attempt, e.response_status, e.outcome) for e in rec.exchanges] == [(1, status, "http_error")]
