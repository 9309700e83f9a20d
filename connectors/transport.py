"""The HTTP transport every REST connector sends through.

It owns five things no connector may forget: explicit timeouts, retries for retriable failures
only (with capped exponential back-off and jitter), redaction of secrets, a cap on the size of an
answer (a peer cannot make us hold an unbounded body), and one exchange-log record per HTTP attempt
(a Wire Tap, in Camel's words). Connectors call :meth:`HttpTransport.send` and never talk to
``requests`` themselves; they read JSON answers with :func:`response_json`, which tells an answer
that cannot be read at all (empty, not text in its charset, not well-formed JSON: an
:class:`UnreadableAnswer`, transient) from one that reads but cannot be trusted (NaN, nested too
deep: a :class:`ProtocolError`). A transport given a ``read`` (:func:`read_json`, or a call's own)
reads each answer inside its attempt loop, so an unreadable one is recorded and retried like a
5xx (once read, the JSON is kept on the response: it is never parsed twice).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import requests
import requests.adapters
from urllib3.exceptions import DecodeError as _DecodeError
from urllib3.exceptions import ProtocolError as _Urllib3ProtocolError
from urllib3.exceptions import ReadTimeoutError as _ReadTimeoutError
from urllib3.exceptions import SSLError as _Urllib3SSLError
from urllib3.util.ssl_match_hostname import CertificateError as _CertificateError

from connectors.errors import (
    ConfigurationError,
    ConnectorError,
    ExchangeNotRecorded,
    FatalConnectorError,
    PeerUnavailable,
    ProtocolError,
    RetriableConnectorError,
    UnreadableAnswer,
)

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_RESPONSE_BYTES",
    "AnswerReader",
    "AnswerTimeout",
    "Exchange",
    "ExchangeRecorder",
    "HttpTransport",
    "MemoryRecorder",
    "NullRecorder",
    "OUTCOMES",
    "RetryPolicy",
    "SECRET_HEADERS",
    "TOTAL_TIMEOUT_FACTOR",
    "header_value_problem",
    "headers_for_log",
    "parse_json",
    "read_capped",
    "read_json",
    "record_exchange",
    "redact_json",
    "redirect_refused",
    "request_by",
    "response_json",
    "retry_after_seconds",
    "total_timeout_for",
    "transport_failure",
    "transport_options",
    "unavailable",
    "wait_before_retry",
]

log = logging.getLogger(__name__)

REDACTED = "***"

#: Largest answer body the transports hold (after content decoding). Every real answer is far
#: smaller (a 12 000-procedure catalogue list is about 1.5 MB); a larger one is refused unread.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
#: Deepest JSON nesting accepted in an answer (real answers nest 5 levels at most); deeper ones
#: would exhaust recursion in the code that walks them (redaction, hashing, mapping).
MAX_JSON_DEPTH = 64
#: What the exchange log keeps of an answer refused for its size.
_OVERSIZE_PREFIX = 4096
#: Without an ``extra.total_timeout``, an attempt (sending the request, waiting for the answer and
#: reading it whole) may take this many times the read timeout: ``read_timeout`` bounds each socket
#: read only, so a peer sending a byte now and then would hold a call for as long as it likes. Six:
#: the deadline runs from sending the request, so it takes in the peer's own work (up to one read
#: timeout before the answer begins) and a large answer read at a modest pace (8 MiB in a minute).
TOTAL_TIMEOUT_FACTOR = 6
#: Largest piece of an answer read at once (one socket read at most, so the deadline is looked at
#: between reads of a trickling answer as well).
_CHUNK = 64 * 1024
#: Headers whose values never reach the exchange log, whoever the peer: credentials we send
#: (``Authorization``, ``Proxy-Authorization``, ``Cookie``), a session a peer or its gateway sets
#: (``Set-Cookie``: the credential the next call would present), and the challenges, which some
#: schemes fill with tokens (``WWW-Authenticate``, ``Proxy-Authenticate``).
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "set-cookie2",
                            "www-authenticate", "proxy-authenticate"})

#: Every outcome an exchange is recorded with: this transport's (``ok``, ``http_error``,
#: ``protocol_error`` for an answer it could not read, ``transport_error``), and a connector's
#: classification of the peer's own answer (``peer_error``); the ledger and replica clients use the same.
OUTCOMES = ("ok", "peer_error", "http_error", "protocol_error", "transport_error")


@dataclass
class Exchange:
    """One HTTP attempt as the exchange log keeps it. Bodies are already redacted."""

    peer: str
    operation: str
    method: str
    url: str
    started_at: datetime
    duration_ms: float
    attempt: int
    outcome: str  # one of OUTCOMES
    direction: str = "outbound"
    record_keys: tuple[str, ...] = ()
    request_headers: dict[str, str] = field(default_factory=dict)
    request_body: bytes = b""
    response_status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes = b""
    peer_code: str | None = None
    error: str | None = None

    @staticmethod
    def digest(body: bytes) -> str:
        return hashlib.sha256(body).hexdigest()


class ExchangeRecorder(Protocol):
    """Where the transport writes each exchange (the bus implements it over its database)."""

    def record(self, exchange: Exchange) -> None: ...


def _cause(exc: BaseException) -> str:
    """What a failure to record was, without the values it was writing: a database error's own
    (the driver's, e.g. ``OperationalError: database is locked``), never SQLAlchemy's text, which
    quotes the statement's parameters (bodies, personal values)."""
    orig = getattr(exc, "orig", None)
    shown = orig if isinstance(orig, BaseException) else exc
    text = str(shown).strip().splitlines()[0][:200] if str(shown).strip() else ""
    return f"{type(shown).__name__}: {text}" if text else type(shown).__name__


def record_exchange(recorder: ExchangeRecorder, exchange: Exchange) -> None:
    """Write ``exchange`` with ``recorder``; a recorder that fails is an :class:`ExchangeNotRecorded`
    (the call's answer is then not used) and the exchange it could not write is logged (ERROR:
    peer, operation, attempt, answer, outcome and record keys; never a body)."""
    try:
        recorder.record(exchange)
    except Exception as exc:  # noqa: BLE001 - whatever the recorder's failure, the exchange is named
        cause = _cause(exc)
        status = f"HTTP {exchange.response_status}" if exchange.response_status is not None else "no answer"
        keys = ", ".join(exchange.record_keys[:20]) + (f" (+{len(exchange.record_keys) - 20})"
                                                      if len(exchange.record_keys) > 20 else "")
        log.error("exchange log: %s %s attempt %d started %s (%s, outcome %s, keys: %s) NOT RECORDED: %s",
                  exchange.peer, exchange.operation, exchange.attempt, exchange.started_at.isoformat(), status,
                  exchange.outcome, keys or "none", cause)
        raise ExchangeNotRecorded(
            f"{exchange.peer} {exchange.operation}: the exchange (attempt {exchange.attempt}, {status}, outcome "
            f"{exchange.outcome}) could not be written to the exchange log ({cause}); its answer is not used: "
            "what it did at the peer is unknown until the call is made again",
            peer=exchange.peer, operation=exchange.operation, status=exchange.response_status) from None


class NullRecorder:
    """Records nothing; for throw-away clients (connection tests, the CLI's probes)."""

    def record(self, exchange: Exchange) -> None:
        return None


class MemoryRecorder:
    """Keeps exchanges in a list; for unit tests."""

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []

    def record(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential back-off with full jitter, applied to retriable failures only.

    ``max_delay`` is also the longest ``Retry-After`` a call waits for (:func:`wait_before_retry`).
    """

    max_attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.max_delay, self.base_delay * (2 ** (attempt - 1))))


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for, in seconds (RFC 9110 §10.2.3): a number of
    seconds or an HTTP-date (a date past is 0). ``None`` when absent or unreadable."""
    value = (value or "").strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():  # ASCII only: '²' (a Latin-1 byte 0xB2) is a digit to str
        return float(int(value)) if len(value) <= 12 else 1e12
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, as HTTP-dates are
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def wait_before_retry(policy: RetryPolicy, attempt: int, rng: random.Random, error: Exception) -> float | None:
    """Seconds to wait before the attempt after ``attempt`` failed with ``error``: the back-off,
    or what the peer asked (``PeerUnavailable.retry_after``) when that is longer. ``None`` when
    the peer asked for more than ``policy.max_delay``: the call gives up at once, and the error's
    ``retry_after`` tells the task's retry how long to wait (asking earlier is refused again)."""
    delay = policy.delay(attempt, rng)
    asked = getattr(error, "retry_after", None)
    if asked is None:
        return delay
    if asked > policy.max_delay:
        return None
    return max(delay, asked)


#: What a connection's transport extras may hold: (default, smallest, largest, whole number).
TRANSPORT_EXTRAS: dict[str, tuple[float | None, float, float, bool]] = {
    "connect_timeout": (3.05, 0.001, 600.0, False),  # seconds
    "read_timeout": (10.0, 0.001, 3600.0, False),  # seconds, each socket read (operation_timeout for SOAP)
    "total_timeout": (None, 0.001, 86400.0, False),  # seconds, a whole attempt; None: TOTAL_TIMEOUT_FACTOR × read
    "max_attempts": (3, 1, 20, True),
    "max_response_bytes": (MAX_RESPONSE_BYTES, 1024, 1024 * 1024 * 1024, True),  # answers over it are refused unread
    # seconds one SQL statement may run or wait for a lock (the ministry database: PostgreSQL's
    # statement_timeout, SQLite's busy timeout)
    "statement_timeout": (30.0, 0.001, 86400.0, False),
}


def transport_extra(extra: dict[str, Any], name: str, *, conn_id: str = "", key: str | None = None) -> Any:
    """One transport setting from a connection's extras (``key``, default ``name``), checked:
    a number (a whole one where it must be) within its bounds, else ConfigurationError naming the
    connection, the extra and the rule. ``None`` for an absent one whose default is ``None``."""
    default, low, high, whole = TRANSPORT_EXTRAS[name]
    key = key or name
    value = extra.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, str):  # Airflow's connection form and URIs give text
        try:
            value = int(value) if whole else float(value)
        except ValueError:
            pass
    kind = "a whole number" if whole else "a number"
    number = isinstance(value, int if whole else (int, float)) and not isinstance(value, bool)
    if not number or not low <= value <= high:
        shown = repr(value) if len(repr(value)) <= 40 else f"a {type(value).__name__}"
        bounds = f"{low:,} to {high:,}" if whole else f"{low:g} to {high:g}"
        raise ConfigurationError(f"connection {conn_id or '?'}: extra.{key} must be {kind} from {bounds}, "
                                 f"not {shown}")
    return value


def transport_options(extra: dict[str, Any], *, conn_id: str = "") -> dict[str, Any]:
    """Timeouts, retries and the answer-size cap from a connection's extras (``connect_timeout``,
    ``read_timeout``, ``total_timeout``, ``max_attempts``, ``max_response_bytes``), checked, with
    the defaults every HTTP client uses."""
    def get(name: str) -> Any:
        return transport_extra(extra, name, conn_id=conn_id)

    total = get("total_timeout")
    return {
        "connect_timeout": float(get("connect_timeout")),
        "read_timeout": float(get("read_timeout")),
        "total_timeout": None if total is None else float(total),
        "retry": RetryPolicy(max_attempts=int(get("max_attempts"))),
        "max_response_bytes": int(get("max_response_bytes")),
    }


def redact_json(value: Any, keys: frozenset[str]) -> Any:
    """Replace the values of ``keys`` (at any depth) with ``***``."""
    if isinstance(value, dict):
        return {k: (REDACTED if k in keys else redact_json(v, keys)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_json(v, keys) for v in value]
    return value


_ASCII_ESCAPE = re.compile(rb"\\u00[0-7]")


def _could_hold(body: bytes, keys: frozenset[str]) -> bool:
    """Whether ``body`` could hold one of ``keys`` as a JSON key: one occurs in it as text, it has
    ``\\u`` escapes that could spell one (of ASCII letters when the keys are ASCII), or it is not
    UTF-8 text (NUL bytes: UTF-16 or UTF-32, which JSON decoding accepts)."""
    if b"\x00" in body or any(k.encode() in body for k in keys):
        return True
    if b"\\u" not in body:
        return False
    return not all(k.isascii() for k in keys) or _ASCII_ESCAPE.search(body) is not None


def _redact_body(body: bytes, keys: frozenset[str]) -> bytes:
    if not body or not keys or not _could_hold(body, keys):
        return body  # nothing to blank: the bytes as they came, without decoding them
    try:
        data = json.loads(body)
        return json.dumps(redact_json(data, keys), ensure_ascii=False, separators=(",", ":")).encode()
    except (ValueError, UnicodeDecodeError, RecursionError):
        # Not JSON we can walk (a broken or hostile body): still blank every "key": "value" pair.
        return _redact_text(body, keys)


def _redact_request(body: bytes, json_body: Any, keys: frozenset[str]) -> bytes:
    """:func:`_redact_body` of a request body this transport encoded (``body`` is
    ``json_body`` as compact JSON), without decoding it again when it can: when each secret key
    present is a top-level key with a string value and occurs nowhere else, its value is blanked
    in the text itself. Anything else takes the general way."""
    if not body or not keys:
        return body
    if isinstance(json_body, dict):
        present = [k for k in sorted(keys) if k in json_body]
        # In compact JSON a key is ``"name":`` (never escaped, being letters); a string value
        # holding that text has its quotes escaped, so each occurrence here is a real key.
        occurrences = sum(body.count(b'"' + k.encode() + b'":') for k in keys)
        if occurrences == len(present) and all(isinstance(json_body[k], str) for k in present):
            for k in present:
                body = re.sub(rb'"' + re.escape(k.encode()) + rb'":"(?:[^"\\]|\\.)*"',
                              lambda _m, k=k: b'"' + k.encode() + b'":"' + REDACTED.encode() + b'"', body, count=1)
            return body
    return _redact_body(body, keys)


def _redact_text(body: bytes, keys: frozenset[str]) -> bytes:
    """Blank every ``"key": value`` of ``keys`` in text that is not JSON (cut short, broken): a
    string value (``"***"``); a string cut short before its closing quote, to the end of the body
    (``"***``: a token cut short is still most of the token); a bare value (a number, ``true``)."""
    names = b"|".join(re.escape(k.encode()) for k in sorted(keys))
    pattern = re.compile(rb'("(?:' + names + rb')"\s*:\s*)(?:(?P<whole>"(?:[^"\\]|\\.)*")'
                         rb'|(?P<cut>"(?:[^"\\]|\\.)*\\?\Z)|(?P<bare>[^\s,}\]"\[{]+))', re.DOTALL)
    shown = {"whole": b'"' + REDACTED.encode() + b'"', "cut": b'"' + REDACTED.encode(), "bare": REDACTED.encode()}

    def blank(m: re.Match[bytes]) -> bytes:
        return m.group(1) + shown[m.lastgroup or "whole"]

    return pattern.sub(blank, body)


#: Charsets whose text is not ASCII-compatible (a label naming one is followed, never second-guessed).
_WIDE_UNICODE = re.compile(r"(?:utf[-_]?(?:16|32)|ucs[-_]?[24])", re.IGNORECASE)


def _charset(content_type: str) -> str | None:
    match = re.search(r"charset\s*=\s*\"?([A-Za-z0-9._-]+)", content_type or "")
    return match.group(1).lower() if match else None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


#: Outside its strings, JSON holds only these ASCII characters besides its brackets.
_JSON_PUNCTUATION = b" \t\r\n,:0123456789-+.eEtrufalsn"
_BRACKETS_AS_PARENS = bytes.maketrans(b"{[}]", b"(())")


def json_within_depth(data: bytes, limit: int) -> bool:
    """Is the UTF-8 JSON ``data`` at most ``limit`` levels deep, as far as can be told at C speed?

    Strings are dropped (escaped backslashes, then escaped quotes first, so that every quote left
    opens or closes one) and innermost bracket pairs removed level by level. Meaningful for JSON
    text; False also means "unsure" (anything but JSON punctuation outside strings, a UTF-8
    byte-order mark included): the caller then asks an exact walk. Used for answers
    (:func:`parse_json`) and for the exchange log's span finder (``lienthong.audit.personal``)."""
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(unescaped.split(b'"')[::2]).translate(_BRACKETS_AS_PARENS, _JSON_PUNCTUATION)
    if brackets.strip(b"()"):
        return False
    for _ in range(limit):
        inner = brackets.replace(b"()", b"")
        if len(inner) == len(brackets):
            return not inner
        brackets = inner
    return not brackets


def _too_deep(value: Any, limit: int, data: bytes | None = None) -> bool:
    """True when ``value`` nests lists/objects deeper than ``limit`` (walked without recursion,
    unless its UTF-8 text ``data`` shows at once that it is not)."""
    if data is not None and json_within_depth(data, limit):
        return False
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def parse_json(body: bytes, *, peer: str, operation: str, status: int | None = None, content_type: str = "",
               max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode an answer body as JSON, strictly.

    The body must be text in its declared charset (UTF-8 when none is declared; a UTF-8 byte-order
    mark is allowed) or UTF-8 whatever the label says (RFC 8259: a body labelled ISO-8859-1 that is
    valid UTF-8 is read as UTF-8; UTF-16 and UTF-32 labels are followed), standard JSON (no
    ``NaN``/``Infinity``) and nest at most ``max_depth`` levels.
    Invalid bytes are never replaced: a name decoded with U+FFFD would be stored corrupted.

    Raises:
        UnreadableAnswer: a success (2xx, or no ``status``) whose body is empty, is not valid text
            in its charset, or is not well-formed JSON (cut short, an HTML page): it may read
            next time.
        ProtocolError: well-formed but not to be trusted: an unknown charset, NaN or Infinity,
            nested deeper than ``max_depth``; and any body of a 3xx or 4xx that does not read
            (the status is the answer: the same call gets it again).
        Both name the peer, the operation and what is wrong (never the body itself).
    """
    where = f"{peer} {operation}"
    suffix = f" (HTTP {status})" if status is not None else ""
    # only a success's body can arrive garbled and read next time; a 3xx or 4xx that cannot be
    # read is still the peer's refusal of this call
    unreadable = UnreadableAnswer if status is None or 200 <= status < 300 else ProtocolError
    charset = _charset(content_type) or "utf-8"
    codec = "utf-8-sig" if charset.replace("_", "-") in ("utf-8", "utf8") else charset
    try:
        text = None
        if codec != "utf-8-sig" and not _WIDE_UNICODE.match(charset):
            # RFC 8259 §8.1: JSON between systems is UTF-8, and application/json has no charset.
            # Servers still label it ISO-8859-1 (Spring's default) while sending UTF-8: bytes that
            # are UTF-8 are read as UTF-8, whatever the label (read by the label, they are
            # mojibake that no check would catch: "Nguyễn" as "Nguyá»\x85n").
            try:
                text, codec = body.decode("utf-8-sig"), "utf-8-sig"
            except UnicodeDecodeError:
                pass
        if text is None:
            text = body.decode(codec)
    except UnicodeDecodeError as exc:
        raise unreadable(f"{where}: answer is not valid {charset} text (byte 0x{body[exc.start]:02x} at "
                         f"offset {exc.start}){suffix}", peer=peer, operation=operation, status=status) from None
    except LookupError:
        raise ProtocolError(f"{where}: answer declares an unknown charset {charset!r}{suffix}", peer=peer,
                            operation=operation, status=status) from None
    if not text.strip():
        raise unreadable(f"{where}: answer is empty, not JSON{suffix}", peer=peer, operation=operation,
                         status=status)
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ProtocolError(f"{where}: answer nests JSON deeper than {max_depth} levels{suffix}", peer=peer,
                            operation=operation, status=status) from None
    except json.JSONDecodeError as exc:
        raise unreadable(f"{where}: answer is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
                         f"{suffix}", peer=peer, operation=operation, status=status) from None
    except ValueError as exc:  # NaN, Infinity (_reject_constant): well formed, not standard JSON
        raise ProtocolError(f"{where}: answer is not JSON ({exc}){suffix}", peer=peer, operation=operation,
                            status=status) from None
    # the text pre-check reads the bytes, so only when they are UTF-8 (else the exact walk alone)
    utf8 = body if codec == "utf-8-sig" else None
    if isinstance(data, (dict, list)) and _too_deep(data, max_depth, utf8):
        raise ProtocolError(f"{where}: answer nests JSON deeper than {max_depth} levels{suffix}", peer=peer,
                            operation=operation, status=status)
    return data


#: Where :func:`response_json` keeps an answer's parsed JSON on its response.
_PARSED = "_lienthong_json"
_UNREAD = object()


def response_json(response: requests.Response, *, peer: str, operation: str) -> Any:
    """:func:`parse_json` of a response's body, charset taken from its ``Content-Type``; parsed once
    per response (the transport's ``read`` check, the connector's classifier and the connector
    itself all ask for it)."""
    parsed = response.__dict__.get(_PARSED, _UNREAD)
    if parsed is not _UNREAD:
        return parsed
    parsed = parse_json(response.content, peer=peer, operation=operation, status=response.status_code,
                        content_type=response.headers.get("Content-Type", ""))
    response.__dict__[_PARSED] = parsed
    return parsed


#: Reads an answer inside the attempt loop of :meth:`HttpTransport.send` (its ``read``): called
#: with the response, the peer and the operation; an :class:`UnreadableAnswer` it raises is
#: recorded and retried like a 5xx, any other error ends the call.
AnswerReader = Callable[[requests.Response, str, str], object]


def read_json(response: requests.Response, peer: str, operation: str) -> Any:
    """The :data:`AnswerReader` of JSON answers: :func:`response_json`."""
    return response_json(response, peer=peer, operation=operation)


class AnswerTimeout(requests.exceptions.Timeout):
    """An answer was not read whole before the attempt's deadline (``total_timeout``); its
    connection is closed."""


class _Watch:
    """One request waiting for its answer's status line and headers, and the connection it uses."""

    __slots__ = ("conn", "deadline", "done", "fired")

    def __init__(self, deadline: float):
        self.deadline, self.conn, self.done, self.fired = deadline, None, False, False


class _Watchdog:
    """Closes the connection of a request whose deadline passes while it waits for the answer's
    status line and headers: ``read_timeout`` bounds each socket read, and http.client reads the
    headers line by line, so a peer sending one every few seconds would hold a call for as long
    as it likes (the body is read by :func:`read_capped`, which looks at the deadline itself).
    One daemon thread for the whole process, woken by the earliest deadline."""

    _RECHECK = 0.05  # seconds: a connection still being opened (bounded by the connect timeout)

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, _Watch]] = []
        self._seq = itertools.count()
        self._live = 0
        self._thread: threading.Thread | None = None

    def start(self, deadline: float) -> _Watch:
        watch = _Watch(deadline)
        with self._cv:
            heapq.heappush(self._heap, (deadline, next(self._seq), watch))
            self._live += 1
            if self._thread is None or not self._thread.is_alive():  # the first call, or a forked worker
                self._thread = threading.Thread(target=self._run, name="lienthong-answer-deadline", daemon=True)
                self._thread.start()
            self._cv.notify()
        return watch

    def stop(self, watch: _Watch) -> bool:
        """The request is answered (or failed): stop watching it. True when its connection was
        closed for the deadline (whatever the request then got is not to be used)."""
        with self._cv:
            if not watch.done:
                watch.done = True
                self._live -= 1
                if len(self._heap) > 64 and len(self._heap) > 4 * self._live:  # drop the finished ones
                    self._heap = [entry for entry in self._heap if not entry[2].done]
                    heapq.heapify(self._heap)
            return watch.fired

    def _run(self) -> None:
        with self._cv:
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cv.wait()
                    continue
                deadline, _, watch = self._heap[0]
                now = time.monotonic()
                if deadline > now:
                    self._cv.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
                sock = getattr(watch.conn, "sock", None)
                if sock is None:  # not connected yet: look again shortly
                    heapq.heappush(self._heap, (now + self._RECHECK, next(self._seq), watch))
                    continue
                watch.fired = True
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once
                except OSError:
                    pass


    def _after_fork(self) -> None:
        """In a forked child (a Celery worker): no thread, no requests of the parent's, and a lock
        the parent's thread may have held at the fork."""
        self._cv = threading.Condition()
        self._heap, self._live, self._thread = [], 0, None


_WATCHDOG = _Watchdog()
_WATCHED = threading.local()
os.register_at_fork(after_in_child=_WATCHDOG._after_fork)  # noqa: SLF001


def request_by(session: requests.Session, deadline: float, method: str, url: str, **kwargs: Any
               ) -> requests.Response:
    """``session.request`` (with ``stream=True``: up to the answer's headers) whose connection is
    closed if its status line and headers are not in by ``deadline`` (a :func:`time.monotonic`
    time): :class:`AnswerTimeout` then. The session must be a :func:`_peer_session`'s."""
    watch = _WATCHDOG.start(deadline)
    _WATCHED.watch = watch
    try:
        response = session.request(method, url, **kwargs)
    except requests.RequestException:
        if _WATCHDOG.stop(watch):
            raise AnswerTimeout("answer's headers not read whole within the attempt's deadline") from None
        raise
    finally:
        _WATCHED.watch = None
        fired = _WATCHDOG.stop(watch)
    if fired:
        response.close()
        raise AnswerTimeout("answer's headers not read whole within the attempt's deadline")
    return response


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """Tells the watchdog which connection the request being sent on this thread uses."""

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> Any:
        pool = super().get_connection_with_tls_context(*args, **kwargs)
        if not getattr(pool, "_lienthong_watched", False):
            get_conn = pool._get_conn  # noqa: SLF001

            def watched_get_conn(*a: Any, **kw: Any) -> Any:
                conn = get_conn(*a, **kw)
                watch = getattr(_WATCHED, "watch", None)
                if watch is not None:
                    watch.conn = conn
                return conn

            pool._get_conn = watched_get_conn  # noqa: SLF001
            pool._lienthong_watched = True  # noqa: SLF001
        return pool


def total_timeout_for(read_timeout: float, total_timeout: float | None) -> float:
    """The deadline of an attempt, in seconds: ``total_timeout``, or :data:`TOTAL_TIMEOUT_FACTOR`
    times the read timeout."""
    return total_timeout if total_timeout is not None else TOTAL_TIMEOUT_FACTOR * read_timeout


def _chunks(response: requests.Response) -> Iterator[bytes]:
    """A streamed response's body, decoded, each piece what one socket read gave (at most
    :data:`_CHUNK` bytes): ``iter_content`` blocks until a whole chunk has come, however long a
    trickling peer takes. urllib3's errors become requests' own, as ``iter_content`` makes them."""
    raw = response.raw
    read1 = getattr(raw, "read1", None)
    if read1 is None:  # not urllib3's response (a test double): requests' own iteration
        yield from response.iter_content(_CHUNK)
        return
    try:
        while chunk := read1(_CHUNK, decode_content=True):
            yield chunk
    except _Urllib3ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from None
    except _DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc) from None
    except _ReadTimeoutError as exc:
        raise requests.exceptions.ConnectionError(exc) from None
    except _Urllib3SSLError as exc:
        raise requests.exceptions.SSLError(exc) from None


