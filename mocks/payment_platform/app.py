"""Stand-in for the national payment platform of DVCQG (message protocol 1.0.6).

Contract: shared/reference/national-portal-contract.md §2.3, §4.8–4.9, §5.7–5.9, §6.5–6.6, §7.11,
§9 row 10. What the contract does not say is marked (I) here and in mocks/README.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mocks.payment_platform.pdf import receipt_pdf
from mocks.server import (
    PROXY_ERROR_PAGE,
    VN_TZ,
    BadJson,
    MockServer,
    Request,
    Response,
    Router,
    StateDB,
    dumps,
    json_response,
    malformed_json_responses,
    seeded_rng,
)

log = logging.getLogger("mocks")

__all__ = [
    "ANSWER_ORDERS",
    "BAD_CHECKSUM",
    "DEFAULT_PARTNER",
    "DEFAULT_SECRET",
    "REQUEST_ORDERS",
    "PaymentPlatformMock",
    "checksum",
    "reference_for",
    "seeded_payments",
]

PROTOCOL = "1.0.6"
DEFAULT_PARTNER = "DVC_H49"
DEFAULT_SECRET = "demo-payment-secret"
BAD_CHECKSUM = "Mã xác thực không chính xác"

#: §6.6 (C): field orders of the request checksums; the secret is appended last.
REQUEST_ORDERS: dict[str, tuple[str, ...]] = {
    "INIT": ("LoaiBanTin", "PhienBan", "MaDoiTac", "MaThamChieu", "SoTien", "LoaiHinhThanhToan", "MaKenhThanhToan",
             "MaThietBi", "NgonNgu", "MaTienTe", "MaNganHang", "ThongTinGiaoDich", "ThoiGianGD", "Ip"),
    "QUERY": ("LoaiBanTin", "PhienBan", "MaDoiTac", "MaThamChieu", "ThoiGianGD"),
    "GET_BILL": ("LoaiBanTin", "PhienBan", "MaDoiTac", "MaThamChieu", "ThoiGianGD"),
}
#: Orders of the answers' own checksums. CONFIRM (callback) and QUERY use the confirm order (C);
#: INIT and error answers use orders of this stand-in's choosing (I).
ANSWER_ORDERS: dict[str, tuple[str, ...]] = {
    "CONFIRM": ("LoaiBanTin", "MaLoi", "MaDoiTac", "MaThamChieu", "SoTien", "MaTienTe", "MaGiaoDich", "MaNganHang",
                "ThoiGianGD", "ThongTinGiaoDich"),
    "QUERY": ("LoaiBanTin", "MaLoi", "MaDoiTac", "MaThamChieu", "SoTien", "MaTienTe", "MaGiaoDich", "MaNganHang",
              "ThoiGianGD", "ThongTinGiaoDich"),
    "INIT": ("LoaiBanTin", "MaLoi", "MaDoiTac", "MaThamChieu", "SoTien", "UrlThanhToan", "ThoiGianGD"),
    "ERROR": ("LoaiBanTin", "MaLoi", "MaDoiTac", "MaThamChieu", "ThoiGianGD"),
}
#: §4.9 (C): INIT carries the receipt block ThongTinBienLai (§4.8's names) with MaDichVu "2", fees and
#: charges for dossiers, whose mandatory fields §5.8 (C) names; checked in this order.
FEES_SERVICE = "2"
RECEIPT_REQUIRED = ("MaDichVu", "MaDonVi", "TenDonVi", "MaHoSo", "MaDVC", "MaTTHC")
#: TrangThaiGD: "1" paid and "4" failed are C; "0" pending is I.
TRANG_THAI = {"paid": "1", "failed": "4", "pending": "0"}
STATUSES = ("paid", "failed", "pending")
BANKS = ("VCB", "BIDV", "VTB", "AGRIBANK", "TCB", "MB")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS payments (
    seq INTEGER PRIMARY KEY,
    ref TEXT NOT NULL UNIQUE,
    dossier_no TEXT NOT NULL,
    amount INTEGER NOT NULL,
    status TEXT NOT NULL,
    origin TEXT NOT NULL,
    created_at TEXT NOT NULL,
    txn_time TEXT NOT NULL,
    info TEXT NOT NULL,
    payer TEXT NOT NULL,
    bank TEXT NOT NULL DEFAULT '',
    ma_giao_dich TEXT NOT NULL DEFAULT '',
    paid_time TEXT NOT NULL DEFAULT '',
    receipt_no TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS callbacks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ref TEXT NOT NULL,
    url TEXT NOT NULL,
    outcome TEXT NOT NULL,
    http_status INTEGER,
    body TEXT NOT NULL
);
"""


