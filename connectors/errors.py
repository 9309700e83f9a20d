"""Error classes, grouped by what the caller should do with them.

The tree is the contract between connectors, the engine and the DAGs:

* ``RetriableConnectorError`` — the peer could not be reached or answered with a transient
  failure (timeouts, dropped connections, HTTP 5xx/429, an expired session, an answer that
  arrived unreadable: empty, cut short, an HTML page from a gateway). Retry the same request
  later; nothing about the record is wrong.
* ``FatalConnectorError`` — retrying will not help until a person changes something
  (bad credentials, a readable reply that breaks the peer's contract, a 4xx from a misconfigured
  call). Give up the run.
* ``RecordRejected`` — this one record cannot pass (a mapping rule, a validation answer from the
  peer). Dead-letter it with its reason and carry on with the others. Two refusals of a payment
  result are told apart because a person reads them differently: ``PaymentConflict`` (the fee is
  already paid by another transaction; it is never paid twice) and ``AmountMismatch`` (the amount
  paid differs from the fee the payment was opened for).
* ``ConfigurationError`` — the bus itself is misconfigured (missing connection, bad mapping file).

Callers branch on the class, never on message text.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AmountMismatch",
    "AuthenticationFailed",
    "BillNotAvailable",
    "ChecksumMismatch",
    "ConfigurationError",
    "ConnectorError",
    "DuplicateReceipt",
    "ExchangeNotRecorded",
    "FatalConnectorError",
    "FieldError",
    "IntegrationError",
    "NOT_RETRIED",
    "PaymentConflict",
    "PeerRejected",
    "PeerUnavailable",
    "ProtocolError",
    "RecordRejected",
    "RetriableConnectorError",
    "SessionExpired",
    "TransactionUnknown",
    "UnreadableAnswer",
    "UnsafeXml",
]


class IntegrationError(Exception):
    """Root of every error raised by lienthong code."""


class ConfigurationError(IntegrationError):
    """The bus is misconfigured: a connection, a setting or a mapping file is missing or invalid."""


class ConnectorError(IntegrationError):
    """A call to a peer system failed.

    Attributes:
        peer: the peer system's name (``national_portal``, ``onestop``...).
        operation: the operation that failed (``DongBoHoSoMC``, ``changes``...).
        status: HTTP status code when there was an answer, else ``None``.
    """

    def __init__(self, message: str, *, peer: str = "", operation: str = "", status: int | None = None):
        super().__init__(message)
        self.peer = peer
        self.operation = operation
        self.status = status


class RetriableConnectorError(ConnectorError):
    """Transient: the same request may succeed later (timeouts, resets, 5xx, 429)."""


class PeerUnavailable(RetriableConnectorError):
    """The peer did not answer in time, dropped the connection, or answered 5xx/429.

    Attributes:
        retry_after: seconds the peer asked us to wait before asking again (its ``Retry-After``
            on a 429 or 503), or ``None``. A wait longer than the transport's own cap ends the
            call at once with this set, so the task's retry (Airflow's) can wait that long.
    """

    def __init__(self, message: str, *, peer: str = "", operation: str = "", status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(message, peer=peer, operation=operation, status=status)
        self.retry_after = retry_after


class SessionExpired(RetriableConnectorError):
    """The peer refused our session token; logging in again and repeating the call is safe."""


class ExchangeNotRecorded(RetriableConnectorError):
    """A call was made, but its exchange could not be written to the exchange log (the bus database
    locked, full or unreachable). What the call did at the peer may have taken effect; its answer
    is not used, since nothing is trusted before it is recorded (design §4.4), so the caller holds
    the call as one whose outcome is unknown, as after a timeout (what it delivered stays pending
    or in flight and is reconciled or sent again by the next try). Never retried within the call;
    the task's retry comes later. The exchange it could not write is named in the log (ERROR)."""


class UnreadableAnswer(RetriableConnectorError):
    """A success's answer (2xx) could not be read at all: an empty body, bytes that are not text in
    its charset, JSON or XML that is not well formed (cut short, an HTML error page from a
    gateway), a PDF cut short. What a proxy or a peer under load gives now and then: the same
    request may well be answered properly next time, so it is retried like a 5xx, and a call that
    changes something is never taken as done or not done on its strength. An answer that *can* be read but breaks
    the peer's contract (a wrong shape or type, NaN, nesting too deep, too large), and a 3xx or
    4xx whose body does not read, are a :class:`ProtocolError`."""


