"""Stand-in for a ministry's receipt ledger: a SOAP 1.1 document/literal service.

WSDL and XSD: ``fixtures/ledger/ReceiptLedger.wsdl`` / ``ReceiptLedger.xsd`` (namespace
``urn:vn:gov:mof:receiptledger:v1``). Requests need a WS-Security UsernameToken (PasswordText).
Bodies are parsed with a hardened lxml parser; a DTD or entity declaration is refused with a Fault.
Injected faults (``POST /_admin/faults``): besides the shared ones, ``soap_fault_rate`` answers a
``soap:Server`` Fault (HTTP 500) without storing anything, and ``malformed_rate`` answers 200 with broken XML.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from lxml import etree

from mocks.server import (
    FIXTURES_DIR,
    PROXY_ERROR_PAGE,
    VN_TZ,
    MockServer,
    Request,
    Response,
    Router,
    StateDB,
    json_response,
)

log = logging.getLogger("mocks")

__all__ = ["DEFAULT_PASSWORD", "DEFAULT_USERNAME", "LEDGER_NS", "MAX_SOAP_BYTES", "MinistryLedgerMock"]

LEDGER_NS = "urn:vn:gov:mof:receiptledger:v1"
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
PASSWORD_TEXT = ("http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
                 "#PasswordText")
DEFAULT_USERNAME = "lienthong.h49"
DEFAULT_PASSWORD = "demo-ledger-secret"
MAX_SOAP_BYTES = 1024 * 1024
LEDGER_DIR = FIXTURES_DIR / "ledger"
WSDL_FILE = LEDGER_DIR / "ReceiptLedger.wsdl"
XSD_FILE = LEDGER_DIR / "ReceiptLedger.xsd"
OPERATIONS = ("SubmitReceipts", "GetReceipt", "ListReceipts")
FIELDS = ("ReceiptNumber", "DossierCode", "PaymentReference", "AmountVND", "PaidAt", "PayerName", "AgencyCode",
          "PdfSha256")
MAX_BATCH = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    receipt_number TEXT NOT NULL UNIQUE,
    content TEXT NOT NULL,
    content_sha TEXT NOT NULL,
    paid_at TEXT NOT NULL,
    batch INTEGER NOT NULL
);
-- what a real ledger indexes: a ListReceipts window reads its receipts, not every one held (paid_at
-- is ISO 8601 in +07:00, so its text order is time order), and a batch number is a MAX away
CREATE INDEX IF NOT EXISTS ix_receipts_paid_at ON receipts(paid_at);
CREATE INDEX IF NOT EXISTS ix_receipts_batch ON receipts(batch);
"""

#: (field, maximum length, regex or None); AmountVND and PaidAt are checked separately.
_TEXT_RULES = {
    "ReceiptNumber": (30, r"[A-Za-z0-9][A-Za-z0-9./-]*"),
    "DossierCode": (50, r"[0-9]{3}\.[0-9]{2}\.[0-9]{2}\.H[0-9]{2}-[0-9]{6}-[0-9]{4,5}"),
    "PaymentReference": (50, r"[A-Za-z0-9_.-]+"),
    "PayerName": (200, None),
    "AgencyCode": (20, r"[0-9]{3}\.[0-9]{2}\.[0-9]{2}\.H[0-9]{2}"),
    "PdfSha256": (64, r"[0-9a-f]{64}"),
}