def read_capped(response: requests.Response, limit: int, deadline: float | None = None) -> bool:
    """Read a streamed response's body into it, up to ``limit`` bytes (after content decoding),
    by ``deadline`` (a :func:`time.monotonic` time) when one is given.

    Returns True, with the connection closed and only a short prefix kept as the body, when the
    answer declares or turns out to be larger than ``limit``: nothing larger is ever held.

    Raises:
        AnswerTimeout: the deadline passed before the body was read whole (looked at before the
            body and after each socket read, so it is passed by at most one read timeout); the
            connection is closed.
    """
    def keep_deadline() -> None:
        if deadline is not None and time.monotonic() > deadline:
            response.close()
            raise AnswerTimeout("answer not read whole within the attempt's deadline")

    declared = response.headers.get("Content-Length", "")
    chunks: list[bytes] = []
    size = 0
    oversize = declared.strip().isdigit() and int(declared) > limit
    if not oversize:
        keep_deadline()  # the headers alone may have taken that long
        for chunk in _chunks(response):
            size += len(chunk)
            chunks.append(chunk)
            if size > limit:
                oversize = True
                break
            keep_deadline()
    body = b"".join(chunks)
    if oversize:
        response.close()
        body = body[:_OVERSIZE_PREFIX]
    # requests keeps a read body here; setting it makes .content/.json() work on a streamed response.
    response._content = body  # noqa: SLF001
    response._content_consumed = True  # noqa: SLF001
    return oversize


