"""The fast personal-span finder gives exactly the spans of the exact scanner (issue #8).

``commit_body`` uses ``_json_spans_fast``; the stored tokens, paths and commitments (hence every
leaf) must be what ``_json_spans`` gives, on any body: generated JSON of every shape, with
duplicate keys, escapes, non-ASCII text and whitespace, and broken or hostile variants of it.
"""

from __future__ import annotations

import json
import random

import pytest

from lienthong.audit import personal
from lienthong.audit.personal import COMMITTED_FIELDS, commit_body

_COMMITTED = sorted(COMMITTED_FIELDS)
_OTHER = ["MaHoSo", "seq", "items", "dossier", "files", "GhiChu", "status", "url", "actor", "x", "", "emai",
          "Email_", "note:Email", "dossierNo", "progress", "fees", "amount"]
_TEXTS = ["", "a", "Nguyễn Văn Anh", "0912345678", "nguyen.van.a@example.vn", 'quote " inside', "back\\slash",
          "line\nbreak", "tab\there", "ümlaut ß", "日本", "emoji 🙂", "Email", '"Email": "x"', "{[,]}", "\u212a"]
_NUMBERS = ["0", "-0", "1", "-12", "3.25", "1e9", "-2.5E-3", "123456789012345678901234567890", "0.0"]
_SPACES = ["", " ", "\n", "  ", "\t", "\r\n", "\n    "]


def _key(rng: random.Random) -> str:
    name = rng.choice(_COMMITTED) if rng.random() < 0.35 else rng.choice(_OTHER)
    roll = rng.random()
    if roll < 0.2:
        name = name.upper()
    elif roll < 0.3:
        name = name.title()
    return name


def _string(rng: random.Random, value: str, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)


def _value(rng: random.Random, depth: int, ascii_only: bool) -> str:
    ws = lambda: rng.choice(_SPACES)  # noqa: E731
    roll = rng.random()
    if depth < 5 and roll < 0.25:
        members = [f"{ws()}{_string(rng, _key(rng), ascii_only)}{ws()}:{ws()}{_value(rng, depth + 1, ascii_only)}"
                   for _ in range(rng.randrange(0, 6))]
        if members and rng.random() < 0.15:  # a repeated key
            members.append(members[rng.randrange(len(members))])
        return "{" + ",".join(members) + ws() + "}"
    if depth < 5 and roll < 0.4:
        return "[" + ",".join(ws() + _value(rng, depth + 1, ascii_only) + ws()
                              for _ in range(rng.randrange(0, 5))) + "]"
    if roll < 0.7:
        return _string(rng, rng.choice(_TEXTS), ascii_only)
    if roll < 0.9:
        return rng.choice(_NUMBERS)
    return rng.choice(["true", "false", "null"])


def _body(rng: random.Random) -> bytes:
    ascii_only = rng.random() < 0.3
    members = [f'"{_key(rng)}":{_value(rng, 1, ascii_only)}' for _ in range(rng.randrange(1, 8))]
    text = rng.choice(_SPACES) + "{" + ",".join(members) + "}" + rng.choice(_SPACES)
    if rng.random() < 0.1:
        text = "[" + text + "," + text + "]"
    return text.encode()


def _mutate(rng: random.Random, body: bytes) -> bytes:
    """A broken or hostile variant: cut, a byte changed, a constant or an escape put in."""
    roll = rng.random()
    at = rng.randrange(len(body) + 1)
    if roll < 0.2:
        return body[:at]
    if roll < 0.4:
        return body[:at] + bytes([rng.choice(b'{}[],:"\\ x0\xff\x01')]) + body[at + 1:]
    if roll < 0.5:
        return body.replace(b"1", b"NaN", 1)
    if roll < 0.6:
        return body.replace(b'"Email"', b'"Em\\u0061il"', 1).replace(b'"email"', b'"\\u0065mail"', 1)
    if roll < 0.7:
        return body.replace(b"a", b"\x07", 1)  # a raw control character (in a key or a value)
    if roll < 0.8:
        return body.replace(b"}", b",}", 1)
    if roll < 0.9:
        return body.replace(b'"x"', b'"\\u212a"', 1).replace(b"\\n", b"\\q", 1)
    return body + b" x"


def _outcome(scan, body: bytes):
    try:
        return scan(body)
    except (personal._NotJson, ValueError, RecursionError):  # what commit_body treats as "not JSON"
        return "refused"


@pytest.mark.parametrize("seed", range(8))
def test_fast_and_exact_scanners_give_identical_spans_on_generated_bodies(seed):
    rng = random.Random(seed)
    fast_paths = 0
    for _ in range(400):
        body = _body(rng)
        for candidate in (body, _mutate(rng, body), _mutate(rng, _mutate(rng, body))):
            exact = _outcome(personal._json_spans, candidate)
            assert _outcome(personal._json_spans_fast, candidate) == exact, candidate
            fast_paths += personal._fast_spans(candidate) is not None
    assert fast_paths > 400  # most well-formed bodies take the fast way (the comparison is not moot)


