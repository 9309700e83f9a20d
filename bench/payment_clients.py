"""The references of the payment-receipts scenario: a minimal client (the ceiling) and the naive way.

The payment flow asks before it writes: protocol 1.0.6 has no batch, so every unfinished payment
is one ``QUERY`` and every paid one a ``GET_BILL``, whoever asks; the one-stop takes one result per
payment; only the ministry ledger takes batches. So the references differ from the bus in what
surrounds those calls, not in the calls themselves:

* **ceiling** — the wire calls a payment run cannot do without, each request built as bytes before
  the clock starts (signed bodies, result bodies, SOAP envelopes holding receipts already mapped by
  the engine), answers read only as far as their status: list the payment requests, ``QUERY`` each,
  ``GET_BILL`` each paid one, record each finished one at the one-stop, ``SubmitReceipts`` in the
  bus's batch size, then the reconciliation's reads (the requests again, ``ListReceipts``). No
  store, no mapping, no exchange log, no checksum verification, no dossier look-ups.
* **naive** — one payment at a time as simple integrations do: sign and send each request as it
  comes, look up the dossier for the payer's name, map the receipt by hand into a fresh dict and
  submit it alone with zeep.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import requests
from lxml import etree

from bench.seed import PAYMENT_PARTNER, PAYMENT_SECRET
from bench.standins import LEDGER_PASSWORD, LEDGER_USER, ONESTOP_KEY
from connectors.ministry_ledger.client import LEDGER_NS, RECEIPT_FIELDS
from mocks.ministry_ledger.app import PASSWORD_TEXT, SOAP_NS, WSSE_NS

__all__ = ["PaymentPlan", "ledger_receipts", "onestop_results", "plan_payments", "run_payments_ceiling",
           "run_payments_naive"]

SOAP_ACTION = LEDGER_NS + "/"  # + the operation, as the WSDL's soapAction reads
JSON = {"Content-Type": "application/json; charset=utf-8"}


class ReferenceRefused(RuntimeError):
    """A peer refused a reference client's call: the reference run is void."""


def _sign(kind: str, reference: str, when: str) -> dict[str, Any]:
    from mocks.payment_platform import REQUEST_ORDERS, checksum

    body = {"LoaiBanTin": kind, "PhienBan": "1.0.6", "MaDoiTac": PAYMENT_PARTNER, "MaThamChieu": reference,
            "ThoiGianGD": when}
    body["MaXacThuc"] = checksum(body, REQUEST_ORDERS[kind], PAYMENT_SECRET)
    return body


def _vn_stamp(when: datetime) -> str:
    """``yyyyMMddHHmmss`` in Viet Nam time, as the payment platform writes ThoiGianGD."""
    return when.astimezone(timezone(timedelta(hours=7))).strftime("%Y%m%d%H%M%S")


def _envelope(operation: str, children: list[etree._Element]) -> bytes:
    """A SOAP 1.1 envelope with the WS-Security UsernameToken (PasswordText) the ledger requires."""
    env = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"soap": SOAP_NS, "wsse": WSSE_NS, "l": LEDGER_NS})
    header = etree.SubElement(env, f"{{{SOAP_NS}}}Header")
    token = etree.SubElement(etree.SubElement(header, f"{{{WSSE_NS}}}Security"), f"{{{WSSE_NS}}}UsernameToken")
    etree.SubElement(token, f"{{{WSSE_NS}}}Username").text = LEDGER_USER
    etree.SubElement(token, f"{{{WSSE_NS}}}Password", Type=PASSWORD_TEXT).text = LEDGER_PASSWORD
    request = etree.SubElement(etree.SubElement(env, f"{{{SOAP_NS}}}Body"), f"{{{LEDGER_NS}}}{operation}Request")
    request.extend(children)
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def _receipt_element(record: dict[str, Any]) -> etree._Element:
    element = etree.Element(f"{{{LEDGER_NS}}}Receipt")
    for name in RECEIPT_FIELDS:
        etree.SubElement(element, f"{{{LEDGER_NS}}}{name}").text = str(record[name])
    return element


def _text(name: str, value: str) -> etree._Element:
    element = etree.Element(f"{{{LEDGER_NS}}}{name}")
    element.text = value
    return element