def header_value_problem(value: str) -> str | None:
    """What keeps ``value`` from going on the wire as an HTTP header value as it is (an API key
    read from a secrets file with its newline...), or ``None``. Never quotes the value: requests'
    own refusal (``InvalidHeader``) does, and it is a secret."""
    if not value:
        return "is empty"
    if value != value.strip():
        return "has leading or trailing whitespace or a line break"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "holds a line break or another control character"
    if not value.isascii():
        return "holds characters outside ASCII"
    return None


def headers_for_log(headers: Any, secret: frozenset[str] = SECRET_HEADERS) -> dict[str, str]:
    """``headers`` as the exchange log keeps them: the value of each header named in ``secret``
    (lower case) replaced by ``***``, and a ``Location`` (a refused redirect's) cut to its scheme
    and host: its path or query may carry a ticket."""
    return {k: (REDACTED if k.lower() in secret else _location_for_log(str(v)) if k.lower() == "location"
                else str(v)) for k, v in headers.items()}


_HOST_NAME = re.compile(r"[A-Za-z0-9.-]{1,253}|[0-9A-Fa-f:.]{2,45}")


def _location_host(location: str) -> tuple[Any, str] | None:
    """The parts of a ``Location`` and its host, when it names one that reads as a host name or
    address (never other text a log or a message could carry); else None."""
    try:
        parts = urlsplit(location)
        host = parts.hostname
    except ValueError:
        return None
    return (parts, host) if host and _HOST_NAME.fullmatch(host) else None


