"""The one-stop system stand-in (Hệ thống thông tin một cửa điện tử), wire format docs/wire/onestop.md."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from mocks.one_stop.payments import PAYMENT_SCHEMA, PaymentsMixin, loopback_url
from mocks.one_stop.procedures import PROCEDURE_SCHEMA, ProceduresMixin
from mocks.one_stop.world import DEFECT_KINDS, FINAL_STATUSES, LEGAL_TRANSITIONS, Generator
from mocks.payment_platform.app import DEFAULT_PARTNER, DEFAULT_SECRET
from mocks.server import (
    BadJson,
    MockServer,
    Request,
    Response,
    Router,
    StateDB,
    WorldClock,
    dumps,
    json_response,
    load_seed,
    malformed_json_responses,
    seeded_rng,
)

__all__ = ["DEFAULT_API_KEY", "OneStopMock"]

log = logging.getLogger("mocks.one_stop")

DEFAULT_API_KEY = "demo-onestop-key"
MAX_ADVANCE = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dossiers (
    dossier_no TEXT PRIMARY KEY,
    idx INTEGER NOT NULL UNIQUE,
    status TEXT NOT NULL,
    defect TEXT,
    version INTEGER NOT NULL,
    snapshot TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    dossier_no TEXT NOT NULL,
    version INTEGER NOT NULL,
    changed_at TEXT NOT NULL,
    snapshot TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

_CURSOR_PREFIX = "c1."
_CURSOR_BODY = re.compile(r"^seq:(0|[1-9][0-9]{0,17})$")


def encode_cursor(seq: int) -> str:
    raw = base64.urlsafe_b64encode(f"seq:{seq}".encode("ascii")).decode("ascii").rstrip("=")
    return _CURSOR_PREFIX + raw


def decode_cursor(cursor: str) -> int:
    """The seq a cursor stands for. Raises ``ValueError`` for anything this server did not issue."""
    if not cursor.startswith(_CURSOR_PREFIX):
        raise ValueError("malformed cursor")
    raw = cursor[len(_CURSOR_PREFIX):]
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("malformed cursor") from None
    m = _CURSOR_BODY.match(text)
    if not m or encode_cursor(int(m.group(1))) != cursor:
        raise ValueError("malformed cursor")
    return int(m.group(1))


def _bad_request(message: str) -> Response:
    return json_response(400, {"error": "bad_request", "message": message})


_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})$")


def _instant_arg(request: Request, name: str) -> datetime | None:
    """An ISO 8601 date-time *with offset* from the query, or ``None`` when absent.
    Raises ``ValueError`` with the message to answer."""
    value = request.arg(name)
    if value is None:
        return None
    hint = (f"{name} must be an ISO 8601 date-time with offset, e.g. 2026-11-02T08:00:00+07:00 "
            f"(write + as %2B in a query string)")
    if not _ISO_DATETIME.match(value):
        raise ValueError(hint)
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(hint) from None


def _stored_instant(value: Any) -> datetime | None:
    """A stored ``modifiedAt`` as an instant, or ``None`` when it is not an ISO 8601 date-time with
    offset (a raw dossier's may be absent, another type, another form or without offset): such a
    dossier is not found by the ``modifiedFrom``/``modifiedTo`` listing."""
    if not isinstance(value, str) or not _ISO_DATETIME.match(value):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _int_arg(request: Request, name: str, default: int, low: int, high: int | None) -> int:
    value = request.arg(name)
    if value is None or value == "":
        return default
    if not re.fullmatch(r"[0-9]{1,9}", value):
        raise ValueError(name)
    number = int(value)
    if number < low or (high is not None and number > high):
        raise ValueError(name)
    return number


class OneStopMock(PaymentsMixin, ProceduresMixin, MockServer):
    """Stand-in for the provincial one-stop system, a real HTTP server on loopback.

    Args:
        state_dir: directory of ``onestop.db``; ``None`` = a fresh temporary directory. A state
            that already holds a world is reused as is (its stored seed wins over ``seed``).
        host: loopback address to bind (default ``127.0.0.1``); other hosts are refused.
        port: TCP port, ``0`` (default) = ephemeral.
        seed: world seed (default 49): same seed + same calls = same data.
        seed_dossiers: dossiers created when the state is empty (default 40).
        api_key: the ``X-Api-Key`` every ``/api/v1`` call must carry (default ``demo-onestop-key``).
        seed_file: the seed YAML (default ``fixtures/seed/quang_nam.yaml``).
        payment_secret: the checksum secret shared with the national payment platform (signs INIT,
            verifies confirm callbacks; default the platform stand-in's ``demo-payment-secret``).
        payment_partner: this one-stop's MaDoiTac at the platform (default ``DVC_H49``).
        payment_platform_url: ``http://127.0.0.1:<port>`` of the platform, used by the
            ``/_admin/payments/open`` door to send INIT (``None`` = not configured; settable later).
        payment_timeout: seconds an INIT call to the platform may take.

    Usage::

        mock = OneStopMock(port=0).start()
        requests.get(mock.url + "/api/v1/dossiers/changes", headers={"X-Api-Key": mock.api_key}, timeout=5)
        mock.stop()
    """

    name = "onestop"
    state_file = "onestop.db"
    ambiguous_supported = False

    def __init__(self, state_dir: str | Path | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 seed: int = 49, seed_dossiers: int = 40, api_key: str = DEFAULT_API_KEY,
                 seed_file: str | Path | None = None, payment_secret: str = DEFAULT_SECRET,
                 payment_partner: str = DEFAULT_PARTNER, payment_platform_url: str | None = None,
                 payment_timeout: float = 5.0):
        if not payment_secret:
            raise ValueError("payment_secret must not be empty")
        self.payment_secret = payment_secret
        self.payment_partner = payment_partner
        self.payment_platform_url = loopback_url("payment_platform_url", payment_platform_url)
        self.payment_timeout = payment_timeout
        if not isinstance(seed_dossiers, int) or not 0 <= seed_dossiers <= MAX_ADVANCE:
            raise ValueError(f"seed_dossiers must be an integer 0..{MAX_ADVANCE}")
        if not api_key:
            raise ValueError("api_key must not be empty")
        self.api_key = api_key
        self.seed_dossiers = seed_dossiers
        self.seed_data = load_seed(seed_file)
        super().__init__(state_dir, host=host, port=port, seed=seed)
        self.gen = Generator(self.seed_data, seed)

    # -- routes ------------------------------------------------------------------------------
    def build_routes(self, router: Router) -> None:
        router.add("GET", "/health", lambda r: json_response(200, {"status": "ok"}))
        router.add("GET", "/api/v1/dossiers/changes", self._changes, operation="changes")
        router.add("GET", "/api/v1/dossiers/{dossierNo}", self._dossier, operation="dossier")
        router.add("GET", "/api/v1/dossiers", self._dossiers, operation="dossiers")
        self._procedure_routes(router)
        self._payment_routes(router)
        router.add("GET", "/_state", self._state)
        router.add("GET", "/_state/dossiers", self._state_dossiers)
        router.add("GET", "/_state/dossiers/{dossierNo}", self._state_dossier)
        router.add("GET", "/_state/events", self._state_events)
        router.add("POST", "/_admin/advance", self._advance)
        router.add("POST", "/_admin/dossiers/raw", self._raw_dossier)
        router.add("POST", "/_admin/faults", self.admin_faults)
        router.add("GET", "/_admin/faults", self.get_faults)
        router.add("POST", "/_admin/reset", self._reset)

    def malformed_responses(self, request: Request, operation: str) -> list[Response]:
        """Injected ``malformed`` answers (HTTP 200, nothing applied): the operation's JSON cut short
        (a page of ``items`` for the lists, one object otherwise), an nginx error page labelled as
        JSON, a JSON array instead of the object, an empty body."""
        if operation in ("changes", "dossiers", "payments", "procedures"):
            truncated = b'{"items":[{"dossierNo":"000.00.01.H49-261102-0001","'
        else:
            truncated = b'{"dossierNo":"000.00.01.H49-261102-0001","status":"'
        return malformed_json_responses(truncated)

    # -- state -------------------------------------------------------------------------------
    def init_state(self, db: StateDB) -> None:
        with db.lock:
            db.conn.executescript(_SCHEMA)
            db.conn.executescript(PROCEDURE_SCHEMA)
            db.conn.executescript(PAYMENT_SCHEMA)
            stored = db.get_meta("world_seed")
            if stored is None:
                self._seed_world(db)
            else:
                if str(self.seed) != stored:
                    log.warning("onestop state in %s was seeded with %s; keeping it (seed %s ignored)",
                                self.state_path, stored, self.seed)
                self.seed = int(stored)
                self.gen = Generator(self.seed_data, self.seed)
                if db.get_meta("payments_seeded") is None:
                    self._seed_missing_payments(db)

    def _seed_missing_payments(self, db: StateDB) -> None:
        """A state made before payment requests existed: register the seeded world's payments, taken
        from a private copy of that world (its dossiers may have moved on since)."""
        copy = OneStopMock(None, seed=self.seed, seed_dossiers=int(db.get_meta("seed_dossiers") or 0),
                           payment_secret=self.payment_secret)
        try:
            copy.open_state()
            rows = copy.require_db().conn.execute("SELECT snapshot FROM dossiers ORDER BY idx").fetchall()
            dossiers = [json.loads(r[0]) for r in rows]
        finally:
            copy.close()
        with db.tx():
            self._seed_payments(db, dossiers)

    def _clock(self, db: StateDB) -> WorldClock:
        return WorldClock(db, self.seed, office_hours=True)

    def _seed_world(self, db: StateDB) -> None:
        """Create the initial world: ``seed_dossiers`` dossiers with interleaved histories."""
        self.gen = Generator(self.seed_data, self.seed)
        with db.tx() as conn:
            for table in ("dossiers", "events", "counters", "procedures", "procedure_ops", "payment_requests",
                          "payment_callbacks"):
                conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
            db.set_meta("world_seed", self.seed)
            db.set_meta("seed_dossiers", self.seed_dossiers)
            self._clock(db).reset()
            for _ in range(self.seed_dossiers):
                number = self._create(db)
                plan = seeded_rng(self.seed, "seedplan", number)
                for _ in range(plan.choice((0, 1, 1, 2, 2, 3))):
                    self._change(db)
            rows = conn.execute("SELECT snapshot FROM dossiers ORDER BY idx").fetchall()
            self._seed_payments(db, [json.loads(r["snapshot"]) for r in rows])

    def _counter(self, db: StateDB, name: str, increment: int = 1) -> int:
        conn = db.conn
        conn.execute(
            "INSERT INTO counters(name, value) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
            (name, increment, increment),
        )
        return int(conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])

    def _peek(self, db: StateDB, name: str) -> int:
        row = db.conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _append_event(self, db: StateDB, snapshot: dict[str, Any]) -> int:
        seq = self._peek(db, "events") + 1
        db.conn.execute(
            "INSERT INTO events(seq, dossier_no, version, changed_at, snapshot) VALUES(?, ?, ?, ?, ?)",
            (seq, snapshot["dossierNo"], snapshot["version"], snapshot["modifiedAt"], dumps(snapshot)),
        )
        self._counter(db, "events")
        return seq

    def _create(self, db: StateDB) -> int:
        """Create the next dossier (inside a transaction). Returns its creation number."""
        number = self._counter(db, "created")
        rng = seeded_rng(self.seed, "dossier", number)
        defect = DEFECT_KINDS[(number // 20 - 1) % len(DEFECT_KINDS)] if number % 20 == 0 else None
        unit, proc = self.gen.pick_unit_and_procedure(rng)
        now = self._clock(db).advance(self._peek(db, "events") + 1, low=3, high=45)
        day = now.strftime("%y%m%d")
        daily = self._counter(db, f"day:{unit['code']}:{day}")
        dossier_no = f"{unit['code']}-{day}-{daily:04d}"

        def next_receipt() -> str:
            n = self._counter(db, f"receipt:{unit['code']}:{now:%Y}")
            return f"{unit['code'].split('.')[2]}-{now:%Y}-{n:06d}"

        snapshot = self.gen.new_dossier(rng, unit=unit, proc=proc, dossier_no=dossier_no, now=now, defect=defect,
                                        next_receipt=next_receipt)
        db.conn.execute(
            "INSERT INTO dossiers(dossier_no, idx, status, defect, version, snapshot) VALUES(?, ?, ?, ?, ?, ?)",
            (dossier_no, number, snapshot["dossierStatus"], defect, 1, dumps(snapshot)),
        )
        self._append_event(db, snapshot)
        return number

    def _change(self, db: StateDB) -> dict[str, str] | None:
        """Apply one legal transition to a seeded-random non-final dossier (inside a transaction)."""
        movable = tuple(LEGAL_TRANSITIONS)
        rows = db.conn.execute(
            f"SELECT dossier_no, defect, snapshot FROM dossiers WHERE status IN ({','.join('?' * len(movable))})"
            " ORDER BY idx",
            movable,
        ).fetchall()
        if not rows:
            return None
        number = self._counter(db, "changes")
        rng = seeded_rng(self.seed, "change", number)
        row = rng.choice(rows)
        previous = json.loads(row["snapshot"])
        target = self.gen.pick_target(rng, previous["dossierStatus"])
        now = self._clock(db).advance(self._peek(db, "events") + 1, low=3, high=45)
        unit_code = previous["govAgencyCode"]

        def next_receipt() -> str:
            n = self._counter(db, f"receipt:{unit_code}:{now:%Y}")
            return f"{unit_code.split('.')[2]}-{now:%Y}-{n:06d}"

        snapshot = self.gen.move(rng, previous, target, now=now, defect=row["defect"], next_receipt=next_receipt)
        db.conn.execute(
            "UPDATE dossiers SET status = ?, version = ?, snapshot = ? WHERE dossier_no = ?",
            (snapshot["dossierStatus"], snapshot["version"], dumps(snapshot), snapshot["dossierNo"]),
        )
        self._append_event(db, snapshot)
        return {"dossierNo": snapshot["dossierNo"], "from": previous["dossierStatus"], "to": target}

    # -- auth --------------------------------------------------------------------------------
    def _authorised(self, request: Request) -> Response | None:
        key = request.header("X-Api-Key")
        if not key:
            return json_response(401, {"error": "unauthorized", "message": "missing X-Api-Key header"})
        if not hmac.compare_digest(key.encode("utf-8"), self.api_key.encode("utf-8")):
            return json_response(401, {"error": "unauthorized", "message": "invalid API key"})
        return None

    # -- API ---------------------------------------------------------------------------------
    def _changes(self, request: Request) -> Response:
        refused = self._authorised(request)
        if refused:
            return refused
        try:
            limit = _int_arg(request, "limit", 100, 1, 500)
        except ValueError:
            return _bad_request("limit must be an integer between 1 and 500")
        given = request.arg("after")
        db = self.require_db()
        with db.lock:
            last_seq = self._peek(db, "events")
            after = 0
            if given:
                try:
                    after = decode_cursor(given)
                except ValueError:
                    return _bad_request("malformed cursor")
                if after > last_seq:
                    return _bad_request("malformed cursor: it points past the end of the feed")
            rows = db.conn.execute(
                "SELECT seq, changed_at, snapshot FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit + 1)
            ).fetchall()
        page = rows[:limit]
        items = [{"seq": r["seq"], "changedAt": r["changed_at"], "dossier": json.loads(r["snapshot"])} for r in page]
        if page:
            next_cursor = encode_cursor(page[-1]["seq"])
        else:
            next_cursor = given if given else encode_cursor(0)
        return json_response(200, {"items": items, "nextCursor": next_cursor, "hasMore": len(rows) > limit})

    def _dossier(self, request: Request) -> Response:
        refused = self._authorised(request)
        if refused:
            return refused
        number = request.params["dossierNo"]
        db = self.require_db()
        with db.lock:
            row = db.conn.execute("SELECT snapshot FROM dossiers WHERE dossier_no = ?", (number,)).fetchone()
        if row is None:
            return json_response(404, {"error": "not_found", "message": f"dossier {number} not found"})
        return Response(200, row["snapshot"].encode("utf-8"))

    def _dossiers(self, request: Request) -> Response:
        refused = self._authorised(request)
        if refused:
            return refused
        try:
            page = _int_arg(request, "page", 1, 1, None)
            size = _int_arg(request, "size", 100, 1, 500)
        except ValueError as exc:
            return _bad_request("page must be an integer >= 1" if str(exc) == "page"
                                else "size must be an integer between 1 and 500")
        try:
            modified_from = _instant_arg(request, "modifiedFrom")
            modified_to = _instant_arg(request, "modifiedTo")
        except ValueError as exc:
            return _bad_request(str(exc))
        if modified_from and modified_to and modified_from > modified_to:
            return _bad_request("modifiedFrom must not be later than modifiedTo")
        db = self.require_db()
        with db.lock:
            if modified_from is None and modified_to is None:
                total = int(db.conn.execute("SELECT COUNT(*) FROM dossiers").fetchone()[0])
                rows = db.conn.execute(
                    "SELECT snapshot FROM dossiers ORDER BY idx LIMIT ? OFFSET ?", (size, (page - 1) * size)
                ).fetchall()
                items = [json.loads(r["snapshot"]) for r in rows]
            else:
                # modifiedAt is compared as an instant: from inclusive, to exclusive
                stamps = db.conn.execute(
                    "SELECT idx, json_extract(snapshot, '$.modifiedAt') AS modified FROM dossiers ORDER BY idx"
                ).fetchall()
                instants = [(r["idx"], _stored_instant(r["modified"])) for r in stamps]
                chosen = [idx for idx, at in instants if at is not None
                          and (modified_from is None or at >= modified_from)
                          and (modified_to is None or at < modified_to)]
                total = len(chosen)
                wanted = chosen[(page - 1) * size:page * size]
                rows = db.conn.execute(
                    f"SELECT snapshot FROM dossiers WHERE idx IN ({','.join('?' * len(wanted))}) ORDER BY idx",
                    wanted,
                ).fetchall() if wanted else []
                items = [json.loads(r["snapshot"]) for r in rows]
        return json_response(200, {"items": items, "page": page, "size": size, "total": total})

    # -- test doors --------------------------------------------------------------------------
    def state_summary(self) -> dict[str, Any]:
        """What ``GET /_state`` answers (also handy in-process)."""
        db = self.require_db()
        with db.lock:
            by_status = {r[0]: r[1] for r in db.conn.execute(
                "SELECT status, COUNT(*) FROM dossiers GROUP BY status ORDER BY status")}
            defective = [
                {"dossierNo": r["dossier_no"], "defect": r["defect"], "index": r["idx"], "status": r["status"]}
                for r in db.conn.execute(
                    "SELECT dossier_no, defect, idx, status FROM dossiers WHERE defect IS NOT NULL ORDER BY idx")
            ]
            dossiers = sum(by_status.values())
            summary = {
                "seed": self.seed,
                "clock": self._clock(db).now().isoformat(),
                "lastSeq": self._peek(db, "events"),
                "counts": {
                    "dossiers": dossiers,
                    "events": self._peek(db, "events"),
                    "created": self._peek(db, "created"),
                    "changes": self._peek(db, "changes"),
                    "final": sum(n for s, n in by_status.items() if s in FINAL_STATUSES),
                    "byStatus": by_status,
                    "defective": len(defective),
                },
                "defective": defective,
                "defectKinds": list(DEFECT_KINDS),
                "units": list(self.gen.unit_codes),
                "procedures": list(self.gen.procedures),
                "faults": self.faults.snapshot(),
            }
        return summary

    def _state(self, request: Request) -> Response:
        return json_response(200, self.state_summary())

    def _state_dossiers(self, request: Request) -> Response:
        db = self.require_db()
        with db.lock:
            rows = db.conn.execute("SELECT snapshot FROM dossiers ORDER BY idx").fetchall()
        return json_response(200, {"dossiers": [json.loads(r["snapshot"]) for r in rows]})

    def _state_dossier(self, request: Request) -> Response:
        number = request.params["dossierNo"]
        db = self.require_db()
        with db.lock:
            row = db.conn.execute("SELECT idx, defect, snapshot FROM dossiers WHERE dossier_no = ?",
                                  (number,)).fetchone()
            events = db.conn.execute("SELECT seq, version, changed_at FROM events WHERE dossier_no = ? ORDER BY seq",
                                     (number,)).fetchall()
        if row is None:
            return json_response(404, {"error": "not_found", "message": f"dossier {number} not found"})
        return json_response(200, {
            "dossier": json.loads(row["snapshot"]), "index": row["idx"], "defect": row["defect"],
            "events": [{"seq": e["seq"], "version": e["version"], "changedAt": e["changed_at"]} for e in events],
        })

    def _state_events(self, request: Request) -> Response:
        db = self.require_db()
        with db.lock:
            rows = db.conn.execute("SELECT seq, changed_at, snapshot FROM events ORDER BY seq").fetchall()
        return json_response(200, {"events": [
            {"seq": r["seq"], "changedAt": r["changed_at"], "dossier": json.loads(r["snapshot"])} for r in rows]})

    def advance(self, new: int = 0, changes: int = 0) -> dict[str, Any]:
        """Create ``new`` dossiers, then apply ``changes`` legal transitions (in-process form of
        ``POST /_admin/advance``)."""
        db = self.require_db()
        created: list[str] = []
        changed: list[dict[str, str]] = []
        with db.tx() as conn:
            for _ in range(new):
                number = self._create(db)
                created.append(conn.execute("SELECT dossier_no FROM dossiers WHERE idx = ?", (number,)).fetchone()[0])
            for _ in range(changes):
                change = self._change(db)
                if change is None:
                    break
                changed.append(change)
            last_seq = self._peek(db, "events")
        return {"created": created, "changed": changed, "lastSeq": last_seq}

    #: Raw dossiers sort after every generated one and keep the generator's numbering untouched.
    RAW_INDEX_BASE = 1_000_000

    def add_raw_dossier(self, dossier: dict[str, Any]) -> dict[str, Any]:
        """Test door: put ``dossier`` in the feed exactly as given, whatever its fields or types (the
        in-process form of ``POST /_admin/dossiers/raw``). A later call with the same ``dossierNo``
        is a new version of that dossier. Raw dossiers are listed as defective (``defect: raw``) and
        never moved by ``advance``. Returns ``{"dossierNo", "seq"}``."""
        db = self.require_db()
        with db.tx() as conn:
            given = dossier.get("dossierNo")
            seq = self._peek(db, "events") + 1
            number = given if isinstance(given, str) and given else f"<raw-{seq}>"
            version = dossier.get("version")
            version = version if isinstance(version, int) and not isinstance(version, bool) else 0
            changed = dossier.get("modifiedAt")
            changed_at = changed if isinstance(changed, str) else self._clock(db).now().isoformat()
            text = dumps(dossier)
            if conn.execute("SELECT 1 FROM dossiers WHERE dossier_no = ?", (number,)).fetchone():
                conn.execute("UPDATE dossiers SET version = ?, snapshot = ? WHERE dossier_no = ?",
                             (version, text, number))
            else:
                index = self.RAW_INDEX_BASE + self._counter(db, "raw")
                conn.execute("INSERT INTO dossiers(dossier_no, idx, status, defect, version, snapshot) "
                             "VALUES(?, ?, 'raw', 'raw', ?, ?)", (number, index, version, text))
            conn.execute("INSERT INTO events(seq, dossier_no, version, changed_at, snapshot) VALUES(?, ?, ?, ?, ?)",
                         (seq, number, version, changed_at, text))
            self._counter(db, "events")
        return {"dossierNo": number, "seq": seq}

    def _raw_dossier(self, request: Request) -> Response:
        try:
            body = request.json_object()
        except BadJson as exc:
            return _bad_request(f"body must be a JSON object: {exc}")
        if set(body) != {"dossier"} or not isinstance(body["dossier"], dict):
            return _bad_request('body must be {"dossier": {...}}')
        return json_response(200, self.add_raw_dossier(body["dossier"]))

    def _advance(self, request: Request) -> Response:
        try:
            body = request.json_object()
        except BadJson as exc:
            return _bad_request(f"body must be a JSON object: {exc}")
        unknown = set(body) - {"new", "changes"}
        if unknown:
            return _bad_request(f"unknown field(s): {', '.join(sorted(unknown))}")
        values = {}
        for name in ("new", "changes"):
            value = body.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ADVANCE:
                return _bad_request(f"{name} must be an integer between 0 and {MAX_ADVANCE}")
            values[name] = value
        return json_response(200, self.advance(values["new"], values["changes"]))

    def reset(self) -> None:
        """Rebuild the initial seeded world and clear faults."""
        self.faults.clear()
        self._seed_world(self.require_db())

    def _reset(self, request: Request) -> Response:
        self.reset()
        return json_response(200, {"reset": True, "state": self.state_summary()["counts"]})
