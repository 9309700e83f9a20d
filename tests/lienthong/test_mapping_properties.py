"""Property-based tests of the mapping engine (issue #7, design.md §4.6 and §4.8).

For every mapping in ``mappings/`` and any generated record, :meth:`Mapping.apply` either returns a
payload the peer's own validator accepts, or raises :class:`RecordInvalid` whose field errors each
name a field and a rule: never any other exception. Records come from two strategies:

* *structured*: a sample record of the mapping's source format (``fixtures/samples/<system>/``)
  used as a skeleton, every leaf replaced by a value of the same JSON type — a value seen at that
  place in another sample, Vietnamese text in NFC or NFD, blank text, boundary and naive
  date-times, huge and negative numbers — and lists of 0 to 3 items;
* *garbage*: arbitrary JSON-like values, and samples with keys dropped, added or replaced by junk.

The peer validators are the ones the flows or the stand-ins use: the canonical JSON Schemas
(``fixtures/schemas/canonical/``), the national portal stand-in's rules files
(``mocks/national_portal/rules.py``), the ledger stand-in's receipt check, the one-stop stand-in's
catalogue check and the ministry replica's table definitions.

Also: the NFC and NFD forms of one record map to the same payload (or the same errors) and the
same content hash, and mapping is deterministic.

Run more examples by hand with ``HYPOTHESIS_PROFILE=soak`` (``tests/conftest.py``).
"""

from __future__ import annotations

import copy
import json
import os
import re
import unicodedata
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from connectors.errors import FieldError
from lienthong.mapping import RecordInvalid, list_mappings, load_mapping
from lienthong.store import content_hash

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "fixtures" / "samples"
SCHEMAS = REPO / "fixtures" / "schemas"

MAPPINGS = list_mappings()
#: examples per mapping and property: few in CI (all property tests stay under a minute), the
#: profile's many with ``HYPOTHESIS_PROFILE=soak``
EXAMPLES = settings.default.max_examples if os.environ.get("HYPOTHESIS_PROFILE") == "soak" else 25
PROPERTY = settings(deadline=None, max_examples=EXAMPLES,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- source records ------------------------------------------------------------------------------
@cache
def samples(system: str, record: str) -> tuple[Any, ...]:
    """Every sample record of a source format (defective ones too: they are skeletons)."""
    found = tuple(json.loads(p.read_text(encoding="utf-8")) for p in sorted((SAMPLES / system).glob(f"{record}.*.json")))
    assert found, f"no samples of {system}/{record} in {SAMPLES}"
    return found


def _walk_values(node: Any, path: str, seen: dict[str, list[Any]]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _walk_values(value, f"{path}.{key}", seen)
    elif isinstance(node, list):
        for item in node:
            _walk_values(item, f"{path}[]", seen)
    else:
        seen.setdefault(path, [])
        if node not in seen[path]:
            seen[path].append(node)


@cache
def seen_values(system: str, record: str) -> dict[str, list[Any]]:
    """Leaf values by place (``.fees[].amount``) across every sample of a format."""
    seen: dict[str, list[Any]] = {}
    for sample in samples(system, record):
        _walk_values(sample, "", seen)
    return seen


VIETNAMESE = "aăâbcdđeêghiklmnoôơpqrstuưvxyàáảãạằắẳẵặầấẩẫậèéẻẽẹềếểễệìíỉĩịòóỏõọồốổỗộờớởỡợùúủũụừứửữựỳýỷỹỵ"
VIETNAMESE += VIETNAMESE.upper() + " .,-/0123456789"


def _forms(text: str) -> st.SearchStrategy[str]:
    return st.sampled_from([unicodedata.normalize("NFC", text), unicodedata.normalize("NFD", text)])


vietnamese_text = st.text(alphabet=VIETNAMESE, max_size=40).flatmap(_forms)
long_text = st.integers(990, 1010).map(lambda n: ("Hồ sơ đăng ký kết hôn " * 60)[:n]).flatmap(_forms)

boundary_datetimes = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.sampled_from([datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59), datetime(1970, 1, 1),
                     datetime(2026, 2, 28, 23, 59, 59), datetime(2024, 2, 29, 12, 0)]),
)
offsets = st.sampled_from(["+07:00", "+00:00", "Z", "-12:00", "+14:00", "+05:45", ""])
iso_texts = st.builds(lambda dt, off: dt.isoformat() + off, boundary_datetimes, offsets)
portal_texts = st.one_of(
    st.builds(lambda dt: dt.strftime("%Y%m%d%H%M%S").zfill(14), boundary_datetimes),
    st.sampled_from(["20260230120000", "20261301000000", "20261102246000", "00000000000000"]),
)
number_texts = st.one_of(st.integers(-(10**20), 10**20).map(str),
                         st.sampled_from(["50.000", "50.000 đồng", "1e3", "0", "-0", "", " 1 ", "²", "١٢٣", "５０",
                                          "1000000000000", "1000000000001", "9223372036854775808", "9" * 30,
                                          "9" * 5000, "9" * 400 + ".5"]))


