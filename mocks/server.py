"""Shared base of the stand-in peers: a loopback-only threaded HTTP server with JSON routing,
an SQLite state file, a world clock and switchable, seeded faults.

Only the standard library is used. A concrete mock subclasses :class:`MockServer`, declares its
routes in :meth:`MockServer.build_routes` and its schema in :meth:`MockServer.init_state`.

Conventions shared by every mock:

* ``/_state...`` and ``/_admin/...`` are *test doors*: no authentication, never faulted.
* Every other route has an *operation* name (a fixed string or one computed from the request, e.g.
  the portal's ``service``); faults configured with ``POST /_admin/faults`` apply per operation.
* State lives in ``<state_dir>/<state_file>``; ``state_dir=None`` means a fresh temporary
  directory that lives as long as the mock object.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import json
import logging
import random
import re
import socket
import socketserver
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

try:  # pragma: no cover - tzdata is present on the supported platforms
    from zoneinfo import ZoneInfo

    VN_TZ: Any = ZoneInfo("Asia/Ho_Chi_Minh")
except Exception:  # pragma: no cover - no tz database: Viet Nam has had no DST since 1975
    VN_TZ = timezone(timedelta(hours=7), "Asia/Ho_Chi_Minh")

__all__ = [
    "FIXTURES_DIR",
    "VN_TZ",
    "WORLD_START",
    "Drop",
    "FaultDecision",
    "FaultNotSupported",
    "FaultPlan",
    "Faults",
    "HttpError",
    "MockServer",
    "NonLoopbackHost",
    "PROXY_ERROR_PAGE",
    "Request",
    "Response",
    "Route",
    "StateDB",
    "ensure_loopback",
    "json_response",
    "load_seed",
    "malformed_json_responses",
    "seeded_rng",
]

log = logging.getLogger("mocks")

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures"
DEFAULT_SEED_FILE = FIXTURES_DIR / "seed" / "quang_nam.yaml"

#: Every mock world's clock starts here (then moves by seeded minutes per event).
WORLD_START = datetime(2026, 11, 2, 8, 0, 0, tzinfo=VN_TZ)

MAX_BODY_BYTES = 32 * 1024 * 1024
TEST_DOOR_PREFIXES = ("/_state", "/_admin")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
class NonLoopbackHost(ValueError):
    """Raised when a mock is asked to listen on anything but a loopback address."""


def ensure_loopback(host: str) -> str:
    """Return the address to bind for ``host``, refusing anything that is not loopback.

    ``localhost`` is accepted and bound as ``127.0.0.1``; any other name is refused (resolving
    names could silently bind a public interface).
    """
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise NonLoopbackHost(
            f"mocks listen on loopback only; {host!r} is not a loopback IP address (use 127.0.0.1)"
        ) from None
    if not address.is_loopback:
        raise NonLoopbackHost(
            f"mocks listen on loopback only; refusing to bind {host!r} (use 127.0.0.1 or ::1)"
        )
    return str(address)


def seeded_rng(seed: int | str, *parts: Any) -> random.Random:
    """A ``random.Random`` derived from ``seed`` and a path of names/counters.

    String seeds are hashed with SHA-512 by ``random``, so the stream is stable across processes
    and Python runs (no ``PYTHONHASHSEED`` dependence). Deriving one RNG per event, instead of
    keeping one long stream, makes a world reproducible across restarts.
    """
    return random.Random("/".join([str(seed), *(str(p) for p in parts)]))


def load_seed(path: str | Path | None = None) -> dict[str, Any]:
    """Load the seed world (units, procedures, names, addresses) from YAML (a private copy)."""
    resolved = Path(path or DEFAULT_SEED_FILE).resolve()
    return copy.deepcopy(_load_seed_cached(resolved, resolved.stat().st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _load_seed_cached(path: Path, mtime_ns: int) -> dict[str, Any]:
    import yaml  # pyyaml: the one allowed non-stdlib dependency

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as fh:
        data = yaml.load(fh, Loader=loader)  # noqa: S506 - a safe loader
    if not isinstance(data, dict) or not data.get("units") or not data.get("procedures"):
        raise ValueError(f"seed file {path} has no units/procedures")
    return data


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 with offset, local Viet Nam time, seconds precision."""
    return None if dt is None else dt.astimezone(VN_TZ).replace(microsecond=0).isoformat()


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(VN_TZ)


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# request / response
# --------------------------------------------------------------------------------------------
class HttpError(Exception):
    """Raise from a handler to answer ``status`` with a JSON ``body``."""

    def __init__(self, status: int, body: Any):
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class Drop(Exception):
    """Raise to close the connection without any answer."""


