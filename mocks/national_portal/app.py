"""The National Public Service Portal stand-in (Cổng Dịch vụ công Quốc gia), adapter style.

Follows shared/reference/national-portal-contract.md §1–§3, §4.1, §4.2, §4.4, §5, §7–§9: log-in for a
session, then RPC over JSON on the integration and share endpoints, ``service`` in the body,
answers with ``error_code`` and a Vietnamese ``message``. See mocks/README.md for which facts are
confirmed (C) and which this mock infers (I).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mocks.national_portal.catalogue import DEFAULT_SIZE as DEFAULT_CATALOGUE_SIZE
from mocks.national_portal.catalogue_service import CATALOGUE_SCHEMA, CatalogueMixin
from mocks.national_portal.rules import RecordRules, lookup_parameter, progress_label, record_label
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
)

__all__ = [
    "DEFAULT_ACCOUNT",
    "FINAL_STATUSES",
    "NationalPortalMock",
    "PortalAccount",
]

log = logging.getLogger("mocks.national_portal")

#: TrangThaiHoSo values after which the portal refuses a status change (3 refused, 7 withdrawn,
#: 10 result handed over).
FINAL_STATUSES = frozenset({"3", "7", "10"})

#: How the portal words a refused change of a final dossier (code 6). "đã trả kết quả, …" and
#: "bị từ chối. không thể cập nhật trạng thái" are observed DVCLT texts (C §8); the withdrawn one is I.
_FINAL_TEXT = {
    "10": "đã trả kết quả, không được cập nhật trạng thái",
    "3": "bị từ chối. không thể cập nhật trạng thái",
    "7": "đã được rút theo yêu cầu của công dân, không được cập nhật trạng thái",
}

# Result codes (contract §5.9: 0 and 3 are confirmed; the others are this mock's choice, I).
OK = 0
INVALID = -1
BAD_CREDENTIALS = 1
BAD_SESSION = 2
DUPLICATE = 3
UNKNOWN_DOSSIER = 4
WRONG_UNIT = 5
FINALISED = 6

MSG_LOGIN_OK = "Đăng nhập thành công"
MSG_LOGIN_BAD = "Tên đăng nhập hoặc mật khẩu không đúng"
MSG_DSTCODE = "Mã đích (dstcode) không hợp lệ"
MSG_SESSION = "Phiên làm việc không hợp lệ hoặc đã hết hạn"
MSG_NOT_JSON = "Dữ liệu gửi lên không đúng định dạng JSON"
MSG_NOT_OBJECT = "Dữ liệu gửi lên phải là một đối tượng JSON"
#: Largest request body the adapter takes (I: no limit is documented; real front servers cap bodies,
#: and a batch of 500 dossiers is about 1.5 MB). Larger bodies get HTTP 413 with code -1.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MSG_TOO_LARGE = f"Dữ liệu gửi lên vượt quá dung lượng cho phép ({MAX_REQUEST_BYTES // (1024 * 1024)} MB)"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS dossiers (
    ma_ho_so TEXT PRIMARY KEY,
    trang_thai TEXT NOT NULL,
    ngay_cap_nhat TEXT NOT NULL,
    created_seq INTEGER NOT NULL,
    updated_seq INTEGER NOT NULL,
    versions INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY,
    ma_ho_so TEXT NOT NULL,
    is_updating TEXT NOT NULL,
    call_no INTEGER NOT NULL,
    applied_at TEXT NOT NULL,
    ngay_cap_nhat TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_dossier ON history(ma_ho_so, seq);
CREATE TABLE IF NOT EXISTS progress (
    seq INTEGER PRIMARY KEY,
    ma_ho_so TEXT NOT NULL,
    thoi_diem TEXT NOT NULL,
    trang_thai TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS progress_by_dossier ON progress(ma_ho_so, seq);
CREATE TABLE IF NOT EXISTS calls (
    endpoint TEXT NOT NULL,
    service TEXT NOT NULL,
    outcome TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (endpoint, service, outcome)
);
"""


_PROVINCE = re.compile(r"H[0-9]{2}")


def province_of(unit: str) -> str:
    """The province code ``H{pp}`` of a unit code: ``H49`` from ``000.00.01.H49`` and from the short
    agency form ``H49.14`` (contract §6.3); the last dotted segment when none is of that form."""
    parts = unit.split(".")
    return next((part for part in parts if _PROVINCE.fullmatch(part)), parts[-1])


