"""Client for the National Public Service Portal's adapter (Cổng Dịch vụ công Quốc gia).

The adapter is RPC over JSON (contract §1–§3): log in for a session, then POST an envelope
``{session, madonvi, service, ...}`` to the integration or share endpoint; every answer carries
``error_code`` (0 = success) and a Vietnamese ``message``. This client hides the session (log-in,
proactive renewal, one re-login when the portal says the session is gone) and turns result codes
into error classes, so callers never read Vietnamese text to decide what to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

from connectors.connection import ConnectionSpec, Secret
from connectors.errors import (
    AuthenticationFailed,
    FatalConnectorError,
    FieldError,
    PeerRejected,
    ProtocolError,
    SessionExpired,
    UnreadableAnswer,
)
from connectors.transport import (
    MAX_RESPONSE_BYTES,
    ExchangeRecorder,
    HttpTransport,
    RetryPolicy,
    read_json,
    response_json,
    transport_options,
)

__all__ = [
    "FINAL_STATUSES",
    "BatchResult",
    "DossierAlreadyExists",
    "DossierBatchResult",
    "DossierFinalised",
    "DossierUnknown",
    "NationalPortalClient",
    "PortalReply",
]

PEER = "national_portal"

# The portal's result codes, as its adapter answers them (contract §5.9, §9; mock README).
OK = 0
CODE_INVALID = -1
CODE_BAD_CREDENTIALS = 1
CODE_SESSION = 2
CODE_DUPLICATE = 3
#: A duplicate insert is answered 3 or -3 (contract §5.9, §7.2; the difference is unknown).
CODE_DUPLICATE_NEGATIVE = -3
CODE_UNKNOWN_DOSSIER = 4
CODE_WRONG_UNIT = 5
CODE_FINALISED = 6

#: Statuses after which the portal accepts no change (contract §9 row 7): refused, withdrawn, returned.
FINAL_STATUSES = frozenset({"3", "7", "10"})


class DossierAlreadyExists(PeerRejected):
    """Insert refused: the portal already holds this dossier ("đã tồn tại"). Send it as an update."""


class DossierUnknown(PeerRejected):
    """Update refused: the portal does not hold this dossier ("không tồn tại"). Send it as an insert."""


class DossierFinalised(PeerRejected):
    """The portal holds a final status for this dossier and refuses to change it."""


_REJECTION_BY_CODE: dict[int, type[PeerRejected]] = {
    CODE_DUPLICATE: DossierAlreadyExists,
    CODE_DUPLICATE_NEGATIVE: DossierAlreadyExists,
    CODE_UNKNOWN_DOSSIER: DossierUnknown,
    CODE_FINALISED: DossierFinalised,
}

#: Codes with which the portal refuses a call because of its records (mocks/README.md: all or
#: nothing per call, so none of the call was applied): those about one dossier, and -1, a record's
#: validation (a field's rule) as well as a malformed call's.
_RECORD_CODES = frozenset(_REJECTION_BY_CODE) | {CODE_INVALID}


@dataclass(frozen=True)
class PortalReply:
    """The adapter's answer envelope."""

    error_code: int
    message: str
    result: Any
    raw: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.error_code == OK


@dataclass
class BatchResult:
    """What became of each record of a batch, by position in the records sent."""

    accepted: list[int] = field(default_factory=list)
    rejected: dict[int, PeerRejected] = field(default_factory=dict)
    calls: int = 0
    #: Positions of a call of several records that the portal refused with a code about one record
    #: (exists, unknown, final, invalid -1) but no ``result`` rows saying whose: nothing of it was applied, and
    #: only a call per record tells which (see :meth:`NationalPortalClient.sync_dossiers` and
    #: :meth:`NationalPortalClient.update_progress`).
    unattributed: list[int] = field(default_factory=list)


@dataclass
class DossierBatchResult:
    """What became of each dossier of a ``DongBoHoSoMC`` batch."""

    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, PeerRejected] = field(default_factory=dict)
    calls: int = 0
    #: Dossiers neither accepted nor refused: the portal refused their call with a code about one
    #: dossier (exists, unknown, final, invalid -1) but named none (no ``result`` rows). Send them one per call.
    unattributed: list[str] = field(default_factory=list)