def _location_for_log(location: str) -> str:
    found = _location_host(location)
    if found is None:
        return REDACTED
    parts, host = found
    try:
        host = f"{host}:{parts.port}" if parts.port else host
    except ValueError:  # a port that is not a number
        return REDACTED
    origin = f"{parts.scheme}://{host}" if parts.scheme else f"//{host}"
    return origin + ("/***" if (parts.path not in ("", "/") or parts.query or parts.fragment) else parts.path)


#: 5xx answers that say the peer does not do this request at all (501 Not Implemented, 505 HTTP Version
#: Not Supported): asking again cannot change them, so they end the call like a 4xx
NOT_RETRIED_5XX = frozenset({501, 505})


def server_error(response: requests.Response, *, peer: str, operation: str) -> ConnectorError:
    """The error for a 5xx or 429 answer: :func:`unavailable` (retried), or for a 5xx in
    :data:`NOT_RETRIED_5XX` a :class:`FatalConnectorError` (given up at once)."""
    status = response.status_code
    if status in NOT_RETRIED_5XX:
        reason = (response.reason or "").strip()[:80]
        return FatalConnectorError(f"{peer} {operation}: HTTP {status}{f' {reason}' if reason else ''}: the peer "
                                   "does not do this request; not retried", peer=peer, operation=operation,
                                   status=status)
    return unavailable(response, peer=peer, operation=operation)


