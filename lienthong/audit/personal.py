"""Personal fields in exchange bodies: which they are, and their salted commitments (issue #6).

One declared list says which fields are personal. :data:`PERSONAL_FIELDS` (ID numbers, phone
numbers, e-mails, tax codes) are masked in ``audit show`` views *and* committed; :data:`NAME_FIELDS`
(names and addresses of applicants and payers) are committed only (a view must still say who). A
test keeps every field the mappings mark ``personal: true`` in these lists. :data:`COMMITTED_FIELDS`
is their union. Names compare case-insensitively; when a committed field holds an object or a list
(``ChuHoSo: {HoTen, SoGiayTo...}``) every scalar inside it is committed.

At record time :func:`commit_body` replaces, in the body bytes as they went on the wire, each
personal value by a token that names its commitment, and returns the fields:

* JSON (``application/json``, or a body starting with ``{``/``[``): the exact bytes of a scalar
  value (string with its quotes, or number) become ``"lt-pf:<commitment>"`` (kind ``json``; the
  body stays valid JSON). Paths are JSON pointers (RFC 6901): ``/ChuHoSo/SoDienThoai``.
* SOAP/XML (``*xml``, or a body starting with ``<``): the text of an element whose local name is
  committed (``<ns:SoCCCD>001095012345</ns:SoCCCD>``) becomes ``lt-pf:<commitment>`` (kind
  ``xml``); paths are ``xml:<LocalName>[n]`` (n-th occurrence, from 1). Elements with child
  elements are not descended into (only text-only elements are committed).

``commitment`` = SHA-256(``"lienthong-pf/1" 0x00`` ‖ salt (16 random bytes) ‖ uint32-BE length
of the UTF-8 path ‖ path ‖ the exact value bytes), in hex. The exchange-log row stores the
tokenised body; ``exchange_personal_field`` stores path, kind, commitment, salt and value, and the
record's leaf (format 2) commits to the tokenised body and to every ``(side, path, kind,
commitment)``. The original bytes are the tokenised body with each token replaced by its value
(:func:`restore_body`); their SHA-256 is the recorded ``*_sha256``. Redaction erases salt and
value: the leaf still verifies, the original can no longer be rebuilt.

Free text is not scanned: a phone number written inside a note (``GhiChu``) is masked in views
but not committed, so it cannot be erased without breaking the seal.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from connectors.transport import json_within_depth

__all__ = [
    "COMMITTED_FIELDS",
    "NAME_FIELDS",
    "PERSONAL_FIELDS",
    "PersonalField",
    "commit_body",
    "commitment",
    "restore_body",
    "token",
]

# masked in views and committed (compared case-insensitively)
PERSONAL_FIELDS = frozenset(name.lower() for name in (
    "SoGiayToChuHoSo", "SoDinhDanh", "SoDienThoai", "Email", "applicantIdNo", "contactTelNo", "contactEmail",
    "SoCMND", "CMND", "SoCCCD", "CCCD", "SoGiayTo", "SoDienThoaiChuHoSo", "DienThoai", "EmailChuHoSo",
    "DiaChiEmail", "SoDienThoaiNguoiNop", "EmailNguoiNop", "SoGiayToNguoiNop", "applicantTelNo",
    "applicantEmail", "idNumber", "phone", "phoneNumber", "mobile", "email_address",
    "MaSoThue", "MaSoThueNguoiNop", "taxCode", "payerTaxCode", "payerIdNo", "payerPhone", "payerEmail",
    "SoDienThoaiNguoiNhan", "EmailNguoiNhan", "id_no",
))
# committed (erasable) but shown: names and addresses of applicants and payers
NAME_FIELDS = frozenset(name.lower() for name in (
    "ChuHoSo", "HoTenChuHoSo", "TenChuHoSo", "HoTenNguoiNop", "TenNguoiNop", "NguoiNop", "HoTenNguoiNhan",
    "PayerName", "payer_name", "payer", "applicantName", "applicant_name", "fullName", "HoTen",
    "address", "DiaChi", "DiaChiChuHoSo", "DiaChiNguoiNop", "DiaChiThuongTru",
))
COMMITTED_FIELDS = PERSONAL_FIELDS | NAME_FIELDS

SALT_BYTES = 16
TOKEN_PREFIX = b"lt-pf:"
_DOMAIN = b"lienthong-pf/1\x00"


@dataclass(frozen=True)
class PersonalField:
    side: str
    path: str
    kind: str  # json | xml
    commitment: str
    salt: bytes | None = None  # None once redacted
    value: bytes | None = None


def commitment(salt: bytes, path: str, value: bytes) -> str:
    """SHA-256(domain ‖ salt ‖ len(path) ‖ path ‖ value), hex."""
    p = path.encode()
    return hashlib.sha256(_DOMAIN + salt + struct.pack(">I", len(p)) + p + value).hexdigest()


def token(kind: str, commitment_hex: str) -> bytes:
    """The bytes standing for a committed value in the stored body."""
    bare = TOKEN_PREFIX + commitment_hex.encode()
    return b'"' + bare + b'"' if kind == "json" else bare


# -- JSON: the byte span of every committed scalar -------------------------------------------------
_WS = re.compile(rb"[ \t\r\n]*")
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_SCALAR = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null")


class _NotJson(Exception):
    pass


def _pointer(parts: tuple[str, ...]) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def _json_spans(data: bytes) -> list[tuple[str, int, int]]:
    spans: list[tuple[str, int, int]] = []
    seen: dict[str, int] = {}

    def ws(pos: int) -> int:
        return _WS.match(data, pos).end()

    def value(pos: int, path: tuple[str, ...], personal: bool) -> int:
        pos = ws(pos)
        if pos >= len(data):
            raise _NotJson
        c = data[pos]
        if c == 0x7B:  # {
            pos = ws(pos + 1)
            if data[pos:pos + 1] == b"}":
                return pos + 1
            while True:
                m = _STRING.match(data, pos)
                if not m:
                    raise _NotJson
                key = json.loads(m.group())
                pos = ws(m.end())
                if data[pos:pos + 1] != b":":
                    raise _NotJson
                pos = value(pos + 1, (*path, key), personal or key.lower() in COMMITTED_FIELDS)
                pos = ws(pos)
                sep = data[pos:pos + 1]
                if sep == b"}":
                    return pos + 1
                if sep != b",":
                    raise _NotJson
                pos = ws(pos + 1)
        if c == 0x5B:  # [
            pos = ws(pos + 1)
            if data[pos:pos + 1] == b"]":
                return pos + 1
            n = 0
            while True:
                pos = ws(value(pos, (*path, str(n)), personal))
                n += 1
                sep = data[pos:pos + 1]
                if sep == b"]":
                    return pos + 1
                if sep != b",":
                    raise _NotJson
                pos += 1
        m = _STRING.match(data, pos) if c == 0x22 else _SCALAR.match(data, pos)
        if not m:
            raise _NotJson
        raw = m.group()
        if personal and raw not in (b'""', b"null", b"true", b"false"):
            pointer = _pointer(path)
            seen[pointer] = seen.get(pointer, 0) + 1
            if seen[pointer] > 1:  # a key repeated in one object: keep paths unique
                pointer = f"{pointer}#{seen[pointer]}"
            spans.append((pointer, m.start(), m.end()))
        return m.end()

    end = value(0, (), False)
    if ws(end) != len(data):
        raise _NotJson
    return spans


# -- JSON, fast: the same spans, walking only the subtrees that name a committed field ----------------
# The exact scanner above tokenises every byte in Python (about half a second for a 2 MB change-feed
# page). This one lets the json module's C scanner validate and skip every subtree that does not
# mention a committed name, and walks the others key by key. It gives the exact scanner's spans or,
# whenever it is unsure (not UTF-8, an ASCII letter written as an escape, lower-casing that moves
# offsets, deep nesting, anything the strict json module refuses), defers to it; a test compares the
# two on many generated bodies.

#: Committed names that contain no other committed name: a text holds some committed name exactly
#: when it holds one of these.
_ATOMS = tuple(sorted(n for n in COMMITTED_FIELDS if not any(o != n and o in n for o in COMMITTED_FIELDS)))
_ATOMS_BYTES = tuple(a.encode() for a in _ATOMS)
#: Escapes that could spell a committed name in a key: ASCII 0x40-0x7F (letters, ``_``) and the
#: Kelvin sign (the one non-ASCII character whose lower case is ASCII: ``"\u212a".lower() == "k"``).
_LETTER_ESCAPE = re.compile(r"\\u(?:00[4-7][0-9a-fA-F]|212[aA])")


def _trie(words: Iterable[str]) -> str:
    """A regular expression matching exactly ``words``, as a trie (one branch per first letter,
    and so on), which ``re`` runs several times faster than a flat alternation."""
    root: dict[str, dict] = {}
    for word in words:
        node = root
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict[str, dict]) -> str:
        branches = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        alternation = "(?:" + "|".join(branches) + ")"
        return alternation + "?" if "" in node else alternation

    return emit(root)


#: A committed name as a JSON key, in lower-cased text.
_KEY_CANDIDATE = re.compile('"' + _trie(COMMITTED_FIELDS) + '"[ \t\r\n]*:')
_WS_TEXT = re.compile(r"[ \t\r\n]*")
#: Object members with a scalar value, each followed by a comma (in text already known to be JSON).
_FLAT_MEMBERS = re.compile(
    r'(?:"[^"\\]*(?:\\.[^"\\]*)*"[ \t\r\n]*:[ \t\r\n]*'
    r'(?:"[^"\\]*(?:\\.[^"\\]*)*"|[-0-9.eE+]+|true|false|null)[ \t\r\n]*,[ \t\r\n]*)*')
_NUMBER_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
#: A candidate key this close ahead (characters) is taken to be inside the container that starts here.
_NEAR = 1024
#: Deeper bodies go to the exact scanner (whose recursion, not this one's, decides what they give).
_FAST_MAX_DEPTH = 200


def _refuse_constant(name: str) -> Any:
    raise _NotJson(name)  # NaN, Infinity: not JSON, and not what the exact scanner accepts


_LITERALS = ("true", "false", "null")


def _json_spans_fast(data: bytes) -> list[tuple[str, int, int]]:
    """:func:`_json_spans`, faster on large bodies (same result, same exceptions)."""
    spans = _fast_spans(data)
    return _json_spans(data) if spans is None else spans


def _fast_spans(data: bytes) -> list[tuple[str, int, int]] | None:  # noqa: C901 (one walker, kept whole)
    """The spans of :func:`_json_spans`, or None when unsure (the caller then asks the exact one)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lowered = text.lower()
    if (len(lowered) != len(text) or _LETTER_ESCAPE.search(text)
            or not json_within_depth(data, _FAST_MAX_DEPTH)):
        return None
    # where a committed name may stand as a key (a superset: also inside strings)
    candidates = [m.start() for m in _KEY_CANDIDATE.finditer(lowered)]
    spans: list[tuple[str, int, int]] = []
    seen: dict[str, int] = {}
    scan_once = json.JSONDecoder(parse_constant=_refuse_constant).scan_once  # strict; (value, end)
    ws = _WS_TEXT.match
    scanstring = json.decoder.scanstring
    number = _NUMBER_TEXT.match
    committed = COMMITTED_FIELDS

    def record(path: tuple[str, ...], start: int, end: int) -> None:
        pointer = _pointer(path)
        seen[pointer] = seen.get(pointer, 0) + 1
        if seen[pointer] > 1:  # a key repeated in one object: keep paths unique
            pointer = f"{pointer}#{seen[pointer]}"
        spans.append((pointer, start, end))

    def scalar(pos: int) -> tuple[int, bool]:
        """End of the scalar at ``pos``, and whether it is blank (``""``, true, false, null)."""
        c = text[pos]
        if c == '"':
            end = scanstring(text, pos + 1)[1]
            return end, end == pos + 2
        m = number(text, pos)
        if m:
            return m.end(), False
        for literal in _LITERALS:
            if text.startswith(literal, pos):
                return pos + len(literal), True
        raise _NotJson

    def value(pos: int, path: tuple[str, ...], personal: bool, root: bool = False) -> int:
        c = text[pos]
        if c != "{" and c != "[":
            end, blank = scalar(pos)
            if personal and not blank:
                record(path, pos, end)
            return end
        if not personal and not root:
            # Skip the subtree (its end found by the C scanner) unless it may hold a committed key;
            # with a candidate close ahead, walk into it at once (walking is always right, only slower).
            i = bisect_left(candidates, pos)
            if i == len(candidates) or candidates[i] - pos > _NEAR:
                end = scan_once(text, pos)[1]
                if i == len(candidates) or candidates[i] >= end:
                    return end
        pos = ws(text, pos + 1).end()
        if c == "[":
            if text[pos] == "]":
                return pos + 1
            n = 0
            while True:
                pos = ws(text, value(pos, (*path, str(n)), personal)).end()
                n += 1
                sep = text[pos]
                if sep == "]":
                    return pos + 1
                if sep != ",":
                    raise _NotJson
                pos = ws(text, pos + 1).end()
        if text[pos] == "}":
            return pos + 1
        at = bisect_left(candidates, pos)
        while True:
            if not personal:  # members with scalar values before the next candidate key: skipped whole
                while at < len(candidates) and candidates[at] < pos:
                    at += 1
                pos = _FLAT_MEMBERS.match(text, pos, candidates[at] if at < len(candidates) else len(text)).end()
            if text[pos] != '"':
                raise _NotJson
            key, pos = scanstring(text, pos + 1)
            pos = ws(text, pos).end()
            if text[pos] != ":":
                raise _NotJson
            pos = ws(text, pos + 1).end()
            inner = personal or key.lower() in committed
            if inner or text[pos] in "{[":
                pos = value(pos, (*path, key), inner)
            else:
                pos = scalar(pos)[0]
            pos = ws(text, pos).end()
            sep = text[pos]
            if sep == "}":
                return pos + 1
            if sep != ",":
                raise _NotJson
            pos = ws(text, pos + 1).end()

    try:
        start = ws(text, 0).end()
        scan_once(text, start)  # the whole body is strict JSON: members may then be skipped by pattern
        end = ws(text, value(start, (), False, root=True)).end()
    except (_NotJson, ValueError, IndexError, StopIteration, RecursionError):
        return None
    if end != len(text):
        return None
    if spans and not text.isascii():  # character offsets → byte offsets, in one pass
        converted = []
        at_char = at_byte = 0
        for pointer, start, stop in spans:
            start_byte = at_byte + len(text[at_char:start].encode())
            at_byte = start_byte + len(text[start:stop].encode())
            at_char = stop
            converted.append((pointer, start_byte, at_byte))
        spans = converted
    return spans


