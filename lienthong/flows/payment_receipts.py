"""Payment receipts: the national payment platform → the one-stop fee status and the ministry ledger, reconciled.

Citizens pay dossier fees through the national payment platform (protocol 1.0.6). The platform
tells the one-stop system by a confirm callback, and callbacks get lost. The bus makes the three
systems agree, in four steps that each survive a crash and a rerun:

1. :func:`collect_payments` lists the one-stop's payment requests, asks the platform (``QUERY``)
   about each one the bus has not yet seen finish when it is due (at every run while it is young,
   then less often, at least daily, and no longer after 30 days: :func:`next_ask`; a failed one
   for :data:`FAILED_ASK_FOR` after its failure, as the platform may still complete it), and fetches
   the receipt of each paid one
   (``GET_BILL``): the PDF is kept once by its SHA-256 in the content-addressed store the exchange
   log uses (``exchange_blob``, pinned so archiving never drops it) and referred to by hash. Every answer's checksum is verified by the
   connector; an answer that fails it is dead-lettered, never trusted.
2. :func:`update_onestop_fees` matches each finished transaction to its dossier (payment
   reference → dossier code, as the one-stop's payment request names it) and records the result
   at the one-stop where the callback was lost. The one-stop answers idempotently by transaction
   id, so a fee is never marked paid twice; an amount that differs, a dossier the one-stop does
   not know, or a second transaction for a paid fee is **held** for follow-up, never "fixed".
3. :func:`submit_receipts` maps each paid transaction with its receipt through
   ``payment_platform__ministry_ledger/receipt`` (platform → canonical receipt → ledger record) and
   submits them in batches with SOAP (zeep). The ledger holds each receipt number once and answers
   ``unchanged`` to the same content, so a retry after a timeout, or a rerun after a crash, books
   nothing twice; different content under a held number (``DuplicateReceiptFault``) is held for
   follow-up. A record the mapping or the ledger refuses is dead-lettered naming field and rule.
4. :func:`reconcile` checks, for every paid transaction, that the ledger holds exactly one receipt
   with the same amount and the one-stop a paid fee with the same amount and transaction, and
   lists every mismatch in a report (``amount_differs``, ``unknown_dossier``, ``missing_receipt``,
   ``duplicate_receipt``…). Mismatches are kept in ``reconciliation_item`` until a later run no
   longer finds them. What the one-stop lists and the ledger holds is read into temporary tables
   first (the ledger in windows of paid time), so memory follows a page, not the years of payments.
   A full pass runs once a day; the passes between check the transactions changed since the last
   pass and those with open mismatches, so a run's cost follows its changes.

In steps 1–3 what an answer causes (a transaction's state, a dead letter, a stored receipt)
commits in one transaction with the exchange-log records of the calls that brought it, as in the
dossier flow: recorded no later than trusted, one commit instead of two.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    Row,
    Select,
    String,
    Table,
    Text,
    bindparam,
    case,
    delete,
    exists,
    func,
    select,
    tuple_,
    update,
)

from connectors.errors import (
    AmountMismatch,
    BillNotAvailable,
    ChecksumMismatch,
    DuplicateReceipt,
    FieldError,
    PaymentConflict,
    PeerRejected,
    ProtocolError,
    RecordRejected,
    TransactionUnknown,
    UnreadableAnswer,
)
from lienthong.exchange_log import answer_transactions, put_blob, read_blob
from lienthong.mapping import RecordInvalid, load_mapping
from lienthong.mapping.transforms import PORTAL_TIME_ZONE
from lienthong.store import (
    Store,
    blocked_keys,
    content_hash,
    dead_letter,
    insert_ignore,
    payment_txn,
    reconciliation_item,
    resolve_dead_letters,
    utcnow,
)

__all__ = [
    "FLOW",
    "TO_LEDGER",
    "CollectReport",
    "FeeReport",
    "LedgerReport",
    "ReconciliationReport",
    "collect_payments",
    "discard",
    "reconcile",
    "reconciliation_markdown",
    "submit_receipts",
    "transaction_time",
    "update_onestop_fees",
]

log = logging.getLogger(__name__)

FLOW = "payment_receipts"
TO_LEDGER = "payment_platform__ministry_ledger/receipt"

#: Disagreements the reconciliation names (README "Payment receipts").
KINDS = {
    "amount_differs": "the platform collected another amount than the one-stop asked for",
    "unknown_dossier": "the payment's dossier is not known to the one-stop system",
    "unmatched_payment": "the platform confirmed a payment the one-stop never requested (its callback named an "
                         "unknown reference)",
    "unknown_transaction": "the one-stop has a payment request the platform does not know",
    "fee_not_paid": "the platform says paid, the one-stop's fee is not paid",
    "paid_twice": "the one-stop's fee is paid by another transaction",
    "failed_not_recorded": "the platform says failed, the one-stop still shows another status",
    "missing_receipt": "a paid transaction has no receipt in the ministry ledger",
    "duplicate_receipt": "the ministry ledger holds more than one receipt for one payment, or other content "
                         "under the receipt number",
    "ledger_amount_differs": "the ledger's receipt has another amount than the platform collected",
    "unexpected_receipt": "the ledger holds a receipt for a payment the bus does not know",
}


#: Opens a transaction of the bus database (``Store.begin``, or the one from
#: :func:`lienthong.exchange_log.answer_transactions` that also writes the exchange-log rows of the
#: calls whose answer it acts on, so they commit together: recorded no later than trusted).
Begin = Callable[[], AbstractContextManager[Connection]]


def _dead_letter(begin: Begin, run_id: str, key: str, stage: str, exc: Exception, errors: list[dict[str, str]],
                 source: Any, rejections: list[dict[str, Any]], peer_code: str | None = None) -> None:
    with begin() as conn:
        Store.add_dead_letter(conn, flow=FLOW, record_key=key, outbox_id=None, run_id=run_id, stage=stage,
                              error=exc, errors=errors, source_payload=source, peer_code=peer_code)
    rejections.append({"record_key": key, "stage": stage, "errors": errors})
    log.warning("payment %s dead-lettered at %s: %s", key, stage,
                "; ".join(f"{e['field']} [{e['rule']}]: {e['message']}" for e in errors))


def _platform_dead_letter(begin: Begin, run_id: str, row: Row, exc: Exception, errors: list[dict[str, str]],
                          report: CollectReport, peer_code: str | None = None) -> None:
    """One payment the platform's answers leave to a person (stage ``platform``), kept with its
    reference and dossier."""
    _dead_letter(begin, run_id, row.reference, "platform", exc, errors,
                 {"reference": row.reference, "dossierNo": row.dossier_code}, report.rejected, peer_code)


#: One payment transaction's UPDATE; the columns set are the parameters given (compiled once per set).
_UPDATE = update(payment_txn).where(payment_txn.c.reference == bindparam("b_reference"))


def _update(conn: Connection, reference: str, run_id: str, **values: Any) -> None:
    conn.execute(_UPDATE, {"b_reference": reference, "updated_run": run_id, "updated_at": utcnow(), **values})


def _set(begin: Begin, reference: str, run_id: str, **values: Any) -> None:
    with begin() as conn:
        _update(conn, reference, run_id, **values)


#: Payment transactions read per query by the steps (keyset pages in reference order).
PAGE = 500
#: Dossier look-ups a step remembers before it starts afresh (memory, not correctness).
LOOKUPS = 10_000


#: The order the steps read payment transactions in: by reference, or by when they are due to be
#: asked (``ix_payment_txn_ask``). The last column is unique, so a page ends where the next begins.
BY_REFERENCE = (payment_txn.c.reference,)
BY_ASK = (payment_txn.c.next_ask_at, payment_txn.c.reference)


def _pages(query: Select, read: Callable[[Select], list[Row]], order: tuple[Any, ...] = BY_REFERENCE,
           ) -> Iterator[list[Row]]:
    """``query``'s rows (over ``payment_txn``, selecting the ``order`` columns) in ``order``,
    :data:`PAGE` at a time, each page read by ``read`` when the previous one is done (a keyset: the
    next page starts after the last row's key), so a row whose key moves behind the page read is
    not read again, and rows that appear further on are taken too."""
    after: tuple[Any, ...] | None = None
    while True:
        page = query.order_by(*order).limit(PAGE)
        if after is not None:
            page = page.where(tuple_(*order) > tuple_(*(bindparam(None, v, type_=c.type)
                                                          for c, v in zip(order, after, strict=True))))
        rows = read(page)
        if rows:
            yield rows
        if len(rows) < PAGE:
            return
        after = tuple(getattr(rows[-1], c.name) for c in order)


def _unblocked(store: Store, query: Select, order: tuple[Any, ...] = BY_REFERENCE) -> Iterator[Row]:
    """The rows of ``query`` (over ``payment_txn``) in ``order``, :data:`PAGE` at a time,
    without those an open dead letter blocks: a step's memory follows a page, not the backlog
    (a first run over a province's years of payments included). Each page is read through a
    connection of its own, closed before the step calls a peer."""
    blocked: set[str] = set()

    def read(page: Select) -> list[Row]:
        nonlocal blocked
        with store.engine.connect() as conn:
            rows = conn.execute(page).all()
            blocked = blocked_keys(conn, FLOW, [r.reference for r in rows])
        return rows

    for rows in _pages(query, read, order):
        yield from (r for r in rows if r.reference not in blocked)


# --- 1. collect --------------------------------------------------------------------------------
@dataclass
class CollectReport:
    listed: int = 0
    new_requests: int = 0
    queried: int = 0
    paid: int = 0
    failed: int = 0
    pending: int = 0
    unknown: int = 0
    given_up: int = 0
    listing: str = "full"  # full: every request listed; newest: those after the last listing's
    bills: int = 0
    unconfirmed: int = 0
    unreadable: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[dict[str, Any]] = field(default_factory=list)

    redone_by_retry = ("requests_listing", "requests_listed")  # a retry lists the requests again

    def counts(self) -> dict[str, Any]:
        return {"requests_listing": self.listing, "requests_listed": self.listed, "requests_new": self.new_requests,
                "requests_invalid": len(self.invalid), "queried": self.queried,
                "found_paid": self.paid, "found_failed": self.failed, "still_pending": self.pending,
                "paid_without_receipt": self.unconfirmed, "answers_unreadable": self.unreadable,
                "unknown_to_platform": self.unknown, "asks_given_up": self.given_up, "bills_fetched": self.bills,
                "platform_rejected": len(self.rejected), "platform_rejections": self.rejected}


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _holdable(reference: str) -> bool:
    """A reference ``payment_txn.reference`` can hold: 1 to 64 printable characters."""
    return len(reference) <= 64 and reference.isprintable() and bool(reference.strip())


def _request_problems(p: dict[str, Any]) -> list[FieldError]:
    """What a one-stop payment request breaks of what ``payment_txn`` can hold (docs/wire/onestop.md)."""
    errors: list[FieldError] = []
    reference = p.get("reference")
    if reference is None or reference == "":
        errors.append(FieldError("reference", "required", "reference is missing"))
    elif not isinstance(reference, str):
        errors.append(FieldError("reference", "type", f"reference is {_kind(reference)}, expected text"))
    elif not _holdable(reference):
        errors.append(FieldError("reference", "format", "reference must be 1 to 64 printable characters"))
    amount = p.get("amount")
    if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int) or amount < 0):
        errors.append(FieldError("amount", "type", f"amount is {_kind(amount)} {amount!r:.40}, expected a whole "
                                                   "number of VND"))
    dossier = p.get("dossierNo")
    if dossier not in (None, "") and not (isinstance(dossier, str) and len(dossier) <= 64 and dossier.isprintable()):
        errors.append(FieldError("dossierNo", "type", f"dossierNo is {_kind(dossier)}, expected text of at most "
                                                      "64 printable characters"))
    status = p.get("status")
    if status is not None and not _status_word(status):
        errors.append(FieldError("status", "type", f"status is {_kind(status)}, expected a status word"))
    return errors


def _status_word(value: Any) -> bool:
    """A one-stop status ``payment_txn.onestop_status`` can hold: printable text of 16 at most."""
    return isinstance(value, str) and len(value) <= 16 and value.isprintable()


def _refuse_request(store: Store, begin: Begin, run_id: str, p: dict[str, Any], errors: list[FieldError],
                    report: CollectReport) -> None:
    """Dead-letter a malformed payment request once (it is listed again at every run)."""
    reference = p.get("reference")
    key = reference if isinstance(reference, str) and 0 < len(reference) <= 200 and reference.isprintable() \
        else f"<invalid reference, {content_hash(p)[:12]}>"
    with store.engine.connect() as conn:
        held = conn.execute(select(dead_letter.c.source_payload).where(
            dead_letter.c.flow == FLOW, dead_letter.c.record_key == key, dead_letter.c.stage == "source",
            dead_letter.c.resolved_at.is_(None))).scalars().all()
    if any(content_hash(h) == content_hash(p) for h in held):
        return
    exc = RecordRejected(key, errors)
    _dead_letter(begin, run_id, key, "source", exc, exc.error_dicts(), p, report.invalid)


def _register_page(store: Store, begin: Begin, listed: list[dict[str, Any]], run_id: str, report: CollectReport,
                   clock: Callable[[], datetime]) -> int:
    """One listed page into ``payment_txn`` (new requests inserted, due to be asked at once; the
    one-stop's view of known ones refreshed, and an unfinished one whose view changed is due at
    once again, its asking time started afresh: a callback that reached the one-stop says it is
    alive). A request that breaks the wire format is dead-lettered (stage ``source``) with the
    field and rule; the others go on. Returns how many requests were new."""
    report.listed += len(listed)
    page = []
    for p in listed:
        problems = _request_problems(p)
        if problems:
            _refuse_request(store, begin, run_id, p, problems, report)
        else:
            page.append(p)
    if not page:
        return 0
    now = clock()
    rows = [{"reference": p["reference"], "dossier_code": p.get("dossierNo") or None,
             "request_amount": p.get("amount"), "onestop_status": p.get("status"),
             "requested_at": _requested_at(p.get("createdAt")),
             "platform_status": "pending", "onestop_state": "todo", "ledger_state": "todo",
             "first_seen_run": run_id, "updated_run": run_id, "updated_at": now, "next_ask_at": now}
            for p in page]
    with begin() as conn:
        new = insert_ignore(conn, payment_txn, rows, "payment_txn_pkey")
        report.new_requests += new
        # one read for the page, then an UPDATE only where the one-stop's view changed
        held = {r.reference: r for r in conn.execute(
            select(payment_txn.c.reference, payment_txn.c.onestop_status, payment_txn.c.request_amount,
                   payment_txn.c.dossier_code, payment_txn.c.platform_status, payment_txn.c.requested_at)
            .where(payment_txn.c.reference.in_([p["reference"] for p in page])))}
        for p in page:
            view = (p.get("status"), p.get("amount"), p.get("dossierNo") or None)
            mine = held.get(p["reference"])
            if mine is None:
                continue
            requested = _requested_at(p.get("createdAt"))
            # the request's opening time, for a row that has none (listed before revision 0008):
            # no change of the one-stop's view, so not a reason to ask again
            known = {"requested_at": requested} if mine.requested_at is None and requested else {}
            if (mine.onestop_status, mine.request_amount, mine.dossier_code) != view:
                again = {"first_asked_at": None, "next_ask_at": now} if mine.platform_status in ASKED else {}
                conn.execute(update(payment_txn).where(payment_txn.c.reference == p["reference"]).values(
                    onestop_status=view[0], request_amount=view[1], dossier_code=view[2], updated_at=now,
                    **again, **known))
            elif known:
                conn.execute(update(payment_txn).where(payment_txn.c.reference == p["reference"]).values(**known))
    return new


def _requested_at(value: Any) -> str | None:
    """The one-stop's ``createdAt`` of a payment request (ISO 8601 with offset, docs/wire/onestop.md)
    as ``payment_txn.requested_at`` keeps it; ``None`` when it is missing or not such a time (the
    request is followed all the same: only GET_BILL needs it, and the reference may name it)."""
    if not isinstance(value, str) or not _ISO_WITH_OFFSET.fullmatch(value):
        return None
    try:
        return datetime.fromisoformat(value).isoformat()
    except ValueError:
        return None


_ISO_WITH_OFFSET = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
                              r"(Z|[+-][0-9]{2}:[0-9]{2})")
#: A reference of the documented form (contract §6.5, docs/wire/onestop.md): "dvc" + the dossier code
#: without non-word characters + the transaction's time, yyyyMMddHHmmss.
_TIMED_REFERENCE = re.compile(r"dvc[0-9A-Za-z_]*([0-9]{14})")


def transaction_time(reference: str, requested_at: str | None) -> datetime | None:
    """The ThoiGianGD of the transaction's INIT, which GET_BILL must name (contract §4.9: "ThoiGianGD
    (of the original transaction)"; the platform refuses another). The time a reference of the
    documented form ends with (the opener writes it and the INIT's ThoiGianGD from the same instant,
    and with the same formatting, so it is the very text the platform holds), else when the
    one-stop opened the request (``requested_at``, its ``createdAt``); ``None`` if neither is known."""
    match = _TIMED_REFERENCE.fullmatch(reference)
    if match:
        try:
            return datetime.strptime(match.group(1), "%Y%m%d%H%M%S").replace(tzinfo=PORTAL_TIME_ZONE)
        except ValueError:
            pass
    try:
        return datetime.fromisoformat(requested_at) if requested_at else None
    except ValueError:
        return None


#: Collect lists every one-stop payment request at least this often (the one-stop's view of each
#: refreshed); the runs between read only those listed after the last listing's
#: (:func:`_register_requests`).
LIST_ALL_EVERY = timedelta(days=1)
#: The bus's note of collect's last full listing (``sync_cursor``).
LISTED = FLOW + "/listed"


def _register_requests(store: Store, begin: Begin, onestop: Any, run_id: str, report: CollectReport,
                       clock: Callable[[], datetime], full: bool | None) -> None:
    """Bring the one-stop's payment requests into ``payment_txn`` (:func:`_register_page`).

    Every request, page by page, when ``full`` (or, when ``full`` is ``None``, once
    :data:`LIST_ALL_EVERY` has passed since the last full listing, or if there was none). Otherwise
    only those listed after the ones the last listing read through: the one-stop lists requests in
    creation order, so the pages from there to the end; a run's listing then follows its new
    requests, not the years of them. The note of how far the listing read is written after the
    last page, so a run that fails half-way reads the same pages again. Between full listings a
    change the one-stop makes to an older request's status, amount or dossier is not seen by
    collect (the reconciliation asks the one-stop for each payment it checks, and the next full
    listing refreshes them all)."""
    started = clock()
    last = json.loads(store.get_cursor(LISTED) or "{}")
    if full is None:
        full = "full_at" not in last or "through" not in last or \
            started - datetime.fromisoformat(last["full_at"]) >= LIST_ALL_EVERY
    if not full and "through" not in last:
        raise ValueError("collect has not listed the one-stop's payment requests yet: the first listing is a full one")
    report.listing = "full" if full else "newest"
    if full:
        through = 0
        for listed in onestop.iter_payments(status="all"):
            _register_page(store, begin, listed, run_id, report, clock)
            through += len(listed)
        note = {"full_at": started.isoformat(), "through": through}
    else:
        size = onestop.page_size
        _, total = onestop.payments_page(1, 1)
        first = min(last["through"], total) // size + 1  # the page holding the first request not yet read
        through = (first - 1) * size
        for page in range(first, max(first, -(-total // size)) + 1):
            listed, _ = onestop.payments_page(page, size)
            _register_page(store, begin, listed, run_id, report, clock)
            through += len(listed)
            if len(listed) < size:
                break
        note = {"full_at": last["full_at"], "through": through}
    with begin() as conn:
        Store.set_cursor(conn, LISTED, json.dumps(note), run_id)


#: The platform's statuses of a payment it has not finished: asked about again on a schedule.
UNFINISHED = ("pending", "unknown")
#: The statuses collect QUERYs when due: the unfinished, and a failed one for FAILED_ASK_FOR.
ASKED = (*UNFINISHED, "failed")
#: When an unfinished payment is asked about again: after a tenth of the time since it was first
#: asked (so at every run while it is young: a citizen pays within minutes or not at all), at most
#: :data:`ASK_AT_MOST_EVERY` apart, and no longer once it has been asked about for :data:`ASK_FOR`
#: (the reconciliation report counts it as given up: pending at both ends is no disagreement; a
#: change of the one-stop's view of it makes it due again). A run's QUERYs follow the new and young requests, not the years of
#: abandoned ones: 61 asks in a payment's 30 days with hourly runs instead of 720.
ASK_BACKOFF = 0.1
ASK_AT_MOST_EVERY = timedelta(days=1)
ASK_FOR = timedelta(days=30)
#: A payment the platform reported failed is asked again on the same schedule, counted from when
#: the failure was recorded, for this long: the platform may complete it later (a bank's late
#: confirmation), and its QUERY is what backs up the lost callback (contract §7.11); the one-stop
#: takes a paid result for a failed request. Only QUERY: while it still says failed, no GET_BILL.
FAILED_ASK_FOR = timedelta(days=7)


def next_ask(first_asked: datetime, now: datetime, run_start: datetime,
             ask_for: timedelta | None = None) -> datetime | None:
    """When a payment first asked about at ``first_asked`` and asked again at ``now`` (by the run
    that began at ``run_start``) is due next; ``None``: no more, it has been asked about for
    ``ask_for`` (:data:`ASK_FOR` by default). Always after ``run_start``, so one run asks about a
    payment once."""
    age = now - first_asked
    if age >= (ASK_FOR if ask_for is None else ask_for):
        return None
    return max(now + min(age * ASK_BACKOFF, ASK_AT_MOST_EVERY), run_start + timedelta(microseconds=1))


def collect_payments(store: Store, onestop: Any, platform: Any, *, run_id: str,
                     clock: Callable[[], datetime] = utcnow, full_listing: bool | None = None,
                     report: CollectReport | None = None) -> CollectReport:
    """Step 1: list payment requests, QUERY the unfinished ones that are due, GET_BILL the paid ones.

    An unfinished payment is asked about on a schedule (:func:`next_ask`), read through
    ``ix_payment_txn_ask`` in the order it fell due. Each transaction is saved as soon as it is
    known, in one commit with the exchange-log records of the calls that told it
    (:func:`lienthong.exchange_log.answer_transactions`), so a transport failure (raised for the
    task to retry) loses nothing of what was already asked. ``clock`` gives the current time
    (aware UTC); ``full_listing``: list every one-stop request (true), only the newest (false), or
    every request once a day (``None``, :func:`_register_requests`). ``report``: the report to fill
    as the step goes (a caller counting what a failed attempt did passes its own), else a new one.
    """
    report = report if report is not None else CollectReport()
    with answer_transactions(store, platform) as begin:
        _register_requests(store, begin, onestop, run_id, report, clock, full_listing)
        run_start = clock()
        todo = select(payment_txn.c.reference, payment_txn.c.dossier_code, payment_txn.c.platform_status,
                      payment_txn.c.receipt_sha256, payment_txn.c.first_asked_at, payment_txn.c.next_ask_at,
                      payment_txn.c.requested_at).where(
            payment_txn.c.next_ask_at <= run_start)

        def ask_again(row: Row, **values: Any) -> None:
            """Not finished, or failed and still young: due again by the schedule (``values``: what
            this answer did teach)."""
            now = clock()
            first = row.first_asked_at or now
            failed = row.platform_status == "failed"
            due = next_ask(first, now, run_start, FAILED_ASK_FOR if failed else None)
            if due is None and failed:
                log.info("payment %s: still failed %s after its failure was recorded; no longer asked",
                         row.reference, now - first)
            elif due is None:
                report.given_up += 1
                log.warning("payment %s: the platform has not finished it after %s of asking; no longer asked "
                            "(counted as given up by the reconciliation report)", row.reference, now - first)
            with begin() as conn:
                if values or due is None:  # given up is a change (the reconciliation counts it)
                    _update(conn, row.reference, run_id, first_asked_at=first, next_ask_at=due, **values)
                else:  # nothing learnt: only when it is asked next (the exchange-log record commits too)
                    conn.execute(_UPDATE, {"b_reference": row.reference, "first_asked_at": first, "next_ask_at": due})

        for row in _unblocked(store, todo, BY_ASK):
            keys = [row.reference] + ([row.dossier_code] if row.dossier_code else [])
            status = row.platform_status
            if status in ASKED:
                report.queried += 1
                try:
                    txn = platform.query(row.reference, record_keys=keys)
                except TransactionUnknown:
                    report.unknown += 1
                    ask_again(row, **({"platform_status": "unknown"} if status == "pending" else {}))
                    continue
                except ChecksumMismatch as exc:  # a checksum that does not verify: never trust the answer
                    _platform_dead_letter(begin, run_id, row, exc,
                                          [{"field": "MaXacThuc", "rule": "checksum", "message": str(exc)}], report)
                    continue
                except PeerRejected as exc:  # any other refusal of this payment: a person looks at it
                    _refused_by_platform(begin, run_id, row, exc, report)
                    continue
                except (UnreadableAnswer, ProtocolError) as exc:  # unreadable after retries, or not the
                    # documented answer: nothing learnt, ask again
                    _unreadable(report, row.reference, "QUERY", exc)
                    ask_again(row)
                    continue
                status = txn.status
                if status == "pending" or (status == "failed" and row.platform_status == "failed"):
                    # a failed one asked again and still failed (or pending): nothing new, and no
                    # GET_BILL (its failure was believed when recorded)
                    report.pending += row.platform_status != "failed"
                    ask_again(row)
                    continue
                if status == "failed":
                    believed = _failure_believed(platform, begin, run_id, row, keys, report)
                    if believed is None:  # GET_BILL's answer did not read: nothing learnt, ask again
                        ask_again(row)
                    if not believed:
                        continue
                    report.failed += 1
                    now = clock()  # asked again for FAILED_ASK_FOR from now: it may still be paid
                    _set(begin, row.reference, run_id, platform_status="failed", platform_amount=txn.amount,
                         transaction_id=txn.transaction_id or None, bank=txn.bank or None, answer=txn.raw,
                         first_asked_at=now, next_ask_at=next_ask(now, now, run_start, FAILED_ASK_FOR))
                    continue
                # TrangThaiGD is outside the answer's checksum (contract §6.6): "paid" is believed only
                # with its receipt, which the platform issues for paid transactions alone.
                values = {"platform_amount": txn.amount, "transaction_id": txn.transaction_id or None,
                          "bank": txn.bank or None, "paid_at": txn.paid_at.isoformat() if txn.paid_at else None,
                          "answer": txn.raw}
                if row.platform_status == "failed":  # paid after all: the one-stop is told again
                    values.update(onestop_state="todo", hold_reason=None)
            else:
                values = {}
            when = transaction_time(row.reference, row.requested_at)
            if when is None and row.requested_at is None:
                # followed before the bus kept the request's time (migration 0008) and not listed in
                # full since: ask the one-stop for this request rather than wait for the daily listing
                try:
                    request = onestop.get_payment(row.reference)
                except (UnreadableAnswer, ProtocolError) as exc:
                    _unreadable(report, row.reference, "payment", exc)
                    ask_again(row)
                    continue
                requested = _requested_at(request.get("createdAt")) if isinstance(request, dict) else None
                if requested:
                    _set(begin, row.reference, run_id, requested_at=requested)
                    when = transaction_time(row.reference, requested)
            if when is None:  # GET_BILL must name the INIT's time: asking with another is refused
                exc = RecordRejected(row.reference, [FieldError(
                    "ThoiGianGD", "required", "the transaction's time (of its INIT) is unknown: the reference "
                    "names none and the one-stop's request has no createdAt; GET_BILL cannot name it")])
                _platform_dead_letter(begin, run_id, row, exc, exc.error_dicts(), report)
                continue
            try:
                bill = platform.get_bill(row.reference, record_keys=keys, transaction_time=when)
            except BillNotAvailable as exc:  # QUERY says paid, the platform has no receipt: ask both again
                report.unconfirmed += 1
                log.warning("payment %s: QUERY says paid but GET_BILL has no receipt (%s); left pending",
                            row.reference, exc)
                ask_again(row)
                continue
            except ChecksumMismatch as exc:
                _platform_dead_letter(begin, run_id, row, exc,
                                      [{"field": "GET_BILL", "rule": "receipt", "message": str(exc)}], report)
                continue
            except PeerRejected as exc:  # e.g. unknown to GET_BILL although QUERY said paid
                _refused_by_platform(begin, run_id, row, exc, report)
                continue
            except (UnreadableAnswer, ProtocolError) as exc:  # a PDF cut short, a foreign body: fetch it again
                _unreadable(report, row.reference, "GET_BILL", exc)
                ask_again(row)
                continue
            with begin() as conn:  # kept once by hash, pinned: archiving the log never drops a receipt
                stored = put_blob(conn, bill.pdf, bill.content_type, pinned=True)
                if stored != bill.sha256:
                    raise ValueError(f"receipt of {row.reference}: stored hash {stored} is not the bill's "
                                     f"{bill.sha256}")
                _update(conn, row.reference, run_id, platform_status="paid", receipt_sha256=bill.sha256,
                        receipt_no=bill.receipt_no, next_ask_at=None, **values)
            report.paid += row.platform_status != "paid"
            report.bills += 1
    return report


def _failure_believed(platform: Any, begin: Begin, run_id: str, row: Row, keys: list[str],
                      report: CollectReport) -> bool | None:
    """Whether a QUERY's "failed" is recorded: True; False: dead-lettered; None: GET_BILL's answer
    did not read, ask again.

    TrangThaiGD is outside the answer's checksum (contract §6.6), and a failed payment is told to
    the one-stop and asked again only by QUERY (for :data:`FAILED_ASK_FOR`), so "failed" is
    believed only when the platform has no receipt for the payment: GET_BILL answers "not paid"
    (``BillNotAvailable``); asked once, when the failure is first recorded. A receipt for it is a
    contradiction a person looks at (dead-lettered, stage ``platform``); an answer that does not
    read leaves it to be asked again; another signed refusal (or a payment whose INIT time is
    unknown, so GET_BILL cannot be asked) leaves the failure as the platform stated it."""
    when = transaction_time(row.reference, row.requested_at)
    if when is None:
        return True
    try:
        bill = platform.get_bill(row.reference, record_keys=keys, transaction_time=when)
    except BillNotAvailable:
        return True
    except ChecksumMismatch as exc:
        _platform_dead_letter(begin, run_id, row, exc,
                              [{"field": "GET_BILL", "rule": "receipt", "message": str(exc)}], report)
        return False
    except PeerRejected:
        return True
    except (UnreadableAnswer, ProtocolError) as exc:
        _unreadable(report, row.reference, "GET_BILL", exc)
        return None
    exc = RecordRejected(row.reference, [FieldError(
        "TrangThaiGD", "no_receipt_if_failed", f"QUERY answered TrangThaiGD 4 (failed; outside the answer's "
        f"checksum) but GET_BILL returned receipt {bill.receipt_no or bill.sha256[:12]}: not recorded as failed")])
    _platform_dead_letter(begin, run_id, row, exc, exc.error_dicts(), report)
    return False


def _refused_by_platform(begin: Begin, run_id: str, row: Row, exc: PeerRejected, report: CollectReport) -> None:
    """A signed, verified refusal of one payment's QUERY or GET_BILL that the flow has no rule for
    (the platform's MaLoi and message are kept): dead-lettered, so it blocks neither the payments
    due after it nor the next runs, and asked again once replayed."""
    _platform_dead_letter(begin, run_id, row, exc, exc.error_dicts(), report, peer_code=exc.peer_code or None)


def _unreadable(report: CollectReport, reference: str, operation: str,
                exc: UnreadableAnswer | ProtocolError) -> None:
    """An answer that is not the platform's at all (not JSON, truncated, an error page, not a PDF,
    still so after the transport's retries) says nothing about the payment: it stays where it was
    and is asked again when next due. Only an answer that reads but fails its checksum is
    dead-lettered (it may have been tampered with)."""
    report.unreadable += 1
    log.warning("payment %s: %s answer unreadable (%s); asked again when next due", reference, operation, exc)


def receipt_pdf(store: Store, sha256: str) -> bytes:
    """A stored receipt PDF by its hash (checked against it; see ``lienthong.exchange_log.read_blob``)."""
    return read_blob(store, sha256)


# --- 2. one-stop fee status --------------------------------------------------------------------
def _completed_at(answer: dict[str, Any] | None) -> str:
    """When the platform completed (or failed) a transaction: its ThoiGianGD as ISO 8601 +07:00."""
    from lienthong.mapping.transforms import TransformError, datetime_from_portal

    try:
        return datetime_from_portal(str((answer or {}).get("ThoiGianGD") or ""))
    except TransformError:
        return ""


@dataclass
class FeeReport:
    updated: int = 0
    already: int = 0
    held: Counter = field(default_factory=Counter)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    #: counts a retry of a failed attempt makes again (held payments are asked at every run): left
    #: out of what the failed attempt adds to the run summary (lienthong.tasks._counted)
    redone_by_retry = ("fees_held", "fees_held_by_reason")

    def counts(self) -> dict[str, Any]:
        return {"fees_updated": self.updated, "fees_already_recorded": self.already,
                "fees_held": sum(self.held.values()), "fees_held_by_reason": dict(self.held),
                "fees_rejected": len(self.rejected), "fee_rejections": self.rejected}


#: A step's states of a payment it still has to do (``onestop_state``, ``ledger_state``): not done
#: yet, or held (asked again at every run).
WAITING = ("todo", "held")
#: The fee step's work: finished payments not yet recorded at the one-stop, or held; and the ledger
#: step's: paid ones with their receipt not yet booked, or held. Each is read through an index that
#: starts with its state (``ix_payment_txn_fees_work``, ``ix_payment_txn_ledger_work``), so a run
#: reads its own work, not every payment the years before finished.
FEES_WORK = select(payment_txn).where(payment_txn.c.onestop_state.in_(WAITING),
                                      payment_txn.c.platform_status.in_(("paid", "failed")))
LEDGER_WORK = select(payment_txn).where(payment_txn.c.ledger_state.in_(WAITING),
                                        payment_txn.c.platform_status == "paid",
                                        payment_txn.c.receipt_sha256.is_not(None))


#: A paid payment keeps its applicant's name for the ledger step only while its receipt is still
#: to be booked, judged when written: a ledger step running beside the fee step (a run by hand
#: beside the DAG's) may have booked it, and erased the name, since the fee step read its page.
_KEEP_PAYER = (update(payment_txn).where(payment_txn.c.reference == bindparam("b_reference"))
               .values(payer_name=case((payment_txn.c.ledger_state.in_(WAITING), bindparam("b_payer")),
                                       else_=None)))


def _payer(onestop: Any, dossier_code: str) -> str | None:
    """The applicant's name on the one-stop's dossier (``""`` when it names none), or ``None`` when
    the one-stop does not hold the dossier: one ``GET /api/v1/dossiers/{no}`` answers both."""
    if not dossier_code:
        return None
    dossier = onestop.get_dossier(dossier_code)
    return None if dossier is None else str(dossier.get("applicantName") or "")


def _remembered_payer(payers: dict[str, str | None], onestop: Any, dossier_code: str) -> str | None:
    """:func:`_payer`, read once per dossier by a step (``payers``: what it read, at most
    :data:`LOOKUPS` dossiers, then afresh: memory, not correctness)."""
    if dossier_code not in payers:
        if len(payers) >= LOOKUPS:
            payers.clear()
        payers[dossier_code] = _payer(onestop, dossier_code)
    return payers[dossier_code]


def update_onestop_fees(store: Store, onestop: Any, *, run_id: str, report: FeeReport | None = None) -> FeeReport:
    """Step 2: record finished transactions at the one-stop where its callback did not.

    A payment whose dossier the one-stop does not hold is held, not recorded. The look-up reads the
    dossier, and a paid payment keeps its applicant's name (``payer_name``) for the ledger step,
    which then need not read the dossier again. ``report``: as for :func:`collect_payments`."""
    report = report if report is not None else FeeReport()
    with answer_transactions(store, onestop) as begin:
        payers: dict[str, str | None] = {}

        def settle(row: Row, payer: str | None, **values: Any) -> None:
            """Write what the step did, and keep a paid payment's payer for the ledger step."""
            with begin() as conn:
                _update(conn, row.reference, run_id, **values)
                if payer is not None and row.platform_status == "paid":
                    conn.execute(_KEEP_PAYER, {"b_reference": row.reference, "b_payer": payer})

        for row in _unblocked(store, FEES_WORK):
            code = row.dossier_code or ""
            payer = _remembered_payer(payers, onestop, code)
            hold = None
            if row.onestop_status == "unmatched":
                hold = "unmatched_payment"
            elif payer is None:
                hold = "unknown_dossier"
            elif row.platform_status == "paid" and row.platform_amount != row.request_amount:
                hold = "amount_differs"
            if hold:
                report.held[hold] += 1
                settle(row, payer, onestop_state="held", hold_reason=hold)
                continue
            try:
                answer = onestop.record_payment_result(
                    row.reference, result=row.platform_status, transaction_id=row.transaction_id or "",
                    amount=row.platform_amount if row.platform_amount is not None else row.request_amount,
                    paid_at=row.paid_at or _completed_at(row.answer), bank=row.bank or "", receipt_no=row.receipt_no,
                    dossier_no=code or None)
            except AmountMismatch:
                report.held["amount_differs"] += 1
                settle(row, payer, onestop_state="held", hold_reason="amount_differs")
                continue
            except PaymentConflict:
                reason = "paid_twice" if row.platform_status == "paid" else "failed_not_recorded"
                report.held[reason] += 1
                settle(row, payer, onestop_state="held", hold_reason=reason)
                continue
            except PeerRejected as exc:
                _dead_letter(begin, run_id, row.reference, "onestop", exc, exc.error_dicts(),
                             {"reference": row.reference, "dossierNo": code, "result": row.platform_status},
                             report.rejected, getattr(exc, "peer_code", None))
                continue
            applied = bool(answer.get("applied"))
            report.updated += applied
            report.already += not applied
            # the one-stop's view of it now, as its answer gives it: the next listing is no change
            payment = answer.get("payment") if isinstance(answer.get("payment"), dict) else {}
            status = payment.get("status")
            view = {"onestop_status": status} if status and _status_word(status) else {}
            settle(row, payer, onestop_state="updated" if applied else "already", hold_reason=None, **view)
    return report


# --- 3. ministry ledger ------------------------------------------------------------------------
@dataclass
class LedgerReport:
    accepted: int = 0
    unchanged: int = 0
    unconfirmed: int = 0  # submitted, but the ledger's answer did not say it holds them: sent again
    held: Counter = field(default_factory=Counter)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    redone_by_retry = ("receipts_held", "receipts_held_by_reason")  # as FeeReport's

    def counts(self) -> dict[str, Any]:
        return {"receipts_accepted": self.accepted, "receipts_unchanged": self.unchanged,
                "receipts_unconfirmed": self.unconfirmed,
                "receipts_held": sum(self.held.values()), "receipts_held_by_reason": dict(self.held),
                "receipts_rejected": len(self.rejected), "receipt_rejections": self.rejected}


def _source_record(row: Any, payer_name: str) -> dict[str, Any]:
    return {"transaction": row.answer or {}, "bill": {"receipt_no": row.receipt_no or "",
                                                     "pdf_sha256": row.receipt_sha256 or ""},
            "dossier": {"code": row.dossier_code or "", "payer_name": payer_name}}


def submit_receipts(store: Store, onestop: Any, ledger: Any, *, run_id: str, batch_size: int = 100,
                    report: LedgerReport | None = None) -> LedgerReport:
    """Step 3: map and submit the receipts of paid transactions to the ministry ledger.

    The payer's name is the dossier's applicant: kept by the fee step's look-up (``payer_name``),
    else (the fee step failed or did not reach the payment) read here from the one-stop, which also
    tells a dossier it does not hold: that receipt is held. The kept name is erased whatever
    becomes of the receipt here (booked, held, rejected): a held receipt is asked again, and a
    replayed one mapped again, with the name read afresh. ``report``: as for
    :func:`collect_payments`."""
    report = report if report is not None else LedgerReport()
    mapping = load_mapping(TO_LEDGER)
    with answer_transactions(store, ledger) as begin:
        ready: list[tuple[Any, dict[str, Any]]] = []
        payers: dict[str, str | None] = {}
        for row in _unblocked(store, LEDGER_WORK):
            # Checked here too, not only by update_onestop_fees: this step also runs when that one
            # failed or did not reach the payment (the DAG's trigger rule is all_done).
            payer = None
            if row.onestop_status == "unmatched":
                hold = "unmatched_payment"
            elif row.hold_reason == "unknown_dossier" or not row.dossier_code:
                hold = "unknown_dossier"
            else:
                payer = row.payer_name
                if payer is None:  # the fee step has not looked the dossier up (yet)
                    payer = _remembered_payer(payers, onestop, row.dossier_code)
                hold = "unknown_dossier" if payer is None else None
            if hold:
                report.held[hold] += 1
                _set(begin, row.reference, run_id, ledger_state="held", hold_reason=hold, payer_name=None)
                continue
            source = _source_record(row, payer or "")
            try:
                record = mapping.apply(source)
            except RecordInvalid as exc:
                _dead_letter(begin, run_id, row.reference, "mapping", exc, exc.error_dicts(), source, report.rejected)
                _set(begin, row.reference, run_id, ledger_state="rejected", payer_name=None)  # replay: read again
                continue
            ready.append((row, record))
            if len(ready) == batch_size:  # submitted as it fills: held look-ups stay one batch long
                _submit_batch(begin, ledger, ready, run_id, report)
                ready = []
        if ready:
            _submit_batch(begin, ledger, ready, run_id, report)
    return report


def _ledger_value(record: dict[str, Any]) -> dict[str, Any]:
    value = dict(record)
    value["PaidAt"] = datetime.fromisoformat(value["PaidAt"])
    return value


def _named(by_number: dict[str, tuple[Any, dict[str, Any]]], exc: RecordRejected) -> tuple[Any, dict[str, Any]]:
    """The receipt of the batch a ledger refusal names; a refusal naming none of them blames none
    (a ``ProtocolError``: the batch stays to be submitted, nothing dead-lettered or booked)."""
    if exc.record_key not in by_number:
        raise ProtocolError(f"the ledger's {type(exc).__name__} names no receipt of the batch "
                            f"({str(exc.record_key)[:64]!r})", peer="ministry_ledger", operation="SubmitReceipts")
    return by_number[exc.record_key]


def _submit_batch(begin: Begin, ledger: Any, batch: list[tuple[Any, dict[str, Any]]], run_id: str,
                  report: LedgerReport) -> None:
    """Submit one batch; the ledger applies a batch all or nothing, so a refused record is taken
    out (dead-lettered or held) and the rest is submitted again."""
    while batch:
        by_number = {record["ReceiptNumber"]: (row, record) for row, record in batch}
        keys = [k for row, record in batch for k in (row.reference, record["ReceiptNumber"], row.dossier_code)]
        try:
            result = ledger.submit_receipts([_ledger_value(record) for _, record in batch], record_keys=keys)
        except DuplicateReceipt as exc:
            row, record = _named(by_number, exc)
            report.held["duplicate_receipt"] += 1
            _set(begin, row.reference, run_id, ledger_state="held", hold_reason="duplicate_receipt", payer_name=None)
            log.warning("receipt %s of payment %s: the ledger holds other content under it: %s",
                        record["ReceiptNumber"], row.reference, exc)
            batch = [item for item in batch if item[0].reference != row.reference]
            continue
        except RecordRejected as exc:  # ReceiptInvalid (a ValidationFault) names the receipt and its index
            if len(batch) > 1 and [e.field for e in exc.errors] == ["Receipt"]:
                # about the batch (more receipts than the ledger takes: maxOccurs), not a receipt in
                # it, though its Index names the first one too many: submitted in halves
                half = len(batch) // 2
                _submit_batch(begin, ledger, batch[:half], run_id, report)
                _submit_batch(begin, ledger, batch[half:], run_id, report)
                return
            row, record = _named(by_number, exc)
            _dead_letter(begin, run_id, row.reference, "ledger", exc, exc.error_dicts(),
                         _source_record(row, record.get("PayerName", "")), report.rejected,
                         getattr(exc, "peer_code", None))
            _set(begin, row.reference, run_id, ledger_state="rejected", payer_name=None)
            batch = [item for item in batch if item[0].reference != row.reference]
            continue
        with begin() as conn:  # the batch's answer in one transaction, with its exchange-log record
            for row, record in batch:
                status = result.statuses.get(record["ReceiptNumber"])
                if status not in ("accepted", "unchanged"):
                    # the answer does not say it holds this one: not taken as booked, submitted again
                    # by the next run (the ledger answers the same content "unchanged")
                    report.unconfirmed += 1
                    log.warning("receipt %s of payment %s: the ledger's answer to its batch %s; left to be "
                                "submitted again", record["ReceiptNumber"], row.reference,
                                "does not name it" if status is None else f"gives it status {status[:40]!r}")
                    continue
                report.accepted += status == "accepted"
                report.unchanged += status == "unchanged"
                _update(conn, row.reference, run_id, ledger_state=status, ledger_hash=content_hash(record),
                        hold_reason=row.hold_reason if row.hold_reason != "duplicate_receipt" else None,
                        payer_name=None)  # booked: the bus keeps the name no longer
        return


# --- 4. reconciliation -------------------------------------------------------------------------
@dataclass
class ReconciliationReport:
    paid: int = 0
    failed: int = 0
    agreed: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)
    opened: int = 0
    resolved: int = 0
    scope: str = "full"  # full: every transaction; changed: those changed since, and the open mismatches
    since: str | None = None  # a changed pass: the time (ISO 8601, UTC) its changes are taken from
    scope_size: int = 0  # a changed pass: the transactions it checks
    given_up: int = 0  # payments no longer asked about (unfinished after ASK_FOR of asking)
    discarded: int = 0  # payments checked with a step an operator discarded (:func:`discard`)
    checked: set[str] = field(default_factory=set)  # a changed pass: the payments it checked

    def counts(self) -> dict[str, Any]:
        kinds = Counter(i["kind"] for i in self.items)
        return {"reconciled_scope": self.scope, "reconciled_since": self.since,
                "reconciled_paid": self.paid, "reconciled_failed": self.failed, "reconciled_agreed": self.agreed,
                "payments_given_up": self.given_up, "reconciled_discarded": self.discarded,
                "mismatches": len(self.items), "mismatches_by_kind": dict(sorted(kinds.items())),
                "mismatches_opened": self.opened, "mismatches_resolved": self.resolved}


def _amount(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


_RECONCILED = ("reference", "dossier_code", "platform_status", "request_amount", "platform_amount", "transaction_id",
               "paid_at", "receipt_no", "hold_reason", "onestop_state", "ledger_state")
#: Paid transactions per ``ListReceipts`` window: the ledger answers a window in one SOAP body, so a
#: province's years of receipts are asked for a bounded slice of time at a time.
RECEIPT_WINDOW = 2_000

# What the other two systems say, kept for one reconciliation in temporary tables of the bus
# database (the connection's own, dropped at the end), so its memory follows a page, not the
# backlog: the one-stop's view of each request, the ledger's receipts of the paid period.
_views = MetaData()
_onestop_view = Table(
    "reconcile_onestop", _views,
    Column("reference", String(64), primary_key=True),
    Column("view", Text, nullable=False),  # JSON {status, transactionId, amount} as the one-stop listed them
    prefixes=["TEMPORARY"])
_ledger_view = Table(
    "reconcile_ledger", _views,
    Column("seq", Integer, primary_key=True, autoincrement=True),  # the order the ledger gave them in
    Column("number", Text, nullable=False),  # str(ReceiptNumber)
    Column("reference", Text, nullable=False),  # str(PaymentReference)
    Column("receipt", Text, nullable=False),  # JSON of the fields the checks read
    Index("ix_reconcile_ledger_number", "number"),
    Index("ix_reconcile_ledger_reference", "reference"),
    prefixes=["TEMPORARY"])
_scope = Table(  # a pass between full ones: the payments it checks
    "reconcile_scope", _views,
    Column("reference", String(200), primary_key=True),
    prefixes=["TEMPORARY"])
_RECEIPT_FIELDS = ("ReceiptNumber", "PaymentReference", "AmountVND", "DossierCode")

#: A full reconciliation (every transaction against everything the one-stop lists and the ledger
#: holds) runs at least this often; the passes between check every payment with an open mismatch
#: and the transactions changed since the latest change the last pass saw (the bus database's own
#: ``updated_at`` stamps, not a worker's clock; or the pass's start less :data:`RECHECK_OVERLAP`
#: when that is later), less :data:`RECHECK_OVERLAP`: for workers' clocks a little apart, and a
#: change stamped before and committed after that pass began (the DAG runs reconcile after the
#: steps that write, so only a run started by hand meanwhile can do that; the next full pass
#: checks it in any case). So a run's cost follows its changes.
FULL_EVERY = timedelta(days=1)
RECHECK_OVERLAP = timedelta(seconds=2)
#: A pass between full ones with more changes than this is a full pass: it asks the one-stop for
#: each payment it checks (above this many, listing them all costs less) and the ledger for the
#: minutes around each.
SCOPE_AT_MOST = 1_000
#: The bus's note of the last reconciliations (``sync_cursor``): the latest change the last pass
#: saw, and when the last full pass began.
RECONCILED = FLOW + "/reconciled"


def _keep_onestop_page(conn: Connection, page: list[dict[str, Any]]) -> None:
    """One listed page into the one-stop view; a reference listed again replaces what was listed
    before. A request whose reference no transaction can have (collect refused it) is left out:
    nothing is checked against it, and the view's column holds what ``payment_txn`` holds."""
    views = {p["reference"]: json.dumps({"status": p.get("status"), "transactionId": p.get("transactionId"),
                                         "amount": p.get("amount")}, default=str)
             for p in page if isinstance(p.get("reference"), str) and _holdable(p["reference"])}
    if not views:
        return
    conn.execute(delete(_onestop_view).where(_onestop_view.c.reference.in_(list(views))))
    conn.execute(_onestop_view.insert(), [{"reference": r, "view": v} for r, v in views.items()])
    conn.commit()


def _keep_receipts(conn: Connection, receipts: list[dict[str, Any]]) -> None:
    if receipts:
        conn.execute(_ledger_view.insert(), [
            {"number": str(r.get("ReceiptNumber")), "reference": str(r.get("PaymentReference")),
             "receipt": json.dumps({k: r.get(k) for k in _RECEIPT_FIELDS}, default=str)} for r in receipts])
    conn.commit()


def _checked(query: Select, scoped: bool) -> Select:
    """``query`` over ``payment_txn``, limited to the pass's scope when it is not a full one."""
    return query.join(_scope, _scope.c.reference == payment_txn.c.reference) if scoped else query


def _tiles(first: datetime, last: datetime, cuts: list[datetime],
           margin: timedelta = timedelta(days=1)) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` windows from ``margin`` before ``first`` to ``margin`` after ``last``, cut at
    ``cuts``: they tile the span, no gap, no overlap."""
    bounds = [first - margin, *sorted({c for c in cuts if first < c <= last}), last + margin]
    return list(pairwise(bounds))


#: A pass between full ones asks the ledger for the receipts booked within this of each payment
#: it checks (a receipt's PaidAt is its payment's time), in windows of at most
#: :data:`SCOPED_WINDOW_SPAN` of payments: what a window holds follows the province's payments in
#: that span, never its history.
SCOPED_MARGIN = timedelta(minutes=1)
SCOPED_WINDOW_SPAN = timedelta(hours=1)


def _receipt_windows(conn: Connection, size: int, scoped: bool = False) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` windows that tile the paid period (a day before the first payment to a day
    after the last), each holding about ``size`` paid transactions; only the cut points are kept.
    ``scoped`` (a pass between full ones): only the minutes around the scope's paid payments
    (:data:`SCOPED_MARGIN`), a tiling per run of them closer than twice that, cut at most
    :data:`SCOPED_WINDOW_SPAN` apart, so neither one old payment with an open mismatch nor a
    busy period makes the pass read more than the receipts booked around what it checks."""
    query = _checked(select(payment_txn.c.paid_at), scoped).where(
        payment_txn.c.platform_status == "paid", payment_txn.c.paid_at.is_not(None), payment_txn.c.paid_at != "")
    if scoped:  # the scope is a run's changes (SCOPE_AT_MOST at most): its paid times are few
        times = sorted(datetime.fromisoformat(t) for t in conn.execute(query).scalars())
        conn.rollback()  # the read ends here: the ledger is asked next
        windows: list[tuple[datetime, datetime]] = []
        run: list[datetime] = []
        cuts: list[datetime] = []
        for when in [*times, None]:
            if run and (when is None or when - run[-1] > 2 * SCOPED_MARGIN):
                windows += _tiles(run[0], run[-1], cuts, SCOPED_MARGIN)
                run, cuts = [], []
            if when is not None:
                if run and when - (cuts[-1] if cuts else run[0]) > SCOPED_WINDOW_SPAN:
                    cuts.append(when)
                run.append(when)
        return windows
    first = last = None
    cuts: list[datetime] = []
    rows = conn.execute(query.order_by(payment_txn.c.paid_at)
                        .execution_options(yield_per=10_000))  # a server-side cursor on PostgreSQL
    for n, (paid_at,) in enumerate(rows):
        when = datetime.fromisoformat(paid_at)
        first = when if first is None or when < first else first
        last = when if last is None or when > last else last
        if n and n % size == 0:
            cuts.append(when)
    conn.rollback()  # the read ends here: the ledger is asked next
    if first is None or last is None:
        return []
    return _tiles(first, last, cuts)


def _txn_pages(conn: Connection, query: Select) -> Iterator[list[Row]]:
    """:func:`_pages` on the reconciliation's own connection (whose temporary tables the queries
    join); each page's read transaction ends with the page, so none is open while a peer is asked."""

    def read(page: Select) -> list[Row]:
        rows = conn.execute(page).all()
        conn.rollback()
        return rows

    return _pages(query, read)


def _fetch_unlisted(conn: Connection, ledger: Any, scoped: bool = False) -> None:
    """A receipt number the windows did not show may still be held, under another payment or
    time: asked by number, a page of paid transactions at a time (a number found is in the view
    before the next page is read, so it is asked once)."""
    unlisted = _checked(select(payment_txn.c.reference, payment_txn.c.receipt_no), scoped).where(
        payment_txn.c.platform_status == "paid", payment_txn.c.receipt_no.is_not(None), payment_txn.c.receipt_no != "",
        ~exists().where(_ledger_view.c.number == payment_txn.c.receipt_no))
    for rows in _txn_pages(conn, unlisted):
        found: set[str] = set()
        for row in rows:
            if row.receipt_no in found:
                continue
            held = ledger.get_receipt(row.receipt_no)
            if held is not None:
                _keep_receipts(conn, [held])
                found.add(row.receipt_no)


def reconcile(store: Store, onestop: Any, ledger: Any, *, run_id: str, full: bool | None = None,
              clock: Callable[[], datetime] = utcnow) -> ReconciliationReport:
    """Step 4: check that the platform, the one-stop and the ledger agree on every transaction.

    A **full** pass (at least every :data:`FULL_EVERY`, or when ``full`` is true) checks every
    transaction; a pass between full ones checks the transactions changed since the last pass
    began and those with an open mismatch (``full`` false forces one). What the one-stop and the
    ledger say is read into temporary tables of the bus database first (the one-stop's requests
    page by page, or one by one for a small scope; the ledger's receipts a window of
    :data:`RECEIPT_WINDOW` paid transactions at a time over the checked payments' paid period),
    then the transactions are checked a page of :data:`PAGE` at a time against them: memory
    follows a page, not the years of payments."""
    started = clock()
    last = json.loads(store.get_cursor(RECONCILED) or "{}")
    if full is None:
        full = "full_at" not in last or started - datetime.fromisoformat(last["full_at"]) >= FULL_EVERY
    if not full and "checked_to" not in last:
        raise ValueError("no reconciliation has run yet: the first one is a full pass")
    report = ReconciliationReport(scope="full" if full else "changed")
    if not full:
        report.since = (datetime.fromisoformat(last["checked_to"]) - RECHECK_OVERLAP).isoformat()
    with store.engine.connect() as conn:
        # the latest change this pass sees (the next one starts there, or later when nothing changed
        # for a while: a change stamped before that is long committed)
        seen_to = max(conn.execute(select(func.max(payment_txn.c.updated_at))).scalar() or started,
                      started - RECHECK_OVERLAP)
        _views.drop_all(conn, checkfirst=True)  # a pooled connection may hold an interrupted run's
        _views.create_all(conn)
        conn.commit()
        try:
            _reconcile(conn, onestop, ledger, report)
        finally:
            conn.rollback()
            _views.drop_all(conn, checkfirst=True)
            conn.commit()
    _keep_items(store, report, run_id)
    with store.begin() as conn:  # a pass with more changes than SCOPE_AT_MOST went full
        Store.set_cursor(conn, RECONCILED, json.dumps({"checked_to": seen_to.isoformat(), "full_at": (
            started.isoformat() if report.scope == "full" else last["full_at"])}), run_id)
    return report


def _fill_scope(conn: Connection, since: datetime) -> int:
    """The pass's scope: the transactions changed since ``since`` (``ix_payment_txn_updated``) and
    the payments with an open mismatch. Returns how many transactions it holds."""
    conn.execute(_scope.insert().from_select(["reference"], select(payment_txn.c.reference).where(
        payment_txn.c.updated_at > since)))
    conn.execute(_scope.insert().from_select(["reference"], select(reconciliation_item.c.record_key).where(
        reconciliation_item.c.flow == FLOW, reconciliation_item.c.resolved_at.is_(None),
        reconciliation_item.c.record_key.not_in(select(_scope.c.reference))).distinct()))
    held = conn.execute(select(func.count()).select_from(_checked(select(payment_txn.c.reference), True)
                                                         .subquery())).scalar_one()
    conn.commit()
    return held


def _ask_onestop(conn: Connection, onestop: Any) -> None:
    """The one-stop's view of each payment in the scope, asked by reference (a page at a time)."""
    for rows in _txn_pages(conn, _checked(select(payment_txn.c.reference), True)):
        listed = [p for p in (onestop.get_payment(r.reference) for r in rows) if p is not None]
        _keep_onestop_page(conn, listed)


def _reconcile(conn: Connection, onestop: Any, ledger: Any, report: ReconciliationReport) -> None:
    scoped = report.since is not None
    if scoped:
        report.scope_size = _fill_scope(conn, datetime.fromisoformat(report.since))
        if report.scope_size > SCOPE_AT_MOST:  # as many changes as that: a full pass costs their order
            scoped, report.scope, report.since = False, "full", None
    if scoped:
        _ask_onestop(conn, onestop)
    else:
        for page in onestop.iter_payments(status="all"):
            _keep_onestop_page(conn, page)
    for start, end in _receipt_windows(conn, RECEIPT_WINDOW, scoped):
        _keep_receipts(conn, ledger.list_receipts(start, end))
    _fetch_unlisted(conn, ledger, scoped)

    report.given_up = conn.execute(select(func.count()).select_from(payment_txn).where(
        payment_txn.c.platform_status.in_(UNFINISHED), payment_txn.c.next_ask_at.is_(None),
        payment_txn.c.first_asked_at.is_not(None))).scalar_one()
    conn.rollback()

    def found(txn: Any, kind: str, **details: Any) -> None:
        report.items.append({"record_key": txn.reference, "kind": kind, "dossier_code": txn.dossier_code,
                             "receipt_no": txn.receipt_no, "details": details})

    def receipts(column: Any, values: set[str]) -> dict[str, list[dict[str, Any]]]:
        held: dict[str, list[dict[str, Any]]] = defaultdict(list)
        if values:
            for key, receipt in conn.execute(select(column, _ledger_view.c.receipt).where(
                    column.in_(sorted(values))).order_by(_ledger_view.c.seq)):
                held[key].append(json.loads(receipt))
        return held

    for txns in _txn_pages(conn, _checked(select(*(payment_txn.c[name] for name in _RECONCILED)), scoped)):
        references = {t.reference for t in txns}
        if scoped:
            report.checked.update(references)
        views = {r: json.loads(v) for r, v in conn.execute(select(_onestop_view.c.reference, _onestop_view.c.view)
                                                           .where(_onestop_view.c.reference.in_(references)))}
        paid = [t for t in txns if t.platform_status == "paid"]
        by_number = receipts(_ledger_view.c.number, {t.receipt_no for t in paid if t.receipt_no})
        by_reference = receipts(_ledger_view.c.reference, {t.reference for t in paid})
        for txn in txns:
            before = len(report.items)
            mine = views.get(txn.reference) or {}
            # a step an operator discarded (its dead letter closed without resending): what that
            # step would have made agree is not a mismatch; the report lists the payment as discarded
            discarded = DISCARDED in (txn.platform_status, txn.onestop_state, txn.ledger_state)
            report.discarded += discarded
            if txn.platform_status == "unknown":
                found(txn, "unknown_transaction", onestop_status=mine.get("status"))
            if txn.platform_status == "failed":
                report.failed += 1
                if mine.get("status") != "failed" and txn.onestop_state != DISCARDED:
                    found(txn, "failed_not_recorded", onestop_status=mine.get("status"))
            if txn.platform_status != "paid":
                continue
            report.paid += 1
            unmatched = txn.hold_reason in ("unknown_dossier", "unmatched_payment")
            if unmatched:
                found(txn, txn.hold_reason, dossier_code=txn.dossier_code, onestop_status=mine.get("status"))
            if txn.request_amount is not None and txn.platform_amount != txn.request_amount:
                found(txn, "amount_differs", platform_amount=txn.platform_amount, onestop_amount=txn.request_amount)
            elif not unmatched and txn.onestop_state != DISCARDED:
                if mine.get("status") != "paid":
                    found(txn, "fee_not_paid", onestop_status=mine.get("status"))
                elif mine.get("transactionId") != txn.transaction_id:
                    found(txn, "paid_twice", platform_transaction=txn.transaction_id,
                          onestop_transaction=mine.get("transactionId"))
                elif _amount(mine.get("amount")) != txn.platform_amount:
                    found(txn, "amount_differs", platform_amount=txn.platform_amount,
                          onestop_amount=mine.get("amount"))
            held = by_number.get(txn.receipt_no or "", [])
            for_payment = by_reference.get(txn.reference, [])
            if not txn.receipt_no or not held:
                if (not unmatched or for_payment) and txn.ledger_state != DISCARDED:
                    found(txn, "missing_receipt", ledger_state=txn.ledger_state)
            elif len(held) > 1 or len(for_payment) > 1 or txn.hold_reason == "duplicate_receipt":
                found(txn, "duplicate_receipt", receipts=sorted(str(r.get("ReceiptNumber")) for r in for_payment),
                      copies_of_number=len(held))
            elif _amount(held[0].get("AmountVND")) != txn.platform_amount:
                found(txn, "ledger_amount_differs", ledger_amount=_amount(held[0].get("AmountVND")),
                      platform_amount=txn.platform_amount)
            report.agreed += len(report.items) == before and not discarded
    # receipts for payments the bus does not know, in reference order, each as the ledger gave it
    unexpected = select(_ledger_view.c.reference, _ledger_view.c.receipt).where(
        ~exists().where(payment_txn.c.reference == _ledger_view.c.reference)).order_by(
        _ledger_view.c.reference, _ledger_view.c.seq)
    for reference, text in conn.execute(unexpected).all():
        receipt = json.loads(text)
        report.items.append({"record_key": reference, "kind": "unexpected_receipt", "dossier_code":
                             receipt.get("DossierCode"), "receipt_no": receipt.get("ReceiptNumber"),
                             "details": {"amount": _amount(receipt.get("AmountVND"))}})


#: Mismatches a pass between full ones cannot rule out, so only a full pass resolves them: it reads
#: the ledger only minutes around the payments it checks, and a second receipt for a payment
#: booked at another time (or a second copy of its number) lies outside them.
FULL_PASS_RESOLVES = frozenset({"duplicate_receipt"})


def _keep_items(store: Store, report: ReconciliationReport, run_id: str) -> None:
    """Open new mismatches, refresh the ones seen again, resolve the ones no longer found (by a
    pass between full ones: only those of the payments it checked, and not the kinds in
    :data:`FULL_PASS_RESOLVES`)."""
    now = utcnow()
    seen = {(i["record_key"], i["kind"]) for i in report.items}
    with store.begin() as conn:
        open_rows = {(r.record_key, r.kind): r.id for r in conn.execute(select(
            reconciliation_item.c.id, reconciliation_item.c.record_key, reconciliation_item.c.kind).where(
            reconciliation_item.c.flow == FLOW, reconciliation_item.c.resolved_at.is_(None)))}
        for item in report.items:
            key = (item["record_key"], item["kind"])
            details = json.loads(json.dumps(item["details"], default=str))
            if key in open_rows:
                conn.execute(update(reconciliation_item).where(reconciliation_item.c.id == open_rows[key]).values(
                    details=details, last_seen_at=now, last_seen_run=run_id))
            else:
                report.opened += 1
                conn.execute(reconciliation_item.insert().values(
                    flow=FLOW, record_key=item["record_key"], kind=item["kind"], dossier_code=item["dossier_code"],
                    receipt_no=item["receipt_no"], details=details, first_seen_at=now, first_seen_run=run_id,
                    last_seen_at=now, last_seen_run=run_id))
                open_rows[key] = -1
        for key, row_id in open_rows.items():
            if key not in seen and row_id > 0 and (report.scope == "full" or (
                    key[0] in report.checked and key[1] not in FULL_PASS_RESOLVES)):
                report.resolved += 1
                conn.execute(update(reconciliation_item).where(reconciliation_item.c.id == row_id).values(
                    resolved_at=now, resolved_run=run_id))


def open_items(store: Store) -> list[dict[str, Any]]:
    """Mismatches kept for follow-up, oldest first."""
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(reconciliation_item).where(
            reconciliation_item.c.flow == FLOW, reconciliation_item.c.resolved_at.is_(None))
            .order_by(reconciliation_item.c.first_seen_at, reconciliation_item.c.id)).mappings()]