@dataclass
class PaymentPlan:
    """What the ceiling sends, built before it is timed (see :func:`plan_payments`)."""

    queries: list[tuple[str, bytes]] = field(default_factory=list)  # (reference, signed QUERY) per request
    bills: dict[str, bytes] = field(default_factory=dict)  # reference → signed GET_BILL, paid ones
    results: dict[str, bytes] = field(default_factory=dict)  # reference → result body, paid and failed ones
    envelopes: list[bytes] = field(default_factory=list)  # SubmitReceipts, one per batch
    list_envelope: bytes = b""  # ListReceipts over the paid times
    paid: int = 0
    failed: int = 0
    pending: int = 0


def _requests_of(onestop_url: str, page_size: int, http: requests.Session) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    page = 1
    while True:
        answer = http.get(f"{onestop_url}/api/v1/payments", params={"status": "all", "size": page_size, "page": page},
                          timeout=120)
        if answer.status_code != 200:
            raise ReferenceRefused(f"one-stop payments page {page}: HTTP {answer.status_code}")
        data = answer.json()
        items.extend(data["items"])
        if page * page_size >= int(data["total"]):
            return items
        page += 1


def plan_payments(urls: dict[str, str], *, batch_size: int, page_size: int) -> PaymentPlan:
    """Ask the stand-ins once, untimed, what a run will find (the platform's QUERY answers, checked
    by the connector; each paid one's receipt and dossier), map each paid transaction with the
    bus's own mapping, and build every request of the ceiling as bytes. The platform's state is
    not changed by QUERY or GET_BILL, and the one-stop's by none of these reads."""
    from connectors.connection import Secret
    from connectors.one_stop.client import OneStopClient
    from connectors.payment_platform.client import PaymentPlatformClient
    from lienthong.flows.payment_receipts import TO_LEDGER, transaction_time
    from lienthong.mapping import load_mapping
    from lienthong.mapping.transforms import datetime_from_portal

    mapping = load_mapping(TO_LEDGER)
    platform = PaymentPlatformClient(urls["platform"], PAYMENT_PARTNER, Secret(PAYMENT_SECRET), read_timeout=120)
    onestop = OneStopClient(urls["onestop"], Secret(ONESTOP_KEY), read_timeout=120)
    http = requests.Session()
    http.headers["X-Api-Key"] = ONESTOP_KEY
    plan = PaymentPlan()
    records: list[dict[str, Any]] = []
    times: list[datetime] = []
    try:
        for item in _requests_of(urls["onestop"], page_size, http):
            reference = item["reference"]
            txn = platform.query(reference)
            when = txn.raw.get("ThoiGianGD") or ""
            plan.queries.append((reference, json.dumps(_sign("QUERY", reference, when)).encode()))
            if txn.status == "pending":
                plan.pending += 1
                continue
            result = {"result": txn.status, "transactionId": txn.transaction_id, "amount": txn.amount,
                      "paidAt": txn.paid_at.isoformat() if txn.paid_at else datetime_from_portal(when),
                      "bank": txn.bank}
            if txn.status == "failed":
                plan.failed += 1
                plan.results[reference] = json.dumps(result).encode()
                continue
            plan.paid += 1
            # GET_BILL names the original transaction's time (§4.9), as the bus finds it
            started = transaction_time(reference, item.get("createdAt"))
            if started is None:
                raise ReferenceRefused(f"GET_BILL {reference}: the transaction's time is unknown")
            bill = platform.get_bill(reference, transaction_time=started)
            plan.bills[reference] = json.dumps(_sign("GET_BILL", reference, _vn_stamp(started))).encode()
            plan.results[reference] = json.dumps({**result, "receiptNo": bill.receipt_no}).encode()
            dossier = onestop.get_dossier(item["dossierNo"]) or {}
            records.append(mapping.apply({"transaction": txn.raw,
                                          "bill": {"receipt_no": bill.receipt_no, "pdf_sha256": bill.sha256},
                                          "dossier": {"code": item["dossierNo"],
                                                      "payer_name": str(dossier.get("applicantName") or "")}}))
            if txn.paid_at:
                times.append(txn.paid_at)
    finally:
        platform.close()
        onestop.close()
        http.close()
    for start in range(0, len(records), batch_size):
        plan.envelopes.append(_envelope("SubmitReceipts", [_receipt_element(r) for r in
                                                           records[start:start + batch_size]]))
    if times:
        plan.list_envelope = _envelope("ListReceipts", [_text("From", (min(times) - timedelta(days=1)).isoformat()),
                                                        _text("To", (max(times) + timedelta(days=1)).isoformat())])
    return plan