# -- XML: text-only elements with a committed local name --------------------------------------------
_XML_ELEMENT = re.compile(
    rb"<((?:[A-Za-z_][\w.-]*:)?)([A-Za-z_][\w.-]*)(\s[^<>]*)?>([^<]+)</\1\2\s*>")


def _xml_spans(data: bytes) -> list[tuple[str, int, int]]:
    spans: list[tuple[str, int, int]] = []
    seen: dict[str, int] = {}
    for m in _XML_ELEMENT.finditer(data):
        if (m.group(3) or b"").rstrip().endswith(b"/"):
            continue
        try:
            name = m.group(2).decode("ascii")
        except UnicodeDecodeError:
            continue
        if name.lower() not in COMMITTED_FIELDS or not m.group(4).strip():
            continue
        seen[name] = seen.get(name, 0) + 1
        spans.append((f"xml:{name}[{seen[name]}]", m.start(4), m.end(4)))
    return spans


def _kind(body: bytes, content_type: str | None) -> str | None:
    ct = (content_type or "").lower()
    if "json" in ct:
        return "json"
    if "xml" in ct:
        return "xml"
    head = body[:64].lstrip()
    if head[:1] in (b"{", b"["):
        return "json"
    if head[:1] == b"<":
        return "xml"
    return None


