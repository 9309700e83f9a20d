"""Client for a ministry's receipt ledger: SOAP 1.1 document/literal, driven by zeep.

The WSDL and XSD are read from ``fixtures/ledger/`` (never fetched from the peer) and the service is
bound to the configured address. The client owns what zeep leaves to its caller:

* hardened parsing: no DTD, no entity, no external fetch, no huge tree; an answer carrying one is
  refused unread (:class:`~connectors.errors.UnsafeXml`);
* an explicit ``operation_timeout`` (zeep's default is none; it bounds each socket read), a
  connect timeout, and a deadline for a whole attempt (``total_timeout``, default six times the
  operation timeout: a trickling answer cannot hold a call);
* one exchange-log record per SOAP attempt, written by the transport, with the WS-Security
  ``Password`` and ``Nonce`` replaced by ``***``, and so are the values of credential headers both
  ways (:data:`~connectors.transport.SECRET_HEADERS`: ``Set-Cookie``, ``WWW-Authenticate``...);
* SOAP faults turned into the error classes callers branch on, and retries of transient failures
  (a resubmitted receipt with the same content is answered ``unchanged``, so a retry is safe).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import zeep
import zeep.exceptions
from lxml import etree
from zeep.helpers import serialize_object
from zeep.wsse import utils as wsse_utils

from connectors.connection import ConnectionSpec, Secret
from connectors.errors import (
    AuthenticationFailed,
    ConfigurationError,
    DuplicateReceipt,
    FieldError,
    PeerRejected,
    PeerUnavailable,
    ProtocolError,
    RecordRejected,
    UnreadableAnswer,
    UnsafeXml,
)
from connectors.transport import (
    MAX_RESPONSE_BYTES,
    REDACTED,
    Exchange,
    ExchangeRecorder,
    NullRecorder,
    RetryPolicy,
    _peer_session,
    _sanitize_url,
    headers_for_log,
    read_capped,
    record_exchange,
    redirect_refused,
    request_by,
    server_error,
    total_timeout_for,
    transport_extra,
    transport_failure,
    wait_before_retry,
)

__all__ = [
    "DEFAULT_WSDL",
    "LEDGER_NS",
    "PEER",
    "RECEIPT_FIELDS",
    "LedgerTransport",
    "ReceiptInvalid",
    "ReceiptLedgerClient",
    "SubmitResult",
    "hardened_settings",
]

log = logging.getLogger(__name__)

PEER = "ministry_ledger"
LEDGER_NS = "urn:vn:gov:mof:receiptledger:v1"
BINDING = f"{{{LEDGER_NS}}}ReceiptLedgerSoapBinding"
DEFAULT_WSDL = Path(__file__).resolve().parents[2] / "fixtures" / "ledger" / "ReceiptLedger.wsdl"
RECEIPT_FIELDS = ("ReceiptNumber", "DossierCode", "PaymentReference", "AmountVND", "PaidAt", "PayerName",
                  "AgencyCode", "PdfSha256")
_PASSWORD_TEXT = ("http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
                  "#PasswordText")

# A SOAP message must not carry a document type declaration (SOAP 1.1 §3): refused before parsing.
_UNSAFE = re.compile(rb"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)
# A Password or Nonce cut short before its closing tag is blanked to the end of the body.
_SECRET_ELEMENTS = re.compile(rb"(<(?:[\w.-]+:)?(Password|Nonce)\b[^>]*>)(.*?)(</(?:[\w.-]+:)?\2\s*>|\Z)", re.DOTALL)
_FAULT_CODE = re.compile(rb"<(?:[\w.-]+:)?Code>([A-Za-z0-9_:.-]{1,64})</(?:[\w.-]+:)?Code>")
_XML_TYPES = ("text/xml", "application/soap+xml", "application/xml")


def hardened_settings() -> zeep.Settings:
    """zeep settings for answers from a peer: strict, no huge trees, no DTD, entity or external fetch."""
    return zeep.Settings(strict=True, xml_huge_tree=False, forbid_dtd=True, forbid_entities=True,
                         forbid_external=True)


def looks_unsafe(content: bytes) -> bool:
    """True when ``content`` declares a DTD or an entity (also in UTF-16/32, NUL bytes dropped)."""
    return bool(_UNSAFE.search(content) or (b"\x00" in content and _UNSAFE.search(content.replace(b"\x00", b""))))


#: Longest attribute value accepted in an answer: the ledger's answers carry only namespace
#: declarations; a long value is a parser-exhaustion attempt and is refused unread.
MAX_ATTRIBUTE_CHARS = 4096
_LONG_ATTRIBUTE = re.compile(rb"""=\s*(?:"[^"<]{%d,}|'[^'<]{%d,})"""
                             % (MAX_ATTRIBUTE_CHARS + 1, MAX_ATTRIBUTE_CHARS + 1))


def has_oversized_attribute(content: bytes) -> bool:
    """True when an attribute value in ``content`` is longer than :data:`MAX_ATTRIBUTE_CHARS` bytes
    (UTF-8; UTF-16/32 answers are checked with their NUL bytes dropped)."""
    return bool(_LONG_ATTRIBUTE.search(content)
                or (b"\x00" in content and _LONG_ATTRIBUTE.search(content.replace(b"\x00", b""))))


SOAP_ENVELOPE = "{http://schemas.xmlsoap.org/soap/envelope/}Envelope"
#: Reads an answer only to see that it is a SOAP 1.1 envelope (zeep reads it for its content, with
#: the same limits); DTDs and entities never reach it (:func:`looks_unsafe` refuses them first).
_ENVELOPE_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)


def soap_answer_problem(content: bytes) -> tuple[type[UnreadableAnswer | ProtocolError], str] | None:
    """What is wrong with a 200 answer as SOAP, or ``None``, never quoting the body:

    * ``UnreadableAnswer`` (it may read next time): XML that is not well formed (cut short, an HTML
      error page, bytes that are not text in its encoding), or whose root is not a SOAP 1.1
      ``Envelope``;
    * ``ProtocolError`` (the same answer every time): XML past libxml2's limits (nesting deeper
      than 256 levels, a text node over 10 MB), as JSON nested too deep is.

    A body that declares a DTD or an entity is left to zeep's hardened settings, which refuse it
    (``UnsafeXml``) even when the check before this one (:func:`looks_unsafe`) is missing."""
    if looks_unsafe(content):
        return None
    try:
        root = etree.fromstring(content, _ENVELOPE_PARSER)
    except etree.XMLSyntaxError as exc:
        line, column = exc.position
        if exc.code == etree.ErrorTypes.ERR_RESOURCE_LIMIT:
            return ProtocolError, f"the answer is past the XML parser's limits (line {line}, column {column})"
        return UnreadableAnswer, f"unreadable answer: not well-formed XML (line {line}, column {column})"
    if root.tag != SOAP_ENVELOPE:
        local = etree.QName(root).localname if isinstance(root.tag, str) else "?"
        return UnreadableAnswer, f"unreadable answer: not a SOAP envelope (its root is <{local[:40]}>)"
    return None


def redact_soap(body: bytes) -> bytes:
    """Replace the text of every ``Password`` and ``Nonce`` element with ``***`` (to the end of the
    body when it was cut short inside one)."""
    return _SECRET_ELEMENTS.sub(lambda m: m.group(1) + REDACTED.encode() + m.group(4), body)


@dataclass(frozen=True)
class SubmitResult:
    """The ledger's answer to ``SubmitReceipts``.

    Attributes:
        accepted: receipts stored now.
        unchanged: receipts already held with the same content (idempotent resubmission).
        statuses: ReceiptNumber → ``accepted`` or ``unchanged``.
    """

    accepted: int
    unchanged: int
    statuses: dict[str, str]


class ReceiptInvalid(PeerRejected):
    """The ledger refused a receipt with a ``ValidationFault`` naming its field and rule.

    Attributes:
        index: the receipt's 0-based position in the batch, as the ledger reported it.
    """

    def __init__(self, record_key: str, errors, *, index: int | None = None, peer_code: str = "",
                 peer_message: str = ""):
        super().__init__(record_key, errors, peer_code=peer_code, peer_message=peer_message)
        self.index = index


class _PasswordTextToken:
    """WS-Security UsernameToken with a PasswordText password, kept as a :class:`Secret` until sent."""

    def __init__(self, username: str, password: Secret):
        self.username = username
        self._password = password

    def apply(self, envelope: etree._Element, headers: dict[str, str]) -> tuple[etree._Element, dict[str, str]]:
        security = wsse_utils.get_security_header(envelope)
        token = wsse_utils.WSSE.UsernameToken()
        token.extend([wsse_utils.WSSE.Username(self.username),
                      wsse_utils.WSSE.Password(self._password.reveal(), Type=_PASSWORD_TEXT)])
        security.append(token)
        return envelope, headers

    def verify(self, envelope: etree._Element) -> None:
        return None

    def __repr__(self) -> str:
        return f"_PasswordTextToken({self.username!r}, Secret('***'))"


class LedgerTransport(zeep.Transport):
    """A zeep transport that times out, refuses unsafe XML, and records every attempt.

    The client names the operation, correlation keys and attempt number before each call
    (:meth:`begin`); :meth:`post` writes one :class:`~connectors.transport.Exchange` per attempt,
    whatever happens, before zeep parses the answer.

    Its session is the HTTP transport's kind (:func:`~connectors.transport._peer_session`): the
    proxy and CA bundle for ``base_url`` read from the environment once, ``trust_env`` off, so
    ``~/.netrc`` never adds an ``Authorization`` of its own (the UsernameToken is the credential),
    and redirects are never followed (a 3xx is a ``ProtocolError``: it would take the password
    elsewhere).
    """

    #: The check made on every answer before zeep parses it (zeep's hardened settings come second).
    refuse_unread = staticmethod(looks_unsafe)

    def __init__(self, *, recorder: ExchangeRecorder | None, connect_timeout: float, operation_timeout: float,
                 max_response_bytes: int = MAX_RESPONSE_BYTES, base_url: str = "", total_timeout: float | None = None):
        self._close_session = False  # zeep's __del__ reads it, also when the session cannot be made
        super().__init__(timeout=operation_timeout, operation_timeout=operation_timeout,
                         session=_peer_session(base_url))
        self.total_timeout = total_timeout_for(operation_timeout, total_timeout)
        self.recorder = recorder or NullRecorder()
        self.max_response_bytes = max_response_bytes
        self.connect_timeout = connect_timeout
        self._operation = "soap"
        self._keys: tuple[str, ...] = ()
        self._attempt = 1

    def begin(self, operation: str, keys: Iterable[str], attempt: int) -> None:
        self._operation, self._keys, self._attempt = operation, tuple(keys), attempt

    def load(self, url: str) -> bytes:
        """Only local files: the service description is never fetched from the network."""
        if urlsplit(str(url)).scheme in ("http", "https"):
            raise ConfigurationError(f"{PEER}: the WSDL and XSD are read from local files, not {url}")
        return super().load(url)

    def post(self, address: str, message: bytes | str, headers: dict[str, str]) -> requests.Response:
        body = message.encode("utf-8") if isinstance(message, str) else bytes(message)
        operation = self._operation
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        response: requests.Response | None = None
        error: Exception | None = None
        oversize = False
        deadline = time.monotonic() + self.total_timeout
        try:
            response = request_by(self.session, deadline, "POST", address, data=body, headers=headers,
                                  timeout=(self.connect_timeout, self.operation_timeout), stream=True,
                                  allow_redirects=False)  # a redirect would carry the password elsewhere
            oversize = read_capped(response, self.max_response_bytes, deadline)
        except (requests.RequestException, UnicodeError) as exc:
            response = None
            error = transport_failure(exc, peer=PEER, operation=operation, read_timeout=self.operation_timeout,
                                      total_timeout=self.total_timeout)
        duration_ms = (time.perf_counter() - t0) * 1000
        outcome, peer_code = "transport_error", None
        content = b""
        if response is not None:
            content = response.content
            status = response.status_code
            media = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            fault_code = _FAULT_CODE.search(content) if status == 500 and not oversize else None
            if oversize:
                outcome = "protocol_error"
                error = ProtocolError(f"{PEER} {operation}: answer larger than {self.max_response_bytes} bytes "
                                      f"(HTTP {status}); refused unread", peer=PEER, operation=operation,
                                      status=status)
            elif self.refuse_unread(content):
                outcome = "protocol_error"
                error = UnsafeXml(f"{PEER} {operation}: the answer carries a DTD or entity declaration; "
                                  "refused unread", peer=PEER, operation=operation, status=status)
            elif has_oversized_attribute(content):
                outcome = "protocol_error"
                error = UnsafeXml(f"{PEER} {operation}: the answer carries an attribute value longer than "
                                  f"{MAX_ATTRIBUTE_CHARS} characters; refused unread", peer=PEER, operation=operation,
                                  status=status)
            elif status == 200 and (problem := soap_answer_problem(content)) is not None:
                outcome = "protocol_error"
                kind, what = problem
                error = kind(f"{PEER} {operation}: {what} (HTTP {status})", peer=PEER, operation=operation,
                             status=status)
            elif status == 200:
                outcome = "ok"
            elif status == 500 and media in _XML_TYPES and b"Fault" in content:
                outcome = "peer_error"
                peer_code = fault_code.group(1).decode("ascii") if fault_code else None
            elif 300 <= status < 400:
                outcome = "protocol_error"
                error = redirect_refused(response, peer=PEER, operation=operation)
            else:
                outcome = "http_error"
                if status >= 500 or status == 429:
                    error = server_error(response, peer=PEER, operation=operation)
                elif status in (401, 403):  # refused before any SOAP: an HTTP gateway's own log-in check
                    error = AuthenticationFailed(f"{PEER} {operation}: HTTP {status} without a SOAP fault: the "
                                                 "ledger (or a gateway before it) refused our credentials; check the "
                                                 "connection's user and password", peer=PEER, operation=operation,
                                                 status=status)
        record_exchange(self.recorder, Exchange(
            peer=PEER,
            operation=operation,
            method="POST",
            url=_sanitize_url(address),
            started_at=started,
            duration_ms=round(duration_ms, 3),
            attempt=self._attempt,
            outcome=outcome,
            record_keys=self._keys,
            request_headers=headers_for_log({**self.session.headers, **headers}),
            request_body=redact_soap(body),
            response_status=response.status_code if response is not None else None,
            response_headers=headers_for_log(response.headers) if response is not None else {},
            response_body=redact_soap(content),
            peer_code=peer_code,
            error=f"{type(error).__name__}: {error}" if error else None,
        ))
        if error is not None:
            raise error
        assert response is not None
        return response


def _local(tag: Any) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def _fault_detail(fault: zeep.exceptions.Fault) -> tuple[str, dict[str, str]]:
    """The fault's detail element name and its children's texts (``("", {})`` when there is none)."""
    detail = fault.detail
    if not isinstance(detail, etree._Element):
        return "", {}
    element = next((c for c in detail if isinstance(c.tag, str)), None)
    if element is None:
        return "", {}
    return _local(element.tag), {_local(c.tag): (c.text or "") for c in element if isinstance(c.tag, str)}


#: Characters XML 1.0 cannot carry (C0 controls other than tab/LF/CR, surrogates, U+FFFE/U+FFFF).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _check_receipt(index: int, receipt: dict[str, Any]) -> None:
    """Local shape checks zeep needs to serialise a receipt (the ledger checks the content)."""
    number = str(receipt.get("ReceiptNumber") or f"#{index}")
    errors = [FieldError(name, "required", "is required") for name in RECEIPT_FIELDS if receipt.get(name) is None]
    amount = receipt.get("AmountVND")
    if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int)):
        errors.append(FieldError("AmountVND", "integer", "must be a whole number of VND"))
    paid = receipt.get("PaidAt")
    if paid is not None and (not isinstance(paid, datetime) or paid.tzinfo is None):
        errors.append(FieldError("PaidAt", "aware_datetime", "must be a timezone-aware datetime"))
    for name in RECEIPT_FIELDS:
        value = receipt.get(name)
        bad = _NOT_XML.search(value) if isinstance(value, str) else None
        if bad:  # lxml would refuse the whole envelope: the record is at fault, not the ledger
            errors.append(FieldError(name, "xml_character", f"holds U+{ord(bad.group()):04X} at position "
                                                            f"{bad.start()}, which XML cannot carry"))
    if errors:
        raise RecordRejected(number, errors)


class ReceiptLedgerClient:
    """Talks to a ministry receipt ledger over SOAP.

    Args:
        base_url: the ledger's address; the service is bound to ``<base_url>/``.
        username, password: the WS-Security UsernameToken (PasswordText); the password is a :class:`Secret`.
        recorder: the exchange log (one record per SOAP attempt, password and nonce redacted).
        wsdl: the local WSDL file (its XSD import is read next to it).
        connect_timeout, operation_timeout: seconds; both always set (``operation_timeout`` bounds
            each socket read).
        total_timeout: seconds a SOAP attempt may take whole (default six times ``operation_timeout``).
        retry: attempts for transient failures (timeouts, dropped connections, HTTP 5xx pages).
        sleep: waits between attempts; injectable for tests.
        seed: seeds the back-off jitter.
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: Secret,
        *,
        recorder: ExchangeRecorder | None = None,
        wsdl: str | Path = DEFAULT_WSDL,
        connect_timeout: float = 3.05,
        operation_timeout: float = 10.0,
        total_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ):
        if not username or not isinstance(password, Secret) or not password:
            raise ConfigurationError(f"{PEER}: a username and a password (Secret) are required")
        if operation_timeout is None or operation_timeout <= 0:
            raise ConfigurationError(f"{PEER}: operation_timeout must be a positive number of seconds")
        if urlsplit(str(wsdl)).scheme in ("http", "https"):
            raise ConfigurationError(f"{PEER}: the WSDL must be a local file, not {wsdl}")
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = random.Random(seed)
        self.transport = LedgerTransport(recorder=recorder, connect_timeout=connect_timeout,
                                         operation_timeout=operation_timeout, max_response_bytes=max_response_bytes,
                                         base_url=self.base_url, total_timeout=total_timeout)
        self.settings = hardened_settings()
        self.zeep = zeep.Client(wsdl=str(wsdl), transport=self.transport, settings=self.settings,
                                wsse=_PasswordTextToken(username, password))
        self.service = self.zeep.create_service(BINDING, self.base_url + "/")

    @classmethod
    def from_connection(cls, spec: ConnectionSpec, *, recorder: ExchangeRecorder | None = None
                        ) -> ReceiptLedgerClient:
        """Build from a connection: host/port → address, login/password → UsernameToken; extras
        ``operation_timeout``, ``connect_timeout``, ``total_timeout``, ``max_attempts``,
        ``max_response_bytes``, ``wsdl``."""
        spec.require("host", "login", "password")
        extra = spec.extra
        total = transport_extra(extra, "total_timeout", conn_id=spec.conn_id)
        return cls(
            spec.base_url,
            spec.login,
            spec.password,
            recorder=recorder,
            wsdl=extra.get("wsdl") or DEFAULT_WSDL,
            connect_timeout=float(transport_extra(extra, "connect_timeout", conn_id=spec.conn_id)),
            operation_timeout=float(transport_extra(extra, "read_timeout", conn_id=spec.conn_id,
                                                    key="operation_timeout")),
            total_timeout=None if total is None else float(total),
            retry=RetryPolicy(max_attempts=int(transport_extra(extra, "max_attempts", conn_id=spec.conn_id))),
            max_response_bytes=int(transport_extra(extra, "max_response_bytes", conn_id=spec.conn_id)),
        )

    def close(self) -> None:
        self.transport.session.close()

    # -- calls ---------------------------------------------------------------------------------
    def _call(self, operation: str, keys: Iterable[str], receipts: Sequence[dict[str, Any]] = (), **kwargs: Any
              ) -> Any:
        """Call ``operation``, retrying PeerUnavailable and unreadable answers with back-off (or the
        ledger's ``Retry-After``, up to ``retry.max_delay``; a longer one gives up at once); faults
        become error classes."""
        keys = tuple(dict.fromkeys(keys))
        attempts = max(1, self.retry.max_attempts)
        last: PeerUnavailable | UnreadableAnswer | None = None
        for attempt in range(1, attempts + 1):
            self.transport.begin(operation, keys, attempt)
            try:
                return getattr(self.service, operation)(**kwargs)
            except (PeerUnavailable, UnreadableAnswer) as exc:
                last = exc
            except (ProtocolError, ConfigurationError):  # UnsafeXml and oversized answers among them
                raise
            except zeep.exceptions.Fault as fault:
                mapped = self._from_fault(fault, operation, receipts)
                if not isinstance(mapped, PeerUnavailable):
                    raise mapped from None
                last = mapped  # a soap:Server fault without a known detail: transient
            except (zeep.exceptions.DTDForbidden, zeep.exceptions.EntitiesForbidden,
                    zeep.exceptions.ExternalReferenceForbidden) as exc:
                raise UnsafeXml(f"{PEER} {operation}: the answer was refused by the hardened parser "
                                f"({type(exc).__name__})", peer=PEER, operation=operation) from None
            except zeep.exceptions.TransportError as exc:
                if looks_unsafe(exc.content or b""):  # libxml2 refused it (entity amplification...)
                    raise UnsafeXml(f"{PEER} {operation}: the answer was refused by the hardened parser",
                                    peer=PEER, operation=operation, status=exc.status_code) from None
                if exc.status_code >= 500:
                    last = PeerUnavailable(f"{PEER} {operation}: HTTP {exc.status_code}", peer=PEER,
                                           operation=operation, status=exc.status_code)
                elif exc.status_code == 200:  # the transport's own check (soap_answer_problem) comes first
                    last = UnreadableAnswer(f"{PEER} {operation}: unreadable answer (HTTP 200)", peer=PEER,
                                            operation=operation, status=200)
                else:
                    raise ProtocolError(f"{PEER} {operation}: unreadable answer (HTTP {exc.status_code})",
                                        peer=PEER, operation=operation, status=exc.status_code) from None
            except (zeep.exceptions.Error, etree.LxmlError, ValueError) as exc:
                raise ProtocolError(f"{PEER} {operation}: the answer does not follow the WSDL "
                                    f"({type(exc).__name__})", peer=PEER, operation=operation) from None
            if attempt < attempts:
                delay = wait_before_retry(self.retry, attempt, self._rng, last)
                if delay is None:  # the ledger asked for a longer wait (Retry-After): the task's retry waits
                    log.warning("%s; more than the %gs this call waits: giving up now", last, self.retry.max_delay)
                    raise last
                log.warning("%s; retrying in %.2fs (attempt %d of %d)", last, delay, attempt + 1, attempts)
                self._sleep(delay)
        assert last is not None
        raise last

    def _from_fault(self, fault: zeep.exceptions.Fault, operation: str, receipts: Sequence[dict[str, Any]]
                    ) -> Exception:
        name, detail = _fault_detail(fault)
        code = detail.get("Code", "")
        message = detail.get("Message") or str(fault.message or "")
        numbers = [str(r.get("ReceiptNumber") or "") for r in receipts]
        if name == "ValidationFault":
            number = detail.get("ReceiptNumber", "")
            try:
                index: int | None = int(detail.get("Index", ""))
            except ValueError:
                index = None
            if not number and index is not None and 0 <= index < len(receipts):
                number = numbers[index]
            if receipts and number not in numbers:  # blaming one would dead-letter a receipt for nothing
                return self._names_no_receipt(operation, name, code, detail.get("ReceiptNumber", ""),
                                              detail.get("Index", ""), message)
            error = FieldError(detail.get("Field", ""), detail.get("Rule", ""), message)
            return ReceiptInvalid(number, [error], index=index, peer_code=code, peer_message=message)
        if name == "DuplicateReceiptFault" and receipts and detail.get("ReceiptNumber", "") not in numbers:
            return self._names_no_receipt(operation, name, code, detail.get("ReceiptNumber", ""), "", message)
        if name == "DuplicateReceiptFault":
            fields = tuple(f.strip() for f in detail.get("Fields", "").split(",") if f.strip())
            errors = [FieldError(f, "same_content", message) for f in fields] or [
                FieldError("ReceiptNumber", "same_content", message)]
            return DuplicateReceipt(detail.get("ReceiptNumber", ""), errors, fields=fields, peer_code=code,
                                    peer_message=message)
        if name == "AuthenticationFault":
            return AuthenticationFailed(f"{PEER} {operation} refused user '{self.username}': {message}",
                                        peer=PEER, operation=operation, status=500)
        if name == "RequestFault":
            return ProtocolError(f"{PEER} {operation} refused the request ({code}): {message}",
                                 peer=PEER, operation=operation, status=500)
        if (fault.code or "").endswith("Server"):
            return PeerUnavailable(f"{PEER} {operation}: server fault: {fault.message}", peer=PEER,
                                   operation=operation, status=500)
        return ProtocolError(f"{PEER} {operation}: unexpected fault {fault.code}: {fault.message}",
                             peer=PEER, operation=operation, status=500)

    @staticmethod
    def _names_no_receipt(operation: str, fault: str, code: str, number: str, index: str, message: str
                          ) -> ProtocolError:
        """A refusal of a batch that names none of its receipts (the ledger's faults name the
        receipt by ReceiptNumber and Index): no receipt of the batch can be blamed, so the batch
        is left as it was (nothing booked, nothing dead-lettered) and the step fails."""
        return ProtocolError(f"{PEER} {operation}: a {fault} ({code or 'no code'}) names no receipt of the batch "
                             f"(ReceiptNumber {number[:64]!r}, Index {index[:16]!r}): {message[:200]}",
                             peer=PEER, operation=operation, status=500)

    def submit_receipts(self, receipts: list[dict[str, Any]], *, record_keys: Iterable[str] = ()) -> SubmitResult:
        """``SubmitReceipts``: store a batch, all or nothing; same content again is ``unchanged``.

        Args:
            receipts: dicts with ReceiptNumber, DossierCode, PaymentReference, AmountVND (int),
                PaidAt (aware datetime), PayerName, AgencyCode, PdfSha256.
            record_keys: more correlation keys for the exchange log (the receipt numbers are added).

        Raises:
            RecordRejected: a receipt lacks a field or has the wrong type (nothing was sent).
            ReceiptInvalid: (a ``PeerRejected``) the ledger's ValidationFault: field, rule, index.
            DuplicateReceipt: the number is held with other content; ``fields`` names the differences.
            AuthenticationFailed: wrong user or password.
            ProtocolError: a RequestFault, a ValidationFault or DuplicateReceiptFault naming no receipt
                of the batch, or an answer that does not follow the WSDL.
            UnsafeXml: the answer carries a DTD or entity declaration.
            PeerUnavailable: timeouts, dropped connections or 5xx pages after every attempt.
        """
        if not receipts:
            raise ValueError("submit_receipts needs at least one receipt")
        for index, receipt in enumerate(receipts):
            _check_receipt(index, receipt)
        batch = [{name: receipt[name] for name in RECEIPT_FIELDS} for receipt in receipts]
        keys = [str(r["ReceiptNumber"]) for r in batch] + list(record_keys)
        answer = self._call("SubmitReceipts", keys, batch, Receipt=batch)
        try:
            statuses = {str(r.ReceiptNumber): str(r.Status) for r in (answer.Result or [])}
            return SubmitResult(accepted=int(answer.Accepted), unchanged=int(answer.Unchanged), statuses=statuses)
        except (AttributeError, TypeError, ValueError):
            raise ProtocolError(f"{PEER} SubmitReceipts: the answer lacks Accepted/Unchanged/Result",
                                peer=PEER, operation="SubmitReceipts") from None

    def get_receipt(self, receipt_number: str) -> dict[str, Any] | None:
        """``GetReceipt``: the held receipt (PaidAt an aware datetime), or ``None``."""
        answer = self._call("GetReceipt", [receipt_number], ReceiptNumber=receipt_number)
        return None if answer is None else _held_receipt(serialize_object(answer, dict), "GetReceipt")

    def list_receipts(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """``ListReceipts``: receipts with ``start <= PaidAt < end``, in arrival order."""
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("list_receipts needs timezone-aware datetimes")
        answer = self._call("ListReceipts", [], From=start, To=end)
        return [_held_receipt(serialize_object(r, dict), "ListReceipts") for r in (answer or [])]


def _held_receipt(value: Any, operation: str) -> dict[str, Any]:
    """A receipt from an answer, checked: zeep turns a value it cannot read (``AmountVND`` "many")
    into ``None`` with only a log line, so every field must be there with its type."""
    receipt = dict(value) if isinstance(value, dict) else {}
    number = receipt.get("ReceiptNumber")
    where = f"{PEER} {operation}" + (f" {number}" if isinstance(number, str) and len(number) <= 64 else "")
    for name in RECEIPT_FIELDS:
        if receipt.get(name) is None:
            raise ProtocolError(f"{where}: the answer's {name} is missing or not of its XSD type", peer=PEER,
                                operation=operation)
    amount, paid = receipt["AmountVND"], receipt["PaidAt"]
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise ProtocolError(f"{where}: the answer's AmountVND is not an integer", peer=PEER, operation=operation)
    if not isinstance(paid, datetime) or paid.tzinfo is None:
        raise ProtocolError(f"{where}: the answer's PaidAt is not a date-time with offset", peer=PEER,
                            operation=operation)
    return receipt
