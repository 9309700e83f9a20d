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
record's leaf (format 2 or 3) commits to the tokenised body and to every ``(side, path, kind,
commitment)``. The original bytes are the tokenised body with each token replaced by its value
(:func:`restore_body`); the recorded ``*_sha256`` is their :func:`wire_digest`. Redaction erases
salt and value: the leaf still verifies, the original can no longer be rebuilt.

The recorded digest of a body (:func:`wire_digest`). In leaf format 3 (rows with ``leaf_version``
3, everything recorded since) it is SHA-256(``"lienthong-wire/3" 0x00`` ‖ the salts of that
side's committed fields, in the order of their paths ‖ the bytes as on the wire) when the side has
a committed field, and the plain SHA-256 of the bytes when it has none (nothing to hide; it stays
comparable with a peer's). In formats 1 and 2 it is always the plain SHA-256 — with which anyone
holding the log could test guesses of an erased value (a 12-digit ID number is 10^12 hashes of the
stored body with the guess in its token's place): erasure did not erase. With the salts erased
(128 bits each), a format-3 digest cannot be recomputed from any guess.

Free text is not scanned: a phone number written inside a note (``GhiChu``) is masked in views
but not committed, so it cannot be erased without breaking the seal.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "COMMITTED_FIELDS",
    "NAME_FIELDS",
    "PERSONAL_FIELDS",
    "SALTED_DIGEST_SINCE",
    "PersonalField",
    "commit_body",
    "commitment",
    "restore_body",
    "token",
    "wire_digest",
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
_WIRE_DOMAIN = b"lienthong-wire/3\x00"
SALTED_DIGEST_SINCE = 3  # the first leaf format whose *_sha256 is salted (lienthong.audit.records)


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


def wire_digest(body: bytes, fields: Iterable[PersonalField], leaf_version: int | None = SALTED_DIGEST_SINCE) -> str:
    """The recorded ``*_sha256`` (hex) of a body as it went on the wire, ``fields`` being that
    side's committed personal fields: in leaf format 3 and later, when there is one, SHA-256 of
    ``"lienthong-wire/3" 0x00`` ‖ their salts (in the order of their paths) ‖ ``body``; otherwise
    (no field, or a row of leaf format 1 or 2: ``leaf_version`` NULL, 1 or 2) the plain SHA-256.

    Raises:
        ValueError: a field's salt is erased (redacted) or not 16 bytes: the digest cannot be
            recomputed.
    """
    if (leaf_version or 1) < SALTED_DIGEST_SINCE:
        return hashlib.sha256(body).hexdigest()
    ordered = sorted(fields, key=lambda f: f.path)
    if not ordered:
        return hashlib.sha256(body).hexdigest()
    digest = hashlib.sha256(_WIRE_DOMAIN)
    for f in ordered:
        if f.salt is None or len(f.salt) != SALT_BYTES:
            raise ValueError(f"the salt of the {f.side} field {f.path} is erased or malformed: "
                             "the body's digest cannot be recomputed")
        digest.update(f.salt)
    digest.update(body)
    return digest.hexdigest()


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


def _recorder(spans: list[tuple[str, int, int]]) -> Callable[[tuple[str, ...], int, int], None]:
    """What records a committed scalar's span into ``spans``, its path made unique."""
    seen: dict[str, int] = {}

    def record(path: tuple[str, ...], start: int, end: int) -> None:
        pointer = _pointer(path)
        seen[pointer] = seen.get(pointer, 0) + 1
        if seen[pointer] > 1:  # a key repeated in one object: keep paths unique
            pointer = f"{pointer}#{seen[pointer]}"
        spans.append((pointer, start, end))

    return record


_BLANK = (b'""', b"null", b"true", b"false")


def _walk(data: bytes, pos: int, path: tuple[str, ...], personal: bool,
          record: Callable[[tuple[str, ...], int, int], None]) -> int:
    """Tokenise the JSON value at ``pos``, recording every committed scalar that is not blank
    (all of them when ``personal``); its end."""
    pos = _WS.match(data, pos).end()
    if pos >= len(data):
        raise _NotJson
    c = data[pos]
    if c == 0x7B:  # {
        pos = _WS.match(data, pos + 1).end()
        if data[pos:pos + 1] == b"}":
            return pos + 1
        while True:
            m = _STRING.match(data, pos)
            if not m:
                raise _NotJson
            key = json.loads(m.group())
            pos = _WS.match(data, m.end()).end()
            if data[pos:pos + 1] != b":":
                raise _NotJson
            pos = _walk(data, pos + 1, (*path, key), personal or key.lower() in COMMITTED_FIELDS, record)
            pos = _WS.match(data, pos).end()
            sep = data[pos:pos + 1]
            if sep == b"}":
                return pos + 1
            if sep != b",":
                raise _NotJson
            pos = _WS.match(data, pos + 1).end()
    if c == 0x5B:  # [
        pos = _WS.match(data, pos + 1).end()
        if data[pos:pos + 1] == b"]":
            return pos + 1
        n = 0
        while True:
            pos = _WS.match(data, _walk(data, pos, (*path, str(n)), personal, record)).end()
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
    if personal and m.group() not in _BLANK:
        record(path, m.start(), m.end())
    return m.end()


def _json_spans(data: bytes) -> list[tuple[str, int, int]]:
    spans: list[tuple[str, int, int]] = []
    end = _walk(data, 0, (), False, _recorder(spans))
    if _WS.match(data, end).end() != len(data):
        raise _NotJson
    return spans


# -- JSON, fast: the same spans, with the json module's C parser doing the walking ----------------------
# The exact scanner above tokenises every byte in Python (about 25 ms for a 100 KB batch of 50
# dossiers, 0.4 s for a 2 MB change-feed page). This one lets the json module's C parser read
# the whole body once, into a tree that keeps every object's members in order, duplicates included
# (``object_pairs_hook=tuple``), and finds in it, in Python, each member whose key is committed: its
# path comes from the tree. Where its key stands in the bytes comes from one regular-expression pass
# over the lower-cased bytes; the k-th committed key of the tree is the k-th such place that is not
# inside a string. Its value is then walked there by the exact scanner's own walker (``_walk``). Any
# disagreement (a key spelled with an escape, a nesting deeper than the exact scanner's, anything the
# strict json module refuses) gives None and the caller asks the exact scanner; a test compares the
# two on many generated bodies.

#: Committed names that contain no other committed name: a text holds some committed name exactly
#: when it holds one of these.
_ATOMS = tuple(sorted(n for n in COMMITTED_FIELDS if not any(o != n and o in n for o in COMMITTED_FIELDS)))
_ATOMS_BYTES = tuple(a.encode() for a in _ATOMS)


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


#: A committed name as a JSON key, in lower-cased bytes (the names are ASCII); the match ends after
#: the colon and the white space that follows it, where the member's value starts.
_KEY_CANDIDATE = re.compile(('"(' + _trie(COMMITTED_FIELDS) + ')"[ \t\r\n]*:[ \t\r\n]*').encode())
#: Deeper bodies go to the exact scanner (whose recursion, not this one's, decides what they give).
_FAST_MAX_DEPTH = 200


def _refuse_constant(name: str) -> Any:
    raise _NotJson(name)  # NaN, Infinity: not JSON, and not what the exact scanner accepts


#: The strict C parser, objects as tuples of (key, value) pairs in order: nothing merged or lost.
_SCAN_ORDERED = json.JSONDecoder(object_pairs_hook=tuple, parse_constant=_refuse_constant).scan_once


def _json_spans_fast(data: bytes) -> list[tuple[str, int, int]]:
    """:func:`_json_spans`, faster on large bodies (same result, same exceptions)."""
    spans = _fast_spans(data)
    return _json_spans(data) if spans is None else spans


#: Keys seen before, and whether each is committed (the same few dozen names recur in every body).
_KEY_IS_COMMITTED: dict[str, bool] = {}


def _committed_members(tree: Any) -> list[tuple[tuple[str, ...], str, bool]]:
    """``(path, key, holds a container)`` of every member whose key is committed, in document order,
    not looking inside their values (every scalar there is committed anyway)."""
    found: list[tuple[tuple[str, ...], str, bool]] = []
    known = _KEY_IS_COMMITTED
    if len(known) > 4096:
        known.clear()

    def walk(node: Any, path: tuple[str, ...], depth: int) -> None:
        if depth > _FAST_MAX_DEPTH:
            raise _NotJson
        if type(node) is tuple:  # an object: its (key, value) pairs
            for key, value in node:
                kind = type(value)
                committed = known.get(key)
                if committed is None:
                    committed = known[key] = key.lower() in COMMITTED_FIELDS
                if committed:
                    found.append(((*path, key), key, kind is tuple or kind is list))
                elif kind is tuple or kind is list:
                    walk(value, (*path, key), depth + 1)
        else:  # an array
            for i, value in enumerate(node):
                kind = type(value)
                if kind is tuple or kind is list:
                    walk(value, (*path, str(i)), depth + 1)

    kind = type(tree)
    if kind is tuple or kind is list:
        walk(tree, (), 1)
    return found


def _fast_spans(data: bytes) -> list[tuple[str, int, int]] | None:
    """The spans of :func:`_json_spans`, or None when unsure (the caller then asks the exact one)."""
    try:
        text = data.decode("utf-8")
        tree, end = _SCAN_ORDERED(text, len(text) - len(text.lstrip(" \t\r\n")))
        if text[end:].lstrip(" \t\r\n"):
            return None  # something after the value: not one JSON body
        members = _committed_members(tree)
    except (_NotJson, ValueError, IndexError, StopIteration, RecursionError):
        return None
    spans: list[tuple[str, int, int]] = []
    if not members:
        return spans
    record = _recorder(spans)
    places = _KEY_CANDIDATE.finditer(data.lower())
    inside = 0  # places before this offset lie in a value already walked
    try:
        for path, key, container in members:
            while True:  # the next place that is a key: in valid JSON, a quote after a backslash is text
                place = next(places)
                at = place.start()
                if at >= inside and data[at - 1] != 0x5C:
                    break
            raw = key.encode()
            if data[at + 1:at + 1 + len(raw)] != raw or data[at + 1 + len(raw)] != 0x22:
                return None  # the key is spelled otherwise in the bytes (an escape, the Kelvin sign)
            pos = place.end()
            if (data[pos] in b"{[") != container:
                return None
            inside = _walk(data, pos, path, True, record)  # the value, every scalar in it committed
        for place in places:  # a key left over that the tree does not hold: unsure
            if place.start() >= inside and data[place.start() - 1] != 0x5C:
                return None
    except (StopIteration, IndexError, RecursionError, _NotJson):
        return None
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