def _schema_at(schema: dict | None, place: str) -> dict | None:
    """The JSON Schema of the value at ``place`` (``.fees[].kind``), or None."""
    for part in re.findall(r"\.([^.\[]+)|(\[\])", place):
        if schema is None:
            return None
        if part[1]:
            schema = schema.get("items")
        else:
            schema = (schema.get("properties") or {}).get(part[0])
    return schema


def _leaf(value: Any, place: str, seen: dict[str, list[Any]], schema: dict | None = None) -> st.SearchStrategy[Any]:
    """A value of the same JSON type as ``value`` (a sample's leaf at ``place``); a value of the
    source schema's ``enum`` at that place when it has one."""
    known = seen.get(place) or [value]
    enum = (_schema_at(schema, place) or {}).get("enum")
    if enum:
        return st.sampled_from(enum)
    same = [v for v in known if type(v) is type(value)] or [value]
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.one_of(st.sampled_from(same), st.integers(-(10**20), 10**20),
                         st.sampled_from([0, -1, 1, 10**12, 10**12 + 1, 2**63, -(2**63) - 1]))
    if isinstance(value, float):
        return st.one_of(st.sampled_from(same), st.floats(allow_nan=False, allow_infinity=False))
    if value is None:
        return st.one_of(st.none(), st.sampled_from([v for v in known if v is not None] or [None]))
    assert isinstance(value, str)
    others: list[st.SearchStrategy[Any]] = [st.sampled_from(same).flatmap(_forms), vietnamese_text,
                                            st.sampled_from(["", " ", "\t\n"])]
    if re.fullmatch(r"\d{4}-\d\d-\d\dT.*", value):
        others += [iso_texts, iso_texts]
    elif re.fullmatch(r"\d{14}", value):
        others += [portal_texts, portal_texts]
    elif re.fullmatch(r"[\d.\s]+(đồng.*)?", value):
        others += [number_texts]
    elif len(value) > 60:
        others += [long_text]
    return st.one_of(*others)


def _structured(draw: Any, node: Any, place: str, seen: dict[str, list[Any]], schema: dict | None,
                rate: int) -> Any:
    """``node`` with each leaf replaced, with ``rate`` % chance, by a value of its type; lists of 0
    to 3 items made from the sample's items (with ``rate`` % chance)."""
    if isinstance(node, dict):
        return {k: _structured(draw, v, f"{place}.{k}", seen, schema, rate) for k, v in node.items()}
    if isinstance(node, list):
        items = node
        if node and draw(st.integers(0, 99)) < rate:
            items = draw(st.lists(st.sampled_from(node), max_size=3))
        return [_structured(draw, item, f"{place}[]", seen, schema, rate) for item in items]
    if draw(st.integers(0, 99)) >= rate:
        return unicodedata.normalize(draw(st.sampled_from(["NFC", "NFD"])), node) if isinstance(node, str) else node
    return draw(_leaf(node, place, seen, schema))


