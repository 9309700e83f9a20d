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
