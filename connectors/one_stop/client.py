"""Client for the provincial one-stop system's REST API (dossier change feed, dossiers, procedure
catalogue, fee status and payment requests)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests

from connectors.connection import ConnectionSpec, Secret, env_var_name
from connectors.errors import (
    AmountMismatch,
    AuthenticationFailed,
    ConfigurationError,
    FieldError,
    PaymentConflict,
    PeerRejected,
    PeerUnavailable,
    ProtocolError,
    RecordRejected,
    UnreadableAnswer,
)
from connectors.transport import (
    MAX_RESPONSE_BYTES,
    ExchangeRecorder,
    HttpTransport,
    RetryPolicy,
    header_value_problem,
    read_json,
    response_json,
    transport_options,
)

__all__ = ["ChangeEvent", "ChangePage", "OneStopClient"]

PEER = "onestop"
LIST_READS = 4  # times its pages a shrinking paged list may be read before giving up (OneStopClient._pages)


@dataclass(frozen=True)
class ChangeEvent:
    """One change of one dossier, carrying the dossier as it was after that change."""

    seq: int
    changed_at: str
    dossier: dict[str, Any]

    @property
    def dossier_no(self) -> str:
        return str(self.dossier.get("dossierNo") or "")


@dataclass(frozen=True)
class ChangePage:
    events: list[ChangeEvent]
    next_cursor: str
    has_more: bool


class OneStopClient:
    """Reads dossiers from the one-stop system.

    Args:
        base_url: ``http://host:port`` of the one-stop API.
        api_key: sent as ``X-Api-Key``; never logged. One that is not a valid header value (a
            newline from a secrets file...) is a ``ConfigurationError`` here, never quoted.
        recorder: the exchange log.
        page_size: change-feed page size (1..500).
        connect_timeout, read_timeout, total_timeout, retry, max_response_bytes: see
            :class:`~connectors.transport.HttpTransport`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: Secret,
        *,
        recorder: ExchangeRecorder | None = None,
        page_size: int = 200,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        total_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ):
        if not 1 <= page_size <= 500:
            raise ValueError(f"page_size must be within 1..500, got {page_size}")
        self.page_size = page_size
        self.transport = HttpTransport(
            peer=PEER,
            base_url=base_url,
            recorder=recorder,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            total_timeout=total_timeout,
            retry=retry,
            max_response_bytes=max_response_bytes,
            default_headers={"X-Api-Key": api_key.reveal()},
            redact_headers=("X-Api-Key",),
            read=read_json,  # every answer below 400 is JSON
        )

    @classmethod
    def from_connection(cls, spec: ConnectionSpec, *, recorder: ExchangeRecorder | None = None) -> OneStopClient:
        """Build from a connection: host/port/schema, password = API key, extras for tuning.

        Raises:
            ConfigurationError: a setting is missing, or the API key is not a valid header value
                (naming the connection, never the key).
        """
        spec.require("host", "password")
        problem = header_value_problem(spec.password.reveal())
        if problem:
            raise ConfigurationError(f"connection '{spec.conn_id}': the password (the API key, sent as X-Api-Key) "
                                     f"{problem}; correct it in the Airflow connection or {env_var_name(spec.conn_id)}")
        extra = spec.extra
        return cls(
            spec.base_url,
            spec.password,
            recorder=recorder,
            page_size=int(extra.get("page_size", 200)),
            **transport_options(extra, conn_id=spec.conn_id),
        )

    def close(self) -> None:
        self.transport.close()

    def _json(self, response: requests.Response, operation: str) -> Any:
        if response.status_code == 401:
            raise AuthenticationFailed(
                f"{PEER} refused the API key on {operation}", peer=PEER, operation=operation, status=401
            )
        if response.status_code >= 400:
            raise ProtocolError(
                f"{PEER} {operation}: HTTP {response.status_code}", peer=PEER, operation=operation,
                status=response.status_code,
            )
        return response_json(response, peer=PEER, operation=operation)

    def _object(self, response: requests.Response, operation: str) -> dict[str, Any]:
        data = self._json(response, operation)
        if not isinstance(data, dict):
            raise ProtocolError(f"{PEER} {operation}: answer is a {_kind(data)}, not an object", peer=PEER,
                                operation=operation, status=response.status_code)
        return data

    def changes(self, after: str | None = None) -> ChangePage:
        """One page of the change feed after ``after`` (``None`` = from the beginning)."""
        params: dict[str, Any] = {"limit": self.page_size}
        if after:
            params["after"] = after
        data = self._json(
            self.transport.send("GET", "/api/v1/dossiers/changes", operation="changes", params=params), "changes"
        )
        problem = _changes_problem(data)
        if problem:
            raise ProtocolError(f"{PEER} changes: unexpected answer shape ({problem})", peer=PEER, operation="changes")
        events = [ChangeEvent(i["seq"], i["changedAt"], i["dossier"]) for i in data["items"]]
        return ChangePage(events, data["nextCursor"], data["hasMore"])

    def iter_changes(self, after: str | None = None) -> Iterator[ChangePage]:
        """Every page from ``after`` to the end of the feed, refusing a feed that loops.

        Items come in ``seq`` order and a cursor continues after its page (docs/wire/onestop.md):
        an item whose ``seq`` is not past every one read before (a ``nextCursor`` leading back to a
        page already read, a page out of order) is a ``ProtocolError``, raised before its page is
        yielded, so the feed is never read round in a loop."""
        cursor = after
        last_seq: int | None = None
        while True:
            page = self.changes(cursor)
            for event in page.events:
                if last_seq is not None and event.seq <= last_seq:
                    raise ProtocolError(
                        f"{PEER} changes: item seq {event.seq} after seq {last_seq} (page after cursor {cursor!r}): "
                        "the feed went back or is out of order", peer=PEER, operation="changes",
                    )
                last_seq = event.seq
            yield page
            if not page.has_more:
                return
            if page.next_cursor == (cursor or "") or not page.events:
                raise ProtocolError(
                    f"{PEER} changes: feed says more pages follow but did not advance past cursor {cursor!r}",
                    peer=PEER, operation="changes",
                )
            cursor = page.next_cursor

    def _page(self, path: str, operation: str, params: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
        """One page of a paged list answer ``{items, page, size, total}``: its items and the total."""
        data = self._json(self.transport.send("GET", path, operation=operation, params=params), operation)
        problem = _page_problem(data)
        if problem:
            raise ProtocolError(f"{PEER} {operation}: unexpected answer shape ({problem})", peer=PEER,
                                operation=operation)
        items, total, size = data["items"], data["total"], int(params["size"])
        number, echoed = int(params.get("page", 1)), data.get("size")
        other_size = _is_int(echoed) and echoed != size
        short = len(items) < size and number * size < total
        if len(items) > size or other_size or short:
            # offset paging by another size than asked reads past items unseen (or some twice)
            message = (f"{PEER} {operation}: page {number} holds {len(items)} items for size {size}"
                       f"{f', answered as size {echoed}' if other_size else ''}, total {total}")
            if short and not other_size:  # or a list that changed between its count and its page
                raise PeerUnavailable(message + ": fewer than the total says, paged by another size or changed "
                                      "while counted; ask again later", peer=PEER, operation=operation)
            raise ProtocolError(message + ": the one-stop pages by another size than asked; reading on would "
                                "miss or repeat items", peer=PEER, operation=operation)
        return items, total

    def _pages(self, path: str, operation: str, params: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
        """Every item of a paged list answer ``{items, page, size, total}``, page by page, each once.

        The one-stop pages by offset. When a filtered list shrinks while it is read (a dossier of a
        ``modifiedAt`` window changed by a clerk leaves it), the items after the one that left move
        up a place, and as many as left slide into pages already read: never seen. So when a
        page's ``total`` is lower than the page's before, reading goes back as many pages as the
        drop can have moved items across, then on again; an item is yielded once (the same item,
        byte for byte). A list that keeps shrinking past :data:`LIST_READS` times its pages is
        ``PeerUnavailable``: ask again later. (An item that enters while the list is read moves
        the others down: seen twice, yielded once; it was changed during the read, so the change
        feed has it. One entering and one leaving between the same two pages leave the total
        as it was, unnoticed.)"""
        size = int(params["size"])
        yielded: set[bytes] = set()
        page, last_total, reads, most = 1, None, 0, 0
        while True:
            items, total = self._page(path, operation, {**params, "page": page})
            reads, most = reads + 1, max(most, total)
            fresh = []
            for item in items:
                digest = hashlib.blake2b(json.dumps(item, sort_keys=True, ensure_ascii=False).encode(),
                                         digest_size=16).digest()
                if digest not in yielded:
                    yielded.add(digest)
                    fresh.append(item)
            if fresh:
                yield fresh
            if last_total is not None and total < last_total:
                if reads > LIST_READS * (-(-most // size) + 1):
                    raise PeerUnavailable(f"{PEER} {operation}: the list kept shrinking while it was read "
                                          f"({reads} pages read); ask again later", peer=PEER, operation=operation)
                page = max(1, page - -(-(last_total - total) // size))  # back over what slid past
                last_total = total
                continue
            last_total = total
            if not items or page * size >= total:
                return
            page += 1

    def iter_dossiers(
        self, *, modified_from: str | None = None, modified_to: str | None = None, size: int | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """Current snapshots page by page, optionally only those modified in [from, to).

        Args:
            modified_from, modified_to: ISO 8601 with offset (the one-stop refuses naive times).
        """
        params: dict[str, Any] = {"size": size or self.page_size}
        if modified_from:
            params["modifiedFrom"] = modified_from
        if modified_to:
            params["modifiedTo"] = modified_to
        return self._pages("/api/v1/dossiers", "dossiers", params)

    def get_dossier(self, dossier_no: str) -> dict[str, Any] | None:
        """The current snapshot of one dossier, or ``None`` when the system does not hold it."""
        response = self.transport.send(
            "GET", f"/api/v1/dossiers/{requests.utils.quote(dossier_no, safe='')}",
            operation="dossier", record_keys=(dossier_no,),
        )
        if response.status_code == 404:
            return None
        return self._object(response, "dossier")

    # -- procedure catalogue -------------------------------------------------------------------
    def upsert_procedure(self, record: dict[str, Any]) -> dict[str, Any]:
        """``PUT /api/v1/procedures/{code}`` with the one-stop's own procedure record.

        Raises:
            RecordRejected: the one-stop refused the record (422), naming the field.
        """
        code = str(record.get("serviceCode") or "")
        response = self.transport.send(
            "PUT", f"/api/v1/procedures/{requests.utils.quote(code, safe='')}", operation="upsert_procedure",
            json_body=record, record_keys=(code,),
        )
        if response.status_code == 422:
            raise _refusal(code, response)
        return self._object(response, "upsert_procedure")

    def withdraw_procedure(self, code: str) -> dict[str, Any] | None:
        """``POST /api/v1/procedures/{code}/withdraw``; ``None`` when the one-stop never had it."""
        response = self.transport.send(
            "POST", f"/api/v1/procedures/{requests.utils.quote(code, safe='')}/withdraw",
            operation="withdraw_procedure", record_keys=(code,),
        )
        if response.status_code == 404:
            return None
        return self._object(response, "withdraw_procedure")

    def iter_procedures(self, size: int | None = None) -> Iterator[list[dict[str, Any]]]:
        """The one-stop's procedure catalogue, page by page."""
        return self._pages("/api/v1/procedures", "procedures", {"size": size or self.page_size})

    # -- fee status and payment requests -------------------------------------------------------
    def iter_payments(self, status: str | None = "pending", size: int | None = None) -> Iterator[list[dict[str, Any]]]:
        """The one-stop's payment requests, page by page, in creation order.

        Args:
            status: ``pending`` (default: the requests whose result the one-stop does not know),
                ``paid``, ``failed``, ``unmatched`` (callbacks for references it never opened), or
                ``None``/``"all"`` for every request.
            size: page size (1..500; default the client's ``page_size``).

        Pages are read by offset: a filtered list that shrinks while it is read (results recorded
        between pages) is read again over what slid back (:meth:`_pages`), but one request entering
        and one leaving between the same two pages go unnoticed: collect every page first, then
        record results.
        """
        params: dict[str, Any] = {"size": size or self.page_size}
        if status:
            params["status"] = status
        return self._pages("/api/v1/payments", "payments", params)

    def payments_page(self, page: int, size: int | None = None, status: str = "all") -> tuple[list[dict[str, Any]], int]:
        """One page of the payment requests (in creation order) and how many there are in all: a
        reader of the newest ones reads the last pages, from ``ceil(total / size)`` back."""
        return self._page("/api/v1/payments", "payments",
                          {"size": size or self.page_size, "page": page, "status": status})

    def get_payment(self, reference: str) -> dict[str, Any] | None:
        """One payment request by its reference (MaThamChieu), or ``None`` when the one-stop has none."""
        response = self.transport.send(
            "GET", f"/api/v1/payments/{requests.utils.quote(reference, safe='')}", operation="payment",
            record_keys=(reference,),
        )
        if response.status_code == 404:
            return None
        return self._object(response, "payment")

    def get_fees(self, dossier_no: str) -> dict[str, Any] | None:
        """A dossier's fee status (``items``, ``amount``, ``paymentStatus``, ``paidAmount``,
        ``payments``), or ``None`` when the one-stop does not hold the dossier."""
        response = self.transport.send(
            "GET", f"/api/v1/dossiers/{requests.utils.quote(dossier_no, safe='')}/fees", operation="fees",
            record_keys=(dossier_no,),
        )
        if response.status_code == 404:
            return None
        return self._object(response, "fees")

    def record_payment_result(
        self,
        reference: str,
        *,
        result: str,
        transaction_id: str,
        amount: int,
        paid_at: str | datetime,
        bank: str,
        receipt_no: str | None = None,
        dossier_no: str | None = None,
    ) -> dict[str, Any]:
        """Tell the one-stop the result of a payment whose confirm callback was lost
        (``POST /api/v1/payments/{reference}/result``).

        Safe to repeat: the one-stop applies a result once per transaction, so the call is retried
        on transient failures and a repeat answers ``applied: false``.

        Args:
            reference: the payment's MaThamChieu.
            result: ``"paid"`` or ``"failed"`` (the platform's TrangThaiGD 1 / 4).
            transaction_id: the platform's MaGiaoDich.
            amount: integer VND, as the platform reports it.
            paid_at: when the platform completed it: an aware ``datetime`` or ISO 8601 with offset.
            bank: the platform's MaNganHang.
            receipt_no: the electronic receipt's number, when known.
            dossier_no: the dossier code, when known (only for the exchange log's record keys).

        Returns:
            ``{"applied": bool, "payment": {...}}`` — ``applied`` is false when the one-stop
            already held this result.

        Raises:
            PaymentConflict: already paid by another transaction, or ``failed`` for a paid request (409).
            AmountMismatch: ``amount`` differs from the request's amount (422).
            PeerRejected: unknown reference (rule ``known_payment``), a field the one-stop refused
                (rule ``validation``), or a reference it holds as unmatched (rule ``matched_request``).
            AuthenticationFailed: the API key was refused.
        """
        if isinstance(paid_at, datetime):
            if paid_at.tzinfo is None or paid_at.utcoffset() is None:
                raise ValueError("paid_at must be an aware datetime")
            paid_at = paid_at.isoformat()
        body: dict[str, Any] = {"result": result, "transactionId": transaction_id, "amount": amount,
                                "paidAt": paid_at, "bank": bank}
        if receipt_no is not None:
            body["receiptNo"] = receipt_no
        keys = (reference, dossier_no) if dossier_no else (reference,)
        response = self.transport.send(
            "POST", f"/api/v1/payments/{requests.utils.quote(reference, safe='')}/result",
            operation="payment_result", json_body=body, record_keys=keys, retry=True,
        )
        if response.status_code in (404, 409, 422):
            raise _payment_refusal(reference, response)
        data = self._json(response, "payment_result")
        if not isinstance(data, dict) or not isinstance(data.get("applied"), bool) \
                or not isinstance(data.get("payment"), dict):
            raise ProtocolError(f"{PEER} payment_result: unexpected answer shape", peer=PEER,
                                operation="payment_result")
        return data


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _changes_problem(data: Any) -> str | None:
    """What is wrong with a change-feed page ``{items: [{seq, changedAt, dossier}], nextCursor, hasMore}``."""
    if not isinstance(data, dict):
        return f"answer is a {_kind(data)}, not an object"
    for name, check, want in (("items", lambda v: isinstance(v, list), "an array"),
                              ("nextCursor", lambda v: isinstance(v, str), "a string"),
                              ("hasMore", lambda v: isinstance(v, bool), "a boolean")):
        if name not in data:
            return f"{name} is missing"
        if not check(data[name]):
            return f"{name} is a {_kind(data[name])}, not {want}"
    for n, item in enumerate(data["items"]):
        if not isinstance(item, dict):
            return f"items[{n}] is a {_kind(item)}, not an object"
        for name, check, want in (("seq", _is_int, "an integer"),
                                  ("changedAt", lambda v: isinstance(v, str), "a string"),
                                  ("dossier", lambda v: isinstance(v, dict), "an object")):
            if name not in item:
                return f"items[{n}].{name} is missing"
            if not check(item[name]):
                return f"items[{n}].{name} is a {_kind(item[name])}, not {want}"
    return None


def _page_problem(data: Any) -> str | None:
    """What is wrong with a paged list answer ``{items: [object], total: int, ...}``."""
    if not isinstance(data, dict):
        return f"answer is a {_kind(data)}, not an object"
    if "items" not in data:
        return "items is missing"
    if not isinstance(data["items"], list):
        return f"items is a {_kind(data['items'])}, not an array"
    if "total" not in data:
        return "total is missing"
    if not _is_int(data["total"]) or data["total"] < 0:
        return f"total is {data['total']!r}, not a count" if _is_int(data["total"]) else \
            f"total is a {_kind(data['total'])}, not an integer"
    for n, item in enumerate(data["items"]):
        if not isinstance(item, dict):
            return f"items[{n}] is a {_kind(item)}, not an object"
    return None


def _error_body(response: requests.Response) -> dict[str, Any]:
    """A refusal's JSON object, or ``{}`` when the body is not one (its status still says enough)."""
    try:
        body = response_json(response, peer=PEER, operation="refusal")
    except (ProtocolError, UnreadableAnswer):
        return {}
    return body if isinstance(body, dict) else {}


def _refusal(code: str, response: requests.Response) -> RecordRejected:
    body = _error_body(response)
    field_name = str(body.get("field") or "<record>") if isinstance(body, dict) else "<record>"
    message = str(body.get("message") or "refused") if isinstance(body, dict) else "refused"
    return PeerRejected(code, [FieldError(field_name, "onestop_validation", message)], peer_code="422",
                        peer_message=message)


def _payment_refusal(reference: str, response: requests.Response) -> PeerRejected:
    """The error class for a refused payment result (404, 409, 422), keyed by the reference."""
    body = _error_body(response)
    code = str(body.get("error") or response.status_code)
    message = str(body.get("message") or "refused")
    field_name = str(body.get("field") or "")
    status = response.status_code
    if status == 404:
        return PeerRejected(reference, [FieldError("reference", "known_payment", message)], peer_code=code,
                            peer_message=message)
    if status == 409 and code == "already_paid":
        return PaymentConflict(reference, [FieldError(field_name or "transactionId", "paid_once", message)],
                               peer_code=code, peer_message=message)
    if status == 409:
        return PeerRejected(reference, [FieldError(field_name or "reference", "matched_request", message)],
                            peer_code=code, peer_message=message)
    if code == "amount_mismatch":
        return AmountMismatch(reference, [FieldError(field_name or "amount", "amount_equals_fee", message)],
                              peer_code=code, peer_message=message)
    return PeerRejected(reference, [FieldError(field_name or "<record>", "validation", message)], peer_code=code,
                        peer_message=message)