def checksum(values: dict[str, Any], order: tuple[str, ...], secret: str) -> str:
    """Lowercase hex SHA-256 of the ``|``-joined values in ``order``, the secret last (§6.6)."""
    parts = ["" if values.get(name) is None else str(values.get(name)) for name in order]
    return hashlib.sha256("|".join([*parts, secret]).encode("utf-8")).hexdigest()


def reference_for(dossier_no: str, when: datetime) -> str:
    """§6.5 (C, 2025 client): "dvc" + dossier code without non-word characters + yyyyMMddHHmmss."""
    return "dvc" + re.sub(r"\W", "", dossier_no) + when.strftime("%Y%m%d%H%M%S")


def _ts(dt: datetime) -> str:
    return dt.astimezone(VN_TZ).strftime("%Y%m%d%H%M%S")


def _real_time(text: str) -> bool:
    """``yyyyMMddHHmmss`` naming a real time (a completion is timed from it). The 2025 client's
    12-hour hour field (contract §6.1) still names one, so it passes."""
    try:
        datetime.strptime(text, "%Y%m%d%H%M%S")
    except ValueError:
        return False
    return True


def seeded_payments(dossiers: list[dict[str, Any]], seed: int | str) -> list[dict[str, Any]]:
    """The payments of the seeded world: one per dossier whose fees add up to more than 0 VND.

    Both stand-ins call this on the same seeded one-stop dossiers, so the platform's seeded
    transactions and the one-stop's seeded payment requests carry the same references, dossiers
    and amounts. Each item: ``reference`` (MaThamChieu, §6.5), ``dossierNo``, ``amount`` (int VND),
    ``createdAt`` (aware datetime, Asia/Ho_Chi_Minh), ``status`` (the platform's seeded outcome:
    paid / failed / pending), ``payer`` and ``info`` (ThongTinGiaoDich). Dossier order is kept.
    """
    payments: list[dict[str, Any]] = []
    for dossier in dossiers:
        amount = sum(int(f.get("amount") or 0) for f in dossier.get("fees") or [])
        if amount <= 0:
            continue
        number = dossier["dossierNo"]
        rng = seeded_rng(seed, "payment", number)
        base = datetime.fromisoformat(dossier.get("modifiedAt") or "2026-11-02T08:00:00+07:00")
        when = base.astimezone(VN_TZ) + timedelta(minutes=rng.randint(1, 90), seconds=rng.randint(0, 59))
        status = rng.choices(STATUSES, weights=(50, 20, 30))[0]
        payments.append({"reference": reference_for(number, when), "dossierNo": number, "amount": amount,
                         "createdAt": when, "status": status, "payer": str(dossier.get("applicantName") or ""),
                         "info": f"THANH TOAN HO SO {number}"})
    return payments


def check_callback_url(url: str | None) -> str | None:
    """Callbacks go to 127.0.0.1 only (http); anything else raises ``ValueError``."""
    if url is None or url == "":
        return None
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname != "127.0.0.1" or parts.username or parts.password:
        raise ValueError(f"callback_url must be an http://127.0.0.1:<port>/... URL, got {url!r}")
    return url