def test_fast_scanner_on_a_feed_page_shape_and_awkward_cases():
    dossier = {"dossierNo": "000.00.01.H49-261102-0042", "applicantName": "Công ty TNHH Mỹ Sơn",
               "applicantIdNo": "4000109882", "contactEmail": "a@b.vn", "contactTelNo": "0904968996",
               "address": "109 Phan Bội Châu", "files": [{"fileId": "f", "displayName": "Đơn.pdf"}],
               "ChuHoSo": {"HoTen": "Lê Văn Bình", "SoGiayTo": 1234, "DiaChi": ["a", {"x": "b"}], "Email": ""},
               "progress": [{"stepId": 1, "actor": "Đỗ Ngọc Cường", "note": "email: x@y.vn"}]}
    page = {"items": [{"seq": i, "dossier": dossier} for i in range(30)], "nextCursor": "c", "hasMore": True}
    for body in (json.dumps(page, ensure_ascii=False).encode(), json.dumps(page, indent=2).encode(),
                 json.dumps(page, ensure_ascii=False, separators=(",", ":")).encode()):
        spans = personal._fast_spans(body)
        assert spans is not None and spans == personal._json_spans(body)
        assert len(spans) == 30 * 9  # 5 scalars, HoTen, SoGiayTo, DiaChi/0, DiaChi/1/x (Email "" is blank)
    cases = [
        b"", b"   ", b"{}", b"[]", b'"Email"', b"12", b'{"Email": 1}', b'{"EMAIL": -0.5e3}', b'{"email": null}',
        b'{"Email": {"a": [1, {"b": "c"}, []]}}', b'{"a": {"Email": "x"}, "a": {"Email": "y"}}',
        b'{"a/b~c": {"phone": "1"}}', b'{"phone": "1"} {"phone": "2"}', b'{"phone": "1",}',
        b'{"phone": NaN}', b'{"phone": Infinity}', b'{"phone": 01}', b'{"phone": 1.}', b'{"phone": "\xff"}',
        b'{"ph\\u006fne": "1"}', b'{"\\u212aey": 1, "phone": "\\u00e9"}', b'\xef\xbb\xbf{"phone": "1"}',
        b'{"phone": "a\tb"}', b'{"phone": "bad \\x escape"}', b'{"ph\tone": "1"}',
        b"[" * 300 + b'{"phone": "1"}' + b"]" * 300, b'{"x": ' + b"[" * 250 + b"]" * 250 + b', "phone": 2}',
        # a repeated key whose copies hold committed keys: a dict would keep one copy, in the first's place
        b'{"a": [], "b": {"Email": "1"}, "a": {"Email": "1"}}', b'{"a": {"Email": "1"}, "b": 2, "a": {"Email": "1"}}',
        b'{"Email": "a", "Email": "b", "x": {"Email": "c", "Email": "c"}}',
        # a committed key written with an escape, before or after the same key written plainly
        b'{"\\u0045mail": "1", "Email": "2"}', b'{"Email": "1", "E\\u006dail": "2"}', '{"\u212aey": {"Email": 1}}'.encode(),
        # text that looks like a key inside strings and keys
        b'{"note": "\\"Email\\": \\"x\\"", "Email": "y"}', b'{"\\"email": 1, "email": 2}', b'{"a\\\\": {"email": 3}}',
        # committed keys holding containers, with committed keys and repeats inside
        b'{"ChuHoSo": {"HoTen": "A", "Email": {"x": ["1", 2, {"y": null}]}, "HoTen": "B"}, "Email": "c"}',
        b'{"ChuHoSo": {}, "Email": [], "DiaChi": [[]], "phone": {"a": {}}}', b'[{"phone": 1}, [{"Phone": [2, 3]}]]',
        b' \n{ "phone" :\t"1" , "x" : { "EMAIL"\r\n:\n-2.5e3 } }\n',
    ]
    for body in cases:
        assert _outcome(personal._json_spans_fast, body) == _outcome(personal._json_spans, body), body
    for body in cases[-6:]:  # well-formed: the fast way answers them itself
        assert personal._fast_spans(body) == personal._json_spans(body), body


def test_the_mentions_pre_check_is_unchanged():
    rng = random.Random(7)

    def old(body: bytes) -> bool:
        lowered = body.lower()
        return any(name.encode() in lowered for name in COMMITTED_FIELDS)

    bodies = [_body(rng) for _ in range(500)] + [n.encode() for n in _COMMITTED] + [b"", b"ema", b"PHON", b"xPaYeRx"]
    for body in bodies:
        assert personal._mentions(body) == old(body), body


def test_commit_body_uses_the_fast_scanner_and_keeps_the_leaf_inputs():
    body = json.dumps({"items": [{"dossier": {"applicantIdNo": "079", "contactEmail": "a@b.vn"}}] * 3},
                      ensure_ascii=False).encode()
    stored, fields = commit_body(body, "application/json", "response")
    assert [f.path for f in fields] == [f"/items/{i}/dossier/{k}" for i in range(3)
                                        for k in ("applicantIdNo", "contactEmail")]
    assert [f.value for f in fields] == [b'"079"', b'"a@b.vn"'] * 3
    assert personal.restore_body(stored, fields) == body
