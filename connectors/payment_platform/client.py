"""Client for DVCQG's national payment platform (message protocol 1.0.6, contract §2.3, §4.9, §6.5–6.6).

One endpoint takes a JSON message whose ``LoaiBanTin`` names it (``INIT``, ``QUERY``, ``GET_BILL``).
Every request is signed with ``MaXacThuc`` (lowercase hex SHA-256 of the ``|``-joined fields in a
documented order, the shared secret last) and every JSON answer's own ``MaXacThuc`` is verified
before anything in it is believed. ``GET_BILL`` answers with the PDF receipt itself.

The secret never goes on the wire: only the keyed hash does, so the exchange log may keep it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import requests

from connectors.connection import ConnectionSpec, Secret
from connectors.errors import (
    AuthenticationFailed,
    BillNotAvailable,
    ChecksumMismatch,
    FatalConnectorError,
    FieldError,
    PeerRejected,
    ProtocolError,
    TransactionUnknown,
    UnreadableAnswer,
)
from connectors.transport import (
    MAX_RESPONSE_BYTES,
    AnswerReader,
    ExchangeRecorder,
    HttpTransport,
    RetryPolicy,
    read_json,
    response_json,
    transport_options,
)

try:
    from zoneinfo import ZoneInfo

    VN_TZ: Any = ZoneInfo("Asia/Ho_Chi_Minh")
except Exception:  # noqa: BLE001 - no tz database: Viet Nam has had no DST since 1975
    VN_TZ = timezone(timedelta(hours=7), "Asia/Ho_Chi_Minh")

__all__ = [
    "ANSWER_ORDERS",
    "PEER",
    "PROTOCOL",
    "REQUEST_ORDERS",
    "Bill",
    "PaymentPlatformClient",
    "Transaction",
    "checksum",
]

PEER = "payment_platform"
PROTOCOL = "1.0.6"
OK = "00"

#: §6.6 (C): field orders of the request checksums; the secret is appended last.
REQUEST_ORDERS: dict[str, tuple[str, ...]] = {
    "INIT": ("LoaiBanTin", "PhienBan", "MaDoiTac", "MaThamChieu", "SoTien", "LoaiHinhThanhToan", "MaKenhThanhToan",
             "MaThietBi", "NgonNgu", "MaTienTe", "MaNganHang", "ThongTinGiaoDich", "ThoiGianGD", "Ip"),
    "QUERY": ("LoaiBanTin", "PhienBan", "MaDoiTac", "MaThamChieu", "ThoiGianGD"),
    "GET_BILL": ("LoaiBanTin", "PhienBan", "MaDoiTac", "MaThamChieu", "ThoiGianGD"),
}
_CONFIRM_ORDER = ("LoaiBanTin", "MaLoi", "MaDoiTac", "MaThamChieu", "SoTien", "MaTienTe", "MaGiaoDich",
                  "MaNganHang", "ThoiGianGD", "ThongTinGiaoDich")
#: Orders of the answers' checksums: the confirm callback and QUERY use the confirm order (C / I);
#: INIT and error answers use the stand-in's (I, mocks/README.md).
ANSWER_ORDERS: dict[str, tuple[str, ...]] = {
    "CONFIRM": _CONFIRM_ORDER,
    "QUERY": _CONFIRM_ORDER,
    "INIT": ("LoaiBanTin", "MaLoi", "MaDoiTac", "MaThamChieu", "SoTien", "UrlThanhToan", "ThoiGianGD"),
    "ERROR": ("LoaiBanTin", "MaLoi", "MaDoiTac", "MaThamChieu", "ThoiGianGD"),
}

#: TrangThaiGD (§5.9): "1" paid and "4" failed are C; "0" pending is I.
_STATUS = {"1": "paid", "4": "failed", "0": "pending"}
#: The platform's own refusal texts (§6.6, mocks/README.md); matched only to choose an error class.
_BAD_CHECKSUM = "Mã xác thực không chính xác"
_BAD_PARTNER = re.compile(r"^Mã đối tác .* không hợp lệ$")
_UNKNOWN = re.compile(r"^Không tìm thấy giao dịch")
_NOT_PAID = re.compile(r"chưa thanh toán")
_MISSING = re.compile(r"^Thiếu trường (\w+)")
_EXISTS = re.compile(r"^Mã tham chiếu .* đã tồn tại")
#: A refused protocol version or message type refuses every message alike (our setting, not the record).
_UNSUPPORTED = re.compile(r"^(Phiên bản|Loại bản tin) .* không được hỗ trợ")
_DOSSIER = re.compile(r"HO SO (\S+)")
_RECEIPT_NO = re.compile(rb"BL\d{4}-\d{6}")


def checksum(values: dict[str, Any], order: Iterable[str], secret: Secret) -> str:
    """Lowercase hex SHA-256 of the ``|``-joined values in ``order``, the secret last (§6.6).

    A missing value counts as ``""``; integers are joined as their digits.
    """
    parts = ["" if values.get(name) is None else str(values.get(name)) for name in order]
    return hashlib.sha256("|".join([*parts, secret.reveal()]).encode("utf-8")).hexdigest()


def _wire_time(when: datetime) -> str:
    if when.tzinfo is None:
        raise ValueError("times sent to the payment platform must be timezone-aware")
    return when.astimezone(VN_TZ).strftime("%Y%m%d%H%M%S")


def _parse_time(text: Any) -> datetime | None:
    """``yyyyMMddHHmmss`` in Viet Nam time (§6.1); ``""`` means no value."""
    if not isinstance(text, str) or not text.strip():
        return None
    if not _WIRE_TIME.fullmatch(text):  # strptime reads "202611021030" (no seconds) as 10:03:00
        raise ValueError(f"ThoiGianGD {text[:20]!r} is not yyyyMMddHHmmss (14 digits)")
    return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=VN_TZ)


_WIRE_TIME = re.compile(r"[0-9]{14}")
#: SoTien (§4.9): whole VND, an integer or its ASCII digits (int() would also take "150_000",
#: " 150000" or full-width digits, which the ledger's mapping then refuses).
_AMOUNT = re.compile(r"[0-9]{1,15}")


def _parse_amount(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10 ** 15:  # as many digits as text
        return value
    if isinstance(value, str) and _AMOUNT.fullmatch(value):
        return int(value)
    raise ValueError(f"SoTien {str(value)[:20]!r} is not a whole number of VND in digits")


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} is a {type(value).__name__}, not text")
    return value


@dataclass(frozen=True)
class Transaction:
    """A payment as the platform reports it on ``QUERY`` (after its checksum was verified).

    Attributes:
        reference: MaThamChieu.
        status: ``paid``, ``failed`` or ``pending`` (from TrangThaiGD).
        amount: SoTien, whole VND.
        currency: MaTienTe (``VND``).
        transaction_id: MaGiaoDich (``""`` while pending).
        bank: MaNganHang (``""`` while pending).
        paid_at: when the payment completed, for a paid transaction only (aware, Asia/Ho_Chi_Minh).
        info: ThongTinGiaoDich.
        dossier_code: the dossier code after ``HO SO`` in ThongTinGiaoDich, if any.
        raw: the verified answer as received.
        transaction_time: ThoiGianGD as reported, whatever the status (aware, Asia/Ho_Chi_Minh).
    """

    reference: str
    status: str
    amount: int
    currency: str
    transaction_id: str
    bank: str
    paid_at: datetime | None
    info: str
    dossier_code: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    transaction_time: datetime | None = None


@dataclass(frozen=True)
class Bill:
    """The electronic receipt (biên lai) of a paid transaction, as ``GET_BILL`` returned it.

    Attributes:
        reference: MaThamChieu.
        pdf: the PDF bytes.
        sha256: lowercase hex SHA-256 of ``pdf``.
        receipt_no: the receipt number ``BL<yyyy>-<NNNNNN>`` read from the PDF, if found.
        content_type: the answer's Content-Type.
    """

    reference: str
    pdf: bytes = field(repr=False)
    sha256: str
    receipt_no: str | None
    content_type: str


def _read_bill(response: requests.Response, peer: str, operation: str) -> None:
    """GET_BILL's :data:`~connectors.transport.AnswerReader`: a PDF whole from ``%PDF-`` to its
    ``%%EOF`` marker (ISO 32000-1 §7.5.5), or a JSON answer (a refusal). A body labelled PDF that
    is not one, or is cut short, is unreadable: it is fetched again, never kept as the receipt."""
    if not response.headers.get("Content-Type", "").startswith("application/pdf"):
        read_json(response, peer, operation)
        return
    pdf = response.content
    if not pdf.startswith(b"%PDF-"):
        raise UnreadableAnswer(f"{peer} {operation}: the body is not a PDF", peer=peer, operation=operation,
                               status=response.status_code)
    if b"%%EOF" not in pdf[-1024:]:
        raise UnreadableAnswer(f"{peer} {operation}: the PDF is cut short (no %%EOF at its end); not kept as the "
                               "receipt", peer=peer, operation=operation, status=response.status_code)


def _classify(response: requests.Response) -> tuple[str, str | None]:
    """Exchange-log outcome: a PDF is ok; a JSON answer is ok for MaLoi "00", else peer_error."""
    if response.headers.get("Content-Type", "").startswith("application/pdf"):
        return "ok", OK
    try:
        data = response_json(response, peer=PEER, operation="classify")
    except (ProtocolError, UnreadableAnswer):
        return "protocol_error", None
    if not isinstance(data, dict):
        return "protocol_error", None
    code = data.get("MaLoi")
    return ("ok" if code == OK else "peer_error"), None if code is None else str(code)


class PaymentPlatformClient:
    """Talks to the national payment platform as one partner (MaDoiTac).

    Args:
        base_url: the platform's address.
        partner_code: our MaDoiTac.
        secret: the shared checksum secret (a :class:`Secret`; it never goes on the wire).
        recorder: the exchange log (the PDF of ``GET_BILL`` is recorded as the response body).
        connect_timeout, read_timeout, total_timeout, retry, max_response_bytes: transport settings.
        clock: returns the aware current time (ThoiGianGD of requests); injectable for tests.
        path: the message endpoint.
        ip: the ``Ip`` field of INIT messages.
    """

    def __init__(
        self,
        base_url: str,
        partner_code: str,
        secret: Secret,
        *,
        recorder: ExchangeRecorder | None = None,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        total_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        clock: Callable[[], datetime] | None = None,
        path: str = "/api/payment",
        ip: str = "127.0.0.1",
    ):
        if not partner_code:
            raise ValueError("partner_code must not be empty")
        if not isinstance(secret, Secret) or not secret:
            raise ValueError("secret must be a non-empty Secret")
        self.partner_code = partner_code
        self._secret = secret
        self._clock = clock or (lambda: datetime.now(VN_TZ))
        self.path = path
        self.ip = ip
        self.transport = HttpTransport(
            peer=PEER,
            base_url=base_url,
            recorder=recorder,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            total_timeout=total_timeout,
            retry=retry,
            max_response_bytes=max_response_bytes,
            read=read_json,  # every answer is JSON but GET_BILL's PDF (_read_bill)
        )

    @classmethod
    def from_connection(cls, spec: ConnectionSpec, *, recorder: ExchangeRecorder | None = None
                        ) -> PaymentPlatformClient:
        """Build from a connection: login = MaDoiTac, password = the checksum secret; extras
        ``path``, ``ip``, ``connect_timeout``, ``read_timeout``, ``total_timeout``, ``max_attempts``."""
        spec.require("host", "login", "password")
        extra = spec.extra
        return cls(
            spec.base_url,
            spec.login,
            spec.password,
            recorder=recorder,
            path=str(extra.get("path", "/api/payment")),
            ip=str(extra.get("ip", "127.0.0.1")),
            **transport_options(extra, conn_id=spec.conn_id),
        )

    def close(self) -> None:
        self.transport.close()

    # -- checksums -----------------------------------------------------------------------------
    def sign(self, message: dict[str, Any]) -> dict[str, Any]:
        """A copy of the request ``message`` with its MaXacThuc (order chosen by LoaiBanTin)."""
        signed = dict(message)
        signed["MaXacThuc"] = checksum(signed, REQUEST_ORDERS[signed["LoaiBanTin"]], self._secret)
        return signed

    def _verify(self, message: dict[str, Any], order: tuple[str, ...]) -> bool:
        given = message.get("MaXacThuc")
        if not isinstance(given, str):
            return False
        # as bytes: compare_digest refuses text outside ASCII with TypeError, and a forged or
        # rewritten answer's MaXacThuc may hold any character (a lone surrogate too, from JSON)
        expected = checksum(message, order, self._secret).encode("ascii")
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected)

    def verify_confirm(self, message: dict[str, Any]) -> bool:
        """True when a confirm callback's MaXacThuc matches (§4.9, §6.6); anything else is False."""
        return isinstance(message, dict) and self._verify(message, ANSWER_ORDERS["CONFIRM"])

    # -- messages ------------------------------------------------------------------------------
    def _message(self, kind: str, reference: str, when: datetime | None = None, **fields: Any) -> dict[str, Any]:
        return {"LoaiBanTin": kind, "PhienBan": PROTOCOL, "MaDoiTac": self.partner_code, "MaThamChieu": reference,
                **fields, "ThoiGianGD": _wire_time(when or self._clock())}

    def _send(self, kind: str, body: dict[str, Any], keys: tuple[str, ...], *, retry: bool,
              accept: str = "application/json", read: AnswerReader | None = None) -> requests.Response:
        return self.transport.send("POST", self.path, operation=kind, json_body=self.sign(body), record_keys=keys,
                                   classify=_classify, retry=retry, headers={"Accept": accept}, read=read)

    def _answer(self, response: requests.Response, kind: str) -> dict[str, Any]:
        data = response_json(response, peer=PEER, operation=kind)
        if not isinstance(data, dict) or "MaLoi" not in data:
            raise ProtocolError(f"{PEER} {kind}: answer has no MaLoi", peer=PEER, operation=kind,
                                status=response.status_code)
        return data

    def _checked(self, data: dict[str, Any], kind: str, reference: str) -> dict[str, Any]:
        """Verify the answer's checksum and turn a refusal into its error class; return a success."""
        code = str(data.get("MaLoi"))
        message = str(data.get("MoTaLoi") or "")
        if code != OK and (message == _BAD_CHECKSUM or _BAD_PARTNER.match(message)):
            # The platform refused our own signature or partner code. Its answer is signed with the
            # secret we got wrong, so it cannot verify; stopping is safe whatever the answer says.
            raise AuthenticationFailed(f"{PEER} {kind} refused partner '{self.partner_code}': {message}",
                                       peer=PEER, operation=kind)
        order = ANSWER_ORDERS["ERROR"] if code != OK else ANSWER_ORDERS[kind if kind != "GET_BILL" else "ERROR"]
        if not self._verify(data, order):
            raise ChecksumMismatch(f"{PEER} {kind} {reference}: the answer's MaXacThuc does not match; answer refused",
                                   peer=PEER, operation=kind)
        if code == OK:
            return data
        if _UNSUPPORTED.match(message):
            field_name, sent = ("PhienBan", PROTOCOL) if message.startswith("Phiên bản") else ("LoaiBanTin", kind)
            raise FatalConnectorError(f"{PEER} {kind} refused our {field_name} {sent}: {message}; every message "
                                      "would be refused alike (a setting of the bus, not this payment)",
                                      peer=PEER, operation=kind)
        if _UNKNOWN.match(message):
            raise TransactionUnknown(reference, [FieldError("MaThamChieu", "known_transaction", message)],
                                     peer_code=code, peer_message=message)
        if kind == "GET_BILL" and _NOT_PAID.search(message):
            raise BillNotAvailable(reference, [FieldError("MaThamChieu", "paid_transaction", message)],
                                   peer_code=code, peer_message=message)
        missing = _MISSING.match(message)
        if missing:
            error = FieldError(missing.group(1), "required", message)
        elif _EXISTS.match(message):
            error = FieldError("MaThamChieu", "unique", message)
        else:
            error = FieldError("MaThamChieu", f"platform_code_{code}", message)
        raise PeerRejected(reference, [error], peer_code=code, peer_message=message)

    # -- operations ----------------------------------------------------------------------------
    def query(self, reference: str, *, record_keys: Iterable[str] = ()) -> Transaction:
        """``QUERY``: the transaction's state (retried on transport failures: a read).

        Raises:
            TransactionUnknown: the platform holds no such reference.
            ChecksumMismatch: the answer's MaXacThuc is wrong (nothing in it is used).
            AuthenticationFailed: the platform refused our partner code or signature.
            FatalConnectorError: the platform refused our protocol version (PhienBan) or message type.
            PeerRejected: any other refusal, with the platform's message.
            ProtocolError: the answer reads but is not the documented JSON.
            UnreadableAnswer: every attempt's answer was unreadable (empty, not JSON).
            PeerUnavailable: transport failure or 5xx after retries.
        """
        keys = (reference, *record_keys)
        response = self._send("QUERY", self._message("QUERY", reference), keys, retry=True)
        data = self._checked(self._answer(response, "QUERY"), "QUERY", reference)
        return self._transaction(data, reference)

    def _transaction(self, data: dict[str, Any], reference: str) -> Transaction:
        status = _STATUS.get(str(data.get("TrangThaiGD")))
        if status is None:
            raise ProtocolError(f"{PEER} QUERY {reference}: unknown TrangThaiGD {data.get('TrangThaiGD')!r}",
                                peer=PEER, operation="QUERY")
        if data.get("MaThamChieu") != reference:
            raise ProtocolError(f"{PEER} QUERY {reference}: the answer is about {data.get('MaThamChieu')!r}",
                                peer=PEER, operation="QUERY")
        if data.get("MaDoiTac") != self.partner_code:
            raise ProtocolError(f"{PEER} QUERY {reference}: MaDoiTac {str(data.get('MaDoiTac'))[:40]!r} is not our "
                                f"partner code {self.partner_code!r}", peer=PEER, operation="QUERY")
        # §4.9: amounts are whole VND; an amount in another currency is never taken for VND
        if data.get("MaTienTe") != "VND":
            raise ProtocolError(f"{PEER} QUERY {reference}: MaTienTe {str(data.get('MaTienTe'))[:20]!r} is not VND "
                                "(SoTien is read as whole VND)", peer=PEER, operation="QUERY")
        try:
            amount = _parse_amount(data.get("SoTien"))
            when = _parse_time(data.get("ThoiGianGD"))
            # text fields: absent or null is "", a number, list or object is not quietly made text
            transaction_id, bank, info = (_text(data, name)
                                          for name in ("MaGiaoDich", "MaNganHang", "ThongTinGiaoDich"))
        except ValueError as exc:
            raise ProtocolError(f"{PEER} QUERY {reference}: {exc}", peer=PEER, operation="QUERY") from None
        if status == "paid" and not (transaction_id and bank and when):
            # TrangThaiGD is outside the answer's checksum order (I): a paid status must at least agree
            # with the signed fields that only a completed transaction has.
            raise ProtocolError(f"{PEER} QUERY {reference}: a paid status inconsistent with the signed fields "
                                "(no MaGiaoDich, MaNganHang or ThoiGianGD)", peer=PEER, operation="QUERY")
        dossier = _DOSSIER.search(info)
        return Transaction(
            reference=reference,
            status=status,
            amount=amount,
            currency=str(data.get("MaTienTe") or ""),
            transaction_id=transaction_id,
            bank=bank,
            paid_at=when if status == "paid" else None,
            info=info,
            dossier_code=dossier.group(1) if dossier else None,
            raw=dict(data),
            transaction_time=when,
        )

    def get_bill(self, reference: str, *, transaction_time: datetime, record_keys: Iterable[str] = ()) -> Bill:
        """``GET_BILL``: the PDF receipt of a paid transaction (retried on transport failures: a read).

        Args:
            reference: MaThamChieu.
            transaction_time: ThoiGianGD of the original transaction, its ``INIT`` (§4.9: the
                platform refuses another time, a ``PeerRejected``); aware.
            record_keys: more correlation keys for the exchange log.

        Raises:
            BillNotAvailable: the transaction is not paid.
            TransactionUnknown: the platform holds no such reference.
            ChecksumMismatch, AuthenticationFailed, PeerRejected, ProtocolError, UnreadableAnswer,
            PeerUnavailable: as ``query`` (an unreadable answer includes a PDF that is not one or is
            cut short).
        """
        keys = (reference, *record_keys)
        body = self._message("GET_BILL", reference, transaction_time)
        response = self._send("GET_BILL", body, keys, retry=True, accept="application/pdf, application/json",
                              read=_read_bill)
        content_type = response.headers.get("Content-Type", "")
        if not content_type.startswith("application/pdf"):
            self._checked(self._answer(response, "GET_BILL"), "GET_BILL", reference)
            raise ProtocolError(f"{PEER} GET_BILL {reference}: a JSON success instead of the PDF",
                                peer=PEER, operation="GET_BILL")
        if response.status_code != 200:  # a gateway's error page labelled PDF is no receipt
            raise ProtocolError(f"{PEER} GET_BILL {reference}: HTTP {response.status_code} with a PDF body; "
                                "not kept as the receipt", peer=PEER, operation="GET_BILL",
                                status=response.status_code)
        pdf = response.content  # whole: the transport read it (_read_bill) before handing it over
        labelled = re.search(rb"So bien lai: (BL\d{4}-\d{6})", pdf)
        found = labelled.group(1) if labelled else (m.group(0) if (m := _RECEIPT_NO.search(pdf)) else None)
        return Bill(reference=reference, pdf=pdf, sha256=hashlib.sha256(pdf).hexdigest(),
                    receipt_no=found.decode("ascii") if found else None, content_type=content_type)

    def init(
        self,
        *,
        reference: str,
        amount: int,
        info: str,
        receipt: dict[str, Any] | None = None,
        when: datetime | None = None,
        bank_code: str = "PAYMENT",
        currency: str = "VND",
        language: str = "vi-VN",
        record_keys: Iterable[str] = (),
    ) -> dict[str, Any]:
        """``INIT``: open a transaction; returns the verified answer (``UrlThanhToan`` among it).

        Never repeated by the transport after a failure without an answer (a repeat would meet
        "reference already exists"): ``query`` the reference instead.

        Raises:
            PeerRejected: the platform refused the message (a missing field, a reference in use...).
            ChecksumMismatch, AuthenticationFailed, ProtocolError, UnreadableAnswer, PeerUnavailable:
            as ``query``.
        """
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise ValueError("amount must be a positive whole number of VND")
        fields: dict[str, Any] = {
            "SoTien": str(amount), "LoaiHinhThanhToan": "PAY", "MaKenhThanhToan": "1", "MaThietBi": "1",
            "NgonNgu": language, "MaTienTe": currency, "MaNganHang": bank_code, "ThongTinGiaoDich": info,
        }
        body = self._message("INIT", reference, when, **fields)
        body["Ip"] = self.ip  # after ThoiGianGD, as in the checksum order
        if receipt is not None:
            body["ThongTinBienLai"] = dict(receipt)
        response = self._send("INIT", body, (reference, *record_keys), retry=False)
        return self._checked(self._answer(response, "INIT"), "INIT", reference)