@st.composite
def _mutated(draw: Any, system: str, record: str) -> Any:
    sample = draw(st.sampled_from(samples(system, record)))
    rate = draw(st.sampled_from([3, 10, 30, 100]))  # % of the leaves changed
    return _structured(draw, sample, "", seen_values(system, record), source_schema(system, record), rate)


@cache
def source_schema(system: str, record: str) -> dict | None:
    """The source format's JSON Schema when there is one (the canonical records)."""
    path = SCHEMAS / system / f"{record}.schema.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def structured_records(system: str, record: str) -> st.SearchStrategy[Any]:
    """Records of the source format with random but type-correct values."""
    return st.one_of(st.sampled_from(samples(system, record)), _mutated(system, record))


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30),
                         st.floats(allow_nan=False), st.text(max_size=20), vietnamese_text)
junk = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                    max_leaves=12)


def _spoil(node: Any, draw: Any) -> Any:
    """Drop, add or replace keys and items of ``node`` at random, all the way down."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            action = draw(st.sampled_from(["keep", "keep", "recurse", "drop", "junk"]))
            if action == "keep":
                out[key] = value
            elif action == "recurse":
                out[key] = _spoil(value, draw)
            elif action == "junk":
                out[key] = draw(junk)
        for key in draw(st.lists(st.text(max_size=8), max_size=2)):
            out[key] = draw(junk)
        return out
    if isinstance(node, list):
        return [_spoil(item, draw) for item in node] + draw(st.lists(junk, max_size=2))
    return draw(st.one_of(st.just(node), junk))


@st.composite
def spoiled(draw: Any, system: str, record: str) -> Any:
    return _spoil(copy.deepcopy(draw(st.sampled_from(samples(system, record)))), draw)


def garbage_records(system: str, record: str) -> st.SearchStrategy[Any]:
    """Arbitrary JSON-like values, and samples with wrong types, missing and extra keys."""
    return st.one_of(junk, st.dictionaries(st.text(max_size=10), junk, max_size=6), spoiled(system, record))


def nfd(node: Any) -> Any:
    """``node`` with every text (keys too) in NFD."""
    if isinstance(node, dict):
        return {unicodedata.normalize("NFD", k): nfd(v) for k, v in node.items()}
    if isinstance(node, list):
        return [nfd(item) for item in node]
    return unicodedata.normalize("NFD", node) if isinstance(node, str) else node


def nfc(node: Any) -> Any:
    if isinstance(node, dict):
        return {unicodedata.normalize("NFC", k): nfc(v) for k, v in node.items()}
    if isinstance(node, list):
        return [nfc(item) for item in node]
    return unicodedata.normalize("NFC", node) if isinstance(node, str) else node


# --- the peers' validators ---------------------------------------------------------------------
@cache
def _canonical_validator(record: str) -> Any:
    schema = json.loads((SCHEMAS / "canonical" / f"{record}.schema.json").read_text(encoding="utf-8"))
    return jsonschema.validators.validator_for(schema)(schema)


@cache
def _portal_rules(service: str) -> Any:
    from mocks.national_portal.rules import RecordRules

    return RecordRules(service, catalogues={"procedures": ()})


def portal_problems(service: str, payload: dict) -> list[str]:
    """The portal stand-in's verdict. Its catalogue rule looks the procedure code up in its own state,
    not in the record's form, so it is left out here (the scenario tests cover it)."""
    error = _portal_rules(service).check(payload, 1)
    return [] if error is None or error.rule == "catalogue" else [f"{error.field} {error.rule}: {error.message}"]


def ledger_problems(payload: dict) -> list[str]:
    """What the ledger stand-in says of the receipt as the flow sends it (``_ledger_value`` makes
    ``PaidAt`` a datetime, zeep writes the xsd:dateTime)."""
    from lxml import etree

    from mocks.ministry_ledger.app import MinistryLedgerMock, SoapFault, _q

    try:
        paid = datetime.fromisoformat(payload["PaidAt"])
    except (TypeError, ValueError, KeyError) as exc:
        return [f"PaidAt: the flow cannot read it as a date-time ({exc})"]
    element = etree.Element(_q("Receipt"))
    for name, value in payload.items():
        text = paid.isoformat() if name == "PaidAt" else str(value)
        etree.SubElement(element, _q(name)).text = text
    try:
        MinistryLedgerMock._read_receipt(None, 0, element)  # type: ignore[arg-type]
    except SoapFault as fault:
        return [f"{fault.detail}"]
    return []