def unavailable(response: requests.Response, *, peer: str, operation: str) -> PeerUnavailable:
    """The error for a 5xx or 429 answer, with the wait its ``Retry-After`` asks for (429, 503)."""
    status = response.status_code
    after = retry_after_seconds(response.headers.get("Retry-After")) if status in (429, 503) else None
    said = f"; Retry-After {after:g}s" if after is not None else ""
    return PeerUnavailable(f"{peer} {operation}: HTTP {status}{said}", peer=peer, operation=operation, status=status,
                           retry_after=after)


def _certificate_refusal(exc: BaseException) -> str | None:
    """Why TLS verification refused the peer's certificate (``self-signed certificate``, a
    host-name mismatch...), when that is what ``exc`` (requests' ``SSLError``) comes from, else
    ``None``: a handshake cut short is a dropped connection, a certificate refused is refused again.
    The reason is OpenSSL's and names no secret."""
    seen: set[int] = set()
    pending: list[Any] = [exc]
    while pending:
        error = pending.pop()
        if not isinstance(error, BaseException) or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, ssl.SSLCertVerificationError):
            return str(error.verify_message or error.reason or "certificate verify failed")[:200]
        if isinstance(error, _CertificateError):  # urllib3's own host-name check
            return f"host-name mismatch: {str(error)[:200]}"
        pending.extend([*error.args, getattr(error, "reason", None), error.__cause__, error.__context__])
    return None