def _parse_code(value: Any) -> int:
    # Clients parse error_code as an integer: 0, "0" and "00" all mean success (contract §3.3).
    return int(str(value).strip())


def _reply_from(response: requests.Response, operation: str) -> PortalReply:
    data = response_json(response, peer=PEER, operation=operation)
    if not isinstance(data, dict) or "error_code" not in data:
        raise ProtocolError(f"{PEER} {operation}: answer has no error_code", peer=PEER, operation=operation,
                            status=response.status_code)
    try:
        code = _parse_code(data["error_code"])
    except ValueError:
        raise ProtocolError(f"{PEER} {operation}: error_code {data['error_code']!r} is not a number",
                            peer=PEER, operation=operation) from None
    message = data.get("message")
    if message is not None and not isinstance(message, str):
        raise ProtocolError(f"{PEER} {operation}: message is a {type(message).__name__}, not text",
                            peer=PEER, operation=operation, status=response.status_code)
    return PortalReply(code, message or "", data.get("result"), data)


def _classify(response: requests.Response) -> tuple[str, str | None]:
    """Exchange-log outcome of an adapter answer: ok, or peer_error with the portal's code."""
    try:
        data = response_json(response, peer=PEER, operation="classify")
    except (ProtocolError, UnreadableAnswer):
        return "protocol_error", None
    if not isinstance(data, dict) or "error_code" not in data:
        return "protocol_error", None
    code = str(data.get("error_code"))
    return ("ok" if code.strip() in {"0", "00"} else "peer_error"), code