def run_payments_ceiling(urls: dict[str, str], plan: PaymentPlan, *, page_size: int) -> dict[str, Any]:
    """Send what :func:`plan_payments` built, in the order a run does: list, QUERY each (GET_BILL
    right after a paid one), record results, submit receipts, then the reconciliation's reads."""
    onestop = requests.Session()
    onestop.headers.update({"X-Api-Key": ONESTOP_KEY, **JSON})
    platform = requests.Session()
    platform.headers.update(JSON)
    ledger = requests.Session()
    ledger.headers["Content-Type"] = "text/xml; charset=utf-8"
    calls = 0

    def ok(response: requests.Response, what: str) -> requests.Response:
        if response.status_code != 200:
            raise ReferenceRefused(f"{what}: HTTP {response.status_code} {response.text[:200]}")
        return response

    t0 = time.perf_counter()
    listed = _requests_of(urls["onestop"], page_size, onestop)
    calls += -(-len(listed) // page_size)
    for reference, body in plan.queries:
        answer = ok(platform.post(f"{urls['platform']}/api/payment", data=body, timeout=120), "QUERY")
        if answer.json()["MaLoi"] != "00":
            raise ReferenceRefused(f"QUERY {reference} refused")
        calls += 1
        bill = plan.bills.get(reference)
        if bill is not None:
            answer = ok(platform.post(f"{urls['platform']}/api/payment", data=bill, timeout=120), "GET_BILL")
            if not answer.content.startswith(b"%PDF-"):
                raise ReferenceRefused(f"GET_BILL {reference}: not a PDF")
            calls += 1
    t1 = time.perf_counter()
    for reference, body in plan.results.items():
        ok(onestop.post(f"{urls['onestop']}/api/v1/payments/{reference}/result", data=body, timeout=120),
           f"result {reference}")
        calls += 1
    t2 = time.perf_counter()
    for envelope in plan.envelopes:
        ok(ledger.post(f"{urls['ledger']}/", data=envelope, headers={"SOAPAction": SOAP_ACTION + "SubmitReceipts"},
                       timeout=120), "SubmitReceipts")
        calls += 1
    t3 = time.perf_counter()
    _requests_of(urls["onestop"], page_size, onestop)
    calls += -(-len(listed) // page_size)
    if plan.list_envelope:
        ok(ledger.post(f"{urls['ledger']}/", data=plan.list_envelope,
                       headers={"SOAPAction": SOAP_ACTION + "ListReceipts"}, timeout=120), "ListReceipts")
        calls += 1
    t4 = time.perf_counter()
    return {"collect": t1 - t0, "fees": t2 - t1, "ledger": t3 - t2, "reconcile": t4 - t3, "total": t4 - t0,
            "calls": calls, "payments": len(listed)}


def run_payments_naive(urls: dict[str, str], sample: int) -> dict[str, Any]:
    """The first ``sample`` payment requests, one at a time: QUERY, GET_BILL, result, dossier,
    receipt mapped by hand and submitted alone with zeep. A refused call raises
    :class:`ReferenceRefused` (the run is void), as in the ceiling."""
    import zeep
    from zeep.wsse.username import UsernameToken

    from connectors.ministry_ledger.client import BINDING, DEFAULT_WSDL
    from mocks.payment_platform import REQUEST_ORDERS, checksum

    def ok(response: requests.Response, what: str) -> requests.Response:
        if response.status_code != 200:
            raise ReferenceRefused(f"naive {what}: HTTP {response.status_code} {response.text[:200]}")
        return response

    t0 = time.perf_counter()
    http = requests.Session()
    http.headers["X-Api-Key"] = ONESTOP_KEY
    ledger = zeep.Client(wsdl=str(DEFAULT_WSDL), wsse=UsernameToken(LEDGER_USER, LEDGER_PASSWORD))
    service = ledger.create_service(BINDING, urls["ledger"] + "/")
    done = paid = failed = calls = 0
    page = 1
    while done < sample:
        listed = ok(http.get(f"{urls['onestop']}/api/v1/payments",
                             params={"status": "all", "size": 100, "page": page}, timeout=60), "payments page").json()
        calls += 1
        for item in listed["items"][:sample - done]:
            reference = item["reference"]
            now = datetime.now().strftime("%Y%m%d%H%M%S")
            query = {"LoaiBanTin": "QUERY", "PhienBan": "1.0.6", "MaDoiTac": PAYMENT_PARTNER,
                     "MaThamChieu": reference, "ThoiGianGD": now}
            query["MaXacThuc"] = checksum(query, REQUEST_ORDERS["QUERY"], PAYMENT_SECRET)
            answer = ok(requests.post(f"{urls['platform']}/api/payment", json=query, timeout=60),
                        f"QUERY {reference}").json()
            if answer.get("MaLoi") != "00":
                raise ReferenceRefused(f"naive QUERY {reference}: MaLoi {answer.get('MaLoi')!r}")
            calls += 1
            done += 1
            status = {"1": "paid", "4": "failed"}.get(str(answer.get("TrangThaiGD")))
            if status is None:
                continue
            paid_at = datetime.strptime(answer["ThoiGianGD"], "%Y%m%d%H%M%S").isoformat() + "+07:00"
            result = {"result": status, "transactionId": answer["MaGiaoDich"], "amount": int(answer["SoTien"]),
                      "paidAt": paid_at, "bank": answer.get("MaNganHang") or ""}
            receipt_no = ""
            if status == "paid":  # named by the original transaction's time: the request's createdAt
                bill_request = {**query, "LoaiBanTin": "GET_BILL",
                                "ThoiGianGD": _vn_stamp(datetime.fromisoformat(item["createdAt"]))}
                bill_request["MaXacThuc"] = checksum(bill_request, REQUEST_ORDERS["GET_BILL"], PAYMENT_SECRET)
                bill = ok(requests.post(f"{urls['platform']}/api/payment", json=bill_request, timeout=60),
                          f"GET_BILL {reference}")
                if not bill.content.startswith(b"%PDF-"):
                    raise ReferenceRefused(f"naive GET_BILL {reference}: not a PDF")
                calls += 1
                receipt_no = bill.headers["Content-Disposition"].split('filename="')[1].removesuffix('.pdf"')
                result["receiptNo"] = receipt_no
            ok(http.post(f"{urls['onestop']}/api/v1/payments/{reference}/result", json=result, timeout=60),
               f"result {reference}")
            calls += 1
            if status != "paid":
                failed += 1
                continue
            dossier = ok(http.get(f"{urls['onestop']}/api/v1/dossiers/{item['dossierNo']}", timeout=60),
                         f"dossier {item['dossierNo']}").json()
            calls += 1
            receipt = {"ReceiptNumber": receipt_no, "DossierCode": item["dossierNo"], "PaymentReference": reference,
                       "AmountVND": int(answer["SoTien"]), "PaidAt": datetime.fromisoformat(paid_at),
                       "PayerName": dossier.get("applicantName") or "",
                       "AgencyCode": item["dossierNo"].split("-")[0],
                       "PdfSha256": hashlib.sha256(bill.content).hexdigest()}
            service.SubmitReceipts(Receipt=[receipt])
            calls += 1
            paid += 1
        page += 1
        if page > -(-int(listed["total"]) // 100):
            break
    return {"total": time.perf_counter() - t0, "payments": done, "paid": paid, "failed": failed,
            "pending": done - paid - failed, "calls": calls}


def onestop_results(onestop_url: str) -> dict[str, int]:
    """The one-stop's payment requests by status."""
    counts: dict[str, int] = {}
    for p in requests.get(f"{onestop_url}/_state/payments", timeout=120).json()["payments"]:
        counts[p["status"]] = counts.get(p["status"], 0) + 1
    return counts


def ledger_receipts(ledger_url: str) -> list[dict[str, Any]]:
    """Every receipt the ledger holds."""
    return requests.get(f"{ledger_url}/_state/receipts", timeout=120).json()["receipts"]