def onestop_problems(payload: dict) -> list[str]:
    from mocks.one_stop.procedures import Invalid, validate

    try:
        validate(str(payload.get("serviceCode")), json.loads(json.dumps(payload)))
    except Invalid as refusal:
        return [f"{refusal.field}: {refusal.message}"]
    return []


def replica_problems(payload: dict) -> list[str]:
    """The ministry replica's tables: the flow builds a ``ProcedureRow`` and writes its columns."""
    from sqlalchemy import BigInteger, Integer, String

    from connectors.ministry_db.replica import ProcedureRow, metadata

    problems: list[str] = []
    ProcedureRow(**payload, noi_dung={}, ma_bam_noi_dung="0" * 64)
    procedure_table = next(t for t in metadata.tables.values() if "ten_tthc" in t.c)
    fee_table = next(t for t in metadata.tables.values() if "so_tien_goc" in t.c)

    def check(row: dict, table: Any, where: str) -> None:
        for name, value in row.items():
            if name == "fees" or name not in table.c:
                continue
            column = table.c[name]
            if value is None:
                if not column.nullable:
                    problems.append(f"{where}{name}: null in a NOT NULL column")
                continue
            if isinstance(column.type, (Integer, BigInteger)):
                if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
                    problems.append(f"{where}{name}: {value!r} is not a 64-bit integer")
            elif not isinstance(value, str):
                problems.append(f"{where}{name}: {value!r} is not text")
            elif isinstance(column.type, String) and column.type.length and len(value) > column.type.length:
                problems.append(f"{where}{name}: longer than {column.type.length}")

    check(payload, procedure_table, "")
    for n, fee in enumerate(payload.get("fees") or []):
        check(fee, fee_table, f"fees[{n}].")
    return problems


def target_problems(mapping: Any, payload: Any) -> list[str]:
    """What the target's own validator says of ``payload`` (empty: accepted)."""
    assert isinstance(payload, dict), f"{mapping.name} produced {type(payload).__name__}, not an object"
    system, record = mapping.target["system"], mapping.target["record"]
    if system == "canonical":
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _canonical_validator(record).iter_errors(payload)]
    if system == "national_portal":
        return portal_problems(record, payload)
    if system == "ministry_ledger":
        return ledger_problems(payload)
    if system == "onestop":
        return onestop_problems(payload)
    if system == "ministry_db":
        return replica_problems(payload)
    raise AssertionError(f"no validator for target {system}/{record}: add one")


# --- the properties ------------------------------------------------------------------------------
def outcome(mapping: Any, record: Any) -> tuple[str, Any]:
    """``("ok", payload)`` or ``("invalid", ((field, rule), ...))``; any other exception propagates."""
    try:
        payload = mapping.apply(record)
    except RecordInvalid as invalid:
        assert invalid.errors, f"{mapping.name}: RecordInvalid without field errors"
        for error in invalid.errors:
            assert isinstance(error, FieldError)
            assert isinstance(error.field, str) and error.field.strip(), f"{mapping.name}: error without a field: {error!r}"
            assert isinstance(error.rule, str) and error.rule.strip(), f"{mapping.name}: error without a rule: {error!r}"
            assert isinstance(error.message, str) and error.message.strip()
        assert isinstance(invalid.record_key, str)
        str(invalid)  # the dead-letter text can be made
        return "invalid", tuple(sorted({(e.field, e.rule) for e in invalid.errors}))
    return "ok", payload


def _breaks_source_schema(mapping: Any, record: Any) -> bool:
    """A canonical record that breaks its own schema: a ``canonical__<target>`` mapping checks only
    what is the target's alone (mappings/README.md), so it owes no valid payload for it — only a
    clear error or a payload, never a crash. (The ``<source>__canonical`` properties show every
    canonical record the bus makes keeps the schema.)"""
    if mapping.source["system"] != "canonical":
        return False
    return any(True for _ in _canonical_validator(mapping.source["record"]).iter_errors(record))