class FatalConnectorError(ConnectorError):
    """Retrying will not help until someone changes configuration or the peer is fixed."""


class AuthenticationFailed(FatalConnectorError):
    """The peer refused our credentials."""


class ProtocolError(FatalConnectorError):
    """The peer's answer does not follow its contract (not JSON, missing keys, wrong types)."""


class ChecksumMismatch(ProtocolError):
    """A signed answer's checksum (the payment platform's ``MaXacThuc``) does not match: never trust
    the answer; dead-letter what depended on it."""


class UnsafeXml(ProtocolError):
    """An XML answer carries a DTD, an entity declaration or an external reference; refused unread."""


@dataclass(frozen=True)
class FieldError:
    """One broken rule on one field of one record.

    Attributes:
        field: the field's path as the record format spells it (``NgayTiepNhan``, ``fees[1].amount``).
        rule: a short machine-readable rule name (``required``, ``code_table``, ``max_length``...).
        message: a sentence for a person, naming the value that broke the rule where that is safe.
    """

    field: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message} [{self.rule}]"

    def as_dict(self) -> dict[str, str]:
        """``{field, rule, message}``: how dead letters and run summaries keep it."""
        return {"field": self.field, "rule": self.rule, "message": self.message}


class RecordRejected(IntegrationError):
    """One record cannot be delivered; dead-letter it and continue with the others.

    Attributes:
        record_key: the record's business key (a dossier code, a receipt number...).
        errors: every rule the record broke, one ``FieldError`` each.
    """

    def __init__(self, record_key: str, errors: list[FieldError] | tuple[FieldError, ...]):
        self.record_key = record_key
        self.errors = tuple(errors)
        detail = "; ".join(str(e) for e in self.errors) or "rejected"
        super().__init__(f"record {record_key}: {detail}")

    def error_dicts(self) -> list[dict[str, str]]:
        """Every broken rule as ``{field, rule, message}`` (dead letters, run summaries)."""
        return [e.as_dict() for e in self.errors]


class PeerRejected(RecordRejected):
    """The peer answered and refused this record for a reason tied to the record itself.

    Attributes:
        peer_code: the peer's own result code, as it sent it.
        peer_message: the peer's own message, as it sent it (Vietnamese for the national portal).
    """

    def __init__(self, record_key: str, errors, *, peer_code: str = "", peer_message: str = ""):
        super().__init__(record_key, errors)
        self.peer_code = peer_code
        self.peer_message = peer_message


class TransactionUnknown(PeerRejected):
    """The payment platform holds no transaction with this reference ("Không tìm thấy giao dịch")."""


class BillNotAvailable(PeerRejected):
    """The payment platform has no receipt (biên lai) for this transaction: it is not paid."""


class DuplicateReceipt(PeerRejected):
    """The ledger already holds this receipt number with different content.

    Attributes:
        fields: the names of the fields whose values differ, as the ledger listed them.
    """

    def __init__(self, record_key: str, errors, *, fields: tuple[str, ...] = (), peer_code: str = "",
                 peer_message: str = ""):
        super().__init__(record_key, errors, peer_code=peer_code, peer_message=peer_message)
        self.fields = tuple(fields)


class PaymentConflict(PeerRejected):
    """The peer already holds this payment as paid by another transaction (or a ``failed`` result
    would undo a payment): the fee is paid once and the result we carry is not applied.
    Its ``FieldError`` names ``transactionId`` (or ``result``) with rule ``paid_once``."""


class AmountMismatch(PeerRejected):
    """The amount of a payment result differs from the fee the payment request was opened for;
    nothing was applied. Its ``FieldError`` names ``amount`` with rule ``amount_equals_fee``."""


#: What no retry can fix: a task (Airflow's, or a step of the reliability harness) that ends on one
#: of these fails at once instead of being tried again.
NOT_RETRIED: tuple[type[IntegrationError], ...] = (FatalConnectorError, ConfigurationError, RecordRejected)
