"""The one-stop stand-in's fee status and payment requests (docs/wire/onestop.md, "Payments").

A mixin of :class:`mocks.one_stop.app.OneStopMock`. A **payment request** is one attempt by a citizen
to pay a dossier's fees through the national payment platform (contract §2.3, §4.9): the one-stop
opened it with a signed INIT under a MaThamChieu (§6.5) and waits for the platform's confirm
callback. When the callback is lost (§7.11) the request stays ``pending`` until someone — the bus —
asks the platform (QUERY) and records the result here through ``POST /api/v1/payments/{ref}/result``.

Rules every path keeps: a fee is never marked paid twice (one transaction per paid request); an
amount that differs from the request's is never applied; a repeat of an applied result changes
nothing. Every callback received is kept in ``payment_callbacks`` with its checksum verdict and
outcome. Times are the peer's (no wall clock): a result's time is the time it carries.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from mocks.payment_platform.app import (
    ANSWER_ORDERS,
    BAD_CHECKSUM,
    DEFAULT_PARTNER,
    DEFAULT_SECRET,
    REQUEST_ORDERS,
    checksum,
    reference_for,
    seeded_payments,
)
from mocks.server import VN_TZ, BadJson, Request, Response, StateDB, dumps, iso, json_response

PAYMENT_SCHEMA = """
CREATE TABLE IF NOT EXISTS payment_requests (
    seq INTEGER PRIMARY KEY,
    reference TEXT NOT NULL UNIQUE,
    dossier_no TEXT NOT NULL,
    amount INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    paid_at TEXT,
    transaction_id TEXT,
    bank TEXT,
    receipt_no TEXT,
    confirmed_by TEXT,
    updated_at TEXT NOT NULL,
    callback_count INTEGER NOT NULL DEFAULT 0
);
-- a dossier's fee status lists its payment requests (GET /api/v1/dossiers/{dossierNo}/fees)
CREATE INDEX IF NOT EXISTS ix_payment_requests_dossier ON payment_requests(dossier_no, seq);
CREATE TABLE IF NOT EXISTS payment_callbacks (
    seq INTEGER PRIMARY KEY,
    reference TEXT NOT NULL,
    ma_loi TEXT NOT NULL,
    amount TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    checksum_ok INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    answer_code TEXT NOT NULL,
    body TEXT NOT NULL
);
"""

PAYMENT_STATUSES = ("pending", "paid", "failed", "unmatched")
#: Outcomes of a received callback, as the log keeps them.
CALLBACK_OUTCOMES = ("paid", "failed", "duplicate", "conflict", "amount_mismatch", "unmatched", "bad_checksum",
                     "bad_partner", "invalid")
#: The one-stop's answer to a callback is signed over these fields (I: the contract lists the fields, not the order).
CONFIRM_ANSWER_ORDER = ("MaLoi", "MaDoiTac", "MaThamChieu", "ThoiGianGD")
PROTOCOL = "1.0.6"
OK_TEXT = "Thành công"
_ISO_WITH_OFFSET = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})$")
_TS14 = re.compile(r"^\d{14}$")


def _ts(dt: datetime) -> str:
    return dt.astimezone(VN_TZ).strftime("%Y%m%d%H%M%S")


def _from_ts(text: str) -> datetime:
    """``yyyyMMddHHmmss`` in Viet Nam time (the platform's ThoiGianGD) as an aware datetime."""
    return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=VN_TZ)