def payment_counts(store: Store) -> dict[str, Any]:
    """Where every followed payment stands (for summaries)."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(payment_txn.c.platform_status, payment_txn.c.onestop_state,
                                   payment_txn.c.ledger_state, func.count()).group_by(
            payment_txn.c.platform_status, payment_txn.c.onestop_state, payment_txn.c.ledger_state)).all()
    total: Counter = Counter()
    for platform_status, onestop_state, ledger_state, n in rows:
        total[f"platform_{platform_status}"] += n
        total[f"onestop_{onestop_state}"] += n
        total[f"ledger_{ledger_state}"] += n
    return dict(sorted(total.items()))


def reconciliation_markdown(store: Store, run_id: str, counts: dict[str, Any], *,
                            failed: str | None = None) -> str:
    """The run's reconciliation report for people: totals, then every open mismatch with its age.
    ``failed``: the run's failed steps, said in words: the run failed and its pass did not run."""
    items = open_items(store)
    now = utcnow()
    scope = (f"**This run failed**: {failed}. The three systems were not reconciled: the next run's pass "
             "checks what changed since the last pass, this run's changes included; the mismatches below are "
             "those earlier passes left open." if failed else
             "Scope: every transaction (a full pass; one runs at least daily)."
             if counts.get("reconciled_scope", "full") == "full" else
             f"Scope: the transactions that changed since {counts.get('reconciled_since')} UTC and those with open "
             "mismatches (a pass between the daily full ones: an older receipt changed at the ledger, or a request "
             "at the one-stop, is found by the next full pass).")
    lines = [f"# Payment reconciliation — run {run_id}", "", scope, "",
             *(() if failed else [
                 (f"Paid transactions checked: {counts.get('reconciled_paid', 0)}; "
                  f"all three systems agree on {counts.get('reconciled_agreed', 0)}. "
                  f"Failed transactions: {counts.get('reconciled_failed', 0)}. "
                  f"Checked with a step discarded by an operator: {counts.get('reconciled_discarded', 0)}.")]),
             (f"Payments no longer asked about (the platform still said pending, or did not know them, after 30 "
              f"days of asking; asked again if the one-stop's view of them changes): "
              f"{counts.get('payments_given_up', 0)}."),
             (f"Receipts booked in the ledger this run: {counts.get('receipts_accepted', 0)} "
              f"(already held: {counts.get('receipts_unchanged', 0)}); one-stop fees updated where the callback "
              f"was lost: {counts.get('fees_updated', 0)} (already recorded: "
              f"{counts.get('fees_already_recorded', 0)})."),
             "", f"## Open mismatches ({len(items)})", ""]
    if not items:
        lines.append("None: the payment platform, the one-stop system and the ministry ledger agree.")
    else:
        lines += ["| kind | payment reference | dossier | receipt | details | open since | age |",
                  "|---|---|---|---|---|---|---|"]
        for item in items:
            age = now - item["first_seen_at"]
            details = ", ".join(f"{k}={v}" for k, v in sorted(item["details"].items()))
            lines.append(f"| {item['kind']} | {item['record_key']} | {item['dossier_code'] or ''} | "
                         f"{item['receipt_no'] or ''} | {details} | {item['first_seen_at']:%Y-%m-%d %H:%M} UTC | "
                         f"{age.days}d {age.seconds // 3600}h |")
        lines += ["", "What each kind means:", ""]
        for kind in sorted({i["kind"] for i in items}):
            lines.append(f"- **{kind}**: {KINDS.get(kind, kind)}.")
    discarded = discarded_payments(store)
    if discarded:
        lines += ["", f"## Discarded by an operator ({len(discarded)})", "",
                  ("A dead letter closed with `lienthong deadletter discard`: the step it names is not done by the "
                   "bus, and what only that step would have made agree is not reported as a mismatch."), "",
                  "| payment reference | dossier | not done by the bus | resolution |", "|---|---|---|---|"]
        for d in discarded:
            lines.append(f"| {d['reference']} | {d['dossier_code'] or ''} | {'; '.join(d['not_done'])} | "
                         f"{(d['resolution'] or '').replace('|', '/')} |")
    return "\n".join(lines) + "\n"