class PaymentPlatformMock(MockServer):
    """The national payment platform: INIT / QUERY / GET_BILL on ``POST /api/payment`` and the
    confirm callback to the one-stop.

    Args (besides :class:`MockServer`'s):
        partner_code: MaDoiTac the platform knows.
        secret: the shared checksum secret.
        callback_url: where confirm callbacks go (``http://127.0.0.1:...`` only; ``None`` = nowhere).
        lost_share: share of callbacks that are deliberately never sent (seeded per MaThamChieu);
            each is counted as the fault kind ``callback_lost``.
        duplicate_callbacks: send every delivered callback twice; each second copy is counted as
            ``callback_duplicate``.
        seed_dossiers: dossiers of the seeded one-stop world (same seed) whose fees get payments.
        dossiers: one-stop dossier snapshots to use instead (``dossierNo``, ``fees``, ``applicantName``…).
        callback_timeout: seconds the callback sender waits for the one-stop.
    """

    name = "payment_platform"
    state_file = "payment_platform.db"

    def __init__(self, state_dir: str | Path | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 seed: int = 49, partner_code: str = DEFAULT_PARTNER, secret: str = DEFAULT_SECRET,
                 callback_url: str | None = None, lost_share: float = 0.3, duplicate_callbacks: bool = False,
                 seed_dossiers: int = 40, dossiers: list[dict[str, Any]] | None = None,
                 callback_timeout: float = 2.0):
        if not secret:
            raise ValueError("secret must not be empty")
        if isinstance(lost_share, bool) or not 0.0 <= float(lost_share) <= 1.0:
            raise ValueError("lost_share must be between 0 and 1")
        self.partner_code = partner_code
        self.secret = secret
        self.callback_url = check_callback_url(callback_url)
        self.lost_share = float(lost_share)
        self.duplicate_callbacks = bool(duplicate_callbacks)
        self.seed_dossiers = seed_dossiers
        self.dossiers = dossiers
        self.callback_timeout = callback_timeout
        self._senders: list[threading.Thread] = []
        self._senders_lock = threading.Lock()
        super().__init__(state_dir, host=host, port=port, seed=seed)

    # -- routes ------------------------------------------------------------------------------
    def build_routes(self, router: Router) -> None:
        router.add("GET", "/health", lambda r: json_response(200, {"status": "ok"}))
        router.add("POST", "/api/payment", self._api, operation=self._operation)
        router.add("GET", "/pay/{ref}", self._page, operation="page")
        router.add("GET", "/_state", self._state)
        router.add("GET", "/_state/payments", self._state_payments)
        router.add("GET", "/_state/callbacks", self._state_callbacks)
        router.add("POST", "/_admin/payments/settle", self._settle)
        router.add("POST", "/_admin/callbacks", self._admin_callbacks)
        router.add("GET", "/_admin/callbacks", self._get_callbacks_config)
        router.add("POST", "/_admin/faults", self.admin_faults)
        router.add("GET", "/_admin/faults", self.get_faults)
        router.add("POST", "/_admin/reset", self._reset)

    @staticmethod
    def _operation(request: Request) -> str:
        try:
            request.json()
            body = request.json_object()
        except BadJson:
            return "invalid"
        kind = body.get("LoaiBanTin")
        return kind if isinstance(kind, str) and kind in REQUEST_ORDERS else "invalid"

    # -- state -------------------------------------------------------------------------------
    def init_state(self, db: StateDB) -> None:
        with db.lock:
            db.conn.executescript(_SCHEMA)
            stored = db.get_meta("world_seed")
            if stored is None:
                self._seed_world(db)
            else:
                self.seed = int(stored)

    def _source_dossiers(self) -> list[dict[str, Any]]:
        if self.dossiers is not None:
            return list(self.dossiers)
        from mocks.one_stop import (
            OneStopMock,  # a private copy of the same seeded one-stop world
        )

        world = OneStopMock(None, seed=self.seed, seed_dossiers=self.seed_dossiers)
        try:
            world.open_state()
            rows = world.require_db().conn.execute("SELECT snapshot FROM dossiers ORDER BY idx").fetchall()
            return [json.loads(r[0]) for r in rows]
        finally:
            world.close()

    def _seed_world(self, db: StateDB) -> None:
        dossiers = self._source_dossiers()
        with db.tx() as conn:
            conn.execute("DELETE FROM payments")
            conn.execute("DELETE FROM callbacks")
            db.set_meta("world_seed", self.seed)
            db.set_meta("bills", 0)
            for payment in seeded_payments(dossiers, self.seed):
                when = payment["createdAt"]
                conn.execute(
                    "INSERT INTO payments(ref, dossier_no, amount, status, origin, created_at, txn_time, info, payer)"
                    " VALUES(?, ?, ?, 'pending', 'seed', ?, ?, ?, ?)",
                    (payment["reference"], payment["dossierNo"], payment["amount"], _ts(when), _ts(when),
                     payment["info"], payment["payer"]),
                )
                if payment["status"] != "pending":
                    self._complete(db, payment["reference"], payment["status"], notify=False)

    # -- protocol ----------------------------------------------------------------------------
    def _answer(self, kind: str, fields: dict[str, Any], order_name: str) -> Response:
        body = dict(fields)
        body["MaXacThuc"] = checksum(body, ANSWER_ORDERS[order_name], self.secret)
        return json_response(200, body, outcome=str(body.get("MaLoi")))

    def _error(self, kind: str, body: dict[str, Any], text: str) -> Response:
        fields = {"LoaiBanTin": kind, "MaLoi": "99", "MoTaLoi": text, "MaDoiTac": self.partner_code,
                  "MaThamChieu": str(body.get("MaThamChieu") or ""), "ThoiGianGD": str(body.get("ThoiGianGD") or "")}
        return self._answer(kind, fields, "ERROR")

    def _api(self, request: Request) -> Response:
        try:
            request.json()
            body = request.json_object(empty_ok=False)
        except BadJson:
            return json_response(400, {"MaLoi": "99", "MoTaLoi": "Dữ liệu gửi lên không đúng định dạng JSON"},
                                 outcome="http_400")
        kind = body.get("LoaiBanTin")
        if not isinstance(kind, str) or kind not in REQUEST_ORDERS:  # a list or object is unknown too, not a 500
            shown = kind if isinstance(kind, str) else json.dumps(kind, ensure_ascii=False)[:100]
            return self._error(kind if isinstance(kind, str) else "", body,
                               f"Loại bản tin {shown} không được hỗ trợ")
        given = body.get("MaXacThuc")
        if not isinstance(given, str) or given.lower() != checksum(body, REQUEST_ORDERS[kind], self.secret) \
                or given != given.lower():
            return self._error(kind, body, BAD_CHECKSUM)
        if body.get("MaDoiTac") != self.partner_code:
            return self._error(kind, body, f"Mã đối tác {body.get('MaDoiTac')} không hợp lệ")
        if body.get("PhienBan") != PROTOCOL:
            return self._error(kind, body, f"Phiên bản {body.get('PhienBan')} không được hỗ trợ (1.0.6)")
        return {"INIT": self._init, "QUERY": self._query, "GET_BILL": self._bill}[kind](body)

    def _init(self, body: dict[str, Any]) -> Response:
        for name in REQUEST_ORDERS["INIT"]:
            if not isinstance(body.get(name), str) or not body[name].strip():
                return self._error("INIT", body, f"Thiếu trường {name}")
        # ASCII digits only: \d takes other scripts' digits, which int() reads and strptime does not
        if not re.fullmatch(r"[1-9][0-9]{0,11}", body["SoTien"]):
            return self._error("INIT", body, "SoTien phải là số nguyên dương (VND)")
        if not re.fullmatch(r"[0-9]{14}", body["ThoiGianGD"]) or not _real_time(body["ThoiGianGD"]):
            return self._error("INIT", body, "ThoiGianGD phải có dạng yyyyMMddHHmmss")
        receipt = body.get("ThongTinBienLai")
        if not isinstance(receipt, dict):
            return self._error("INIT", body, "Thiếu trường ThongTinBienLai")
        for name in RECEIPT_REQUIRED:
            if not isinstance(receipt.get(name), str) or not receipt[name].strip():
                return self._error("INIT", body, f"Thiếu trường ThongTinBienLai.{name}")
        if receipt["MaDichVu"] != FEES_SERVICE:
            return self._error("INIT", body, f"ThongTinBienLai.MaDichVu {receipt['MaDichVu']} không được hỗ trợ "
                                             f"(chỉ nhận \"{FEES_SERVICE}\": phí, lệ phí hồ sơ)")
        ref = body["MaThamChieu"]
        dossier = receipt["MaHoSo"]
        db = self.require_db()
        with db.tx() as conn:
            if conn.execute("SELECT 1 FROM payments WHERE ref = ?", (ref,)).fetchone():
                return self._error("INIT", body, f"Mã tham chiếu {ref} đã tồn tại")
            conn.execute(
                "INSERT INTO payments(ref, dossier_no, amount, status, origin, created_at, txn_time, info, payer)"
                " VALUES(?, ?, ?, 'pending', 'init', ?, ?, ?, ?)",
                (ref, dossier, int(body["SoTien"]), body["ThoiGianGD"], body["ThoiGianGD"], body["ThongTinGiaoDich"],
                 receipt.get("HoTenNguoiNop") if isinstance(receipt.get("HoTenNguoiNop"), str) else ""),
            )
        fields = {"LoaiBanTin": "INIT", "PhienBan": PROTOCOL, "MaLoi": "00", "MoTaLoi": "Thành công",
                  "MaDoiTac": self.partner_code, "MaThamChieu": ref, "SoTien": body["SoTien"],
                  "UrlThanhToan": f"{self.url}/pay/{ref}", "ThoiGianGD": body["ThoiGianGD"]}
        return self._answer("INIT", fields, "INIT")

    def _row(self, ref: str) -> Any:
        db = self.require_db()
        with db.lock:
            return db.conn.execute("SELECT * FROM payments WHERE ref = ?", (ref,)).fetchone()

    def _confirm_fields(self, row: Any, kind: str) -> dict[str, Any]:
        """The confirm fields (§4.9): SoTien is an integer."""
        return {"LoaiBanTin": kind, "MaLoi": "00" if row["status"] == "paid" else "99",
                "MaDoiTac": self.partner_code, "MaThamChieu": row["ref"], "SoTien": row["amount"], "MaTienTe": "VND",
                "MaGiaoDich": row["ma_giao_dich"], "MaNganHang": row["bank"],
                "ThoiGianGD": row["paid_time"] or row["txn_time"], "ThongTinGiaoDich": row["info"]}

    def _reference_missing(self, kind: str, body: dict[str, Any]) -> Response | None:
        """QUERY and GET_BILL name their transaction by MaThamChieu (§4.9): without one, as text, the
        request is refused naming the field, as INIT's are."""
        ref = body.get("MaThamChieu")
        if not isinstance(ref, str) or not ref.strip():
            return self._error(kind, body, "Thiếu trường MaThamChieu")
        return None

    def _query(self, body: dict[str, Any]) -> Response:
        missing = self._reference_missing("QUERY", body)
        if missing is not None:
            return missing
        row = self._row(body["MaThamChieu"])
        if row is None:
            return self._error("QUERY", body, f"Không tìm thấy giao dịch {body.get('MaThamChieu')}")
        fields = self._confirm_fields(row, "QUERY")
        fields["MaLoi"] = "00"  # the query itself succeeded; TrangThaiGD carries the payment's state
        fields["MoTaLoi"] = "Thành công"
        fields["TrangThaiGD"] = TRANG_THAI[row["status"]]
        return self._answer("QUERY", fields, "QUERY")

    def _bill(self, body: dict[str, Any]) -> Response:
        missing = self._reference_missing("GET_BILL", body)
        if missing is not None:
            return missing
        row = self._row(body["MaThamChieu"])
        if row is None:
            return self._error("GET_BILL", body, f"Không tìm thấy giao dịch {body.get('MaThamChieu')}")
        if body.get("ThoiGianGD") != row["txn_time"]:  # §4.9: the ThoiGianGD of the original transaction (its INIT)
            return self._error("GET_BILL", body, "ThoiGianGD không khớp với giao dịch")
        if row["status"] != "paid":
            return self._error("GET_BILL", body, "Giao dịch chưa thanh toán thành công, không có biên lai")
        return Response(200, self._bill_pdf(row), content_type="application/pdf",
                        headers={"Content-Disposition": f'inline; filename="{row["receipt_no"]}.pdf"'}, outcome="00")

    def _bill_pdf(self, row: Any) -> bytes:
        """The receipt PDF GET_BILL serves for a paid payment (the same bytes every time)."""
        return receipt_pdf("BIEN LAI THU PHI, LE PHI DIEN TU", [
            ("So bien lai", row["receipt_no"]), ("Ma tham chieu", row["ref"]), ("Ma giao dich", row["ma_giao_dich"]),
            ("Ma ho so", row["dossier_no"]), ("Nguoi nop", row["payer"]), ("So tien", f"{row['amount']} VND"),
            ("Thoi gian thanh toan", row["paid_time"]), ("Ngan hang", row["bank"]), ("Noi dung", row["info"]),
            ("Don vi thu", self.partner_code),
        ])

    def _page(self, request: Request) -> Response:
        row = self._row(request.params["ref"])
        if row is None:
            return Response(404, b"<html><body><h1>Kh\xc3\xb4ng t\xc3\xacm th\xe1\xba\xa5y giao d\xe1\xbb\x8bch</h1>"
                                 b"</body></html>", content_type="text/html; charset=utf-8")
        html = (f"<html><head><title>Cổng thanh toán (giả lập)</title></head><body><h1>Thanh toán {row['ref']}</h1>"
                f"<p>Số tiền: {row['amount']} VND</p><p>Trạng thái: {row['status']}</p>"
                "<p>Trang giả lập: thanh toán được hoàn tất qua POST /_admin/payments/settle.</p></body></html>")
        return Response(200, html.encode("utf-8"), content_type="text/html; charset=utf-8")

    def malformed_responses(self, request: Request, operation: str) -> list[Response]:
        """Injected ``malformed`` answers, HTTP 200, nothing applied. ``GET_BILL``: a PDF cut short, an
        nginx error page labelled as PDF, an empty PDF. The payment page: HTML cut short. Every other
        message: the 1.0.6 answer cut short, an nginx error page labelled as JSON, a JSON array, an
        empty body."""
        if operation == "GET_BILL":
            pdf = "application/pdf"
            return [Response(200, b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n2 0 obj\n<< /Ty",
                             content_type=pdf),
                    Response(200, PROXY_ERROR_PAGE, content_type=pdf),
                    Response(200, b"", content_type=pdf)]
        if operation == "page":
            return [Response(200, "<html><head><title>Cổng thanh toán".encode("utf-8"),
                             content_type="text/html; charset=utf-8")]
        kind = operation if operation in REQUEST_ORDERS else "INIT"
        return malformed_json_responses(
            f'{{"LoaiBanTin":"{kind}","PhienBan":"{PROTOCOL}","MaLoi":"00","MoTaLoi":"Th'.encode("utf-8"))

    # -- completion and callbacks -----------------------------------------------------------
    def _complete(self, db: StateDB, ref: str, status: str, *, notify: bool = True) -> dict[str, Any]:
        """Finish one pending payment, or turn a failed one paid late (inside a transaction)."""
        conn = db.conn
        row = conn.execute("SELECT * FROM payments WHERE ref = ?", (ref,)).fetchone()
        late = row["status"] == "failed"  # completed after its failure was reported: timed after it
        rng = seeded_rng(self.seed, "complete-late" if late else "complete", ref)
        since = row["paid_time"] if late and row["paid_time"] else row["txn_time"]
        paid_at = datetime.strptime(since, "%Y%m%d%H%M%S").replace(tzinfo=VN_TZ) + timedelta(
            minutes=rng.randint(1, 15), seconds=rng.randint(0, 59))
        bank = rng.choice(BANKS)
        txn = f"GD{paid_at:%y%m%d}{rng.randint(0, 99999999):08d}"
        receipt_no = ""
        if status == "paid":
            bills = int(db.get_meta("bills", "0") or 0) + 1
            db.set_meta("bills", bills)
            receipt_no = f"BL{paid_at:%Y}-{bills:06d}"
        conn.execute("UPDATE payments SET status = ?, bank = ?, ma_giao_dich = ?, paid_time = ?, receipt_no = ?"
                     " WHERE ref = ?", (status, bank, txn, _ts(paid_at), receipt_no, ref))
        done = {"MaThamChieu": ref, "status": status, "MaGiaoDich": txn, "ThoiGianGD": _ts(paid_at),
                "receiptNo": receipt_no}
        if notify:
            done["callback"] = self._plan_callback(db, ref)
        return done

    def callback_message(self, ref: str) -> dict[str, Any]:
        row = self._row(ref)
        fields = self._confirm_fields(row, "CONFIRM")
        fields["MaXacThuc"] = checksum(fields, ANSWER_ORDERS["CONFIRM"], self.secret)
        return fields

    def _plan_callback(self, db: StateDB, ref: str) -> str:
        url = self.callback_url
        if url is None:
            db.conn.execute("INSERT INTO callbacks(ref, url, outcome, body) VALUES(?, '', 'no_url', '')", (ref,))
            return "no_url"
        if seeded_rng(self.seed, "callback-lost", ref).random() < self.lost_share:
            db.conn.execute("INSERT INTO callbacks(ref, url, outcome, body) VALUES(?, ?, 'lost', '')", (ref, url))
            self.faults.count("callback_lost")
            return "lost"
        return "queued"

    def _send(self, ref: str, url: str, copies: int) -> None:
        message = self.callback_message(ref)
        data = dumps(message).encode("utf-8")
        for _ in range(copies):
            status: int | None = None
            answer = ""
            try:
                req = urllib.request.Request(url, data=data, method="POST",
                                             headers={"Content-Type": "application/json; charset=utf-8"})
                with urllib.request.urlopen(req, timeout=self.callback_timeout) as resp:
                    status = resp.status
                    answer = resp.read(4096).decode("utf-8", "replace")
                outcome = "sent"
            except urllib.error.HTTPError as exc:
                status, outcome = exc.code, "sent"
                answer = exc.read(4096).decode("utf-8", "replace")
            except Exception as exc:  # noqa: BLE001 - a lost connection is an outcome, not a crash
                outcome, answer = "error", type(exc).__name__
            db = self.db
            if db is None:
                return
            with db.lock:
                db.conn.execute("INSERT INTO callbacks(ref, url, outcome, http_status, body) VALUES(?, ?, ?, ?, ?)",
                                (ref, url, outcome, status, answer))

    def _dispatch_callbacks(self, refs: list[str]) -> None:
        url = self.callback_url
        if url is None or not refs:
            return
        copies = 2 if self.duplicate_callbacks else 1
        if copies > 1:  # counted when queued, so the count is there as soon as settle() returns
            self.faults.count("callback_duplicate", len(refs) * (copies - 1))

        def run() -> None:
            for ref in refs:
                self._send(ref, url, copies)

        thread = threading.Thread(target=run, name="payment-callbacks", daemon=True)
        with self._senders_lock:
            self._senders = [t for t in self._senders if t.is_alive()] + [thread]
        thread.start()

    def wait_callbacks(self, timeout: float = 5.0) -> bool:
        """Wait until every callback sender thread is done (for tests). True when all finished."""
        with self._senders_lock:
            threads = list(self._senders)
        for thread in threads:
            thread.join(timeout)
        return not any(t.is_alive() for t in threads)

    def settle(self, n: int, outcome: str | None = None, references: list[str] | None = None, *,
               late: bool = False) -> list[dict[str, Any]]:
        """Complete the ``n`` oldest pending payments, or the pending ones among ``references``
        (MaThamChieu; others are left as they are); the result is seeded per MaThamChieu (80 % paid)
        unless ``outcome`` ("paid"/"failed") forces it. ``late`` (with ``outcome`` "paid"): a failed
        payment among ``references`` turns paid too, with a new MaGiaoDich, time and receipt, and
        its confirm callback (the platform reported it failed and completed it later; §7.11's
        QUERY then answers TrangThaiGD 1) **(I)**."""
        if late and outcome != "paid":
            raise ValueError("late settles turn failed payments paid: outcome must be \"paid\"")
        db = self.require_db()
        done = []
        settleable = "('pending', 'failed')" if late else "('pending')"
        with db.tx() as conn:
            if references is None:
                rows = conn.execute(f"SELECT ref FROM payments WHERE status IN {settleable} ORDER BY seq LIMIT ?",
                                    (n,)).fetchall()
            else:
                rows = [r for ref in dict.fromkeys(references) for r in conn.execute(
                    f"SELECT ref FROM payments WHERE status IN {settleable} AND ref = ?", (ref,)).fetchall()]
            for row in rows:
                status = outcome or ("paid" if seeded_rng(self.seed, "settle", row["ref"]).random() < 0.8 else "failed")
                done.append(self._complete(db, row["ref"], status))
        self._dispatch_callbacks([d["MaThamChieu"] for d in done if d["callback"] == "queued"])
        return done

    # -- test doors --------------------------------------------------------------------------
    def _settle(self, request: Request) -> Response:
        try:
            body = request.json_object()
        except BadJson as exc:
            return json_response(400, {"error": "bad_request", "message": str(exc)})
        n, outcome, references = body.get("n", 1), body.get("outcome"), body.get("references")
        late = body.get("late", False)
        if not isinstance(late, bool) or (late and (outcome != "paid" or references is None)):
            return json_response(400, {"error": "bad_request", "message": "late must be true or false; a late "
                                       "settle names its references and has outcome \"paid\""})
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 10_000:
            return json_response(400, {"error": "bad_request", "message": "n must be an integer 0..10000"})
        if outcome not in (None, "paid", "failed"):
            return json_response(400, {"error": "bad_request", "message": "outcome must be \"paid\" or \"failed\""})
        if references is not None and not (isinstance(references, list) and len(references) <= 10_000 and all(
                isinstance(r, str) and 0 < len(r) <= 64 for r in references)):
            return json_response(400, {"error": "bad_request", "message": "references must be a list of at most "
                                                                          "10000 MaThamChieu (text, 1..64)"})
        return json_response(200, {"settled": self.settle(n, outcome, references, late=late)})

    def _admin_callbacks(self, request: Request) -> Response:
        try:
            body = request.json_object()
            unknown = set(body) - {"url", "lost_share", "duplicates"}
            if unknown:
                raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
            url = check_callback_url(body["url"]) if "url" in body else self.callback_url
            lost = body.get("lost_share", self.lost_share)
            if isinstance(lost, bool) or not isinstance(lost, (int, float)) or not 0 <= lost <= 1:
                raise ValueError("lost_share must be a number between 0 and 1")
            dup = body.get("duplicates", self.duplicate_callbacks)
            if not isinstance(dup, bool):
                raise ValueError("duplicates must be true or false")  # noqa: TRY004 - answered as 400
        except (BadJson, ValueError) as exc:
            return json_response(400, {"error": "bad_request", "message": str(exc)})
        self.callback_url, self.lost_share, self.duplicate_callbacks = url, float(lost), dup
        return self._get_callbacks_config(request)

    def _get_callbacks_config(self, request: Request) -> Response:
        return json_response(200, {"url": self.callback_url, "lost_share": self.lost_share,
                                   "duplicates": self.duplicate_callbacks})

    def payments(self) -> list[dict[str, Any]]:
        db = self.require_db()
        with db.lock:
            rows = db.conn.execute("SELECT * FROM payments ORDER BY seq").fetchall()
        return [{"MaThamChieu": r["ref"], "MaHoSo": r["dossier_no"], "SoTien": r["amount"], "status": r["status"],
                 "TrangThaiGD": TRANG_THAI[r["status"]], "origin": r["origin"], "MaGiaoDich": r["ma_giao_dich"],
                 "ThoiGianGD": r["paid_time"], "ThoiGianKhoiTao": r["txn_time"], "MaNganHang": r["bank"],
                 "SoBienLai": r["receipt_no"], "NguoiNop": r["payer"],
                 "PdfSha256": hashlib.sha256(self._bill_pdf(r)).hexdigest() if r["status"] == "paid" else None}
                for r in rows]

    def callbacks(self) -> list[dict[str, Any]]:
        db = self.require_db()
        with db.lock:
            rows = db.conn.execute("SELECT * FROM callbacks ORDER BY seq").fetchall()
        return [{"seq": r["seq"], "MaThamChieu": r["ref"], "url": r["url"], "outcome": r["outcome"],
                 "httpStatus": r["http_status"], "answer": r["body"]} for r in rows]

    def _state(self, request: Request) -> Response:
        payments = self.payments()
        by_status = {s: sum(1 for p in payments if p["status"] == s) for s in STATUSES}
        return json_response(200, {"seed": self.seed, "partner": self.partner_code, "protocol": PROTOCOL,
                                   "counts": {"payments": len(payments), "byStatus": by_status,
                                              "callbacks": len(self.callbacks())},
                                   "callbackConfig": {"url": self.callback_url, "lost_share": self.lost_share,
                                                      "duplicates": self.duplicate_callbacks},
                                   "faults": self.faults.snapshot()})

    def _state_payments(self, request: Request) -> Response:
        return json_response(200, {"payments": self.payments()})

    def _state_callbacks(self, request: Request) -> Response:
        return json_response(200, {"callbacks": self.callbacks()})

    def _reset(self, request: Request) -> Response:
        self.wait_callbacks()
        self._seed_world(self.require_db())
        self.faults.clear()
        return json_response(200, {"reset": True})

    def stop(self) -> None:
        self.wait_callbacks(self.callback_timeout + 1)
        super().stop()