def check_valid_or_invalid(name: str, record: Any) -> tuple[str, Any]:
    mapping = load_mapping(name)
    result = outcome(mapping, record)
    if currently_in_test_context():
        event(result[0])  # --hypothesis-show-statistics: how many records mapped, how many were refused
    if result[0] == "ok" and not _breaks_source_schema(mapping, record):
        problems = target_problems(mapping, result[1])
        assert not problems, f"{name} produced a payload its target refuses: {problems}\npayload: {result[1]!r}"
        json.dumps(result[1], allow_nan=False)  # a JSON value (no NaN, no Infinity), hashable by the store
        content_hash(result[1])
    return result


def _source(name: str) -> tuple[str, str]:
    mapping = load_mapping(name)
    return mapping.source["system"], mapping.source["record"]


@pytest.mark.parametrize("name", MAPPINGS)
def test_every_mapping_has_samples_and_a_validator(name: str) -> None:
    mapping = load_mapping(name)
    assert samples(*_source(name))
    for sample in samples(*_source(name)):
        check_valid_or_invalid(name, sample)
    assert mapping.target["system"] in {"canonical", "national_portal", "ministry_ledger", "onestop", "ministry_db"}


def _changed(sample: Any, path: tuple, value: Any) -> Any:
    """A copy of ``sample`` with the value at ``path`` (keys and indexes) replaced; ``"*"`` walks every
    item of a list, ``"**"`` every place a key of that name appears."""
    node = copy.deepcopy(sample)

    def put(at: Any, rest: tuple) -> None:
        key, more = rest[0], rest[1:]
        if key == "**":
            name = more[0]
            for child in (at.values() if isinstance(at, dict) else at if isinstance(at, list) else []):
                put(child, rest)
            if isinstance(at, dict) and name in at:
                at[name] = value
            return
        targets = range(len(at)) if key == "*" else [key]
        for k in targets:
            if more:
                put(at[k], more)
            else:
                at[k] = value

    put(node, path)
    return node


def _sample(system: str, record: str, case: str) -> Any:
    return json.loads((SAMPLES / system / f"{record}.{case}.json").read_text(encoding="utf-8"))


#: Records the properties found to break the engine or a peer, kept as explicit examples.
FOUND = [
    # max_level: "²".isdigit() is True but int("²") raises ValueError (crash)
    ("national_portal__canonical/procedure",
     _changed(_sample("national_portal", "procedure", "full-three-channels"), ("levels",), ["²", 3])),
    # vnd_from_text: int() of more than 4300 digits raises ValueError (crash)
    ("national_portal__canonical/procedure",
     _changed(_sample("national_portal", "procedure", "full-three-channels"), ("**", "SOTIEN"), "9" * 5000)),
    # an amount beyond a 64-bit integer: the ministry replica's BIGINT column overflows (batch crash)
    ("canonical__ministry_db/procedure",
     _changed(_sample("canonical", "procedure", "full-three-channels"), ("**", "amount_vnd"), "9" * 30)),
    # type: integer of 5000 digits: int() raises ValueError (crash)
    ("canonical__onestop/procedure",
     _changed(_sample("canonical", "procedure", "full-three-channels"), ("**", "amount_vnd"), "9" * 5000)),
    # the ledger holds 1..10^12 đồng: a larger amount was mapped, then refused by a SOAP Fault
    ("canonical__ministry_ledger/receipt", {**_sample("canonical", "receipt", "paid-vcb"), "amount_vnd": "1000000000001"}),
    ("payment_platform__ministry_ledger/receipt",
     _changed(_sample("payment_platform", "receipt", "paid-vcb"), ("transaction", "SoTien"), 10**12 + 1)),
    # a date-time whose instant leaves the years 1..9999 in UTC / Asia/Ho_Chi_Minh: the ledger crashed (500)
    ("canonical__ministry_ledger/receipt", {**_sample("canonical", "receipt", "paid-vcb"),
                                           "paid_at": "9999-12-31T23:59:59-12:00"}),
    ("canonical__ministry_ledger/receipt", {**_sample("canonical", "receipt", "paid-vcb"),
                                           "paid_at": "0001-01-01T00:00:00+14:00"}),
    # full-width digits are not yyyyMMddHHmmss
    ("payment_platform__canonical/receipt",
     _changed(_sample("payment_platform", "receipt", "paid-vcb"), ("transaction", "ThoiGianGD"), "２０２６１１０２０９３０１２")),
]