def transport_failure(exc: requests.RequestException | UnicodeError, *, peer: str, operation: str,
                      read_timeout: float, total_timeout: float) -> ConnectorError:
    """The error for an attempt that got no answer to use (the HTTP transport's and the ledger's):

    * the deadline passed while the answer was still arriving (:class:`AnswerTimeout`), no answer
      within the read timeout, a connection refused, dropped or a body cut short:
      ``PeerUnavailable``;
    * a peer certificate TLS verification refuses (untrusted, expired, for another host):
      ``FatalConnectorError`` (no retry makes it verify);
    * an answer whose content encoding does not decode: ``UnreadableAnswer``;
    * anything else requests refused (a header value, a URL): ``FatalConnectorError``, naming only
      the type of its error, whose message may quote a header's value, a secret.
    """
    where, kind = f"{peer} {operation}", type(exc).__name__
    refusal = _certificate_refusal(exc) if isinstance(exc, requests.exceptions.SSLError) else None
    if refusal is not None:
        return FatalConnectorError(f"{where}: the peer's TLS certificate was refused ({refusal}); not retried: the "
                                   "CA bundle (REQUESTS_CA_BUNDLE) or the peer's certificate must change",
                                   peer=peer, operation=operation)
    if isinstance(exc, AnswerTimeout):  # an answer still arriving is no answer
        return PeerUnavailable(f"{where}: answer not complete within {total_timeout:g}s (total_timeout); "
                               "connection closed", peer=peer, operation=operation)
    if isinstance(exc, requests.Timeout):
        return PeerUnavailable(f"{where}: no answer within {read_timeout}s ({kind})", peer=peer, operation=operation)
    if isinstance(exc, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):  # a body cut short
        return PeerUnavailable(f"{where}: connection failed ({kind})", peer=peer, operation=operation)
    if isinstance(exc, requests.exceptions.ContentDecodingError):
        return UnreadableAnswer(f"{where}: answer's content encoding cannot be decoded", peer=peer,
                                operation=operation)
    return FatalConnectorError(f"{where}: the request could not be sent ({kind})", peer=peer, operation=operation)