def hardened_parser() -> etree.XMLParser:
    """No network, no DTD loading or validation, no entity resolution, no huge trees."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                           huge_tree=False, remove_pis=True, collect_ids=False)


class SoapFault(Exception):
    def __init__(self, faultcode: str, faultstring: str, detail_name: str, **detail: Any):
        super().__init__(faultstring)
        self.faultcode, self.faultstring, self.detail_name, self.detail = faultcode, faultstring, detail_name, detail


def _q(name: str, ns: str = LEDGER_NS) -> str:
    return f"{{{ns}}}{name}"


def _envelope(body_child: etree._Element) -> bytes:
    env = etree.Element(_q("Envelope", SOAP_NS), nsmap={"soap": SOAP_NS, "tns": LEDGER_NS})
    etree.SubElement(env, _q("Body", SOAP_NS)).append(body_child)
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def _validation(index: int, number: str, field: str, rule: str, message: str) -> SoapFault:
    return SoapFault("soap:Client", f"Receipt {index} ({number or '?'}): {field} {message}", "ValidationFault",
                     Code="VALIDATION_FAILED", ReceiptNumber=number, Index=index, Field=field, Rule=rule,
                     Message=message)


#: The lexical space of xsd:dateTime (XML Schema 1.0 part 2, §3.2.7), ASCII digits only: a date, "T",
#: a time (24:00:00 is the end of the day), an optional fraction of any length and an optional zone.
#: datetime.fromisoformat reads far more of ISO 8601 (a date alone, a space for "T", the basic and
#: week-date forms, "+0700"), which a schema-validating service refuses.
_XSD_DATETIME = re.compile(r"-?([1-9][0-9]{3,}|0[0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
                           r"T(([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?|24:00:00(\.0+)?)"
                           r"(Z|[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))?")
#: xsd:long's lexical space: an optional sign and ASCII digits (``\d`` would take other scripts' digits).
_XSD_LONG = re.compile(r"[+-]?[0-9]+")


def _parse_datetime(text: str) -> datetime:
    """An xsd:dateTime (:data:`_XSD_DATETIME`) as an aware datetime; ``ValueError`` for anything else,
    or for a year this ledger cannot store (outside 1..9999)."""
    if not _XSD_DATETIME.fullmatch(text):
        raise ValueError(f"{text!r} is not an xsd:dateTime")
    given = text
    end_of_day = "T24:00:00" in text
    if end_of_day:  # 24:00:00 is the first instant of the next day
        date, rest = text.split("T24:00:00", 1)
        text = date + "T00:00:00" + re.sub(r"^\.0+", "", rest)
    value = datetime.fromisoformat(text)  # Python 3.11 reads "Z" and fractions of any length
    if value.tzinfo is None:  # a dateTime without offset is Viet Nam time (I)
        value = value.replace(tzinfo=VN_TZ)
    try:  # 9999-12-31T23:59:59-12:00 is a dateTime, but not one this ledger can store or compare
        if end_of_day:
            value += timedelta(days=1)
        value.astimezone(VN_TZ)
        value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"{given} lies outside the years 1..9999") from None
    return value


def _text_bound(when: datetime, seconds: int) -> str:
    """``when`` moved by ``seconds``, as the receipts' ``paid_at`` text (a bound past year 1 or
    9999 is the lowest or highest text)."""
    try:
        return (when + timedelta(seconds=seconds)).astimezone(VN_TZ).isoformat(timespec="seconds")
    except OverflowError:
        return "" if seconds < 0 else "\uffff"


class MinistryLedgerMock(MockServer):
    """The ministry receipt ledger (SOAP 1.1 at ``POST /``; WSDL at ``GET /?wsdl``).

    Args (besides :class:`MockServer`'s): ``username``, ``password`` of the UsernameToken.
    """

    name = "ministry_ledger"
    state_file = "ministry_ledger.db"
    soap_faults_supported = True

    def __init__(self, state_dir: str | Path | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 seed: int = 49, username: str = DEFAULT_USERNAME, password: str = DEFAULT_PASSWORD):
        if not username or not password:
            raise ValueError("username and password must not be empty")
        self.username, self.password = username, password
        super().__init__(state_dir, host=host, port=port, seed=seed)

    def build_routes(self, router: Router) -> None:
        router.add("GET", "/health", lambda r: json_response(200, {"status": "ok"}))
        router.add("GET", "/", self._wsdl)
        router.add("GET", "/ReceiptLedger.xsd", self._xsd)
        router.add("POST", "/", self._soap, operation=self._operation)
        router.add("GET", "/_state", self._state)
        router.add("GET", "/_state/receipts", self._state_receipts)
        router.add("POST", "/_admin/faults", self.admin_faults)
        router.add("GET", "/_admin/faults", self.get_faults)
        router.add("POST", "/_admin/reset", self._reset)

    @staticmethod
    def _operation(request: Request) -> str:
        action = (request.header("SOAPAction") or "").strip('"')
        name = action.rsplit("/", 1)[-1]
        return name if name in OPERATIONS else "soap"

    def init_state(self, db: StateDB) -> None:
        with db.lock:
            db.conn.executescript(_SCHEMA)

    # -- description -------------------------------------------------------------------------
    def _wsdl(self, request: Request) -> Response:
        if "wsdl" not in {k.lower() for k in request.query}:
            return json_response(404, {"error": "not_found", "message": "GET /?wsdl for the service description"})
        text = WSDL_FILE.read_text(encoding="utf-8")
        text = re.sub(r'(<soap:address location=")[^"]*(")', rf"\g<1>{self.url}/\g<2>", text)
        text = text.replace('schemaLocation="ReceiptLedger.xsd"', f'schemaLocation="{self.url}/ReceiptLedger.xsd"')
        return Response(200, text.encode("utf-8"), content_type="text/xml; charset=utf-8")

    def _xsd(self, request: Request) -> Response:
        return Response(200, XSD_FILE.read_bytes(), content_type="text/xml; charset=utf-8")

    # -- SOAP --------------------------------------------------------------------------------
    def _fault(self, fault: SoapFault) -> Response:
        f = etree.Element(_q("Fault", SOAP_NS))
        etree.SubElement(f, "faultcode").text = fault.faultcode
        etree.SubElement(f, "faultstring").text = fault.faultstring
        detail = etree.SubElement(etree.SubElement(f, "detail"), _q(fault.detail_name))
        for name, value in fault.detail.items():
            etree.SubElement(detail, _q(name)).text = str(value)
        return Response(500, _envelope(f), content_type="text/xml; charset=utf-8", outcome=fault.detail_name)

    def _soap(self, request: Request) -> Response:
        try:
            return self._handle(request)
        except SoapFault as fault:
            return self._fault(fault)

    # -- injected faults ---------------------------------------------------------------------
    def soap_fault_response(self, request: Request) -> Response:
        """An injected ``soap_fault``: what a SOAP 1.1 stack answers when its back end fails. HTTP 500,
        ``text/xml``, the envelope with a ``soap:Server`` Fault and no detail (no WSDL fault applies);
        nothing was applied, so the client may retry."""
        fault = etree.Element(_q("Fault", SOAP_NS))
        etree.SubElement(fault, "faultcode").text = "soap:Server"
        etree.SubElement(fault, "faultstring").text = (
            "Internal server error: the receipt store is temporarily unavailable; nothing was stored")
        return Response(500, _envelope(fault), content_type="text/xml; charset=utf-8", outcome="fault_soap")

    def malformed_responses(self, request: Request, operation: str) -> list[Response]:
        """Injected ``malformed`` answers, all HTTP 200 ``text/xml``: the operation's response
        envelope cut short, an HTML proxy error page, and binary garbage (a gzip stream sent without
        ``Content-Encoding``)."""
        name = operation if operation in OPERATIONS else "SubmitReceipts"
        truncated = (f'<?xml version=\'1.0\' encoding=\'UTF-8\'?>\n<soap:Envelope xmlns:soap="{SOAP_NS}" '
                     f'xmlns:tns="{LEDGER_NS}"><soap:Body><tns:{name}Response><tns:').encode("utf-8")
        xml_type = "text/xml; charset=utf-8"
        return [
            Response(200, truncated, content_type=xml_type),
            Response(200, PROXY_ERROR_PAGE, content_type=xml_type),
            Response(200, b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xb3\xb1\xaf\xc8\xcd\x51\x28\x4b\x2d\x2a",
                     content_type=xml_type),
        ]

    def _parse(self, body: bytes) -> etree._Element:
        if len(body) > MAX_SOAP_BYTES:
            raise SoapFault("soap:Client", f"Request larger than {MAX_SOAP_BYTES} bytes", "RequestFault",
                            Code="REQUEST_TOO_LARGE", Message=f"the limit is {MAX_SOAP_BYTES} bytes")
        # Also in UTF-16/32 (NUL bytes dropped), where the declaration's bytes are interleaved.
        if any(re.search(rb"<!\s*(DOCTYPE|ENTITY)", text, re.IGNORECASE)
               for text in (body, body.replace(b"\x00", b"") if b"\x00" in body else b"")):
            raise SoapFault("soap:Client", "DTDs and entity declarations are not allowed", "RequestFault",
                            Code="DTD_FORBIDDEN", Message="DOCTYPE and ENTITY declarations are refused")
        try:
            root = etree.fromstring(body, hardened_parser())
        except etree.XMLSyntaxError as exc:
            raise SoapFault("soap:Client", "Malformed XML", "RequestFault", Code="MALFORMED_XML",
                            Message=str(exc)[:200]) from None
        if root.getroottree().docinfo.doctype:  # belt and braces: the regex should have caught it
            raise SoapFault("soap:Client", "DTDs and entity declarations are not allowed", "RequestFault",
                            Code="DTD_FORBIDDEN", Message="DOCTYPE and ENTITY declarations are refused")
        if root.tag != _q("Envelope", SOAP_NS):
            raise SoapFault("soap:Client", "Not a SOAP 1.1 envelope", "RequestFault", Code="NOT_SOAP11",
                            Message=f"root element is {root.tag}")
        return root

    def _authenticate(self, root: etree._Element) -> None:
        def fail(message: str) -> SoapFault:
            return SoapFault("soap:Client", "Authentication failed", "AuthenticationFault",
                             Code="AUTHENTICATION_FAILED", Message=message)

        token = root.find(f"{_q('Header', SOAP_NS)}/{_q('Security', WSSE_NS)}/{_q('UsernameToken', WSSE_NS)}")
        if token is None:
            raise fail("a WS-Security UsernameToken header is required")
        user = token.findtext(_q("Username", WSSE_NS))
        password = token.find(_q("Password", WSSE_NS))
        if password is None:
            raise fail("the UsernameToken carries no Password")
        if password.get("Type", PASSWORD_TEXT) != PASSWORD_TEXT:
            raise fail("only PasswordText is supported")
        if user != self.username or (password.text or "") != self.password:
            raise fail("unknown user or wrong password")

    def _handle(self, request: Request) -> Response:
        root = self._parse(request.body)
        self._authenticate(root)
        body = root.find(_q("Body", SOAP_NS))
        payload = None if body is None else next((c for c in body if isinstance(c.tag, str)), None)
        if payload is None:
            raise SoapFault("soap:Client", "Empty SOAP body", "RequestFault", Code="EMPTY_BODY",
                            Message="the Body carries no request element")
        handlers = {_q(f"{op}Request"): getattr(self, f"_op_{op}") for op in OPERATIONS}
        handler = handlers.get(payload.tag)
        if handler is None:
            raise SoapFault("soap:Client", f"Unknown operation element {payload.tag}", "RequestFault",
                            Code="UNKNOWN_OPERATION", Message=str(payload.tag))
        answer = handler(payload)
        return Response(200, _envelope(answer), content_type="text/xml; charset=utf-8", outcome="ok")

    # -- receipts ----------------------------------------------------------------------------
    def _read_receipt(self, index: int, element: etree._Element) -> dict[str, Any]:
        values = {name: element.findtext(_q(name)) for name in FIELDS}
        number = (values["ReceiptNumber"] or "").strip()
        for name in FIELDS:
            if values[name] is None or not values[name].strip():
                raise _validation(index, number, name, "required", "is required and must not be blank")
            # Vietnamese text is compared, counted and held in NFC (a decomposed name is the same name)
            values[name] = unicodedata.normalize("NFC", values[name].strip())
        for name, (limit, pattern) in _TEXT_RULES.items():
            if len(values[name]) > limit:
                raise _validation(index, number, name, f"maxLength:{limit}", f"must be at most {limit} characters")
            if pattern and not re.fullmatch(pattern, values[name]):
                raise _validation(index, number, name, f"pattern:{pattern}", f"must match {pattern}")
        if not _XSD_LONG.fullmatch(values["AmountVND"]) or not 0 < int(values["AmountVND"]) <= 10**12:
            raise _validation(index, number, "AmountVND", "range:1..1000000000000",
                              "must be a whole number of VND between 1 and 1000000000000")
        try:
            paid = _parse_datetime(values["PaidAt"])
        except ValueError:
            raise _validation(index, number, "PaidAt", "dateTime", "must be an xsd:dateTime") from None
        values["AmountVND"] = int(values["AmountVND"])
        values["PaidAt"] = paid.astimezone(VN_TZ).isoformat()
        return values

    @staticmethod
    def _sha(receipt: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(receipt, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()

    def _op_SubmitReceipts(self, payload: etree._Element) -> etree._Element:
        elements = payload.findall(_q("Receipt"))
        if not elements:
            raise _validation(0, "", "Receipt", "minOccurs:1", "at least one receipt is required")
        if len(elements) > MAX_BATCH:
            raise _validation(MAX_BATCH, "", "Receipt", f"maxOccurs:{MAX_BATCH}",
                              f"a batch holds at most {MAX_BATCH} receipts")
        receipts = [self._read_receipt(i, el) for i, el in enumerate(elements)]
        db = self.require_db()
        results: list[tuple[str, str]] = []
        with db.tx() as conn:
            batch = int(conn.execute("SELECT COALESCE(MAX(batch), 0) + 1 FROM receipts").fetchone()[0])
            for receipt in receipts:
                number, sha = receipt["ReceiptNumber"], self._sha(receipt)
                row = conn.execute("SELECT content, content_sha FROM receipts WHERE receipt_number = ?",
                                   (number,)).fetchone()
                if row is not None:
                    if row["content_sha"] == sha:
                        results.append((number, "unchanged"))
                        continue
                    held = json.loads(row["content"])
                    differ = [f for f in FIELDS if held.get(f) != receipt.get(f)]
                    raise SoapFault("soap:Client", f"Receipt {number} is already held with different content",
                                    "DuplicateReceiptFault", Code="DUPLICATE_RECEIPT", ReceiptNumber=number,
                                    Fields=",".join(differ),
                                    Message=f"receipt {number} is already held; differing fields: {', '.join(differ)}")
                paid_at = datetime.fromisoformat(receipt["PaidAt"]).astimezone(VN_TZ).isoformat()
                conn.execute("INSERT INTO receipts(receipt_number, content, content_sha, paid_at, batch)"
                             " VALUES(?, ?, ?, ?, ?)",
                             (number, json.dumps(receipt, ensure_ascii=False), sha, paid_at, batch))
                results.append((number, "accepted"))
        answer = etree.Element(_q("SubmitReceiptsResponse"))
        etree.SubElement(answer, _q("Accepted")).text = str(sum(1 for _, s in results if s == "accepted"))
        etree.SubElement(answer, _q("Unchanged")).text = str(sum(1 for _, s in results if s == "unchanged"))
        for number, status in results:
            result = etree.SubElement(answer, _q("Result"))
            etree.SubElement(result, _q("ReceiptNumber")).text = number
            etree.SubElement(result, _q("Status")).text = status
        return answer

    @staticmethod
    def _receipt_element(parent: etree._Element, receipt: dict[str, Any]) -> None:
        element = etree.SubElement(parent, _q("Receipt"))
        for name in FIELDS:
            etree.SubElement(element, _q(name)).text = str(receipt[name])

    def _op_GetReceipt(self, payload: etree._Element) -> etree._Element:
        number = (payload.findtext(_q("ReceiptNumber")) or "").strip()
        if not number:
            raise _validation(0, "", "ReceiptNumber", "required", "is required and must not be blank")
        db = self.require_db()
        with db.lock:
            row = db.conn.execute("SELECT content FROM receipts WHERE receipt_number = ?", (number,)).fetchone()
        answer = etree.Element(_q("GetReceiptResponse"))
        if row is not None:
            self._receipt_element(answer, json.loads(row["content"]))
        return answer

    def _op_ListReceipts(self, payload: etree._Element) -> etree._Element:
        bounds = {}
        for name in ("From", "To"):
            try:
                bounds[name] = _parse_datetime((payload.findtext(_q(name)) or "").strip())
            except ValueError:
                raise _validation(0, "", name, "dateTime", "must be an xsd:dateTime") from None
        if bounds["From"] > bounds["To"]:
            raise _validation(0, "", "From", "From<=To", "must not be later than To")
        answer = etree.Element(_q("ListReceiptsResponse"))
        # the index narrows the window to whole seconds around it; the exact bounds are checked below
        low, high = _text_bound(bounds["From"], -1), _text_bound(bounds["To"], 1)
        db = self.require_db()
        with db.lock:
            rows = db.conn.execute("SELECT content FROM receipts WHERE paid_at >= ? AND paid_at < ? ORDER BY seq",
                                   (low, high)).fetchall()
        for row in rows:
            receipt = json.loads(row["content"])
            if bounds["From"] <= datetime.fromisoformat(receipt["PaidAt"]) < bounds["To"]:
                self._receipt_element(answer, receipt)
        return answer

    # -- test doors --------------------------------------------------------------------------
    def receipts(self) -> list[dict[str, Any]]:
        db = self.require_db()
        with db.lock:
            rows = db.conn.execute("SELECT content FROM receipts ORDER BY seq").fetchall()
        return [json.loads(r["content"]) for r in rows]

    def _state(self, request: Request) -> Response:
        return json_response(200, {"seed": self.seed, "counts": {"receipts": len(self.receipts())},
                                   "username": self.username, "faults": self.faults.snapshot()})

    def _state_receipts(self, request: Request) -> Response:
        db = self.require_db()
        with db.lock:
            rows = db.conn.execute("SELECT seq, batch, content FROM receipts ORDER BY seq").fetchall()
        return json_response(200, {"receipts": [{"seq": r["seq"], "batch": r["batch"], **json.loads(r["content"])}
                                                for r in rows]})

    def _reset(self, request: Request) -> Response:
        db = self.require_db()
        with db.tx() as conn:
            conn.execute("DELETE FROM receipts")
        self.faults.clear()
        return json_response(200, {"reset": True})