def any_case() -> st.SearchStrategy[tuple[str, Any]]:
    return st.sampled_from(MAPPINGS).flatmap(lambda name: st.tuples(
        st.just(name), st.one_of(structured_records(*_source(name)), garbage_records(*_source(name))),
    ))


@PROPERTY
@given(case=any_case())
@example(case=FOUND[0])
@example(case=FOUND[1])
@example(case=FOUND[2])
@example(case=FOUND[3])
@example(case=FOUND[4])
@example(case=FOUND[5])
@example(case=FOUND[6])
@example(case=FOUND[7])
@example(case=FOUND[8])
def test_any_mapping_any_record_with_the_examples_found(case: tuple[str, Any]) -> None:
    name, record = case
    result = check_valid_or_invalid(name, record)
    if any(record is found for _, found in FOUND):
        assert result[0] == "invalid", f"{name} must refuse the record, naming the field: {result}"


@pytest.mark.parametrize("name", MAPPINGS)
@PROPERTY
@given(data=st.data())
def test_structured_records_map_to_valid_payloads_or_field_errors(name: str, data: st.DataObject) -> None:
    record = data.draw(structured_records(*_source(name)), label="record")
    check_valid_or_invalid(name, record)


@pytest.mark.parametrize("name", MAPPINGS)
@PROPERTY
@given(data=st.data())
def test_garbage_gets_field_errors_never_a_crash(name: str, data: st.DataObject) -> None:
    record = data.draw(garbage_records(*_source(name)), label="record")
    check_valid_or_invalid(name, record)


@pytest.mark.parametrize("name", MAPPINGS)
@PROPERTY
@given(data=st.data())
def test_nfc_and_nfd_give_the_same_payload_and_hash(name: str, data: st.DataObject) -> None:
    record = data.draw(structured_records(*_source(name)), label="record")
    mapping = load_mapping(name)
    composed = outcome(mapping, nfc(record))
    decomposed = outcome(mapping, nfd(record))
    assert composed == decomposed
    if composed[0] == "ok":
        assert content_hash(composed[1]) == content_hash(decomposed[1])
        text = json.dumps(composed[1], ensure_ascii=False)
        assert text == unicodedata.normalize("NFC", text), "every output text is NFC"


@pytest.mark.parametrize("name", MAPPINGS)
@PROPERTY
@given(data=st.data())
def test_mapping_is_deterministic(name: str, data: st.DataObject) -> None:
    record = data.draw(st.one_of(structured_records(*_source(name)), garbage_records(*_source(name))), label="record")
    mapping = load_mapping(name)
    before = copy.deepcopy(record)
    first = outcome(mapping, record)
    assert record == before, "apply() must not change its input"
    second = outcome(mapping, copy.deepcopy(record))
    assert first == second
    if first[0] == "ok":
        assert content_hash(first[1]) == content_hash(second[1])


# --- the fast paths against the general step ----------------------------------------------------
# The engine compiles the common field shapes (a plain text value, a code-table value, transforms,
# read from ``key`` or ``outer.inner``) into fast steps and writes their happy path out in a
# generated builder; ``engine.FAST_PATHS = False`` compiles every field to its general step only.
# Both must give the same output and the same errors (field, rule and message) for every record.