@dataclass(frozen=True)
class PortalAccount:
    """An adapter account: user name, password and the unit (madonvi) it acts for."""

    username: str
    password: str = field(repr=False)
    unit: str = "000.00.01.H49"

    @property
    def province(self) -> str:
        """``H49`` from ``000.00.01.H49`` or ``H49.14`` (:func:`province_of`)."""
        return province_of(self.unit)


DEFAULT_ACCOUNT = PortalAccount("lienthong.h49", "demo-portal-secret", "000.00.01.H49")


@dataclass
class _Session:
    username: str
    unit: str
    province: str
    opened: float
    expired: bool = False
    ok_calls: int = 0  # successful calls under the current fault plan (session_expire_every)
    plan_generation: int = 0
    # session_expire_every: a call's check of the session, the call and its count run under this
    # lock, so parallel calls on one session cannot all pass the check before the N-th is counted
    calls: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


Envelope = dict[str, Any]
ServiceHandler = Callable[[Envelope, _Session], dict[str, Any]]


def _answer(code: int, message: str, status: int = 200, **extra: Any) -> Response:
    return json_response(status, {"error_code": code, "message": message, **extra},
                         outcome=str(code) if status == 200 else f"http_{status}")


def _accounts(accounts: Iterable[PortalAccount] | Mapping[str, Any] | None) -> dict[str, PortalAccount]:
    if accounts is None:
        return {DEFAULT_ACCOUNT.username: DEFAULT_ACCOUNT}
    result: dict[str, PortalAccount] = {}
    if isinstance(accounts, Mapping):
        for username, value in accounts.items():
            if isinstance(value, PortalAccount):
                result[username] = value
            elif isinstance(value, Mapping):
                result[username] = PortalAccount(username, str(value["password"]), str(value.get("unit", "")))
            else:
                password, unit = value
                result[username] = PortalAccount(username, str(password), str(unit))
    else:
        for account in accounts:
            result[account.username] = account
    for account in result.values():
        if not account.username or not account.password or not account.unit:
            raise ValueError(f"portal account {account.username!r} needs a user name, a password and a unit")
    return result