def _mentions(body: bytes) -> bool:
    """Cheap pre-check: does any committed name occur in the body at all?"""
    lowered = body.lower()
    return any(atom in lowered for atom in _ATOMS_BYTES)


def commit_body(body: bytes, content_type: str | None, side: str) -> tuple[bytes, list[PersonalField]]:
    """The body with its personal values tokenised, and the fields (with salts and values)."""
    if not body:
        return body, []
    kind = _kind(body, content_type)
    if kind is None or not _mentions(body):
        return body, []
    try:
        spans = _json_spans_fast(body) if kind == "json" else _xml_spans(body)
    except (_NotJson, ValueError, RecursionError):
        return body, []
    if not spans:
        return body, []
    out: list[bytes] = []
    fields: list[PersonalField] = []
    at = 0
    for path, start, end in spans:
        value = body[start:end]
        salt = os.urandom(SALT_BYTES)
        c = commitment(salt, path, value)
        out += [body[at:start], token(kind, c)]
        at = end
        fields.append(PersonalField(side, path, kind, c, salt, value))
    out.append(body[at:])
    return b"".join(out), fields


def restore_body(stored: bytes, fields: Iterable[PersonalField], placeholder: bytes | None = None) -> bytes:
    """The body as it went on the wire: each token replaced by its value; a redacted field by
    ``placeholder`` (``"[redacted]"`` in JSON, ``[redacted]`` in XML, when None)."""
    for f in fields:
        if f.value is not None:
            replacement = f.value
        elif placeholder is not None:
            replacement = placeholder
        else:
            replacement = b'"[redacted]"' if f.kind == "json" else b"[redacted]"
        stored = stored.replace(token(f.kind, f.commitment), replacement, 1)
    return stored