EDGE_VALUES = [
    None, "", " ", "\t\n", "١٢", "٢٠٢٦-١١-٠٢", "５０", "true", "false", "True", "1", "0", "yes",
    1e3, 10.0, 1.5, -0.0, 0, 1, -1, 2**63, -(2**63) - 1, 10**30, True, False,
    "2024-02-29T00:00:00+07:00", "2023-02-29T00:00:00+07:00", "2024-02-29", "2026-11-02T08:15:00-05:00",
    "2026-11-02T08:15:00Z", "2026-11-02T08:15:00", "2026-11-02T08:15:00+07", "0001-01-01T00:00:00+07:00",
    "9999-12-31T23:59:59-07:00", "20261102081500", "Nguyễn Văn A", unicodedata.normalize("NFD", "Nguyễn"),
    " x ", "x" * 1001, "50.000 đồng", "Không", [], {}, ["a"], [None], [{"a": 1}], {"a": "b"},
]
edge_values = st.one_of(st.sampled_from(EDGE_VALUES), json_scalars)


def _leaves(node: Any, place: tuple = ()) -> list[tuple]:
    found = [place] if place else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _leaves(value, place + (key,))
    elif isinstance(node, list):
        for n, value in enumerate(node):
            found += _leaves(value, place + (n,))
    return found


@st.composite
def edged(draw: Any, system: str, record: str) -> Any:
    """A sample with 1 to 4 of its values (leaves, lists, objects) replaced by an edge value."""
    out = copy.deepcopy(draw(st.sampled_from(samples(system, record))))
    for _ in range(draw(st.integers(1, 4))):
        places = _leaves(out)
        if not places:
            break
        place = draw(st.sampled_from(places))
        holder = out
        for part in place[:-1]:
            holder = holder[part]
        holder[place[-1]] = copy.deepcopy(draw(edge_values))
    return out


def _compiled_both(path: Path) -> tuple[Any, Any]:
    """The mapping file compiled with its fast paths and with the general steps only."""
    from lienthong.mapping import engine, loader

    fast = loader._load_file(path)[0]
    engine.FAST_PATHS = False
    try:
        general = loader._load_file(path)[0]
    finally:
        engine.FAST_PATHS = True
    return fast, general


@cache
def _both(name: str) -> tuple[Any, Any]:
    from lienthong.mapping import loader

    return _compiled_both(loader._resolve(name).resolve())


def _same_outcome(fast: Any, general: Any, record: Any) -> None:
    """Both give the same output and errors (mapping never changes its input: one record serves both)."""
    output, errors = fast.translate(record)
    expected, expected_errors = general.translate(record)
    assert [(e.field, e.rule, e.message) for e in errors] == [(e.field, e.rule, e.message) for e in expected_errors]
    assert json.dumps(output, sort_keys=True) == json.dumps(expected, sort_keys=True), (output, expected)


FIELD_MAPPINGS = [name for name in MAPPINGS if not hasattr(load_mapping(name), "stages")]  # chains: their stages


@pytest.mark.parametrize("name", FIELD_MAPPINGS)
@PROPERTY
@given(data=st.data())
def test_fast_paths_give_what_the_general_steps_give(name: str, data: st.DataObject) -> None:
    system, record = _source(name)
    source = data.draw(st.one_of(edged(system, record), structured_records(system, record),
                                 garbage_records(system, record)), label="record")
    _same_outcome(*_both(name), source)


# Every fast shape, plain and under outer.inner, required, optional, with a default, in a list.
SHAPES = """\
name: onestop__national_portal/shapes
version: 1
description: every field shape the engine has a fast path for
source: {system: onestop, record: dossier}
target: {system: national_portal, record: DongBoHoSoMC}
record_key: k
code_tables:
  t: {values: {a: "1", "Nguyễn": "2", "١٢": "3", "true": "4"}, not_mapped: {b: on purpose}}
fields:
  P: {from: a}
  PR: {from: a, required: true}
  PD: {from: a, default: d}
  PL: {from: a, max_length: 5}
  PP: {from: a, pattern: '\\d+|[a-z]+'}
  PN: {from: a, type: integer, nullable: true}
  PB: {from: a, type: boolean}
  T: {from: a, code_table: t}
  TR: {from: a, code_table: t, required: true}
  TD: {from: a, code_table: t, default: a}
  X: {from: a, transform: string}
  XR: {from: a, transform: [string, strip], required: true}
  XD: {from: a, transform: portal_datetime, default: "2026-11-02T08:15:00+07:00"}
  XS: {from: a, transform: [string, strip], max_length: 3}
  XT: {from: a, transform: strip, code_table: t}
  XB: {from: a, transform: [word_bool, bool_flag]}
  XV: {from: a, transform: vnd_amount}
  XI: {from: a, transform: iso_datetime, required: true}
  XP: {from: a, transform: portal_date}
  OP: {from: o.a}
  OR: {from: o.a, required: true, pattern: '[a-z]+'}
  OT: {from: o.a, code_table: t}
  OX: {from: o.a, transform: portal_datetime}
  OY: {from: o.a, transform: [string, strip], default: "0"}
  L:
    each:
      from: items
      fields:
        P: {from: a}
        R: {from: a, required: true, max_length: 4}
        T: {from: a, code_table: t, default: a}
        X: {from: a, transform: [string, strip]}
        O: {from: o.a, transform: bool_text}
        K: {from: $.k}
"""