class NationalPortalClient:
    """Talks to the national portal's adapter on behalf of one unit.

    Args:
        base_url: the adapter's address.
        username, password: the adapter account; the password is a :class:`Secret`.
        unit_code: our ``madonvi`` (e.g. ``000.00.01.H49``).
        dstcode: the ``dstcode`` header value (contract §1.3).
        auth_path, integration_path, share_path: the adapter's three endpoints (contract §1.1).
        session_max_age: seconds after which the client logs in again before calling (the
            portal's sessions last about 10 minutes; renewing early avoids a refused call).
        recorder: the exchange log; log-in bodies reach it with password and session redacted.
        connect_timeout, read_timeout, total_timeout, retry, max_response_bytes: transport settings.
        clock: monotonic clock, injectable for tests.
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: Secret,
        unit_code: str,
        *,
        dstcode: str = "DVCQG",
        auth_path: str = "/auth",
        integration_path: str = "/integration",
        share_path: str = "/share",
        session_max_age: float = 540.0,
        recorder: ExchangeRecorder | None = None,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        total_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.username = username
        self._password = password
        self.unit_code = unit_code
        self.paths = {"auth": auth_path, "integration": integration_path, "share": share_path}
        self.session_max_age = session_max_age
        self._session: Secret | None = None
        self._session_at = 0.0
        self._clock = clock
        self.logins = 0
        self.transport = HttpTransport(
            peer=PEER,
            base_url=base_url,
            recorder=recorder,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            total_timeout=total_timeout,
            retry=retry,
            max_response_bytes=max_response_bytes,
            redact_keys=("password", "session"),
            default_headers={"dstcode": dstcode} if dstcode else {},
            read=read_json,  # every answer is JSON
        )

    @classmethod
    def from_connection(cls, spec: ConnectionSpec, *, recorder: ExchangeRecorder | None = None
                        ) -> NationalPortalClient:
        """Build from a connection: login/password, ``extra.madonvi`` and optional endpoint extras."""
        spec.require("host", "login", "password", "extra.madonvi")
        extra = spec.extra
        return cls(
            spec.base_url,
            spec.login,
            spec.password,
            str(extra["madonvi"]),
            dstcode=str(extra.get("dstcode", "DVCQG")),
            auth_path=str(extra.get("auth_endpoint", "/auth")),
            integration_path=str(extra.get("integration_endpoint", "/integration")),
            share_path=str(extra.get("share_endpoint", "/share")),
            session_max_age=float(extra.get("session_max_age", 540)),
            recorder=recorder,
            **transport_options(extra, conn_id=spec.conn_id),
        )

    def close(self) -> None:
        self.transport.close()

    # -- session -------------------------------------------------------------------------------
    def login(self) -> None:
        """Open a new session.

        Raises:
            AuthenticationFailed: the portal refused the credentials.
        """
        response = self.transport.send(
            "POST", self.paths["auth"], operation="login",
            json_body={"username": self.username, "password": self._password.reveal()},
            classify=_classify,
        )
        reply = _reply_from(response, "login")
        session = reply.raw.get("session")
        if reply.ok and session is not None and not (isinstance(session, str) and session.strip()):
            # The value is never shown: it would be a session token if it were one.
            raise ProtocolError(f"{PEER} login: the answer's session is a {type(session).__name__}, not a token",
                                peer=PEER, operation="login")
        if not reply.ok or not session:
            # The message names nothing secret; the portal's own text helps the operator.
            raise AuthenticationFailed(
                f"{PEER} refused log-in for user '{self.username}' (error_code {reply.error_code}: {reply.message})",
                peer=PEER, operation="login",
            )
        self._session = Secret(str(session))
        self._session_at = self._clock()
        self.logins += 1

    def _ensure_session(self) -> Secret:
        if self._session is None or self._clock() - self._session_at > self.session_max_age:
            self.login()
        assert self._session is not None
        return self._session

    # -- calls ---------------------------------------------------------------------------------
    def call(
        self,
        service: str,
        *,
        endpoint: str = "integration",
        record_keys: Sequence[str] = (),
        idempotent: bool = True,
        **fields: Any,
    ) -> PortalReply:
        """Call one adapter service and return its reply, whatever its ``error_code``.

        A refused session is renewed once and the call repeated (safe: the portal refuses before
        doing anything). A call that is not ``idempotent`` (appending progress) is never repeated
        by the transport after a failure without an answer: the caller reconciles instead.
        Call-level refusals that no record causes raise:

        Raises:
            SessionExpired: the portal refused a freshly opened session too.
            FatalConnectorError: wrong unit or destination code — a configuration problem.
            PeerUnavailable: transport failure after retries.
        """
        for renewal in (False, True):
            session = self._ensure_session()
            envelope = {"session": session.reveal(), "madonvi": self.unit_code, "service": service, **fields}
            response = self.transport.send(
                "POST", self.paths[endpoint], operation=service, json_body=envelope,
                record_keys=record_keys, classify=_classify, retry=idempotent,
            )
            reply = _reply_from(response, service)
            if reply.error_code != CODE_SESSION:
                return reply
            self._session = None
            if renewal:
                raise SessionExpired(
                    f"{PEER} refused a fresh session on {service}: {reply.message}", peer=PEER, operation=service
                )
        raise AssertionError("unreachable")

    def sync_dossiers(self, records: Sequence[dict[str, Any]], *, is_updating: bool) -> DossierBatchResult:
        """Create (``is_updating=False``) or update dossiers with ``DongBoHoSoMC``.

        The portal applies a call all-or-nothing and lists each record it refused; the records it
        did not refuse are re-sent without the refused ones until every record is accepted or
        refused. A refusal is returned per dossier as a :class:`PeerRejected` subclass
        (:class:`DossierAlreadyExists`, :class:`DossierUnknown`, :class:`DossierFinalised`, or
        plain ``PeerRejected`` for validation), never raised.

        A call of several dossiers refused with a code about one dossier (exists 3/-3, unknown 4,
        final 6, invalid -1) but without per-record ``result`` rows (the portal's own clients send
        one dossier per call and read only ``error_code`` and ``message``, contract §3.3, §7.5)
        names no culprit: nothing of it was applied, and its dossiers are returned as
        ``unattributed``, for the caller to send one per call (each then gets its own answer; a
        one-dossier -1 is that dossier's refusal when its message names the dossier, else the
        call's :class:`FatalConnectorError`).
        """
        batch = self._all_or_nothing("DongBoHoSoMC", records, isUpdating="True" if is_updating else "False")
        keys = [str(r.get("MaHoSo", "")) for r in records]
        return DossierBatchResult(
            accepted=[keys[i] for i in batch.accepted],
            rejected={keys[i]: exc for i, exc in batch.rejected.items()},
            calls=batch.calls,
            unattributed=[keys[i] for i in batch.unattributed],
        )

    def update_progress(self, records: Sequence[dict[str, Any]]) -> BatchResult:
        """Append processing-progress entries with ``CapNhatTienDoHoSoMC`` (contract §4.2).

        Results are by position in ``records`` (one dossier may have several entries in a call).
        When the portal refuses some entries, nothing of the call was applied and the others are
        **not** re-sent here: they are neither accepted nor refused, so the caller can hold back
        the later entries of a dossier whose earlier entry was refused.

        A call of several entries refused with a code about one dossier (unknown 4, finished 6,
        invalid -1) but without per-record ``result`` rows names no culprit: nothing of it was applied (the
        portal takes a call all-or-nothing, mocks/README.md), and its entries are returned as
        ``unattributed`` after that one call, for the caller to send again in smaller calls (one
        dossier, then one entry, per call), each answer stored before the next. The client never
        repeats a progress call itself (appends are not idempotent).
        """
        return self._all_or_nothing("CapNhatTienDoHoSoMC", records, resend_rest=False, idempotent=False)

    def _all_or_nothing(
        self,
        service: str,
        records: Sequence[dict[str, Any]],
        *,
        resend_rest: bool = True,
        idempotent: bool = True,
        **fields: Any,
    ) -> BatchResult:
        result = BatchResult()
        pending = list(range(len(records)))
        while pending:
            data = [records[i] for i in pending]
            keys = sorted({str(r.get("MaHoSo", "")) for r in data})
            reply = self.call(service, record_keys=keys, data=data, idempotent=idempotent, **fields)
            result.calls += 1
            if reply.ok:
                result.accepted.extend(pending)
                return result
            refused = self._refusals(reply, data)
            if not refused and len(data) > 1 and reply.error_code in _RECORD_CODES \
                    and not (isinstance(reply.result, list) and reply.result):
                # about one record, naming none: nothing applied; the caller sends them one per call
                result.unattributed.extend(pending)
                return result
            if not refused:
                raise self._call_level_error(reply, service)
            result.rejected.update({pending[i]: exc for i, exc in refused.items()})
            pending = [p for i, p in enumerate(pending) if i not in refused] if resend_rest else []
        return result

    def _refusals(self, reply: PortalReply, data: list[dict[str, Any]]) -> dict[int, PeerRejected]:
        """Refused positions of ``data``, from the reply's per-record ``result`` rows.

        A reply without rows (the portal's clients read only ``error_code`` and ``message``,
        contract §3.3, §7.2) refuses the call's one record when its code is about a dossier
        (exists, unknown, final), or when it is -1 (invalid) and its message names the record's
        MaHoSo: -1 is also the code of a malformed call (unknown service, bad ``isUpdating`` or
        ``data``), which names no record and is the call's, not the record's to dead-letter. Any
        other such reply is the call's (see ``_call_level_error``)."""
        rows = reply.result if isinstance(reply.result, list) else []
        key = str(data[0].get("MaHoSo", "")) if len(data) == 1 else ""
        if not rows and len(data) == 1 and (reply.error_code in _REJECTION_BY_CODE or (
                reply.error_code == CODE_INVALID and key and key in reply.message)):
            error = FieldError("MaHoSo", f"portal_code_{reply.error_code}", reply.message)
            cls = _REJECTION_BY_CODE.get(reply.error_code, PeerRejected)
            return {0: cls(key, [error], peer_code=str(reply.error_code), peer_message=reply.message)}
        positions: dict[str, list[int]] = {}
        for i, record in enumerate(data):
            positions.setdefault(str(record.get("MaHoSo", "")), []).append(i)
        refused: dict[int, PeerRejected] = {}
        for row in rows:
            if not isinstance(row, dict):
                continue
            key = str(row.get("MaHoSo", ""))
            index = row.get("index")
            if isinstance(index, int) and 0 <= index < len(data) and str(data[index].get("MaHoSo", "")) == key:
                hit = [index]
            else:
                hit = positions.get(key, [])
            try:
                code = _parse_code(row.get("error_code", reply.error_code))
            except ValueError:
                code = reply.error_code
            message = str(row.get("message") or reply.message)
            cls = _REJECTION_BY_CODE.get(code, PeerRejected)
            for i in hit:
                error = FieldError(str(row.get("field") or "MaHoSo"), f"portal_code_{code}", message)
                refused[i] = cls(key, [error], peer_code=str(code), peer_message=message)
        return refused

    def _call_level_error(self, reply: PortalReply, service: str) -> FatalConnectorError:
        text = f"{PEER} {service} refused the whole call (error_code {reply.error_code}): {reply.message}"
        if reply.error_code in (CODE_WRONG_UNIT, CODE_INVALID):
            return FatalConnectorError(text, peer=PEER, operation=service)
        return ProtocolError(text, peer=PEER, operation=service)

    def lookup_dossier(self, ma_ho_so: str) -> dict[str, Any] | None:
        """``TraCuuHoSo``: the portal's row for a dossier, or ``None`` when it does not hold it.

        The row carries ``TrangThaiHoSo`` and, on the stand-in (inferred from what a client needs),
        ``SoTienDo``: how many progress entries the portal holds for the dossier, and
        ``ThoiDiemXuLyCuoi``: the ``ThoiDiemXuLy`` of the last one (empty when none).
        """
        reply = self.call("TraCuuHoSo", record_keys=(ma_ho_so,), mahoso=ma_ho_so)
        if not reply.ok:
            raise self._call_level_error(reply, "TraCuuHoSo")
        rows = reply.result if reply.result not in (None, "") else []
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ProtocolError(f"{PEER} TraCuuHoSo {ma_ho_so}: result is not a list of objects", peer=PEER,
                                operation="TraCuuHoSo")
        return dict(rows[0]) if rows else None

    # -- catalogue (contract §4.5, §4.6) ---------------------------------------------------------
    def _rows(self, service: str, endpoint: str, **fields: Any) -> list[dict[str, Any]]:
        reply = self.call(service, endpoint=endpoint, **fields)
        if not reply.ok:
            raise self._call_level_error(reply, service)
        if not isinstance(reply.result, list) or not all(isinstance(r, dict) for r in reply.result):
            raise ProtocolError(f"{PEER} {service}: result is not a list of objects", peer=PEER, operation=service)
        return [dict(r) for r in reply.result]

    def list_procedures(self) -> list[dict[str, Any]]:
        """``LayDanhSachTTHC``: every published procedure, ``{MATTHC, TENTTHC}`` each."""
        return self._rows("LayDanhSachTTHC", "share")

    def get_procedure(self, code: str) -> dict[str, Any] | None:
        """``LayThuTuc``: the full procedure record, or ``None`` when the catalogue has no such code."""
        rows = self._rows("LayThuTuc", "integration", record_keys=(code,), maTTHC=code)
        return rows[0] if rows else None

    def list_services(self) -> list[dict[str, Any]]:
        """``LayDVC``: public-service configurations with their online levels (``APDUNGDVC``)."""
        reply = self.call("LayDVC", endpoint="integration")
        if not reply.ok:
            raise self._call_level_error(reply, "LayDVC")
        data = reply.result.get("data") if isinstance(reply.result, dict) else None
        if not isinstance(data, list):
            raise ProtocolError(f"{PEER} LayDVC: result has no data list", peer=PEER, operation="LayDVC")
        return [dict(r) for r in data if isinstance(r, dict)]

    def list_agencies(self) -> list[dict[str, Any]]:
        """``LayDanhMucCoQuan``: ``{MADONVI, TENDONVI, CAPDONVI}``."""
        return self._rows("LayDanhMucCoQuan", "share")

    def list_domains(self) -> list[dict[str, Any]]:
        """``LayDanhMucLinhVuc``: ``{MALINHVUC, TENLINHVUC, MANGANH}``."""
        return self._rows("LayDanhMucLinhVuc", "share")