def redirect_refused(response: requests.Response, *, peer: str, operation: str) -> ProtocolError:
    """The error for a 3xx answer. None of our peers redirects, and following one would send the
    call's credentials (an API key header, a log-in body, a WS-Security password) wherever its
    ``Location`` points: redirects are never followed. The error names only the target's host
    (never its path or query, which may carry a ticket)."""
    location = response.headers.get("Location", "")
    found = _location_host(location) if location else None
    if not location:
        target = "without a Location"
    elif found is not None:
        target = f"to host {found[1]}"
    elif not location.startswith("//") and "://" not in location:
        target = "to another path of the same host"
    else:
        target = "to an unreadable location"
    return ProtocolError(f"{peer} {operation}: HTTP {response.status_code} redirect {target} refused: redirects "
                         "are not followed", peer=peer, operation=operation, status=response.status_code)


def _sanitize_url(url: str) -> str:
    """Drop user-info from a URL before it is logged."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


Classifier = Callable[[requests.Response], tuple[str, str | None]]


class _NoRedirects(requests.Session):
    """A session that sees no redirect target in any answer, so it never follows one (they would
    take a call's credentials — an API key header, a log-in body, a WS-Security password — to
    whatever host a ``Location`` names) and never reads a 3xx body itself: with
    ``allow_redirects=False`` alone, requests still reads it whole, past the size cap and the
    deadline, to prepare ``Response.next``. Calls say ``allow_redirects=False`` as well; the
    caller turns a 3xx into an error (:func:`redirect_refused`)."""

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None


def _peer_session(base_url: str) -> requests.Session:
    """A session for one peer whose environment settings are read once, here.

    The proxy for ``base_url`` (``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``, unless ``NO_PROXY``
    names its host) and the CA bundle (``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``) are what requests
    would use; requests would look them up again on every request by scanning ``os.environ``
    (a quarter of a call's CPU in profiles, issue #8). ``~/.netrc`` is not read: every connector
    sends its peer's credentials itself. Redirects are never followed (:class:`_NoRedirects`).
    A CA bundle named for an ``https`` peer that does not exist is a ``ConfigurationError`` here.
    """
    session = _NoRedirects()
    for prefix in ("https://", "http://"):
        session.mount(prefix, _WatchedAdapter())
    settings = session.merge_environment_settings(base_url, {}, None, None, None)
    session.trust_env = False
    session.proxies.update(settings["proxies"])
    session.verify = settings["verify"]
    bundle = session.verify
    if isinstance(bundle, str) and urlsplit(base_url).scheme.lower() == "https" and not os.path.exists(bundle):
        # requests would raise a bare OSError on every call, outside the error tree
        name = "REQUESTS_CA_BUNDLE" if os.environ.get("REQUESTS_CA_BUNDLE") == bundle else "CURL_CA_BUNDLE"
        raise ConfigurationError(f"{urlsplit(base_url).hostname}: {name} names {bundle}, which does not exist; "
                                 "the peer's TLS certificate cannot be verified without its CA bundle")
    return session


class HttpTransport:
    """Sends requests to one peer with timeouts, retries, redaction and recording.

    Args:
        peer: the peer's name as the exchange log shows it.
        base_url: ``scheme://host:port`` of the peer.
        recorder: where each attempt is written (the bus's exchange log in production).
        connect_timeout, read_timeout: seconds; both always set. ``read_timeout`` bounds each
            socket read (the wait for the answer to begin, then each wait for more of it).
        total_timeout: seconds an attempt may take, from sending the request to the last byte of
            the answer (default: :data:`TOTAL_TIMEOUT_FACTOR` × ``read_timeout``); an answer
            still arriving then is dropped and the attempt fails as ``PeerUnavailable`` (its
            headers are held to it by :func:`request_by`, its body by :func:`read_capped`).
        retry: which attempts to make for retriable failures.
        redact_keys: JSON keys whose values never reach the log (passwords, session tokens).
        redact_headers: header names whose values never reach the log, besides
            :data:`SECRET_HEADERS` (always blanked, in requests and answers).
        default_headers: sent on every call (secrets among them must also be in ``redact_headers``;
            their values are checked here: one that is not a valid header value is a
            ``ConfigurationError`` naming the header, never the value).
        seed: seeds the jitter so tests are reproducible.
        max_response_bytes: the largest answer body held; a larger one is refused (``ProtocolError``).
        read: how every 2xx answer is read inside the attempt loop unless a call says
            otherwise (:func:`read_json` for a peer that answers JSON; ``None``: not read here).
    """

    def __init__(
        self,
        *,
        peer: str,
        base_url: str,
        recorder: ExchangeRecorder | None = None,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        total_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        redact_keys: Iterable[str] = (),
        redact_headers: Iterable[str] = (),
        default_headers: dict[str, str] | None = None,
        seed: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        read: AnswerReader | None = None,
    ):
        self.peer = peer
        self.read = read
        self.max_response_bytes = max_response_bytes
        self.base_url = base_url.rstrip("/")
        self.recorder = recorder or NullRecorder()
        self.timeout = (connect_timeout, read_timeout)
        self.total_timeout = total_timeout_for(read_timeout, total_timeout)
        self.retry = retry or RetryPolicy()
        self.redact_keys = frozenset(redact_keys)
        self.redact_headers = frozenset(h.lower() for h in redact_headers) | SECRET_HEADERS
        for name, value in (default_headers or {}).items():
            problem = header_value_problem(value) if name.lower() in self.redact_headers else None
            if problem:
                raise ConfigurationError(f"{peer}: the value of the {name} header {problem}; it cannot be sent")
        self.session = _peer_session(self.base_url)
        self.session.headers.update(default_headers or {})
        self._rng = random.Random(seed)
        self._sleep = sleep

    def close(self) -> None:
        self.session.close()

    def _headers_for_log(self, headers: Any) -> dict[str, str]:
        return headers_for_log(headers, self.redact_headers)

    def send(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        record_keys: Iterable[str] = (),
        classify: Classifier | None = None,
        retry: bool = True,
        read: AnswerReader | None = None,
    ) -> requests.Response:
        """Send one logical request, retrying retriable failures, recording every attempt.

        Returns the response for any HTTP status below 500 except 429 and 3xx (the connector
        decides what a 4xx means for its peer). Redirects are never followed. ``read`` (default:
        the transport's own) reads each 2xx answer inside the attempt loop: one it finds
        unreadable is recorded as a ``protocol_error`` and retried like a 5xx.

        A 429 or 503 whose ``Retry-After`` asks for a wait is asked again after that wait (or the
        back-off, if longer) when it is at most ``retry.max_delay``; a longer one ends the call at
        once (see :func:`wait_before_retry`).

        Raises:
            PeerUnavailable: every attempt timed out (``read_timeout``, or ``total_timeout`` for
                the whole attempt), dropped, or got 5xx/429; or the peer asked
                for a longer wait than this call makes (its ``retry_after``, in seconds).
            UnreadableAnswer: the last attempt's answer could not be read (see ``read``), or its
                content encoding could not be decoded.
            ProtocolError: the answer is larger than ``max_response_bytes`` (never retried: the
                same request gets the same answer), ``read`` found it untrustworthy, or it is a
                redirect (3xx; recorded, not followed: see :func:`redirect_refused`).
            FatalConnectorError: requests refused to make the request (an invalid header value or
                URL...); the message names only the type of its error. Or the peer's TLS certificate
                does not verify (never retried; the message names OpenSSL's reason).
        """
        url = f"{self.base_url}{path}"
        keys = tuple(record_keys)
        body = (
            json.dumps(json_body, ensure_ascii=False, separators=(",", ":")).encode()
            if json_body is not None
            else b""
        )
        send_headers = {"Accept": "application/json"}
        if json_body is not None:
            send_headers["Content-Type"] = "application/json; charset=utf-8"
        send_headers.update(headers or {})
        attempts = self.retry.max_attempts if retry else 1
        read = read or self.read
        last_error: RetriableConnectorError | None = None
        for attempt in range(1, attempts + 1):
            started = datetime.now(UTC)
            t0 = time.perf_counter()
            response: requests.Response | None = None
            error: ConnectorError | None = None
            deadline = time.monotonic() + self.total_timeout
            try:
                response = request_by(
                    self.session, deadline, method, url, data=body or None, params=params, headers=send_headers,
                    timeout=self.timeout, stream=True, allow_redirects=False,
                )
                if read_capped(response, self.max_response_bytes, deadline):
                    error = ProtocolError(
                        f"{self.peer} {operation}: answer larger than {self.max_response_bytes} bytes "
                        f"(HTTP {response.status_code}); refused unread",
                        peer=self.peer, operation=operation, status=response.status_code,
                    )
            except (requests.RequestException, UnicodeError) as exc:
                response = None
                error = transport_failure(exc, peer=self.peer, operation=operation, read_timeout=self.timeout[1],
                                          total_timeout=self.total_timeout)
            duration_ms = (time.perf_counter() - t0) * 1000
            if error is None and response is not None and (response.status_code >= 500 or response.status_code == 429):
                error = server_error(response, peer=self.peer, operation=operation)
            elif error is None and response is not None and 300 <= response.status_code < 400:
                error = redirect_refused(response, peer=self.peer, operation=operation)
            elif error is None and response is not None and read is not None and 200 <= response.status_code < 300:
                try:
                    read(response, self.peer, operation)
                except (UnreadableAnswer, ProtocolError) as exc:
                    error = exc
            outcome, peer_code = "ok", None
            if isinstance(error, (ProtocolError, UnreadableAnswer)):
                outcome = "protocol_error"
            elif response is None:
                outcome = "transport_error"
            elif error is not None or response.status_code >= 400:
                outcome = "http_error"
            elif classify is not None:
                outcome, peer_code = classify(response)
            record_exchange(
                self.recorder,
                Exchange(
                    peer=self.peer,
                    operation=operation,
                    method=method,
                    url=_sanitize_url(response.url if response is not None else url),
                    started_at=started,
                    duration_ms=round(duration_ms, 3),
                    attempt=attempt,
                    outcome=outcome,
                    record_keys=keys,
                    request_headers=self._headers_for_log({**self.session.headers, **send_headers}),
                    request_body=_redact_request(body, json_body, self.redact_keys),
                    response_status=response.status_code if response is not None else None,
                    response_headers=self._headers_for_log(response.headers) if response is not None else {},
                    response_body=_redact_body(response.content, self.redact_keys) if response is not None else b"",
                    peer_code=peer_code,
                    error=f"{type(error).__name__}: {error}" if error else None,
                )
            )
            if error is None:
                return response  # type: ignore[return-value]
            if not isinstance(error, RetriableConnectorError):
                raise error
            last_error = error
            if attempt < attempts:
                delay = wait_before_retry(self.retry, attempt, self._rng, error)
                if delay is None:
                    log.warning("%s; more than the %gs this call waits: giving up now", error, self.retry.max_delay)
                    raise error
                log.warning("%s; retrying in %.2fs (attempt %d of %d)", error, delay, attempt + 1, attempts)
                self._sleep(delay)
        assert last_error is not None
        raise last_error