@cache
def _shapes() -> tuple[Any, Any]:
    import tempfile

    folder = Path(tempfile.mkdtemp()) / "onestop__national_portal"
    folder.mkdir()
    path = folder / "shapes.yaml"
    path.write_text(SHAPES, encoding="utf-8")
    return _compiled_both(path)


# the code table's keys and near misses, short and long text, digits
shape_values = st.one_of(edge_values, st.sampled_from(
    ["a", " a", "a ", "A", "b", unicodedata.normalize("NFD", "Nguyễn"), "Nguyễn", "abc", "abcdef", "12", "007"]))


def _shape_item(value: Any, inner: Any) -> dict:
    return {"a": value, "o": inner}


@PROPERTY
@given(a=shape_values, inner=st.one_of(shape_values, st.builds(lambda v: {"a": v}, shape_values)),
       items=st.lists(st.one_of(shape_values, st.builds(_shape_item, shape_values, shape_values),
                                st.builds(lambda v, w: {"a": v, "o": {"a": w}}, shape_values, shape_values)),
                      max_size=3))
@example(a="", inner={"a": " "}, items=[{"a": None}])
@example(a="١٢", inner={"a": "١٢"}, items=[{"a": "١٢", "o": {"a": True}}])
@example(a="2024-02-29T23:30:00-01:00", inner={"a": "2024-02-29T23:30:00-01:00"}, items=[])
def test_every_fast_shape_gives_what_the_general_step_gives(a: Any, inner: Any, items: list) -> None:
    record = {"k": "key", "a": a, "o": inner, "items": items}
    _same_outcome(*_shapes(), record)


EXHAUSTIVE_VALUES = [*EDGE_VALUES, "a", " a", "a ", "A", "b", unicodedata.normalize("NFD", "Nguyễn"), "Nguyễn",
                     "abc", "abcdef", "12", "007"]


def test_every_fast_shape_on_every_edge_value() -> None:
    """Every edge value in every place of the shapes mapping at once, and alone: no draw can miss one."""
    fast, general = _shapes()
    for value in EXHAUSTIVE_VALUES:
        item = {"a": value, "o": {"a": value}}
        for record in ({"k": "key", **copy.deepcopy(item), "items": [copy.deepcopy(item), value]},
                       {"k": "key", "a": value, "o": value, "items": value},
                       {"k": "key", "o": {"a": value}}):
            _same_outcome(fast, general, record)


@pytest.mark.parametrize("name", FIELD_MAPPINGS)
def test_every_sample_value_replaced_by_every_edge_value(name: str) -> None:
    """Values of a sample (the first of the mapping's source; at most 40 places, spread over it), one at a
    time, made each edge value."""
    fast, general = _both(name)
    sample = samples(*_source(name))[0]
    places = _leaves(sample)
    for place in places[:: max(1, len(places) // 40)]:
        record = copy.deepcopy(sample)
        holder = record
        for part in place[:-1]:
            holder = holder[part]
        for value in EXHAUSTIVE_VALUES:
            holder[place[-1]] = value
            _same_outcome(fast, general, record)