#: A step's state of a payment (``platform_status``, ``onestop_state``, ``ledger_state``) whose dead
#: letter an operator discarded (:func:`discard`): the step leaves it alone for good.
DISCARDED = "discarded"
#: What the bus no longer does for a payment, by the state column discarded.
_NOT_DONE = {"platform_status": "ask the payment platform (QUERY, GET_BILL)",
             "onestop_state": "record the fee's result at the one-stop",
             "ledger_state": "book the receipt in the ministry ledger"}
#: The stages a payment dead letter is discarded at, and the column each one's step owns; a
#: ``source`` dead letter (a one-stop request that breaks the wire format) is not: it is listed,
#: and dead-lettered, again at every full listing while the one-stop keeps it.
DISCARDABLE = {"platform": "platform_status", "onestop": "onestop_state", "mapping": "ledger_state",
               "ledger": "ledger_state"}


def discarded_payments(store: Store) -> list[dict[str, Any]]:
    """The payments with a step discarded by an operator, by reference: what the bus no longer
    does for each, and the resolution of its newest discarded dead letter (who, why)."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(payment_txn.c.reference, payment_txn.c.dossier_code, payment_txn.c.platform_status,
                                   payment_txn.c.onestop_state, payment_txn.c.ledger_state).where(
            (payment_txn.c.platform_status == DISCARDED) | (payment_txn.c.onestop_state == DISCARDED)
            | (payment_txn.c.ledger_state == DISCARDED)).order_by(payment_txn.c.reference)).all()
        resolutions: dict[str, str] = {}
        for start in range(0, len(rows), 500):
            references = [r.reference for r in rows[start:start + 500]]
            for key, resolution in conn.execute(select(dead_letter.c.record_key, dead_letter.c.resolution).where(
                    dead_letter.c.flow == FLOW, dead_letter.c.record_key.in_(references),
                    dead_letter.c.stage.in_(list(DISCARDABLE)), dead_letter.c.resolved_at.is_not(None))
                    .order_by(dead_letter.c.id)):
                if (resolution or "").startswith("discarded by "):
                    resolutions[key] = resolution
    return [{"reference": r.reference, "dossier_code": r.dossier_code, "resolution": resolutions.get(r.reference),
             "not_done": [text for column, text in _NOT_DONE.items() if getattr(r, column) == DISCARDED]}
            for r in rows]


@dataclass
class DiscardResult:
    dead_letters: list[int] = field(default_factory=list)  # the dead letters discarded (resolved)
    references: list[str] = field(default_factory=list)  # their payments
    refused: dict[int, str] = field(default_factory=dict)  # dead letters left unresolved, each with why


def discard(store: Store, *, reason: str, by: str, dead_letter_ids: list[int] | None = None,
            record_key: str | None = None) -> DiscardResult:
    """Resolve payment dead letters WITHOUT doing their step again ("discarded by <by>: <reason>"),
    for when an operator has settled the payment otherwise (the fee recorded at the one-stop by
    hand, the receipt booked at the ministry by other means, a payment the platform will never
    answer for).

    The state the refused step owns becomes ``discarded``, and that step leaves the payment alone
    for good: ``platform`` — not asked again (QUERY, GET_BILL), not even when the one-stop's view of
    it changes, and its fee and receipt steps do not run (the platform never said paid with a
    receipt); ``onestop`` — its result is not recorded at the one-stop (a failed payment the
    platform later reports paid is recorded then: another result); ``mapping``, ``ledger`` — its
    receipt is not mapped or submitted again. The other steps go on as before (the letter no
    longer blocks them). The reconciliation does not report as a mismatch what only the discarded
    step would have made agree, and its report lists the payment as discarded
    (:func:`discarded_payments`). A ``source`` dead letter is refused (``refused``, with why).
    Select by ids or by the payment reference."""
    if not reason.strip():
        raise ValueError("a discard needs a reason")
    if not (dead_letter_ids or record_key):
        raise ValueError("say which dead letters to discard: ids or a record key")
    query = select(dead_letter).where(dead_letter.c.resolved_at.is_(None), dead_letter.c.flow == FLOW)
    if dead_letter_ids:
        query = query.where(dead_letter.c.id.in_(dead_letter_ids))
    if record_key:
        query = query.where(dead_letter.c.record_key == record_key)
    result = DiscardResult()
    with store.begin() as conn:
        # locked, then resolved: a replay or discard at once waits and finds none of them
        letters = resolve_dead_letters(conn, query.where(dead_letter.c.stage.in_(list(DISCARDABLE))),
                                       f"discarded by {by}: {' '.join(reason.split())}")
        result.dead_letters.extend(lt.id for lt in letters)
        result.references.extend(sorted({lt.record_key for lt in letters}))
        now = utcnow()
        for lt in letters:
            column = payment_txn.c[DISCARDABLE[lt.stage]]
            waiting = {"platform": ASKED, "onestop": WAITING}.get(lt.stage, ("rejected",))
            values: dict[str, Any] = {column.name: DISCARDED, "updated_at": now}
            if lt.stage == "platform":
                values["next_ask_at"] = None
            conn.execute(update(payment_txn).where(payment_txn.c.reference == lt.record_key, column.in_(waiting))
                         .values(**values))
        for lt in conn.execute(query.where(dead_letter.c.stage.not_in(list(DISCARDABLE))).order_by(dead_letter.c.id)):
            result.refused[lt.id] = (f"stage {lt.stage} (a one-stop payment request that breaks the wire format, "
                                     "listed and dead-lettered again while the one-stop keeps it), which discard "
                                     "does not handle: correct the request at the one-stop, then replay it")
    return result


def replay(store: Store, *, dead_letter_ids: list[int] | None = None, record_key: str | None = None,
           by: str = "operator") -> tuple[list[int], list[str]]:
    """Resolve payment dead letters and put their transactions back in line for the next run:
    a refused ledger record is mapped and submitted again (with the current mapping file), a
    refused one-stop update or platform answer is asked again. Returns (dead letters, references)."""
    query = select(dead_letter).where(dead_letter.c.resolved_at.is_(None), dead_letter.c.flow == FLOW)
    if dead_letter_ids:
        query = query.where(dead_letter.c.id.in_(dead_letter_ids))
    if record_key:
        query = query.where(dead_letter.c.record_key == record_key)
    ids: list[int] = []
    with store.begin() as conn:
        # locked, then resolved: a second replay at once waits and finds none of them
        letters = resolve_dead_letters(conn, query, f"replayed by {by}")
        ids.extend(lt.id for lt in letters)
        references = sorted({lt.record_key for lt in letters})
        for stage in ("mapping", "ledger"):
            keys = sorted({lt.record_key for lt in letters if lt.stage == stage})
            if keys:
                conn.execute(update(payment_txn).where(payment_txn.c.reference.in_(keys),
                                                       payment_txn.c.ledger_state == "rejected")
                             .values(ledger_state="todo", updated_at=utcnow()))
    return ids, references