class BadJson(ValueError):
    pass


def _not_a_json_number(name: str) -> Any:
    """``json.loads`` reads NaN, Infinity and -Infinity; RFC 8259 has none of them and the peers'
    parsers refuse them, so a body carrying one is not JSON here either."""
    raise ValueError(f"{name} is not a JSON value")


#: A ``\\uD800``–``\\uDFFF`` escape in the text: the only way a lone UTF-16 surrogate gets into a string.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _has_lone_surrogate(value: Any) -> bool:
    """True when a string in ``value`` (keys included) holds half a UTF-16 pair, which is no
    Unicode text: ``json.loads`` reads ``"\\ud800"`` into one, and it then fails every UTF-8
    encoding (the state file, the answer). A proper pair is read as one character and passes."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    _json: Any = field(default=None, repr=False)
    _json_error: str | None = field(default=None, repr=False)
    _parsed: bool = field(default=False, repr=False)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def json(self) -> Any:
        """The body parsed as JSON (cached). Raises :class:`BadJson` when it is not JSON."""
        if not self._parsed:
            self._parsed = True
            try:
                text = self.body.decode("utf-8")
                self._json = json.loads(text, parse_constant=_not_a_json_number) if text.strip() else None
                if not text.strip():
                    self._json_error = "empty body"
                elif _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(self._json):
                    self._json, self._json_error = None, "a string holds a lone UTF-16 surrogate"
            except (UnicodeDecodeError, ValueError) as exc:
                self._json_error = str(exc)
            except RecursionError:  # nested deeper than the parser follows: refused like any non-JSON body
                self._json_error = "JSON nested too deeply"
        if self._json_error is not None:
            raise BadJson(self._json_error)
        return self._json

    def json_object(self, *, empty_ok: bool = True) -> dict[str, Any]:
        """The body as a JSON object; an empty body is ``{}`` when ``empty_ok``."""
        if not self.body.strip() and empty_ok:
            return {}
        data = self.json()
        if not isinstance(data, dict):
            raise BadJson("body is not a JSON object")
        return data


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    outcome: str | None = None  # how the call ended, for call counters (e.g. the portal's error_code)


def json_response(status: int, obj: Any, headers: dict[str, str] | None = None, *,
                  outcome: str | None = None) -> Response:
    return Response(status, dumps(obj).encode("utf-8"), headers=dict(headers or {}), outcome=outcome)


def _plain_error(status: int) -> Response:
    """What a real front web server says when the application behind it fails: a small HTML page."""
    from http import HTTPStatus

    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    html = f"<html><head><title>{status} {phrase}</title></head><body><h1>{status} {phrase}</h1></body></html>"
    return Response(status, html.encode("utf-8"), content_type="text/html; charset=utf-8")


#: What a reverse proxy serves when its upstream is gone: an nginx error page.
PROXY_ERROR_PAGE = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
                    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
                    b"</body>\r\n</html>\r\n")


def malformed_json_responses(truncated: bytes, status: int = 200) -> list[Response]:
    """The usual ways a JSON API's success answer arrives broken, all with ``status``:
    ``truncated`` (a body cut short), an HTML proxy error page labelled as JSON, a JSON value of the
    wrong shape (an array where an object is expected) and an empty body."""
    json_type = "application/json; charset=utf-8"
    return [
        Response(status, truncated, content_type=json_type),
        Response(status, PROXY_ERROR_PAGE, content_type=json_type),
        Response(status, b"[]", content_type=json_type),
        Response(status, b"", content_type=json_type),
    ]


# --------------------------------------------------------------------------------------------
# routing
# --------------------------------------------------------------------------------------------
Handler = Callable[[Request], Response]
OperationOf = str | Callable[[Request], str] | None


@dataclass
class Route:
    method: str
    pattern: str
    handler: Handler
    operation: OperationOf = None
    regex: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        parts = []
        for piece in re.split(r"(\{\w+\})", self.pattern):
            if piece.startswith("{") and piece.endswith("}"):
                parts.append(f"(?P<{piece[1:-1]}>[^/]+)")
            else:
                parts.append(re.escape(piece))
        self.regex = re.compile("^" + "".join(parts) + "$")

    @property
    def is_test_door(self) -> bool:
        return self.pattern.startswith(TEST_DOOR_PREFIXES)


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, pattern: str, handler: Handler, operation: OperationOf = None) -> None:
        self.routes.append(Route(method.upper(), pattern, handler, operation))

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """(route, path params, path_known). ``path_known`` without route means wrong method."""
        known = False
        for route in self.routes:
            m = route.regex.match(path)
            if m:
                known = True
                if route.method == method:
                    return route, {k: unquote(v) for k, v in m.groupdict().items()}, True
        return None, {}, known


# --------------------------------------------------------------------------------------------
# faults
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FaultPlan:
    """Faults to inject. All rates are probabilities in [0, 1]; an empty plan injects nothing.

    ``error_rate``/``http_status``, ``drop_rate``, ``ambiguous_rate``, ``soap_fault_rate`` and
    ``malformed_rate`` choose at most one *outcome* per request (see :class:`Faults`);
    ``latency_ms`` (every request) and ``slow_rate``/``slow_ms`` (a share of them) only delay it.
    """

    error_rate: float = 0.0
    http_status: int = 503
    latency_ms: float = 0.0
    drop_rate: float = 0.0
    ambiguous_rate: float = 0.0
    seed: int = 0
    operations: tuple[str, ...] | None = None
    #: Portal only: every session expires after this many successful calls (``None`` = never).
    #: Not a per-request draw, so it neither makes the plan ``active`` nor uses the fault stream.
    session_expire_every: int | None = None
    #: Share of requests answered with the operation's success status and a broken body (not applied).
    malformed_rate: float = 0.0
    #: Share of requests delayed by ``slow_ms`` before they are handled (then handled normally).
    slow_rate: float = 0.0
    #: Delay of a ``slow`` request, milliseconds.
    slow_ms: float = 0.0
    #: Ministry ledger only: share of requests answered with a SOAP 1.1 ``soap:Server`` Fault (not applied).
    soap_fault_rate: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.error_rate or self.latency_ms or self.drop_rate or self.ambiguous_rate
                    or self.malformed_rate or (self.slow_rate and self.slow_ms) or self.soap_fault_rate)

    def as_dict(self) -> dict[str, Any]:
        return {
            "error_rate": self.error_rate,
            "http_status": self.http_status,
            "latency_ms": self.latency_ms,
            "drop_rate": self.drop_rate,
            "ambiguous_rate": self.ambiguous_rate,
            "malformed_rate": self.malformed_rate,
            "slow_rate": self.slow_rate,
            "slow_ms": self.slow_ms,
            "soap_fault_rate": self.soap_fault_rate,
            "seed": self.seed,
            "operations": list(self.operations) if self.operations is not None else None,
            "session_expire_every": self.session_expire_every,
        }


@dataclass(frozen=True)
class FaultDecision:
    """What the fault stream decided for one request.

    ``latency_s`` and ``slow_s`` are delays before handling; at most one of ``drop``,
    ``error_status``, ``soap_fault``, ``malformed`` and ``ambiguous`` is set. ``malformed_pick``
    in [0, 1) chooses among the mock's broken bodies.
    """

    latency_s: float = 0.0
    drop: bool = False
    error_status: int | None = None
    ambiguous: bool = False
    slow_s: float = 0.0
    soap_fault: bool = False
    malformed: bool = False
    malformed_pick: float = 0.0


class FaultNotSupported(ValueError):
    """A fault setting this mock cannot honour (for example ``soap_fault_rate`` on a JSON API)."""


class Faults:
    """Seeded fault injection, with counters of what was injected.

    Every request to a faultable operation that an active plan covers draws three numbers from the
    plan's RNG ``random.Random(seed)`` (drop, error, ambiguous, in that order) whatever the rates,
    and four from a second RNG ``seeded_rng(seed, "faults-extra")`` (slow, SOAP Fault, malformed,
    which malformed body). The two streams are independent, so the first one is exactly what it was
    before the second existed; the same plan and the same sequence of requests give the same faults.

    Outcome priority: drop, then error (``http_status``), then SOAP Fault, then malformed, then
    ambiguous; only the winning one happens and is counted. Delays come first in every case:
    ``latency_ms`` on every request, then ``slow_ms`` on a ``slow`` one (counted as ``slow`` besides
    any outcome).

    Counters: ``injected`` (kind -> count) restarts at every :meth:`configure`; ``injected_total``
    counts the same kinds since this object was made (a mock's lifetime, across plans and resets).
    Kinds: ``drop``, ``http_<status>``, ``soap_fault``, ``malformed``, ``ambiguous``, ``slow``, and
    whatever a mock adds with :meth:`count` (``session_expired``, ``callback_lost``, ``callback_duplicate``).
    """

    FIELDS = {"error_rate", "http_status", "latency_ms", "drop_rate", "ambiguous_rate", "seed", "operations",
              "session_expire_every", "malformed_rate", "slow_rate", "slow_ms", "soap_fault_rate"}
    #: Upper bound of ``latency_ms`` and ``slow_ms`` (two minutes).
    MAX_DELAY_MS = 120_000

    def __init__(self, *, ambiguous_supported: bool, sessions_supported: bool = False,
                 soap_supported: bool = False):
        self.ambiguous_supported = ambiguous_supported
        self.sessions_supported = sessions_supported
        self.soap_supported = soap_supported
        self._lock = threading.Lock()
        self.plan = FaultPlan()
        self._rng = random.Random(0)
        self._rng_extra = seeded_rng(0, "faults-extra")
        self.injected: dict[str, int] = {}
        self.injected_total: dict[str, int] = {}
        #: Increases at every ``configure``: lets a mock restart per-plan counters.
        self.generation = 0

    def configure(self, spec: Mapping[str, Any]) -> FaultPlan:
        """Validate and install a plan; ``{}`` clears. Raises ``ValueError`` with a clear text.

        ``injected`` restarts from zero; ``injected_total`` keeps counting.
        """
        unknown = set(spec) - self.FIELDS
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(sorted(unknown))}")

        def rate(name: str) -> float:
            value = spec.get(name, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number between 0 and 1")
            return float(value)

        def delay(name: str) -> float:
            value = spec.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not 0 <= value <= self.MAX_DELAY_MS:
                raise ValueError(f"{name} must be a number of milliseconds between 0 and {self.MAX_DELAY_MS}")
            return float(value)

        status = spec.get("http_status", 503)
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError("http_status must be an integer HTTP error status (400..599)")
        latency = delay("latency_ms")
        seed = spec.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError("seed must be an integer")
        operations = spec.get("operations")
        if operations is not None:
            if not isinstance(operations, list) or not all(isinstance(o, str) and o for o in operations):
                raise ValueError("operations must be a list of operation names")
            operations = tuple(operations)
        ambiguous = rate("ambiguous_rate")
        if ambiguous and not self.ambiguous_supported:
            raise FaultNotSupported("ambiguous_rate is not supported by this mock (national portal only)")
        expire_every = spec.get("session_expire_every")
        if expire_every is not None:
            if not self.sessions_supported:
                raise FaultNotSupported(
                    "session_expire_every is not supported by this mock (national portal only)")
            if (isinstance(expire_every, bool) or not isinstance(expire_every, int)
                    or not 1 <= expire_every <= 1_000_000):
                raise ValueError("session_expire_every must be an integer number of calls between 1 and 1000000")
        slow_rate, slow_ms = rate("slow_rate"), delay("slow_ms")
        if slow_rate and not slow_ms:
            raise ValueError("slow_rate needs slow_ms, the delay of a slow request (1..120000 milliseconds)")
        soap_fault = rate("soap_fault_rate")
        if soap_fault and not self.soap_supported:
            raise FaultNotSupported("soap_fault_rate is not supported by this mock (ministry ledger only)")
        plan = FaultPlan(
            error_rate=rate("error_rate"), http_status=status, latency_ms=latency,
            drop_rate=rate("drop_rate"), ambiguous_rate=ambiguous, seed=seed, operations=operations,
            session_expire_every=expire_every, malformed_rate=rate("malformed_rate"), slow_rate=slow_rate,
            slow_ms=slow_ms, soap_fault_rate=soap_fault,
        )
        with self._lock:
            self.plan = plan
            self._rng = random.Random(seed)
            self._rng_extra = seeded_rng(seed, "faults-extra")
            self.injected = {}
            self.generation += 1
        return plan

    def clear(self) -> None:
        self.configure({})

    def _count(self, kind: str, n: int) -> None:
        """Add ``n`` to both counters of ``kind`` (the caller holds the lock)."""
        self.injected[kind] = self.injected.get(kind, 0) + n
        self.injected_total[kind] = self.injected_total.get(kind, 0) + n

    def count(self, kind: str, n: int = 1) -> None:
        """Count ``n`` faults of ``kind`` that a mock injected itself (outside :meth:`draw`)."""
        if n > 0:
            with self._lock:
                self._count(kind, n)

    def draw(self, operation: str) -> FaultDecision:
        with self._lock:
            plan = self.plan
            if not plan.active or (plan.operations is not None and operation not in plan.operations):
                return FaultDecision()
            r_drop, r_error, r_amb = self._rng.random(), self._rng.random(), self._rng.random()
            extra = self._rng_extra
            r_slow, r_soap, r_malformed, r_pick = extra.random(), extra.random(), extra.random(), extra.random()
            drop = r_drop < plan.drop_rate
            error_status = plan.http_status if not drop and r_error < plan.error_rate else None
            soap_fault = not drop and error_status is None and r_soap < plan.soap_fault_rate
            malformed = not (drop or error_status or soap_fault) and r_malformed < plan.malformed_rate
            decision = FaultDecision(
                latency_s=plan.latency_ms / 1000.0,
                drop=drop,
                error_status=error_status,
                ambiguous=not (drop or error_status or soap_fault or malformed) and r_amb < plan.ambiguous_rate,
                slow_s=plan.slow_ms / 1000.0 if r_slow < plan.slow_rate else 0.0,
                soap_fault=soap_fault,
                malformed=malformed,
                malformed_pick=r_pick,
            )
            kind = (
                "drop" if decision.drop
                else f"http_{decision.error_status}" if decision.error_status
                else "soap_fault" if decision.soap_fault
                else "malformed" if decision.malformed
                else "ambiguous" if decision.ambiguous
                else None
            )
            if kind:
                self._count(kind, 1)
            if decision.slow_s:
                self._count("slow", 1)
            return decision

    def snapshot(self) -> dict[str, Any]:
        """The plan's settings (those this mock supports) with ``injected`` and ``injected_total``."""
        with self._lock:
            plan = self.plan.as_dict()
            if not self.sessions_supported:
                del plan["session_expire_every"]
            if not self.soap_supported:
                del plan["soap_fault_rate"]
            return {**plan, "injected": dict(self.injected), "injected_total": dict(self.injected_total)}


# --------------------------------------------------------------------------------------------
# state
# --------------------------------------------------------------------------------------------
class StateDB:
    """One SQLite connection guarded by one re-entrant lock (the mocks' traffic is tiny)."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.RLock()
        self.conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and run one transaction (committed on success, rolled back on error)."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self.lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: Any) -> None:
        with self.lock:
            self.conn.execute(
                "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, str(value)),
            )

    def close(self) -> None:
        with self.lock:
            self.conn.close()


class WorldClock:
    """The mock world's own clock, kept in the ``meta`` table (never the wall clock).

    It starts at :data:`WORLD_START` and moves forward by seeded minutes per event. With
    ``office_hours`` it stays within 07:30–17:00 on weekdays, like a one-stop desk.
    """

    KEY = "clock"

    def __init__(self, db: StateDB, seed: int | str, *, office_hours: bool = False):
        self.db = db
        self.seed = seed
        self.office_hours = office_hours

    def now(self) -> datetime:
        value = self.db.get_meta(self.KEY)
        return parse_iso(value) if value else WORLD_START

    def advance(self, event_no: int, *, low: int = 1, high: int = 30) -> datetime:
        """Move the clock by a seeded number of minutes (event ``event_no``) and return it."""
        rng = seeded_rng(self.seed, "clock", event_no)
        t = self.now() + timedelta(minutes=rng.randint(low, high))
        if self.office_hours and (t.hour >= 17 or t.weekday() >= 5):
            t = t.replace(hour=7, minute=30, second=0) + timedelta(days=1)
            while t.weekday() >= 5:
                t += timedelta(days=1)
            t += timedelta(minutes=rng.randint(0, 40))
        self.db.set_meta(self.KEY, iso(t))
        return t

    def reset(self) -> None:
        self.db.set_meta(self.KEY, iso(WORLD_START))


# --------------------------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------------------------
class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver listens with a backlog of 5: a burst of parallel callers (Celery workers, the
    # reliability harness' threads) would meet connection resets no fault plan asked for. A real
    # front server queues hundreds (nginx: 511); the kernel caps this at net.core.somaxconn.
    request_queue_size = max(128, socket.SOMAXCONN)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn); loopback needs none.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = port


class _RequestHandler(BaseHTTPRequestHandler):
    server_version = "lienthong-mock/1.0"
    protocol_version = "HTTP/1.0"  # one request per connection: stop() never leaves live keep-alives
    timeout = 60
    mock: MockServer  # set on a per-server subclass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # Paths and statuses only: bodies and headers (passwords, sessions, API keys) are never logged.
        log.debug("%s %s", self.mock.name, format % args)

    def _handle(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self._send(json_response(413 if length > 0 else 400, {"error": "bad_request",
                                                                 "message": "bad Content-Length"}))
            return
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=split.path or "/",
            query=parse_qs(split.query, keep_blank_values=True),
            headers=self.headers,
            body=body,
        )
        try:
            response = self.mock.dispatch(request)
        except Drop:
            self.close_connection = True
            return
        try:
            self._send(response)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a slow fault, a timeout)
            self.close_connection = True
            log.debug("%s: the client closed the connection before the answer to %s %s", self.mock.name,
                      request.method, request.path)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


class MockServer:
    """Base of a stand-in peer.

    Args:
        state_dir: directory for the SQLite state file; ``None`` = a fresh temporary directory
            kept for the lifetime of this object (so ``stop()``/``start()`` keeps the state).
        host: loopback address to bind (``127.0.0.1``, ``::1`` or ``localhost``); anything else
            raises :class:`NonLoopbackHost`.
        port: TCP port; ``0`` picks a free ephemeral port at each ``start()``.
        seed: seed of the world's deterministic data, clock and default fault stream.
    """

    name = "mock"
    state_file = "mock.db"
    ambiguous_supported = False
    sessions_supported = False
    #: Whether ``soap_fault_rate`` is accepted (a SOAP service overrides :meth:`soap_fault_response`).
    soap_faults_supported = False

    def __init__(self, state_dir: str | Path | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 seed: int = 49):
        self.host = ensure_loopback(host)
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer 0..65535, got {port!r}")
        self.requested_port = port
        self.seed = seed
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"lienthong-{self.name}-")
            state_dir = self._tmp.name
        self.state_dir = Path(state_dir)
        self.faults = Faults(ambiguous_supported=self.ambiguous_supported,
                             sessions_supported=self.sessions_supported,
                             soap_supported=self.soap_faults_supported)
        self.router = Router()
        self.build_routes(self.router)
        self.db: StateDB | None = None
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- to override -------------------------------------------------------------------------
    def build_routes(self, router: Router) -> None:
        raise NotImplementedError

    def init_state(self, db: StateDB) -> None:
        """Create tables and, for an empty state, the initial world."""

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.state_dir / self.state_file

    def open_state(self) -> None:
        if self.db is None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.db = StateDB(self.state_path)
            self.init_state(self.db)

    def _bind(self) -> _HTTPServer:
        handler = type(f"{type(self).__name__}Handler", (_RequestHandler,), {"mock": self})
        server_cls = _HTTPServer
        if ":" in self.host:
            server_cls = type("_HTTPServer6", (_HTTPServer,), {"address_family": socket.AF_INET6})
        return server_cls((self.host, self.requested_port), handler)

    def start(self) -> MockServer:
        """Open the state and serve in a background daemon thread. Returns ``self``."""
        if self._httpd is not None:
            raise RuntimeError(f"{self.name} mock is already running at {self.url}")
        self.open_state()
        self._httpd = self._bind()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.005},
            name=f"mock-{self.name}", daemon=True,
        )
        self._thread.start()
        log.info("%s mock listening on %s (state %s)", self.name, self.url, self.state_path)
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (Ctrl-C), then close cleanly."""
        if self._httpd is not None:
            raise RuntimeError(f"{self.name} mock is already running at {self.url}")
        self.open_state()
        self._httpd = self._bind()
        log.info("%s mock listening on %s (state %s)", self.name, self.url, self.state_path)
        try:
            self._httpd.serve_forever(poll_interval=0.05)
        except KeyboardInterrupt:
            pass
        finally:
            self._httpd.server_close()
            self._httpd = None
            self._close_state()

    def stop(self) -> None:
        """Stop serving and close the state file. Safe to call twice."""
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._close_state()

    def _close_state(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def close(self) -> None:
        """Stop and remove the temporary state directory, if this mock made one."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> MockServer:
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError(f"{self.name} mock is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    # -- request handling --------------------------------------------------------------------
    def not_found(self, request: Request) -> Response:
        return json_response(404, {"error": "not_found", "message": f"no route {request.method} {request.path}"})

    def method_not_allowed(self, request: Request) -> Response:
        return json_response(405, {"error": "method_not_allowed",
                                   "message": f"{request.method} is not allowed on {request.path}"})

    def internal_error(self, request: Request) -> Response:
        return json_response(500, {"error": "internal_error", "message": "the mock failed; see its log"})

    def ambiguous_response(self, request: Request, applied: Response) -> Response:
        """What to answer when an ``ambiguous`` fault hits after the change was applied."""
        return _plain_error(500)

    def malformed_responses(self, request: Request, operation: str) -> list[Response]:
        """Hook: the broken answers a ``malformed`` fault may give for ``operation`` (one is chosen
        by the fault stream). Each carries the operation's normal success status; the request itself
        is not applied. Default: :func:`malformed_json_responses` of a generic JSON document."""
        return malformed_json_responses(b'{"status":"ok","data":[{"id":1,"name":"')

    def soap_fault_response(self, request: Request) -> Response:
        """Hook: the SOAP Fault a ``soap_fault`` fault answers (only for ``soap_faults_supported``)."""
        raise NotImplementedError(f"{self.name} mock has no SOAP Fault")

    def _malformed(self, request: Request, operation: str, pick: float) -> Response:
        choices = self.malformed_responses(request, operation)
        return choices[min(int(pick * len(choices)), len(choices) - 1)]

    def dispatch(self, request: Request) -> Response:
        route, params, known = self.router.match(request.method, request.path)
        if route is None:
            return self.method_not_allowed(request) if known else self.not_found(request)
        request.params = params
        decision = FaultDecision()
        operation: str | None = None
        if not route.is_test_door and route.operation is not None:
            operation = route.operation(request) if callable(route.operation) else route.operation
            decision = self.faults.draw(operation)
            delay = decision.latency_s + decision.slow_s
            if delay:
                time.sleep(delay)  # a slow request is then handled normally, even if its client gave up
            if decision.drop:
                self.on_answer(request, operation, "fault_drop")
                raise Drop()
            if decision.error_status:
                self.on_answer(request, operation, f"fault_http_{decision.error_status}")
                return _plain_error(decision.error_status)
            if decision.soap_fault:
                self.on_answer(request, operation, "fault_soap")
                return self.soap_fault_response(request)
            if decision.malformed:
                self.on_answer(request, operation, "fault_malformed")
                return self._malformed(request, operation, decision.malformed_pick)
        try:
            response = route.handler(request)
        except HttpError as exc:
            response = json_response(exc.status, exc.body)
        except Exception:
            log.exception("%s mock: handler for %s %s failed", self.name, request.method, request.path)
            response = self.internal_error(request)
        if decision.ambiguous:
            response = self.ambiguous_response(request, response)
            outcome = f"ambiguous_{response.status}"
        else:
            outcome = response.outcome or f"http_{response.status}"
        if operation is not None:
            self.on_answer(request, operation, outcome)
        return response

    def on_answer(self, request: Request, operation: str, outcome: str) -> None:
        """Hook: how a faultable request ended (``fault_drop``, ``fault_http_503``, ``fault_soap``,
        ``fault_malformed``, ``ambiguous_500``, the handler's ``Response.outcome`` or ``http_<status>``).
        Default: nothing."""

    # -- shared test doors -------------------------------------------------------------------
    def admin_faults(self, request: Request) -> Response:
        try:
            spec = request.json_object()
            self.faults.configure(spec)
        except (BadJson, ValueError) as exc:
            return json_response(400, {"error": "bad_request", "message": str(exc)})
        return json_response(200, {"faults": self.faults.snapshot()})

    def get_faults(self, request: Request) -> Response:
        return json_response(200, {"faults": self.faults.snapshot()})

    def require_db(self) -> StateDB:
        if self.db is None:
            raise RuntimeError(f"{self.name} mock state is not open; call start()")
        return self.db