def loopback_url(name: str, url: str | None) -> str | None:
    """``url`` when it is ``http://127.0.0.1:...`` (mocks talk to loopback only); ``None`` for none;
    anything else raises ``ValueError``."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname != "127.0.0.1" or parts.username or parts.password:
        raise ValueError(f"{name} must be an http://127.0.0.1:<port> URL, got {url!r}")
    return url


#: MaDVC, the public-service code: the procedure code + a configured suffix, ".01" in the samples (contract
#: §4.8, §6.4: C), as the portal's LayDVC lists it.
MA_DVC_SUFFIX = ".01"


def _payable_online(dossier: dict[str, Any]) -> bool:
    """Whether the dossier names what an INIT's receipt block must carry (§5.8: MaTTHC and MaDVC from the
    procedure, MaDonVi and TenDonVi from the unit): a dossier without them (the ``empty_service_code``
    defect) is not offered for payment, since the platform would refuse its INIT."""
    return all(isinstance(dossier.get(k), str) and dossier[k].strip()
               for k in ("dossierNo", "serviceCode", "govAgencyCode", "govAgencyName"))


def _dossier_in(info: str) -> str:
    match = re.search(r"HO SO (\S+)", info or "")
    return match.group(1) if match else ""


class Refusal(Exception):
    """A refused ``/result`` call: HTTP status and the one-stop's error body."""

    def __init__(self, status: int, error: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.error, self.message, self.field = status, error, message, field

    def response(self) -> Response:
        body: dict[str, Any] = {"error": self.error}
        if self.field is not None:
            body["field"] = self.field
        body["message"] = self.message
        return json_response(self.status, body)


class PaymentsMixin:
    """Fee status, payment requests, the confirm-callback receiver and their test doors;
    expects the attributes of ``OneStopMock`` (``payment_secret``, ``payment_partner``,
    ``payment_platform_url``, ``payment_timeout``, ``_authorised``, ``require_db``…)."""

    payment_secret: str
    payment_partner: str
    payment_platform_url: str | None
    payment_timeout: float

    def _payment_routes(self, router: Any) -> None:
        router.add("GET", "/api/v1/payments", self._payments, operation="payments")
        router.add("POST", "/api/v1/payments/confirm", self._confirm, operation="payment_confirm")
        router.add("GET", "/api/v1/payments/{reference}", self._payment, operation="payment")
        router.add("POST", "/api/v1/payments/{reference}/result", self._payment_result, operation="payment_result")
        router.add("GET", "/api/v1/dossiers/{dossierNo}/fees", self._fees, operation="fees")
        router.add("GET", "/_state/payments", self._state_payments)
        router.add("POST", "/_admin/payments/register", self._admin_register)
        router.add("POST", "/_admin/payments/open", self._admin_open)

    # -- seeding -----------------------------------------------------------------------------
    def _seed_payments(self, db: StateDB, dossiers: list[dict[str, Any]]) -> None:
        """Register every seeded payment as a pending request (inside a transaction): seeded
        completions at the platform send no callback, so the one-stop does not know them."""
        conn = db.conn
        conn.execute("DELETE FROM payment_requests")
        conn.execute("DELETE FROM payment_callbacks")
        for payment in seeded_payments(dossiers, self.seed):  # type: ignore[attr-defined]
            created = iso(payment["createdAt"])
            conn.execute(
                "INSERT INTO payment_requests(reference, dossier_no, amount, status, created_at, updated_at)"
                " VALUES(?, ?, ?, 'pending', ?, ?)",
                (payment["reference"], payment["dossierNo"], payment["amount"], created, created),
            )
        db.set_meta("payments_seeded", 1)

    # -- shapes ------------------------------------------------------------------------------
    @staticmethod
    def _payment_json(row: Any) -> dict[str, Any]:
        return {"reference": row["reference"], "dossierNo": row["dossier_no"], "amount": row["amount"],
                "currency": "VND", "status": row["status"], "createdAt": row["created_at"],
                "paidAt": row["paid_at"], "transactionId": row["transaction_id"], "bank": row["bank"],
                "receiptNo": row["receipt_no"], "confirmedBy": row["confirmed_by"], "updatedAt": row["updated_at"]}

    # -- API ---------------------------------------------------------------------------------
    def _payments(self, request: Request) -> Response:
        refused = self._authorised(request)  # type: ignore[attr-defined]
        if refused:
            return refused
        from mocks.one_stop.app import _bad_request, _int_arg

        status = request.arg("status") or "all"
        if status not in (*PAYMENT_STATUSES, "all"):
            return _bad_request(f"status must be one of {', '.join((*PAYMENT_STATUSES, 'all'))}, not {status!r}")
        try:
            page = _int_arg(request, "page", 1, 1, None)
            size = _int_arg(request, "size", 100, 1, 500)
        except ValueError as exc:
            return _bad_request("page must be an integer >= 1" if str(exc) == "page"
                                else "size must be an integer between 1 and 500")
        where, args = ("", ()) if status == "all" else (" WHERE status = ?", (status,))
        db = self.require_db()  # type: ignore[attr-defined]
        with db.lock:
            # where is one of two fixed strings; the value is bound
            count_sql = f"SELECT COUNT(*) FROM payment_requests{where}"  # noqa: S608
            page_sql = f"SELECT * FROM payment_requests{where} ORDER BY seq LIMIT ? OFFSET ?"  # noqa: S608
            total = int(db.conn.execute(count_sql, args).fetchone()[0])
            rows = db.conn.execute(page_sql, (*args, size, (page - 1) * size)).fetchall()
        return json_response(200, {"items": [self._payment_json(r) for r in rows], "page": page, "size": size,
                                   "total": total})

    def _payment(self, request: Request) -> Response:
        refused = self._authorised(request)  # type: ignore[attr-defined]
        if refused:
            return refused
        reference = request.params["reference"]
        db = self.require_db()  # type: ignore[attr-defined]
        with db.lock:
            row = db.conn.execute("SELECT * FROM payment_requests WHERE reference = ?", (reference,)).fetchone()
        if row is None:
            return json_response(404, {"error": "not_found", "message": f"payment {reference} not found"})
        return json_response(200, self._payment_json(row))

    def fee_status(self, dossier_no: str) -> dict[str, Any] | None:
        """What ``GET /api/v1/dossiers/{dossierNo}/fees`` answers; ``None`` for an unknown dossier."""
        db = self.require_db()  # type: ignore[attr-defined]
        with db.lock:
            row = db.conn.execute("SELECT snapshot FROM dossiers WHERE dossier_no = ?", (dossier_no,)).fetchone()
            requests = db.conn.execute("SELECT * FROM payment_requests WHERE dossier_no = ? ORDER BY seq",
                                       (dossier_no,)).fetchall()
        if row is None:
            return None
        fees = json.loads(row["snapshot"]).get("fees") or []
        statuses = {r["status"] for r in requests}
        payment_status = "paid" if "paid" in statuses else "pending" if "pending" in statuses else "unpaid"
        items = [{"feeCode": f.get("feeCode"), "feeName": f.get("feeName"), "feeKind": f.get("feeKind"),
                  "amount": int(f.get("amount") or 0), "status": "paid" if payment_status == "paid" else "unpaid"}
                 for f in fees]
        return {"dossierNo": dossier_no, "items": items, "amount": sum(i["amount"] for i in items),
                "paymentStatus": payment_status,
                "paidAmount": sum(r["amount"] for r in requests if r["status"] == "paid"),
                "payments": [r["reference"] for r in requests]}

    def _fees(self, request: Request) -> Response:
        refused = self._authorised(request)  # type: ignore[attr-defined]
        if refused:
            return refused
        number = request.params["dossierNo"]
        status = self.fee_status(number)
        if status is None:
            return json_response(404, {"error": "not_found", "message": f"dossier {number} not found"})
        return json_response(200, status)

    # -- applying a result (shared by the API and the callback receiver) --------------------
    def _apply(self, conn: Any, row: Any, *, result: str, transaction_id: str, amount: int, when: datetime,
               bank: str, receipt_no: str | None, confirmed_by: str) -> tuple[bool, str]:
        """Apply one payment result to one request (inside a transaction).

        Returns ``(applied, outcome)`` with outcome ``paid``/``failed``/``duplicate``; raises
        :class:`Refusal` (``amount_mismatch`` 422, ``already_paid`` 409, ``unmatched`` 409) without
        changing anything."""
        reference = row["reference"]
        if row["status"] == "unmatched":
            raise Refusal(409, "unmatched", f"payment {reference} matches no payment request of this system; "
                                            "it needs a person", "reference")
        if row["status"] == "paid":
            if result == "paid" and row["transaction_id"] == transaction_id:
                if amount != row["amount"]:
                    raise Refusal(422, "amount_mismatch", f"amount {amount} differs from the request's "
                                                          f"{row['amount']} VND", "amount")
                return False, "duplicate"
            if result == "paid":
                raise Refusal(409, "already_paid", f"payment {reference} is already paid by transaction "
                                                   f"{row['transaction_id']}; a fee is never paid twice",
                              "transactionId")
            raise Refusal(409, "already_paid", f"payment {reference} is already paid; a failed result cannot "
                                               "undo it", "result")
        if amount != row["amount"]:
            raise Refusal(422, "amount_mismatch", f"amount {amount} differs from the request's {row['amount']} VND",
                          "amount")
        stamp = iso(when)
        if result == "failed":
            if row["status"] == "failed":
                return False, "duplicate"
            conn.execute("UPDATE payment_requests SET status = 'failed', transaction_id = ?, bank = ?, receipt_no = ?,"
                         " confirmed_by = ?, updated_at = ? WHERE reference = ?",
                         (transaction_id, bank, receipt_no, confirmed_by, stamp, reference))
            return True, "failed"
        conn.execute("UPDATE payment_requests SET status = 'paid', paid_at = ?, transaction_id = ?, bank = ?,"
                     " receipt_no = ?, confirmed_by = ?, updated_at = ? WHERE reference = ?",
                     (stamp, transaction_id, bank, receipt_no, confirmed_by, stamp, reference))
        return True, "paid"

    def _payment_result(self, request: Request) -> Response:
        refused = self._authorised(request)  # type: ignore[attr-defined]
        if refused:
            return refused
        reference = request.params["reference"]
        db = self.require_db()  # type: ignore[attr-defined]
        with db.lock:
            known = db.conn.execute("SELECT 1 FROM payment_requests WHERE reference = ?", (reference,)).fetchone()
        if known is None:
            return json_response(404, {"error": "not_found", "message": f"payment {reference} not found"})
        try:
            body = request.json_object(empty_ok=False)
        except BadJson as exc:
            return json_response(400, {"error": "bad_request", "message": f"body must be a JSON object: {exc}"})
        try:
            given = _result_body(body)
        except Refusal as exc:
            return exc.response()
        with db.tx() as conn:
            row = conn.execute("SELECT * FROM payment_requests WHERE reference = ?", (reference,)).fetchone()
            try:
                applied, _ = self._apply(conn, row, confirmed_by="api", **given)
            except Refusal as exc:
                return exc.response()
            row = conn.execute("SELECT * FROM payment_requests WHERE reference = ?", (reference,)).fetchone()
        return json_response(200, {"applied": applied, "payment": self._payment_json(row)},
                             outcome="applied" if applied else "unchanged")

    # -- the confirm callback (platform -> one-stop, §4.9, §6.6) --------------------------------
    def _confirm_answer(self, ma_loi: str, text: str, body: dict[str, Any]) -> Response:
        fields = {"MaLoi": ma_loi, "MoTaLoi": text, "MaDoiTac": self.payment_partner,
                  "MaThamChieu": str(body.get("MaThamChieu") or ""), "ThoiGianGD": str(body.get("ThoiGianGD") or "")}
        fields["MaXacThuc"] = checksum(fields, CONFIRM_ANSWER_ORDER, self.payment_secret)
        return json_response(200, fields, outcome=ma_loi)

    def _log_callback(self, conn: Any, body: dict[str, Any], checksum_ok: bool, outcome: str, answer: str) -> None:
        conn.execute(
            "INSERT INTO payment_callbacks(reference, ma_loi, amount, transaction_id, checksum_ok, outcome,"
            " answer_code, body) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
            (str(body.get("MaThamChieu") or ""), str(body.get("MaLoi") or ""), str(body.get("SoTien") or ""),
             str(body.get("MaGiaoDich") or ""), int(checksum_ok), outcome, answer, dumps(body)),
        )

    def _confirm(self, request: Request) -> Response:
        try:
            body = request.json_object(empty_ok=False)
        except BadJson:
            return json_response(400, {"MaLoi": "99", "MoTaLoi": "Dữ liệu gửi lên không đúng định dạng JSON"},
                                 outcome="http_400")
        db = self.require_db()  # type: ignore[attr-defined]
        given = body.get("MaXacThuc")
        good = isinstance(given, str) and given == checksum(body, ANSWER_ORDERS["CONFIRM"], self.payment_secret)
        with db.tx() as conn:
            if not good:
                self._log_callback(conn, body, False, "bad_checksum", "99")
                return self._confirm_answer("99", BAD_CHECKSUM, body)
            if body.get("MaDoiTac") != self.payment_partner:
                self._log_callback(conn, body, True, "bad_partner", "99")
                return self._confirm_answer("99", f"Mã đối tác {body.get('MaDoiTac')} không hợp lệ", body)
            problem = _callback_problem(body)
            if problem:
                self._log_callback(conn, body, True, "invalid", "99")
                return self._confirm_answer("99", problem, body)
            reference, amount = body["MaThamChieu"], int(body["SoTien"])
            when = _from_ts(body["ThoiGianGD"])
            result = "paid" if body["MaLoi"] == "00" else "failed"
            row = conn.execute("SELECT * FROM payment_requests WHERE reference = ?", (reference,)).fetchone()
            if row is None:
                stamp = iso(when)
                conn.execute(
                    "INSERT INTO payment_requests(reference, dossier_no, amount, status, created_at, paid_at,"
                    " transaction_id, bank, confirmed_by, updated_at, callback_count)"
                    " VALUES(?, ?, ?, 'unmatched', ?, ?, ?, ?, 'callback', ?, 1)",
                    (reference, _dossier_in(str(body.get("ThongTinGiaoDich") or "")), amount, stamp,
                     stamp if result == "paid" else None, body["MaGiaoDich"], body["MaNganHang"], stamp),
                )
                self._log_callback(conn, body, True, "unmatched", "99")
                return self._confirm_answer("99", f"Không tìm thấy yêu cầu thanh toán {reference}", body)
            conn.execute("UPDATE payment_requests SET callback_count = callback_count + 1 WHERE reference = ?",
                         (reference,))
            if row["status"] == "unmatched" and row["transaction_id"] == body["MaGiaoDich"]:
                self._log_callback(conn, body, True, "duplicate", "99")
                return self._confirm_answer("99", f"Không tìm thấy yêu cầu thanh toán {reference}", body)
            try:
                _, outcome = self._apply(conn, row, result=result, transaction_id=body["MaGiaoDich"], amount=amount,
                                         when=when, bank=body["MaNganHang"], receipt_no=None, confirmed_by="callback")
            except Refusal as exc:
                outcome = "amount_mismatch" if exc.error == "amount_mismatch" else "conflict"
                self._log_callback(conn, body, True, outcome, "99")
                return self._confirm_answer("99", _refusal_text(exc), body)
            self._log_callback(conn, body, True, outcome, "00")
        return self._confirm_answer("00", OK_TEXT, body)

    # -- test doors --------------------------------------------------------------------------
    def payments_state(self) -> dict[str, Any]:
        """What ``GET /_state/payments`` answers: every request, every callback and the counts."""
        db = self.require_db()  # type: ignore[attr-defined]
        with db.lock:
            rows = db.conn.execute("SELECT * FROM payment_requests ORDER BY seq").fetchall()
            calls = db.conn.execute("SELECT * FROM payment_callbacks ORDER BY seq").fetchall()
        requests = [{**self._payment_json(r), "callbackCount": r["callback_count"]} for r in rows]
        log_items = [{"seq": c["seq"], "reference": c["reference"], "MaLoi": c["ma_loi"], "SoTien": c["amount"],
                      "MaGiaoDich": c["transaction_id"], "checksumOk": bool(c["checksum_ok"]),
                      "outcome": c["outcome"], "answer": c["answer_code"]} for c in calls]

        def count(outcome: str) -> int:
            return sum(1 for c in calls if c["outcome"] == outcome)

        return {"payments": requests, "callbacks": log_items, "counts": {
            "payments": len(rows), "byStatus": {s: sum(1 for r in rows if r["status"] == s) for s in PAYMENT_STATUSES},
            "callbacks": {"received": len(calls), "applied": count("paid") + count("failed"),
                          "duplicates": count("duplicate"), "badChecksum": count("bad_checksum"),
                          "conflicts": count("conflict"), "amountMismatches": count("amount_mismatch"),
                          "unmatched": count("unmatched"), "invalid": count("invalid") + count("bad_partner")}}}

    def _state_payments(self, request: Request) -> Response:
        return json_response(200, self.payments_state())

    def register_payment(self, reference: str, dossier_no: str, amount: int,
                         created_at: datetime | None = None) -> dict[str, Any]:
        """Register a pending payment request exactly as given (test door; the dossier need not exist)."""
        db = self.require_db()  # type: ignore[attr-defined]
        stamp = iso(created_at or self._clock(db).now())  # type: ignore[attr-defined]
        with db.tx() as conn:
            conn.execute("INSERT INTO payment_requests(reference, dossier_no, amount, status, created_at, updated_at)"
                         " VALUES(?, ?, ?, 'pending', ?, ?)", (reference, dossier_no, amount, stamp, stamp))
            row = conn.execute("SELECT * FROM payment_requests WHERE reference = ?", (reference,)).fetchone()
        return self._payment_json(row)

    def _admin_register(self, request: Request) -> Response:
        try:
            body = request.json_object()
            reference, dossier_no, amount = body.get("reference"), body.get("dossierNo", ""), body.get("amount")
            if not isinstance(reference, str) or not reference.strip():
                raise ValueError("reference must be a non-blank string")
            if not isinstance(dossier_no, str):
                raise ValueError("dossierNo must be a string")
            if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
                raise ValueError("amount must be an integer >= 0")
            created = body.get("createdAt")
            when = None
            if created is not None:
                if not isinstance(created, str) or not _ISO_WITH_OFFSET.match(created):
                    raise ValueError("createdAt must be an ISO 8601 date-time with offset")
                when = datetime.fromisoformat(created.replace("Z", "+00:00"))
        except (BadJson, ValueError) as exc:
            return json_response(400, {"error": "bad_request", "message": str(exc)})
        db = self.require_db()  # type: ignore[attr-defined]
        with db.lock:
            if db.conn.execute("SELECT 1 FROM payment_requests WHERE reference = ?", (reference,)).fetchone():
                return json_response(409, {"error": "conflict", "message": f"payment {reference} already exists"})
        return json_response(200, self.register_payment(reference, dossier_no, amount, when))

    def open_payments(self, n: int) -> dict[str, Any]:
        """What a one-stop does when citizens click "pay": for the ``n`` oldest dossiers with fees
        and no pending or paid request, send a signed INIT to the platform and, when the platform
        accepts it, register the request as pending. Raises ``LookupError`` without a platform URL."""
        if not self.payment_platform_url:
            raise LookupError("no payment platform URL is configured")
        db = self.require_db()  # type: ignore[attr-defined]
        with db.lock:
            busy = {r[0] for r in db.conn.execute(
                "SELECT dossier_no FROM payment_requests WHERE status IN ('pending', 'paid')")}
            rows = db.conn.execute("SELECT snapshot FROM dossiers ORDER BY idx").fetchall()
            now = self._clock(db).now()  # type: ignore[attr-defined]
            taken = {r[0] for r in db.conn.execute("SELECT reference FROM payment_requests")}
        chosen = []
        for row in rows:
            dossier = json.loads(row["snapshot"])
            if not _payable_online(dossier):
                continue
            amount = sum(int(f.get("amount") or 0) for f in dossier.get("fees") or [])
            if amount > 0 and dossier["dossierNo"] not in busy:
                chosen.append((dossier, amount))
            if len(chosen) >= n:
                break
        opened: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []
        for dossier, amount in chosen:
            when = now
            reference = reference_for(dossier["dossierNo"], when)
            while reference in taken:
                when += timedelta(seconds=1)
                reference = reference_for(dossier["dossierNo"], when)
            taken.add(reference)
            answer = self._send_init(dossier, amount, reference, when)
            if answer.get("MaLoi") != "00":
                refused.append({"dossierNo": dossier["dossierNo"], "reference": reference,
                                "MaLoi": answer.get("MaLoi"), "MoTaLoi": answer.get("MoTaLoi")})
                continue
            self.register_payment(reference, dossier["dossierNo"], amount, when)
            opened.append({"reference": reference, "dossierNo": dossier["dossierNo"], "amount": amount,
                           "payUrl": answer.get("UrlThanhToan")})
        return {"opened": opened, "refused": refused}

    def _send_init(self, dossier: dict[str, Any], amount: int, reference: str, when: datetime) -> dict[str, Any]:
        """POST one signed INIT (§4.9) to the platform; the platform's answer, or a local ``99``."""
        number = dossier["dossierNo"]
        message: dict[str, Any] = {
            "LoaiBanTin": "INIT", "PhienBan": PROTOCOL, "MaDoiTac": self.payment_partner, "MaThamChieu": reference,
            "SoTien": str(amount), "LoaiHinhThanhToan": "PAY", "MaKenhThanhToan": "1", "MaThietBi": "1",
            "NgonNgu": "vi-VN", "MaTienTe": "VND", "MaNganHang": "PAYMENT",
            "ThongTinGiaoDich": f"THANH TOAN HO SO {number}", "ThoiGianGD": _ts(when), "Ip": "127.0.0.1",
        }
        code, name = dossier["serviceCode"], dossier.get("serviceName") or ""
        message["ThongTinBienLai"] = {  # §4.8 names; MaDichVu "2": MaDonVi, TenDonVi, MaHoSo, MaDVC, MaTTHC (§5.8)
            "MaDichVu": "2", "MaHoSo": number, "MaDVC": code + MA_DVC_SUFFIX, "TenDVC": name, "MaTTHC": code,
            "TenTTHC": name, "MaDonVi": dossier["govAgencyCode"],
            "TenDonVi": dossier["govAgencyName"], "HoTenNguoiNop": dossier.get("applicantName") or "",
            "NoiDungThanhToan": f"THANH TOAN HO SO {number}",
            "PhiLePhi": [{"LoaiPhiLePhi": "2" if f.get("feeKind") == "charge" else "1",
                          "MaPhiLePhi": f.get("feeCode") or "", "TenPhiLePhi": f.get("feeName") or "",
                          "SoTien": int(f.get("amount") or 0)} for f in dossier.get("fees") or []],
        }
        message["MaXacThuc"] = checksum(message, REQUEST_ORDERS["INIT"], self.payment_secret)
        url = str(self.payment_platform_url).rstrip("/") + "/api/payment"
        req = urllib.request.Request(url, data=dumps(message).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json; charset=utf-8"})
        try:
            with urllib.request.urlopen(req, timeout=self.payment_timeout) as resp:  # noqa: S310 - loopback only
                answer = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            return {"MaLoi": "99", "MoTaLoi": f"HTTP {exc.code} from the payment platform"}
        except (OSError, ValueError) as exc:
            return {"MaLoi": "99", "MoTaLoi": f"payment platform unreachable ({type(exc).__name__})"}
        if not isinstance(answer, dict):
            return {"MaLoi": "99", "MoTaLoi": "the payment platform's answer is not a JSON object"}
        if answer.get("MaLoi") == "00" and answer.get("MaXacThuc") != checksum(answer, ANSWER_ORDERS["INIT"],
                                                                              self.payment_secret):
            return {"MaLoi": "99", "MoTaLoi": "the payment platform's answer has a wrong MaXacThuc"}
        return answer

    def _admin_open(self, request: Request) -> Response:
        try:
            body = request.json_object()
        except BadJson as exc:
            return json_response(400, {"error": "bad_request", "message": str(exc)})
        n = body.get("n", 1)
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 1000:
            return json_response(400, {"error": "bad_request", "message": "n must be an integer 0..1000"})
        try:
            return json_response(200, self.open_payments(n))
        except LookupError as exc:
            return json_response(409, {"error": "no_platform", "message": str(exc)})


def _result_body(body: dict[str, Any]) -> dict[str, Any]:
    """The fields of a ``POST /api/v1/payments/{ref}/result`` body; raises :class:`Refusal` (422)."""
    def invalid(field: str, message: str) -> Refusal:
        return Refusal(422, "validation_failed", message, field)

    unknown = set(body) - {"result", "transactionId", "amount", "paidAt", "bank", "receiptNo"}
    if unknown:
        name = sorted(unknown)[0]
        raise invalid(name, f"{name} is not a field of a payment result")
    if "result" not in body:
        raise invalid("result", "result is required")
    if body["result"] not in ("paid", "failed"):
        raise invalid("result", f"result must be \"paid\" or \"failed\", not {body['result']!r}")
    for name in ("transactionId", "bank"):
        if name not in body:
            raise invalid(name, f"{name} is required")
        if not isinstance(body[name], str) or not body[name].strip():
            raise invalid(name, f"{name} must be a non-blank string")
    if "amount" not in body:
        raise invalid("amount", "amount is required")
    amount = body["amount"]
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise invalid("amount", "amount must be a positive integer (VND)")
    if "paidAt" not in body:
        raise invalid("paidAt", "paidAt is required")
    paid_at = body["paidAt"]
    if not isinstance(paid_at, str) or not _ISO_WITH_OFFSET.match(paid_at):
        raise invalid("paidAt", "paidAt must be an ISO 8601 date-time with offset, e.g. 2026-11-02T08:15:00+07:00")
    try:
        when = datetime.fromisoformat(paid_at.replace("Z", "+00:00"))
    except ValueError:
        raise invalid("paidAt", "paidAt is not a valid date-time") from None
    receipt = body.get("receiptNo")
    if receipt is not None and not isinstance(receipt, str):
        raise invalid("receiptNo", "receiptNo must be a string or null")
    return {"result": body["result"], "transaction_id": body["transactionId"], "amount": amount, "when": when,
            "bank": body["bank"], "receipt_no": receipt or None}


def _callback_problem(body: dict[str, Any]) -> str | None:
    """What is wrong with a correctly signed confirm callback, in the platform's words; ``None`` if fine."""
    for name in ("MaThamChieu", "MaLoi", "MaGiaoDich", "MaNganHang", "ThoiGianGD"):
        if not isinstance(body.get(name), str) or not body[name].strip():
            return f"Thiếu trường {name}"
    if body["MaLoi"] not in ("00", "99"):
        return f"MaLoi {body['MaLoi']} không hợp lệ"
    amount = body.get("SoTien")
    if isinstance(amount, bool) or not ((isinstance(amount, int) and 0 <= amount <= 10**12)
                                        or (isinstance(amount, str) and amount.isascii() and amount.isdigit()
                                            and len(amount) <= 13 and int(amount) <= 10**12)):
        return "SoTien phải là số nguyên (VND)"
    if not _TS14.match(body["ThoiGianGD"]):
        return "ThoiGianGD phải có dạng yyyyMMddHHmmss"
    try:
        _from_ts(body["ThoiGianGD"])
    except ValueError:
        return "ThoiGianGD phải có dạng yyyyMMddHHmmss"
    return None


def _refusal_text(exc: Refusal) -> str:
    if exc.error == "amount_mismatch":
        return "Số tiền không khớp với yêu cầu thanh toán"
    if exc.error == "unmatched":
        return "Không tìm thấy yêu cầu thanh toán"
    return "Hồ sơ đã được thanh toán bởi giao dịch khác"


__all__ = ["CALLBACK_OUTCOMES", "CONFIRM_ANSWER_ORDER", "DEFAULT_PARTNER", "DEFAULT_SECRET", "PAYMENT_SCHEMA",
           "PAYMENT_STATUSES", "PaymentsMixin", "loopback_url"]
