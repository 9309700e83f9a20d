"""The JSON depth limit of answers: the text pre-check agrees with the exact walk (issue #8)."""

from __future__ import annotations

import json
import random

import pytest

from connectors.errors import ProtocolError
from connectors.transport import _too_deep, json_within_depth, parse_json

_SCALARS = [1, 'a"b\\', "x{[", None, True, -1.5e3, '\\\\"', "đ", "\\", "]}"]


def _value(rng: random.Random, depth: int):
    if depth == 0 or rng.random() < 0.2:
        return rng.choice(_SCALARS)
    if rng.random() < 0.5:
        return [_value(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return {f'k{i}"{{\\': _value(rng, depth - 1) for i in range(rng.randint(0, 3))}


def test_the_text_precheck_never_disagrees_with_the_exact_walk():
    rng = random.Random(8)
    checked = quick = 0
    for _ in range(3000):
        value = _value(rng, rng.randint(1, 12))
        if not isinstance(value, (dict, list)):
            continue
        for indent in (None, 2):
            text = json.dumps(value, ensure_ascii=rng.random() < 0.5, indent=indent)
            for limit in (1, 2, 3, 5, 8, 64):
                exact = _too_deep(json.loads(text), limit)
                assert _too_deep(json.loads(text), limit, text.encode()) is exact, (text, limit)
                quick += json_within_depth(text.encode(), limit)
                checked += 1
    assert checked > 10_000
    assert quick > checked // 2  # the pre-check answers most bodies by itself


@pytest.mark.parametrize("depth, refused", [(64, False), (65, True)])
def test_the_limit_is_exact_with_strings_that_look_like_brackets(depth, refused):
    body = ("[" * (depth - 1) + '{"a": "]]]}}}\\"[[["}' + "]" * (depth - 1)).encode()
    if refused:
        with pytest.raises(ProtocolError, match="deeper than 64 levels"):
            parse_json(body, peer="national_portal", operation="TraCuuHoSo")
    else:
        assert parse_json(body, peer="national_portal", operation="TraCuuHoSo") is not None