class NationalPortalMock(CatalogueMixin, MockServer):
    """Stand-in for the national portal's adapter, a real HTTP server on loopback.

    Endpoints (POST, JSON): ``/auth`` (auth_endpoint), ``/integration`` (integration_endpoint),
    ``/share`` (share_endpoint); ``GET /health``. Test doors under ``/_state`` and ``/_admin``.

    Args:
        state_dir: directory of ``national_portal.db``; ``None`` = a fresh temporary directory.
        host: loopback address to bind (default ``127.0.0.1``); other hosts are refused.
        port: TCP port, ``0`` (default) = ephemeral.
        seed: seed of the portal's world clock (default 49).
        accounts: adapter accounts: an iterable of :class:`PortalAccount`, or a mapping
            ``username -> (password, unit)`` / ``{"password", "unit"}``. Default: one account
            ``lienthong.h49`` / ``demo-portal-secret`` for unit ``000.00.01.H49``.
        session_ttl: seconds a session lives after log-in (default 600), on the real monotonic clock.
        dstcode: the ``dstcode`` header value the integration and share endpoints require
            (default ``DVCQG``). On ``/auth`` it is checked only when sent (contract §1.3).
        seed_file: seed YAML; its ``procedures`` open the national catalogue, unchanged.
        catalogue_size: procedures in the generated national catalogue (default 3000, the seed's included).
        rules_file: DongBoHoSoMC rules (default
            ``fixtures/schemas/national_portal/DongBoHoSoMC.rules.json``).
        progress_rules_file: CapNhatTienDoHoSoMC rules (default
            ``fixtures/schemas/national_portal/CapNhatTienDoHoSoMC.rules.json``).
    """

    name = "national_portal"
    state_file = "national_portal.db"
    ambiguous_supported = True
    sessions_supported = True

    def __init__(self, state_dir: str | Path | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 seed: int = 49, accounts: Iterable[PortalAccount] | Mapping[str, Any] | None = None,
                 session_ttl: float = 600.0, dstcode: str = "DVCQG", seed_file: str | Path | None = None,
                 rules_file: str | Path | None = None, progress_rules_file: str | Path | None = None,
                 catalogue_size: int = DEFAULT_CATALOGUE_SIZE):
        if not session_ttl > 0:
            raise ValueError("session_ttl must be a positive number of seconds")
        self.accounts = _accounts(accounts)
        self.session_ttl = float(session_ttl)
        self.dstcode = dstcode
        self.seed_data = load_seed(seed_file)
        self.seed_file = seed_file
        if isinstance(catalogue_size, bool) or not isinstance(catalogue_size, int) or \
                not len(self.seed_data["procedures"]) <= catalogue_size <= 12000:
            raise ValueError("catalogue_size must be an integer between the seed's procedure count and 12000")
        self.catalogue_size = catalogue_size
        self.catalogue = {p["code"]: p for p in self.seed_data["procedures"]}
        self.rules = RecordRules("DongBoHoSoMC", {"procedures": set(self.catalogue)}, rules_file)
        self.progress_rules = RecordRules("CapNhatTienDoHoSoMC", {}, progress_rules_file)
        self._sessions: dict[str, _Session] = {}
        self._sessions_lock = threading.Lock()
        self.services: dict[str, dict[str, ServiceHandler]] = {
            "integration": {"DongBoHoSoMC": self._dong_bo_ho_so, "CapNhatTienDoHoSoMC": self._cap_nhat_tien_do,
                            "TraCuuHoSo": self._tra_cuu_ho_so},
            "share": {},
        }
        for endpoint, handlers in self.catalogue_services().items():
            self.services[endpoint].update(handlers)
        super().__init__(state_dir, host=host, port=port, seed=seed)

    def register_service(self, endpoint: str, service: str, handler: ServiceHandler) -> None:
        """Add a service to ``integration`` or ``share`` (the envelope checks run before it)."""
        self.services[endpoint][service] = handler

    # -- routes ------------------------------------------------------------------------------
    def build_routes(self, router: Router) -> None:
        router.add("GET", "/health", lambda r: json_response(200, {"status": "ok"}))
        router.add("POST", "/auth", self._auth, operation="login")
        router.add("POST", "/integration", lambda r: self._adapter(r, "integration"),
                   operation=lambda r: self._operation_of(r, "integration"))
        router.add("POST", "/share", lambda r: self._adapter(r, "share"),
                   operation=lambda r: self._operation_of(r, "share"))
        router.add("GET", "/_state", self._state)
        router.add("GET", "/_state/dossiers", self._state_dossiers)
        router.add("GET", "/_state/dossiers/{maHoSo}", self._state_dossier)
        router.add("GET", "/_state/progress", self._state_progress)
        router.add("GET", "/_state/calls", self._state_calls)
        router.add("GET", "/_state/catalogue", self._state_catalogue)
        router.add("GET", "/_state/catalogue/{code}", self._state_procedure)
        router.add("POST", "/_admin/catalogue/publish", self._publish)
        router.add("POST", "/_admin/reset", self._reset)
        router.add("POST", "/_admin/expire-sessions", self._expire_sessions)
        router.add("POST", "/_admin/faults", self.admin_faults)
        router.add("GET", "/_admin/faults", self.get_faults)

    @staticmethod
    def _operation_of(request: Request, endpoint: str) -> str:
        try:
            body = request.json()
        except BadJson:
            return f"<{endpoint}>"
        service = body.get("service") if isinstance(body, dict) else None
        return service if isinstance(service, str) and service else f"<{endpoint}>"

    def not_found(self, request: Request) -> Response:
        return json_response(404, {"error_code": INVALID, "message": f"Không tìm thấy đường dẫn {request.path}"})

    def method_not_allowed(self, request: Request) -> Response:
        return json_response(405, {"error_code": INVALID,
                                   "message": f"Phương thức {request.method} không được hỗ trợ tại {request.path}"})

    # -- state -------------------------------------------------------------------------------
    def init_state(self, db: StateDB) -> None:
        with db.lock:
            db.conn.executescript(_SCHEMA)
            db.conn.executescript(CATALOGUE_SCHEMA)
            stored = db.get_meta("world_seed")
            if stored is None:
                db.set_meta("world_seed", self.seed)
                self._clock(db).reset()
            else:
                self.seed = int(stored)
        self._refresh_known_codes()

    def _clock(self, db: StateDB) -> WorldClock:
        return WorldClock(db, self.seed)

    def on_answer(self, request: Request, operation: str, outcome: str) -> None:
        endpoint = request.path.strip("/") or "/"
        if self.db is None:
            return
        with self.db.tx() as conn:
            conn.execute(
                "INSERT INTO calls(endpoint, service, outcome, count) VALUES(?, ?, ?, 1) "
                "ON CONFLICT(endpoint, service, outcome) DO UPDATE SET count = count + 1",
                (endpoint, operation, outcome),
            )

    def malformed_responses(self, request: Request, operation: str) -> list[Response]:
        """Injected ``malformed`` answers (HTTP 200, nothing applied): an adapter reply cut short, an
        nginx error page labelled as JSON, a JSON array instead of the reply object, an empty body."""
        return malformed_json_responses(
            '{"error_code":0,"message":"Thành công","result":[{"MaHoSo":"000.00.01.H49-'.encode("utf-8"))

    # -- sessions ----------------------------------------------------------------------------
    def _open_session(self, account: PortalAccount) -> str:
        token = secrets.token_urlsafe(32)
        with self._sessions_lock:
            now = time.monotonic()
            self._sessions = {t: s for t, s in self._sessions.items() if self._alive(s, now)}
            self._sessions[token] = _Session(account.username, account.unit, account.province, now)
        return token

    def _alive(self, session: _Session, now: float) -> bool:
        return not session.expired and now - session.opened < self.session_ttl

    def _session(self, token: Any) -> _Session | None:
        if not isinstance(token, str) or not token:
            return None
        with self._sessions_lock:
            session = self._sessions.get(token)
            if session is None or not self._alive(session, time.monotonic()):
                return None
            return session

    def _open(self, session: _Session) -> bool:
        with self._sessions_lock:
            return self._alive(session, time.monotonic())

    def _count_success(self, session: _Session) -> None:
        """``session_expire_every``: a session ends after that many successful calls."""
        every = self.faults.plan.session_expire_every
        if every is None:
            return
        with self._sessions_lock:
            generation = self.faults.generation
            if session.plan_generation != generation:
                session.plan_generation, session.ok_calls = generation, 0
            session.ok_calls += 1
            if session.ok_calls >= every and not session.expired:
                session.expired = True
                self.faults.count("session_expired")

    def expire_sessions(self) -> int:
        """Expire every open session now (in-process form of ``POST /_admin/expire-sessions``)."""
        with self._sessions_lock:
            now = time.monotonic()
            alive = [s for s in self._sessions.values() if self._alive(s, now)]
            for s in self._sessions.values():
                s.expired = True
        return len(alive)

    def active_sessions(self) -> int:
        with self._sessions_lock:
            now = time.monotonic()
            return sum(1 for s in self._sessions.values() if self._alive(s, now))

    # -- endpoints ---------------------------------------------------------------------------
    def _body(self, request: Request) -> dict[str, Any] | Response:
        if len(request.body) > MAX_REQUEST_BYTES:
            return _answer(INVALID, MSG_TOO_LARGE, status=413)
        try:
            body = request.json()
        except BadJson:
            return _answer(INVALID, MSG_NOT_JSON, status=400)
        if not isinstance(body, dict):
            return _answer(INVALID, MSG_NOT_OBJECT, status=400)
        return body

    def _auth(self, request: Request) -> Response:
        body = self._body(request)
        if isinstance(body, Response):
            return body
        dst = request.header("dstcode")
        if dst is not None and dst != self.dstcode:
            return _answer(INVALID, MSG_DSTCODE)
        username, password = body.get("username"), body.get("password")
        account = self.accounts.get(username) if isinstance(username, str) else None
        if (account is None or not isinstance(password, str)
                or not hmac.compare_digest(password.encode("utf-8"), account.password.encode("utf-8"))):
            return _answer(BAD_CREDENTIALS, MSG_LOGIN_BAD)
        return _answer(OK, MSG_LOGIN_OK, session=self._open_session(account))

    def _adapter(self, request: Request, endpoint: str) -> Response:
        body = self._body(request)
        if isinstance(body, Response):
            return body
        if request.header("dstcode") != self.dstcode:
            return _answer(INVALID, MSG_DSTCODE)
        session = self._session(body.get("session"))
        if session is None:
            return _answer(BAD_SESSION, MSG_SESSION)
        madonvi = body.get("madonvi")
        if madonvi != session.unit:
            shown = madonvi if isinstance(madonvi, str) and madonvi else "(trống)"
            return _answer(WRONG_UNIT, f"Mã đơn vị {shown} không khớp với tài khoản đăng nhập")
        service = body.get("service")
        handler = self.services[endpoint].get(service) if isinstance(service, str) else None
        if handler is None:
            shown = service if isinstance(service, str) and service else "(trống)"
            return _answer(INVALID, f"Dịch vụ {shown} không được hỗ trợ")
        if self.faults.plan.session_expire_every is None:
            answer = handler(body, session)
        else:
            # Checked, applied and counted as one step per session: a call that waited here behind
            # the N-th success finds the session ended and applies nothing (code 2).
            with session.calls:
                if not self._open(session):
                    return _answer(BAD_SESSION, MSG_SESSION)
                answer = handler(body, session)
                if answer.get("error_code") == OK:
                    self._count_success(session)
        return json_response(200, answer, outcome=str(answer.get("error_code")))

    # -- services ----------------------------------------------------------------------------
    def _dong_bo_ho_so(self, env: Envelope, session: _Session) -> dict[str, Any]:
        """DongBoHoSoMC: create (isUpdating "False") or update ("True") dossiers, all-or-nothing."""
        is_updating = env.get("isUpdating")
        if is_updating not in ("True", "False"):
            return {"error_code": INVALID, "message": "Tham số isUpdating phải là chuỗi \"True\" hoặc \"False\""}
        data = env.get("data")
        if not isinstance(data, list) or not data:
            return {"error_code": INVALID, "message": "Trường data phải là mảng hồ sơ không rỗng"}
        updating = is_updating == "True"
        db = self.require_db()
        with db.tx() as conn:
            failures: list[dict[str, Any]] = []
            seen: dict[str, int] = {}
            for position, record in enumerate(data, start=1):
                failure = self._check_record(conn, record, position, seen, updating, session)
                if failure:
                    failures.append(failure)
            if failures:
                first = failures[0]
                summary = (f"Đồng bộ thất bại: {len(failures)}/{len(data)} hồ sơ bị từ chối, "
                           f"không hồ sơ nào được cập nhật. {first['message']}")
                return {"error_code": first["error_code"], "message": summary, "result": failures}
            call_no = int(db.get_meta("applied_calls", "0") or 0) + 1
            db.set_meta("applied_calls", call_no)
            now = self._clock(db).advance(call_no, low=1, high=5)
            stamp = now.strftime("%Y%m%d%H%M%S")
            for record in data:
                self._apply(conn, record, updating, call_no, now.isoformat(), stamp)
        return {"error_code": OK, "message": f"Đồng bộ thành công {len(data)} hồ sơ"}

    def _check_record(self, conn: Any, record: Any, position: int, seen: dict[str, int], updating: bool,
                      session: _Session) -> dict[str, Any] | None:
        code = record.get("MaHoSo") if isinstance(record, dict) else None
        ma = code if isinstance(code, str) else ""

        def fail(error_code: int, field_name: str, message: str) -> dict[str, Any]:
            return {"MaHoSo": ma, "error_code": error_code, "field": field_name, "message": message}

        error = self.rules.check(record, position)
        if error:
            return fail(INVALID, error.field, error.message)
        if ma in seen:
            return fail(INVALID, "MaHoSo", f"{record_label(record, position)}: MaHoSo xuất hiện nhiều lần trong "
                                           f"cùng một lần gửi (phần tử thứ {seen[ma]} và thứ {position})")
        seen[ma] = position
        unit_part = ma.split("-", 1)[0]
        if province_of(unit_part) != session.province:
            return fail(WRONG_UNIT, "MaHoSo", f"Hồ sơ {ma}: mã đơn vị {unit_part} trong MaHoSo không thuộc "
                                              f"tỉnh/thành phố {session.province} của tài khoản đăng nhập")
        stored = conn.execute("SELECT trang_thai FROM dossiers WHERE ma_ho_so = ?", (ma,)).fetchone()
        if not updating and stored is not None:
            return fail(DUPLICATE, "MaHoSo", f"Hồ sơ {ma} đã tồn tại trên hệ thống")
        if updating and stored is None:
            return fail(UNKNOWN_DOSSIER, "MaHoSo", f"Hồ sơ {ma} không tồn tại trên hệ thống")
        if updating and stored["trang_thai"] in FINAL_STATUSES and record["TrangThaiHoSo"] != stored["trang_thai"]:
            return fail(FINALISED, "TrangThaiHoSo", f"Hồ sơ {ma} {_FINAL_TEXT[stored['trang_thai']]}")
        return None

    def _apply(self, conn: Any, record: dict[str, Any], updating: bool, call_no: int, applied_at: str,
               stamp: str) -> None:
        ma = record["MaHoSo"]
        cursor = conn.execute(
            "INSERT INTO history(ma_ho_so, is_updating, call_no, applied_at, ngay_cap_nhat, record) "
            "VALUES(?, ?, ?, ?, ?, ?)",
            (ma, "True" if updating else "False", call_no, applied_at, stamp, dumps(record)),
        )
        seq = cursor.lastrowid
        if updating:
            conn.execute(
                "UPDATE dossiers SET trang_thai = ?, ngay_cap_nhat = ?, updated_seq = ?, versions = versions + 1, "
                "record = ? WHERE ma_ho_so = ?",
                (record["TrangThaiHoSo"], stamp, seq, dumps(record), ma),
            )
        else:
            conn.execute(
                "INSERT INTO dossiers(ma_ho_so, trang_thai, ngay_cap_nhat, created_seq, updated_seq, versions, record) "
                "VALUES(?, ?, ?, ?, ?, 1, ?)",
                (ma, record["TrangThaiHoSo"], stamp, seq, seq, dumps(record)),
            )

    def _cap_nhat_tien_do(self, env: Envelope, session: _Session) -> dict[str, Any]:
        """CapNhatTienDoHoSoMC: append progress entries (§4.2), all-or-nothing, in time order per dossier."""
        data = env.get("data")
        if not isinstance(data, list) or not data:
            return {"error_code": INVALID, "message": "Trường data phải là mảng bản ghi tiến độ không rỗng"}
        db = self.require_db()
        with db.tx() as conn:
            failures: list[dict[str, Any]] = []
            latest: dict[str, str] = {}  # MaHoSo -> latest ThoiDiemXuLy, stored or earlier in this call
            closed: dict[str, bool] = {}  # MaHoSo of a final dossier -> its final step is held
            for index, entry in enumerate(data):
                failure = self._check_progress(conn, entry, index, latest, closed, session)
                if failure:
                    failures.append(failure)
            if failures:
                first = failures[0]
                summary = (f"Cập nhật tiến độ thất bại: {len(failures)}/{len(data)} bản ghi bị từ chối, "
                           f"không bản ghi nào được cập nhật. {first['message']}")
                return {"error_code": first["error_code"], "message": summary, "result": failures}
            for entry in data:  # append-only: a repeated entry is stored again (§7.4)
                conn.execute("INSERT INTO progress(ma_ho_so, thoi_diem, trang_thai, record) VALUES(?, ?, ?, ?)",
                             (entry["MaHoSo"], entry["ThoiDiemXuLy"], entry["TrangThai"], dumps(entry)))
        return {"error_code": OK, "message": f"Cập nhật tiến độ thành công {len(data)} bản ghi"}

    def _check_progress(self, conn: Any, entry: Any, index: int, latest: dict[str, str], closed: dict[str, bool],
                        session: _Session) -> dict[str, Any] | None:
        code = entry.get("MaHoSo") if isinstance(entry, dict) else None
        ma = code if isinstance(code, str) else ""
        label = progress_label(entry, index)

        def fail(error_code: int, field_name: str, message: str) -> dict[str, Any]:
            return {"MaHoSo": ma, "index": index, "error_code": error_code, "field": field_name, "message": message}

        error = self.progress_rules.check(entry, index + 1, label)
        if error:
            return fail(INVALID, error.field, error.message)
        unit_part = ma.split("-", 1)[0]
        if province_of(unit_part) != session.province:
            return fail(WRONG_UNIT, "MaHoSo", f"{label}: mã đơn vị {unit_part} trong MaHoSo không thuộc "
                                              f"tỉnh/thành phố {session.province} của tài khoản đăng nhập")
        stored = conn.execute("SELECT trang_thai FROM dossiers WHERE ma_ho_so = ?", (ma,)).fetchone()
        if stored is None:
            return fail(UNKNOWN_DOSSIER, "MaHoSo", f"Hồ sơ {ma} chưa được gửi, không thể cập nhật tiến độ")
        final = stored["trang_thai"] if stored["trang_thai"] in FINAL_STATUSES else None
        if final is not None:
            # A finished dossier still takes the rest of its history, up to and including the step
            # that finished it (TrangThai = its final status); after that step, nothing more.
            if ma not in closed:
                closed[ma] = conn.execute("SELECT 1 FROM progress WHERE ma_ho_so = ? AND trang_thai = ? LIMIT 1",
                                          (ma, final)).fetchone() is not None
            if closed[ma]:
                return fail(FINALISED, "MaHoSo", f"Hồ sơ {ma} {_FINAL_TEXT[final]}")
        if ma not in latest:
            row = conn.execute("SELECT thoi_diem FROM progress WHERE ma_ho_so = ? ORDER BY seq DESC LIMIT 1",
                               (ma,)).fetchone()
            latest[ma] = row["thoi_diem"] if row else ""
        when = entry["ThoiDiemXuLy"]
        if when < latest[ma]:
            return fail(INVALID, "ThoiDiemXuLy",
                        f"{label}: logic xử lý không hợp lệ, ThoiDiemXuLy {when} sớm hơn tiến độ đã có của hồ sơ "
                        f"({latest[ma]}); tiến độ phải được gửi theo thứ tự thời gian")
        latest[ma] = when
        if final is not None and entry["TrangThai"] == final:
            closed[ma] = True
        return None

    def _progress_of(self, ma: str) -> list[dict[str, Any]]:
        db = self.require_db()
        with db.lock:
            rows = db.conn.execute("SELECT seq, ma_ho_so, record FROM progress WHERE ma_ho_so = ? ORDER BY seq",
                                   (ma,)).fetchall()
        return [self._progress_item(r) for r in rows]

    @staticmethod
    def _progress_item(row: Any) -> dict[str, Any]:
        return {"MaHoSo": row["ma_ho_so"], "record": json.loads(row["record"]), "seq": row["seq"]}

    def _tra_cuu_ho_so(self, env: Envelope, session: _Session) -> dict[str, Any]:
        """TraCuuHoSo: does the portal hold ``mahoso``? A non-empty ``result`` means yes (§4.4)."""
        ma, refused = lookup_parameter(env, "mahoso", required=True)
        if refused:
            return refused
        db = self.require_db()
        with db.lock:
            row = db.conn.execute("SELECT ma_ho_so, trang_thai, ngay_cap_nhat FROM dossiers WHERE ma_ho_so = ?",
                                  (ma,)).fetchone()
            progress = db.conn.execute(
                "SELECT COUNT(*) AS n, (SELECT thoi_diem FROM progress WHERE ma_ho_so = ? ORDER BY seq DESC LIMIT 1) "
                "AS last FROM progress WHERE ma_ho_so = ?", (ma, ma)).fetchone()
        rows = [] if row is None else [
            {"MaHoSo": row["ma_ho_so"], "TrangThaiHoSo": row["trang_thai"], "NgayCapNhat": row["ngay_cap_nhat"],
             "SoTienDo": str(progress["n"]), "ThoiDiemXuLyCuoi": progress["last"] or ""}]
        return {"error_code": OK, "message": "Thành công", "result": rows}

    # -- test doors --------------------------------------------------------------------------
    def state_summary(self) -> dict[str, Any]:
        db = self.require_db()
        with db.lock:
            by_status = {r[0]: r[1] for r in db.conn.execute(
                "SELECT trang_thai, COUNT(*) FROM dossiers GROUP BY trang_thai ORDER BY CAST(trang_thai AS INTEGER)")}
            history = int(db.conn.execute("SELECT COUNT(*) FROM history").fetchone()[0])
            progress = int(db.conn.execute("SELECT COUNT(*) FROM progress").fetchone()[0])
            calls = int(db.conn.execute("SELECT COALESCE(SUM(count), 0) FROM calls").fetchone()[0])
            clock = self._clock(db).now().isoformat()
        return {
            "seed": self.seed,
            "clock": clock,
            "counts": {
                "dossiers": sum(by_status.values()),
                "history": history,
                "progress": progress,
                "calls": calls,
                "byStatus": by_status,
            },
            "sessions": {"active": self.active_sessions(), "ttl": self.session_ttl},
            "catalogue": len(self.catalogue),
            "accounts": [{"username": a.username, "unit": a.unit} for a in self.accounts.values()],
            "faults": self.faults.snapshot(),
        }

    def _state(self, request: Request) -> Response:
        return json_response(200, self.state_summary())

    @staticmethod
    def _item(row: Any) -> dict[str, Any]:
        return {"MaHoSo": row["ma_ho_so"], "TrangThaiHoSo": row["trang_thai"], "NgayCapNhat": row["ngay_cap_nhat"],
                "versions": row["versions"], "record": json.loads(row["record"])}

    def _state_dossiers(self, request: Request) -> Response:
        db = self.require_db()
        with db.lock:
            rows = db.conn.execute("SELECT * FROM dossiers ORDER BY created_seq").fetchall()
        return json_response(200, {"dossiers": [json.loads(r["record"]) for r in rows]})

    def _state_dossier(self, request: Request) -> Response:
        ma = request.params["maHoSo"]
        db = self.require_db()
        with db.lock:
            row = db.conn.execute("SELECT * FROM dossiers WHERE ma_ho_so = ?", (ma,)).fetchone()
            history = db.conn.execute("SELECT * FROM history WHERE ma_ho_so = ? ORDER BY seq", (ma,)).fetchall()
        if row is None:
            return json_response(404, {"error": "not_found", "message": f"dossier {ma} not held"})
        return json_response(200, {
            "MaHoSo": ma,
            "current": self._item(row),
            "history": [{"seq": h["seq"], "isUpdating": h["is_updating"], "call": h["call_no"],
                         "appliedAt": h["applied_at"], "NgayCapNhat": h["ngay_cap_nhat"],
                         "record": json.loads(h["record"])} for h in history],
            "progress": self._progress_of(ma),
        })

    def _state_progress(self, request: Request) -> Response:
        db = self.require_db()
        with db.lock:
            rows = db.conn.execute("SELECT seq, ma_ho_so, record FROM progress ORDER BY seq").fetchall()
        return json_response(200, {"progress": [self._progress_item(r) for r in rows]})

    def calls(self) -> dict[str, dict[str, int]]:
        """Call counters ``{service: {outcome: count}}`` (what ``GET /_state/calls`` answers).

        Outcomes: the answer's ``error_code`` as a string (``"0"``, ``"-1"``, ``"3"``…), ``http_400``
        for a body that is not JSON, ``fault_http_<status>``, ``fault_drop``, ``fault_malformed``,
        ``ambiguous_500``.
        Services: the ``service`` value, ``login`` for ``/auth``, ``<integration>``/``<share>``
        when the body names none.
        """
        db = self.require_db()
        with db.lock:
            rows = db.conn.execute("SELECT service, outcome, SUM(count) AS n FROM calls GROUP BY service, outcome "
                                   "ORDER BY service, outcome").fetchall()
        by_service: dict[str, dict[str, int]] = {}
        for r in rows:
            by_service.setdefault(r["service"], {})[r["outcome"]] = int(r["n"])
        return by_service

    def _state_calls(self, request: Request) -> Response:
        return json_response(200, self.calls())

    def reset(self) -> None:
        """Forget every dossier, history row, progress entry and call counter, rewind the clock, clear faults.
        Open sessions stay valid."""
        self.faults.clear()
        db = self.require_db()
        with db.tx() as conn:
            for table in ("dossiers", "history", "progress", "calls"):
                conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
            db.set_meta("applied_calls", 0)
            self._clock(db).reset()
            self.reset_catalogue(db)
        self._refresh_known_codes()

    def _reset(self, request: Request) -> Response:
        self.reset()
        return json_response(200, {"reset": True})

    def _expire_sessions(self, request: Request) -> Response:
        return json_response(200, {"expired": self.expire_sessions()})
