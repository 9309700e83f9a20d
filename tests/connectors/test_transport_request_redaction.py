"""Request bodies are redacted for the exchange log without being decoded again (issue #8), with
exactly the result of the general redaction."""

from __future__ import annotations

import json
import random

from connectors.transport import REDACTED, _redact_body, _redact_request

KEYS = frozenset({"password", "session"})
_VALUES = ["x", 'q"uote', '"session":"s"', "\\", "Nguyễn", 1, None, [1, {"session": "nested"}], {"a": "b"},
           {"password": 1}, '\\"session\\":', "***"]
_ENDINGS = ["", '"', "\\", "é"]
_KEYS = ["session", "madonvi", "service", "data", "password", "x", 'a"session', "session\\", "Session"]


def _encode(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def test_request_redaction_equals_the_general_one_on_generated_envelopes():
    rng = random.Random(8)
    spliced = 0
    for i in range(5000):
        envelope = {}
        for key in rng.sample(_KEYS, rng.randrange(1, 7)):
            secret = key in ("session", "password") and rng.random() < 0.8
            envelope[key] = f"tok{i}" + rng.choice(_ENDINGS) if secret else rng.choice(_VALUES)
        body = _encode(envelope)
        assert _redact_request(body, envelope, KEYS) == _redact_body(body, KEYS), body
        spliced += b'"session":"tok' in body and b'"session":"***"' in _redact_request(body, envelope, KEYS)
    assert spliced > 1000


def test_secrets_anywhere_are_still_blanked():
    envelope = {"session": "s3cr3t", "service": "DongBoHoSoMC",
                "data": [{"MaHoSo": "1", "session": "inner", "x": {"password": "p"}}]}
    logged = _redact_request(_encode(envelope), envelope, KEYS)
    assert b"s3cr3t" not in logged and b"inner" not in logged and b'"p"' not in logged
    assert json.loads(logged)["data"][0]["x"]["password"] == REDACTED
    for odd in ({"session": 12}, {"session": None}, ["session"], "session", {}):
        assert _redact_request(_encode(odd), odd, KEYS) == _redact_body(_encode(odd), KEYS)
    assert _redact_request(b"", None, KEYS) == b""


def test_answers_that_cannot_hold_a_secret_key_are_kept_as_sent():
    """An answer in which no secret key can occur is logged as its bytes, not re-encoded; every
    answer that could hold one (as text, spelled with \\u escapes, or in UTF-16/32) is blanked."""
    raw = b'{ "MATTHC" : "1.00309",\n "TENTTHC": "C\\u1ea5p gi\\u1ea5y", "sessions_left": 1 }'
    assert _redact_body(raw, frozenset({"password"})) == raw  # kept byte for byte
    hidden = [
        b'{"sess\\u0069on":"tok-SECRET"}',
        b'{"\\u0073\\u0065\\u0073\\u0073\\u0069\\u006f\\u006e":"tok-SECRET"}',
        json.dumps({"session": "tok-SECRET"}).encode("utf-16"),
        json.dumps({"a": [{"password": "tok-SECRET"}]}).encode("utf-32"),
        b'{"a":{"session":"tok-SECRET"}}',
    ]
    for body in hidden:
        logged = _redact_body(body, KEYS)
        assert b"SECRET" not in logged and "SECRET" not in logged.decode("utf-8", "replace"), body
        assert REDACTED.encode() in logged, body


def test_redaction_verdicts_equal_the_decoding_way_on_generated_answers():
    """Whichever way an answer takes (kept as sent, or decoded and blanked), it means what the
    answer with every secret key blanked means."""
    rng = random.Random(81)
    kept = 0
    pieces = ['"MaHoSo"', '"session"', '"sess\\u0069on"', '"Nguy\\u1ec5n"', '"Nguyễn"', '"pass"', '"word"',
              '"x"', "1", "null", '"\\\\u0073"']
    for _ in range(3000):
        members = [f'{rng.choice(pieces)}:{rng.choice(pieces)}' for _ in range(rng.randrange(0, 5))]
        text = "{" + ",".join(members) + "}"
        try:
            decoded = json.loads(text)
        except ValueError:
            continue
        body = text.encode()
        logged = _redact_body(body, KEYS)
        expected = json.dumps(_blank(decoded), ensure_ascii=False, separators=(",", ":")).encode()
        assert json.loads(logged) == json.loads(expected), text
        kept += logged == body
    assert kept > 300  # the fast way was taken, not only the decoding one


def _blank(value):
    if isinstance(value, dict):
        return {k: REDACTED if k in KEYS else _blank(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_blank(v) for v in value]
    return value
