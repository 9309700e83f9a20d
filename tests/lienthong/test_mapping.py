"""The mapping engine: file validation (table-driven), the dossier mapping on every sample, text and time rules."""

from __future__ import annotations

import copy
import json
import os
import re
import textwrap
import unicodedata
from pathlib import Path

import jsonschema
import pytest

from connectors.errors import ConfigurationError, FieldError, RecordRejected
from lienthong.mapping import (
    TRANSFORMS,
    Mapping,
    MappingFileError,
    RecordInvalid,
    TransformError,
    list_mappings,
    load_mapping,
    mappings_dir,
)
from lienthong.mapping.loader import SCHEMA_PATH

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "fixtures" / "samples" / "onestop"
DOSSIER = "onestop__national_portal/dossier.direct"  # the direct mapping; the chain of that name: test_mapping_chain.py
DIRECT_DOSSIER = REPO / "mappings" / "onestop__national_portal" / "dossier.direct.yaml"


@pytest.fixture(autouse=True)
def _repo_mappings(monkeypatch):
    monkeypatch.delenv("LIENTHONG_MAPPINGS_DIR", raising=False)


@pytest.fixture(scope="module")
def dossier() -> Mapping:
    return load_mapping(DIRECT_DOSSIER)


def sample(name: str) -> dict:
    return json.loads((SAMPLES / f"dossier.{name}.json").read_text(encoding="utf-8"))


def fields_and_rules(error: RecordInvalid) -> list[tuple[str, str]]:
    return [(e.field, e.rule) for e in error.errors]


# ---------------------------------------------------------------------------------------------
# Mapping files: valid and invalid ones (table-driven)

HEADER = """\
name: onestop__national_portal/case
version: 1
description: a test mapping
source: {system: onestop, record: dossier}
target: {system: national_portal, record: DongBoHoSoMC}
record_key: dossierNo
code_tables:
  status:
    values: {new: "2", done: "10"}
    not_mapped: {interoperating: handed to another system}
fields:
"""


def write_mapping(root: Path, fields: str, header: str = HEADER, name: str = "case") -> Path:
    folder = root / "onestop__national_portal"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(header + textwrap.indent(textwrap.dedent(fields), "  "), encoding="utf-8")
    return path


VALID_FILES = [
    # (id, fields block, a source record, the expected output)
    ("const-and-path", "A: {const: '7'}\nB: {from: x.y}\n", {"x": {"y": "v"}}, {"A": "7", "B": "v"}),
    ("code-table", "S: {from: st, code_table: status, required: true}\n", {"st": "done"}, {"S": "10"}),
    ("default-through-transform", "F: {from: flag, transform: bool_text, default: false}\n", {}, {"F": "False"}),
    ("conditional-required-not-applicable",
     "D: {from: d, transform: portal_datetime, required: {when: {path: st, in: [done]}}}\n",
     {"st": "new"}, {"D": ""}),
    ("fallback-used", "D: {from: a, fallback: {from: b, when: {path: st, in: [new]}}, required: true}\n",
     {"st": "new", "a": None, "b": "from-b"}, {"D": "from-b"}),
    ("fallback-not-needed", "D: {from: a, fallback: {from: b}}\n", {"a": "from-a", "b": "from-b"}, {"D": "from-a"}),
    ("when-false-gives-empty", "W: {from: w, when: {path: st, present: true}}\n", {"w": "x"}, {"W": ""}),
    ("index-and-negative-index", "F: {from: 'l[0].v'}\nL: {from: 'l[-1].v'}\n",
     {"l": [{"v": "a"}, {"v": "b"}]}, {"F": "a", "L": "b"}),
    ("wildcard-where-last", "T: {from: 'p[*].at', where: {path: s, in: [x]}, transform: [last, string]}\n",
     {"p": [{"s": "x", "at": "1"}, {"s": "y", "at": "2"}, {"s": "x", "at": "3"}]}, {"T": "3"}),
    ("each-with-root-path",
     "L:\n  each:\n    from: items\n    fields:\n      N: {from: n, transform: string}\n      K: {from: $.dossierNo}\n",
     {"dossierNo": "k", "items": [{"n": 1}, {"n": 2}]}, {"L": [{"N": "1", "K": "k"}, {"N": "2", "K": "k"}]}),
    ("each-from-record", "L:\n  each:\n    from: $\n    where: {path: t, not_in: [mst]}\n    fields:\n      V: {from: v}\n",
     {"t": "cccd", "v": "9"}, {"L": [{"V": "9"}]}),
    ("list-missing-is-empty", "L:\n  each:\n    from: items\n    fields:\n      N: {from: n}\n", {}, {"L": []}),
    ("join-of-several-paths", "N: {from: [a, b], transform: {join: '-'}}\n", {"a": "x", "b": "y"}, {"N": "x-y"}),
    ("join-leaves-out-blank-and-missing", "N: {from: [a, b, c], transform: {join: ' / '}}\n",
     {"a": "x", "b": "  ", "c": "z"}, {"N": "x / z"}),
    ("join-of-nothing-is-no-value", "N: {from: [a, b], transform: {join: '-'}}\n", {"a": "", "b": None}, {"N": ""}),
    ("join-of-a-wildcard", "N: {from: 'l[*].v', transform: {join: ', '}}\n",
     {"l": [{"v": "a"}, {"v": None}, {"v": "b"}]}, {"N": "a, b"}),
    ("join-then-another-transform", "N: {from: [a, b], transform: [{join: ''}, strip]}\n", {"a": " x", "b": "y "},
     {"N": "xy"}),
    ("typed-const-and-default",
     "A: {const: '7', type: integer}\nB: {const: '', type: number, nullable: true}\n"
     "C: {from: c, transform: bool_word, default: false, type: boolean}\nD: {from: d, default: '2', type: integer}\n",
     {}, {"A": 7, "B": None, "C": False, "D": 2}),
    ("const-meeting-its-pattern-and-max-length", "A: {const: 'Nga\u0300y', pattern: '\\w+', max_length: 4}\n", {},
     {"A": "Ngày"}),
]


@pytest.mark.parametrize("fields, record, expected", [c[1:] for c in VALID_FILES], ids=[c[0] for c in VALID_FILES])
def test_valid_mapping_files_load_and_map(tmp_path, fields, record, expected):
    mapping = load_mapping(write_mapping(tmp_path, fields))
    assert mapping.apply(record) == expected


INVALID_FILES = [
    # (id, fields block, header override or None, expected path inside the file, expected rule)
    ("unknown-transform", "A: {from: a, transform: portal_time}\n", None, "fields.A.transform", "unknown_transform"),
    ("unknown-transform-in-list", "A: {from: a, transform: [strip, nope]}\n", None, "fields.A.transform[1]",
     "unknown_transform"),
    ("missing-code-table", "A: {from: a, code_table: trang_thai}\n", None, "fields.A.code_table", "unknown_code_table"),
    ("duplicate-target-field", "A: {from: a}\nA: {from: b}\n", None, "fields.A", "duplicate_field"),
    ("duplicate-in-each",
     "L:\n  each:\n    from: l\n    fields:\n      X: {from: a}\n      X: {from: b}\n", None,
     "fields.L.each.fields.X", "duplicate_field"),
    ("misspelt-key", "A: {from: a, max_lenght: 5}\n", None, "fields.A.max_lenght", "additionalProperties"),
    ("from-and-const", "A: {from: a, const: 'x'}\n", None, "fields.A", "oneOf"),
    ("no-source", "A: {required: true}\n", None, "fields.A", "oneOf"),
    ("bad-path", "A: {from: 'a..b'}\n", None, "fields.A.from", "pattern"),
    ("unquoted-code", "A: {from: a}\n", HEADER.replace('new: "2"', "new: 2"), "code_tables.status.values.new", "type"),
    # blank text is no value and never reaches a code table: the fast paths looked such a key up (and
    # sent its code past required), the general step did not
    ("blank-code-table-key", "A: {from: a, code_table: status, required: true}\n",
     HEADER.replace('new: "2"', 'new: "2", "": "0"'), "code_tables.status.values", "code_table_key"),
    ("white-space-code-table-key", "A: {from: a, code_table: status}\n",
     HEADER.replace('new: "2"', 'new: "2", "  ": "0"'), "code_tables.status.values", "code_table_key"),
    ("blank-not-mapped-key", "A: {from: a, code_table: status}\n",
     HEADER.replace("interoperating: handed", "'': handed"), "code_tables.status.not_mapped", "code_table_key"),
    ("const-not-text", "A: {const: 1}\n", None, "fields.A.const", "type"),
    ("bare-yes-key", "yes: {from: a}\n", None, "fields.True", "key_type"),
    ("wildcard-without-transform", "A: {from: 'f[*].x'}\n", None, "fields.A.transform", "wildcard"),
    # a list read with a transform that takes one value loaded, then refused every record, even one
    # without the list ("x[*].y is a list, expected text")
    ("wildcard-with-a-one-value-transform", "A: {from: 'x[*].y', transform: string}\n", None, "fields.A.transform",
     "wildcard"),
    ("wildcard-with-portal-datetime", "A: {from: 'x[*].y', transform: [portal_datetime, strip]}\n", None,
     "fields.A.transform[0]", "wildcard"),
    ("paths-with-a-one-value-transform", "A: {from: [a, b], transform: strip}\n", None, "fields.A.transform",
     "wildcard"),
    ("word-bool-list-then-a-one-value-transform", "A: {from: 'x[*].y', transform: [word_bool, bool_flag]}\n", None,
     "fields.A.transform[1]", "wildcard"),
    ("word-bool-list-sent-as-a-list", "A: {from: 'x[*].y', transform: word_bool}\n", None, "fields.A.transform",
     "wildcard"),
    ("where-without-wildcard", "A: {from: f, where: {path: p, in: [1]}}\n", None, "fields.A.where", "wildcard"),
    ("two-wildcards", "A: {from: 'a[*].b[*].c', transform: first}\n", None, "fields.A.from", "path"),
    ("required-with-default", "A: {from: a, required: true, default: x}\n", None, "fields.A.default", "conflict"),
    ("const-with-transform", "A: {const: x, transform: string}\n", None, "fields.A.transform", "conflict"),
    ("list-with-max-length", "L:\n  each: {from: l, fields: {X: {from: x}}}\n  max_length: 3\n", None,
     "fields.L.max_length", "conflict"),
    ("default-rejected-by-transform", "A: {from: a, transform: bool_flag, default: 'yes'}\n", None,
     "fields.A.default", "default"),
    # a default or const its own type rejects loaded, then every record without the value was
    # refused, the error blaming the record ("count 'none' is not an integer" with no count in it)
    ("default-rejected-by-its-type", "A: {from: a, default: 'none', type: integer}\n", None, "fields.A.default",
     "default"),
    ("default-made-what-its-type-rejects", "A: {from: a, transform: bool_text, default: false, type: boolean}\n",
     None, "fields.A.default", "default"),
    ("default-of-no-value-for-a-typed-field", "A: {from: a, default: '', type: number}\n", None, "fields.A.default",
     "default"),
    ("const-rejected-by-its-type", "A: {const: 'active', type: integer}\n", None, "fields.A.const", "type"),
    ("const-too-large-for-its-type", "A: {const: '99999999999999999999', type: integer}\n", None, "fields.A.const",
     "type"),
    ("const-of-no-value-for-a-typed-field", "A: {const: '', type: boolean}\n", None, "fields.A.const", "type"),
    # a const's pattern and max_length were accepted and never checked; a bad regex on one crashed (re.error)
    ("const-breaking-its-pattern", "A: {const: 'ABC', pattern: '\\d+'}\n", None, "fields.A.pattern", "format"),
    ("const-over-its-max-length", "A: {const: 'ABC', max_length: 2}\n", None, "fields.A.max_length", "max_length"),
    ("const-with-a-bad-regex", "A: {const: 'x', pattern: '(['}\n", None, "fields.A.pattern", "pattern"),
    ("bad-regex", "A: {from: a, pattern: '(['}\n", None, "fields.A.pattern", "pattern"),
    ("condition-two-tests", "A: {from: a, when: {path: p, in: [1], not_in: [2]}}\n", None, "fields.A.when",
     "maxProperties"),
    ("name-not-the-file", "A: {from: a}\n", HEADER.replace("/case", "/other"), "name", "name"),
    ("source-not-the-name", "A: {from: a}\n", HEADER.replace("{system: onestop,", "{system: portal,"),
     "source.system", "name"),
    ("version-not-integer", "A: {from: a}\n", HEADER.replace("version: 1", "version: '1.0'"), "version", "type"),
    ("no-fields", "", None, "fields", "type"),
    ("fallback-with-wildcard", "A: {from: a, fallback: {from: 'b[*].c'}}\n", None, "fields.A.fallback", "wildcard"),
    ("fallback-on-const", "A: {const: x, fallback: {from: b}}\n", None, "fields.A.fallback", "conflict"),
    ("not-yaml", "A: {from: a\n", None, "", "yaml"),
    ("not-mapped-and-mapped", "A: {from: a}\n", HEADER.replace("{interoperating:", "{done:"),
     "code_tables.status.not_mapped.done", "conflict"),
    # transforms that take an argument
    ("join-without-separator", "N: {from: [a, b], transform: join}\n", None, "fields.N.transform", "transform_argument"),
    ("argument-to-a-plain-transform", "N: {from: a, transform: [{string: x}]}\n", None, "fields.N.transform[0]",
     "transform_argument"),
    ("separator-not-text", "N: {from: [a, b], transform: {join: 1}}\n", None, "fields.N.transform",
     "transform_argument"),
    ("two-transforms-in-one-step", "N: {from: a, transform: {join: '-', strip: x}}\n", None, "fields.N.transform",
     "oneOf"),
    ("unknown-transform-with-argument", "N: {from: [a, b], transform: {joint: '-'}}\n", None, "fields.N.transform",
     "unknown_transform"),
    # a list of paths
    ("paths-without-transform", "N: {from: [a, b]}\n", None, "fields.N.transform", "wildcard"),
    ("one-path-in-a-list", "N: {from: [a], transform: {join: '-'}}\n", None, "fields.N.from", "minItems"),
    ("same-path-twice", "N: {from: [a, a], transform: {join: '-'}}\n", None, "fields.N.from", "uniqueItems"),
    ("wildcard-in-a-list-of-paths", "N: {from: [a, 'b[*]'], transform: {join: '-'}}\n", None, "fields.N.from[1]",
     "path"),
    ("root-in-a-list-of-paths", "N: {from: [a, $.b], transform: {join: '-'}}\n", None, "fields.N.from[1]", "path"),
    ("bad-path-in-a-list", "N: {from: [a, 'b..c'], transform: {join: '-'}}\n", None, "fields.N.from[1]", "pattern"),
    ("fallback-of-a-list-of-paths", "N: {from: [a, b], transform: {join: '-'}, fallback: {from: c}}\n", None,
     "fields.N.fallback", "wildcard"),
    ("where-on-a-list-of-paths", "N: {from: [a, b], transform: {join: '-'}, where: {path: s, in: [x]}}\n", None,
     "fields.N.where", "wildcard"),
    ("paths-in-each-from", "L:\n  each: {from: [a, b], fields: {X: {from: x}}}\n", None, "fields.L.each.from", "type"),
    # composite record keys
    ("record-key-list-of-one", "A: {from: a}\n", HEADER.replace("record_key: dossierNo", "record_key: [dossierNo]"),
     "record_key", "minItems"),
    ("record-key-part-wildcard", "A: {from: a}\n",
     HEADER.replace("record_key: dossierNo", "record_key: [dossierNo, 'steps[*].id']"), "record_key[1]", "path"),
    ("record-key-part-root", "A: {from: a}\n", HEADER.replace("record_key: dossierNo", "record_key: [dossierNo, $]"),
     "record_key[1]", "path"),
    ("record-key-part-twice", "A: {from: a}\n",
     HEADER.replace("record_key: dossierNo", "record_key: [dossierNo, dossierNo]"), "record_key", "uniqueItems"),
    ("record-key-not-text", "A: {from: a}\n", HEADER.replace("record_key: dossierNo", "record_key: 7"),
     "record_key", "type"),
    # code_tables_from (more in test_mapping_code_tables.py)
    ("code-tables-file-missing", "A: {from: a}\n", HEADER.replace("code_tables:\n", "code_tables_from: code_tables.yaml\ncode_tables:\n"),
     "code_tables_from", "code_tables_from"),
    ("code-tables-file-badly-named", "A: {from: a}\n", HEADER.replace("code_tables:\n", "code_tables_from: tables.yaml\ncode_tables:\n"),
     "code_tables_from", "pattern"),
    ("code-tables-file-absolute", "A: {from: a}\n",
     HEADER.replace("code_tables:\n", "code_tables_from: [/etc/code_tables.yaml]\ncode_tables:\n"),
     "code_tables_from[0]", "pattern"),
    ("code-tables-file-far-away", "A: {from: a}\n",
     HEADER.replace("code_tables:\n", "code_tables_from: ../../x/code_tables.yaml\ncode_tables:\n"),
     "code_tables_from", "pattern"),
]


@pytest.mark.parametrize("fields, header, where, rule", [c[1:] for c in INVALID_FILES], ids=[c[0] for c in INVALID_FILES])
def test_invalid_mapping_files_name_file_path_and_rule(tmp_path, fields, header, where, rule):
    path = write_mapping(tmp_path, fields, header or HEADER)
    with pytest.raises(MappingFileError) as caught:
        load_mapping(path)
    error = caught.value
    assert isinstance(error, ConfigurationError)
    assert error.file == path.resolve()
    assert (where, rule) in [(p.path, p.rule) for p in error.problems], error.problems
    assert str(path.resolve()) in str(error) and f"[{rule}]" in str(error)


def test_every_problem_of_a_file_is_reported_at_once(tmp_path):
    path = write_mapping(tmp_path, "A: {from: a, transform: nope}\nB: {from: b, code_table: nope}\n")
    with pytest.raises(MappingFileError) as caught:
        load_mapping(path)
    assert [(p.path, p.rule) for p in caught.value.problems] == [
        ("fields.A.transform", "unknown_transform"), ("fields.B.code_table", "unknown_code_table")]


def test_a_missing_file_is_a_mapping_file_error(tmp_path):
    with pytest.raises(MappingFileError) as caught:
        load_mapping(tmp_path / "onestop__national_portal" / "absent.yaml")
    assert caught.value.rule == "not_found"


def test_a_registered_transform_becomes_usable(tmp_path):
    from lienthong.mapping import register_transform

    @register_transform("test_upper", "text in capitals (test only)")
    def upper(value):
        return value.upper()

    @register_transform("test_longest", "the longest text of a list (test only)", reads_list=True)
    def longest(value):
        return max(value, key=len, default=None)

    try:
        assert load_mapping(write_mapping(tmp_path, "A: {from: a, transform: test_upper}\n")).apply({"a": "ệ"}) == {"A": "Ệ"}
        with pytest.raises(ValueError, match="already registered"):
            register_transform("test_upper", "again")(upper)
        # a field reading a list takes a transform registered as reading one (reads_list), not another
        wildcard = load_mapping(write_mapping(tmp_path / "w", "A: {from: 'l[*].v', transform: [test_longest, test_upper]}\n"))
        assert wildcard.apply({"l": [{"v": "a"}, {"v": "bc"}]}) == {"A": "BC"}
        with pytest.raises(MappingFileError) as caught:
            load_mapping(write_mapping(tmp_path / "r", "A: {from: 'l[*].v', transform: test_upper}\n"))
        assert caught.value.rule == "wildcard" and "test_longest" in str(caught.value)
    finally:
        del TRANSFORMS["test_upper"], TRANSFORMS["test_longest"]


def test_unknown_mapping_name_lists_the_known_ones():
    with pytest.raises(ConfigurationError, match="onestop__national_portal/dossier"):
        load_mapping("onestop__national_portal/nothing")
    with pytest.raises(ConfigurationError, match="neither a mapping name"):
        load_mapping("dossier")


def test_schema_is_a_valid_json_schema_and_the_shipped_files_pass_it():
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.validators.validator_for(schema).check_schema(schema)
    assert "onestop__national_portal/dossier" in list_mappings()
    for name in list_mappings():
        load_mapping(name)


def test_mappings_dir_is_overridable_and_names_resolve_under_it(tmp_path, monkeypatch):
    write_mapping(tmp_path, "A: {const: x}\n")
    monkeypatch.setenv("LIENTHONG_MAPPINGS_DIR", str(tmp_path))
    assert mappings_dir() == tmp_path
    assert list_mappings() == ["onestop__national_portal/case"]
    assert load_mapping("onestop__national_portal/case").apply({}) == {"A": "x"}


def test_compiled_mapping_is_cached_until_the_file_changes(tmp_path):
    path = write_mapping(tmp_path, "A: {const: x}\n")
    first = load_mapping(path)
    assert load_mapping(path) is first
    write_mapping(tmp_path, "A: {const: y}\n")
    os.utime(path, ns=(first_ns := path.stat().st_mtime_ns + 10_000_000, first_ns))
    second = load_mapping(path)
    assert second is not first and second.apply({}) == {"A": "y"}
    assert second.fingerprint != first.fingerprint


def test_fingerprint_ignores_comments_and_layout(tmp_path):
    a = load_mapping(write_mapping(tmp_path / "a", "A: {const: x}\n"))
    b = load_mapping(write_mapping(tmp_path / "b", "# a comment\nA:\n  const: x   # same meaning\n"))
    assert a.fingerprint == b.fingerprint
    assert re.fullmatch(r"[0-9a-f]{64}", a.fingerprint)


def test_readme_lists_every_registered_transform():
    readme = (REPO / "mappings" / "README.md").read_text(encoding="utf-8")
    assert [name for name in TRANSFORMS if f"| `{name}` |" not in readme] == []


# ---------------------------------------------------------------------------------------------
# The dossier mapping: metadata and exact output

def test_dossier_mapping_metadata(dossier):
    assert dossier.name == DOSSIER and dossier.version == 2
    assert dossier.source["system"] == "onestop" and dossier.target["record"] == "DongBoHoSoMC"
    assert dossier.target_fields == (
        "MaHoSo", "SoBienNhan", "MaTTHC", "TenTTHC", "MaLinhVuc", "TenLinhVuc", "KenhThucHien", "ChuHoSo",
        "SoGiayToChuHoSo", "LoaiDoiTuong", "Email", "SoDienThoai", "DinhDanhCHS", "TrichYeuHoSo",
        "TrangThaiHoSo", "NgayNopHoSo", "NgayTiepNhan", "NgayHenTra", "NgayKetThucXuLy", "NgayTra",
        "NgayTuChoi", "HinhThuc", "DonViXuLy", "HoSoCoThanhPhanSoHoa", "DuocThanhToanTrucTuyen",
        "TaiLieuNop", "DanhSachLePhi", "DanhSachGiayToKetQua",
    )
    assert dossier.personal_fields == ("SoGiayToChuHoSo", "Email", "SoDienThoai", "DinhDanhCHS[].SoDinhDanh")


def test_processing_dossier_maps_to_exactly_this_record(dossier):
    assert dossier.apply(sample("processing-paid-online")) == {
        "MaHoSo": "000.00.01.H49-261029-0012",
        "SoBienNhan": "BN-261029-0012",
        "MaTTHC": "2.001417.000.00.00.H49",
        "TenTTHC": "Cấp Phiếu lý lịch tư pháp cho công dân Việt Nam, người nước ngoài đang cư trú tại Việt Nam",
        "MaLinhVuc": "G09-TP05",
        "TenLinhVuc": "Lý lịch tư pháp",
        "KenhThucHien": "2",
        "ChuHoSo": "Trần Văn Đức",
        "SoGiayToChuHoSo": "049092004321",
        "LoaiDoiTuong": "1",
        "Email": "tranvanduc@example.vn",
        "SoDienThoai": "0935777888",
        "DinhDanhCHS": [{"LoaiDinhDanh": "1", "SoDinhDanh": "049092004321"}],
        "TrichYeuHoSo": "Cấp Phiếu lý lịch tư pháp số 1 để bổ sung hồ sơ xin việc",
        "TrangThaiHoSo": "4",
        "NgayNopHoSo": "20261029214012",
        "NgayTiepNhan": "20261030074500",
        "NgayHenTra": "20261112170000",
        "NgayKetThucXuLy": "",
        "NgayTra": "",
        "NgayTuChoi": "",
        "HinhThuc": "1",
        "DonViXuLy": "Sở Tư pháp tỉnh Quảng Nam",
        "HoSoCoThanhPhanSoHoa": "1",
        "DuocThanhToanTrucTuyen": "1",
        "TaiLieuNop": [
            {"TepDinhKemId": "F-261029-0012-01", "TenTepDinhKem": "Tờ khai yêu cầu cấp Phiếu lý lịch tư pháp.pdf",
             "IsDeleted": "False", "MaThanhPhanHoSo": "TP01",
             "DuongDanTaiTepTin": "https://motcua.quangnam.gov.vn/files/F-261029-0012-01", "DuocSoHoa": "1"},
            {"TepDinhKemId": "F-261029-0012-02", "TenTepDinhKem": "Căn cước công dân (bản chụp).jpg",
             "IsDeleted": "True", "MaThanhPhanHoSo": "TP02",
             "DuongDanTaiTepTin": "https://motcua.quangnam.gov.vn/files/F-261029-0012-02", "DuocSoHoa": "0"},
            {"TepDinhKemId": "F-261029-0012-03", "TenTepDinhKem": "Căn cước công dân (bản chụp, rõ nét).pdf",
             "IsDeleted": "False", "MaThanhPhanHoSo": "TP02",
             "DuongDanTaiTepTin": "https://motcua.quangnam.gov.vn/files/F-261029-0012-03", "DuocSoHoa": "1"},
        ],
        "DanhSachLePhi": [
            {"TenPhiLePhi": "Phí cung cấp thông tin lý lịch tư pháp", "MaPhiLePhi": "PLLTP01", "Gia": "200000",
             "LoaiPhiLePhi": "1"},
        ],
        "DanhSachGiayToKetQua": [],
    }


def test_done_dossier_of_a_business_maps_to_exactly_this_record(dossier):
    assert dossier.apply(sample("done-with-result")) == {
        "MaHoSo": "000.00.01.H49-261020-0007",
        "SoBienNhan": "BN-261020-0007",
        "MaTTHC": "1.001612.000.00.00.H49",
        "TenTTHC": "Cấp Giấy chứng nhận cơ sở đủ điều kiện an toàn thực phẩm",
        "MaLinhVuc": "G13-CT01",
        "TenLinhVuc": "An toàn thực phẩm",
        "KenhThucHien": "3",
        "ChuHoSo": "Công ty TNHH Thực phẩm Xứ Quảng",
        "SoGiayToChuHoSo": "4001234567",
        "LoaiDoiTuong": "2",
        "Email": "lienhe@thucphamxuquang.vn",
        "SoDienThoai": "02353812345",
        "DinhDanhCHS": [],  # a tax code is not a personal identifier
        "TrichYeuHoSo": "Cấp Giấy chứng nhận cơ sở đủ điều kiện an toàn thực phẩm cho xưởng sản xuất mì Quảng khô",
        "TrangThaiHoSo": "10",
        "NgayNopHoSo": "20261019152000",
        "NgayTiepNhan": "20261020090500",
        "NgayHenTra": "20261110170000",
        "NgayKetThucXuLy": "20261104164500",
        "NgayTra": "20261105103000",
        "NgayTuChoi": "",
        "HinhThuc": "1",
        "DonViXuLy": "Sở Công Thương tỉnh Quảng Nam",
        "HoSoCoThanhPhanSoHoa": "1",
        "DuocThanhToanTrucTuyen": "0",
        "TaiLieuNop": [
            {"TepDinhKemId": "F-261020-0007-01", "TenTepDinhKem": "Đơn đề nghị cấp Giấy chứng nhận.pdf",
             "IsDeleted": "False", "MaThanhPhanHoSo": "TP01",
             "DuongDanTaiTepTin": "https://motcua.quangnam.gov.vn/files/F-261020-0007-01", "DuocSoHoa": "1"},
            {"TepDinhKemId": "F-261020-0007-02",
             "TenTepDinhKem": "Bản thuyết minh về cơ sở vật chất, trang thiết bị.pdf",
             "IsDeleted": "False", "MaThanhPhanHoSo": "TP02",
             "DuongDanTaiTepTin": "https://motcua.quangnam.gov.vn/files/F-261020-0007-02", "DuocSoHoa": "1"},
        ],
        "DanhSachLePhi": [
            {"TenPhiLePhi": "Phí thẩm định cơ sở đủ điều kiện an toàn thực phẩm", "MaPhiLePhi": "ATTP01",
             "Gia": "1000000", "LoaiPhiLePhi": "1"},
        ],
        "DanhSachGiayToKetQua": [
            {"GiayToId": "KQ-261020-0007-01", "TenGiayTo": "Giấy chứng nhận cơ sở đủ điều kiện an toàn thực phẩm",
             "MaThanhPhanHoSo": "KQ01", "DuongDanTepTinKetQua": "https://motcua.quangnam.gov.vn/results/KQ-261020-0007-01",
             "MaGiayToKetQua": "KQ.G13.000412"},
        ],
    }


@pytest.mark.parametrize("name, expected", [
    ("new-at-counter", {"TrangThaiHoSo": "2", "KenhThucHien": "1", "NgayTiepNhan": "20261102081500",
                        "Email": "", "DanhSachLePhi": [], "DuocThanhToanTrucTuyen": "0", "HoSoCoThanhPhanSoHoa": "1"}),
    # not yet received: the portal still requires NgayTiepNhan, and the submission time stands in
    ("receiving-online", {"TrangThaiHoSo": "1", "NgayTiepNhan": "20261103220541", "NgayHenTra": "", "SoBienNhan": "",
                          "SoDienThoai": "", "DinhDanhCHS": [{"LoaiDinhDanh": "2", "SoDinhDanh": "205123456"}],
                          "HoSoCoThanhPhanSoHoa": "0"}),
    ("denied-at-reception", {"TrangThaiHoSo": "3", "NgayTiepNhan": "20261104092000", "NgayTuChoi": "20261104092000",
                             "NgayTra": "20261104092000"}),
])
def test_valid_samples_map(dossier, name, expected):
    output = dossier.apply(sample(name))
    assert {k: output[k] for k in expected} == expected


def test_every_valid_sample_maps_and_every_defective_one_fails(dossier):
    for path in sorted(SAMPLES.glob("dossier.*.json")):
        _output, errors = dossier.translate(json.loads(path.read_text(encoding="utf-8")))
        assert bool(errors) == (".defective-" in path.name), (path.name, errors)


DEFECTIVE = [
    ("no-receive-date", "000.00.01.H49-261030-0015", [("NgayTiepNhan", "required")]),
    ("interoperating", "000.00.01.H49-261027-0003", [("TrangThaiHoSo", "code_table")]),
    ("empty-service-code", "000.00.01.H49-261102-0006", [("MaTTHC", "required")]),
    ("naive-datetime", "000.00.01.H49-261102-0008", [("NgayHenTra", "timezone")]),
    ("long-brief-note", "000.00.01.H49-261021-0002", [("TrichYeuHoSo", "max_length")]),
    ("several-at-once", "<no dossierNo>", [
        ("MaHoSo", "required"), ("LoaiDoiTuong", "code_table"),
        ("TaiLieuNop[2].DuongDanTaiTepTin", "required"), ("DanhSachLePhi[0].Gia", "type")]),
]


@pytest.mark.parametrize("name, key, expected", DEFECTIVE, ids=[c[0] for c in DEFECTIVE])
def test_defective_samples_give_exactly_these_errors(dossier, name, key, expected):
    with pytest.raises(RecordInvalid) as caught:
        dossier.apply(sample(f"defective-{name}"))
    assert isinstance(caught.value, RecordRejected)
    assert caught.value.record_key == key
    assert caught.value.mapping == DOSSIER
    assert fields_and_rules(caught.value) == expected


def test_error_messages_name_the_source_path_and_the_value(dossier):
    with pytest.raises(RecordInvalid) as caught:
        dossier.apply(sample("defective-interoperating"))
    (error,) = caught.value.errors
    assert error.message.startswith(
        "dossierStatus 'interoperating' is not in code table trang_thai_ho_so (known: receiving, new, denied,")
    assert "deliberately not mapped: the dossier was handed to another agency's system" in error.message

    with pytest.raises(RecordInvalid) as caught:
        dossier.apply(sample("defective-no-receive-date"))
    assert caught.value.errors[0].message == (
        "receiveDate is missing (its fallback submitDate only stands in when dossierStatus is one of "
        "[receiving]; dossierStatus is 'processing'); NgayTiepNhan is required")

    with pytest.raises(RecordInvalid) as caught:
        dossier.apply(sample("defective-several-at-once"))
    messages = {e.field: e.message for e in caught.value.errors}
    assert messages["TaiLieuNop[2].DuongDanTaiTepTin"].startswith("files[2].url is missing")
    assert messages["DanhSachLePhi[0].Gia"].startswith("fees[0].amount '200.000' is text")


def test_personal_values_stay_out_of_error_messages(dossier):
    record = sample("new-at-counter")
    record["applicantIdNo"] = "04919000123X"
    with pytest.raises(RecordInvalid) as caught:
        dossier.apply(record)
    assert fields_and_rules(caught.value) == [("DinhDanhCHS[0].SoDinhDanh", "format")]
    assert "04919000123X" not in str(caught.value)


@pytest.mark.parametrize("phone", ["0901-234-567", "99999999999999999999"])  # not an integer; too large
def test_typed_personal_value_stays_out_of_error_messages(tmp_path, phone):
    mapping = load_mapping(write_mapping(tmp_path, "Phone: {from: phone, personal: true, type: integer}\n"))
    with pytest.raises(RecordInvalid) as caught:
        mapping.apply({"dossierNo": "k", "phone": phone})
    assert fields_and_rules(caught.value) == [("Phone", "type")]
    assert phone not in str(caught.value)  # it said "phone '0901-234-567' is not an integer, ..."
    assert caught.value.errors[0].message.startswith("phone is ")


# ---------------------------------------------------------------------------------------------
# Text, time, lists


def test_nfd_input_comes_out_nfc(dossier):
    record = sample("new-at-counter")
    record["applicantName"] = unicodedata.normalize("NFD", "Nguyễn Thị Thu Hà")
    record["files"][0]["displayName"] = unicodedata.normalize("NFD", "Tờ khai đăng ký kết hôn.pdf")
    assert record["applicantName"] != "Nguyễn Thị Thu Hà"
    output = dossier.apply(record)
    assert output["ChuHoSo"] == "Nguyễn Thị Thu Hà"
    assert output["TaiLieuNop"][0]["TenTepDinhKem"] == "Tờ khai đăng ký kết hôn.pdf"
    strings = []
    _collect_strings(output, strings)
    assert all(unicodedata.is_normalized("NFC", s) for s in strings)


def _collect_strings(value, out):
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _collect_strings(v, out)
    elif isinstance(value, list):
        for v in value:
            _collect_strings(v, out)


def test_length_limit_counts_characters_after_nfc(dossier):
    record = sample("new-at-counter")
    record["briefNote"] = unicodedata.normalize("NFD", "ệ" * 1000)  # 3000 code points before NFC
    assert dossier.apply(record)["TrichYeuHoSo"] == "ệ" * 1000


@pytest.mark.parametrize("given, expected", [
    ("2026-11-02T01:15:00+00:00", "20261102081500"),
    ("2026-11-02T20:30:00+00:00", "20261103033000"),  # the next day in Hà Nội
    ("2026-11-02T20:30:00Z", "20261103033000"),
    ("2026-11-02T10:15:00+09:00", "20261102081500"),
    ("2026-11-02T08:15:00.750+07:00", "20261102081500"),
])
def test_time_zone_conversion_to_ho_chi_minh(dossier, given, expected):
    record = sample("new-at-counter")
    record["receiveDate"] = given
    assert dossier.apply(record)["NgayTiepNhan"] == expected


@pytest.mark.parametrize("given, rule", [
    ("2026-11-02T08:15:00", "timezone"),
    ("2026-11-02", "format"),
    ("02/11/2026 08:15", "format"),
    (20261102081500, "type"),
])
def test_bad_dates_are_errors_not_guesses(dossier, given, rule):
    record = sample("new-at-counter")
    record["receiveDate"] = given
    with pytest.raises(RecordInvalid) as caught:
        dossier.apply(record)
    assert fields_and_rules(caught.value) == [("NgayTiepNhan", rule)]


@pytest.mark.parametrize("given", ["0999-01-01", "0001-12-31"])
def test_portal_date_refuses_a_year_it_cannot_write_in_eight_digits(given):
    # strftime wrote "0999-01-01" as the 7-digit "9990101"; portal_datetime already refused such years
    with pytest.raises(TransformError) as caught:
        TRANSFORMS["portal_date"].function(given)
    assert caught.value.rule == "format"
    assert TRANSFORMS["portal_date"].function("1000-01-01") == "10000101"


def test_submit_date_stands_in_for_the_receive_date_only_while_receiving(dossier):
    record = sample("receiving-online")
    assert dossier.apply(record)["NgayTiepNhan"] == "20261103220541"
    record["submitDate"] = None
    with pytest.raises(RecordInvalid) as caught:
        dossier.apply(record)
    assert caught.value.errors[0].message == (
        "receiveDate is missing and so is its fallback submitDate; NgayTiepNhan is required")
    processing = sample("processing-paid-online")
    processing["receiveDate"] = None
    with pytest.raises(RecordInvalid) as caught:
        dossier.apply(processing)
    assert fields_and_rules(caught.value) == [("NgayTiepNhan", "required")]


def test_missing_optional_dates_become_empty_text(dossier):
    record = sample("new-at-counter")
    del record["dueDate"]
    record["submitDate"] = None
    output = dossier.apply(record)
    assert output["NgayHenTra"] == "" and output["NgayNopHoSo"] == ""


def test_unpaid_fees_are_left_out(dossier):
    record = sample("processing-paid-online")
    assert [f["paid"] for f in record["fees"]] == [True, False]
    assert [f["MaPhiLePhi"] for f in dossier.apply(record)["DanhSachLePhi"]] == ["PLLTP01"]
    for fee in record["fees"]:
        fee["paid"] = False
    output = dossier.apply(record)
    assert output["DanhSachLePhi"] == [] and output["DuocThanhToanTrucTuyen"] == "0"


def test_removed_files_are_sent_marked_deleted(dossier):
    output = dossier.apply(sample("processing-paid-online"))
    assert [f["IsDeleted"] for f in output["TaiLieuNop"]] == ["False", "True", "False"]


def test_list_errors_carry_the_target_index_after_filtering(dossier):
    record = sample("processing-paid-online")
    record["fees"].insert(0, {"feeCode": "X", "feeName": "Chưa nộp", "feeKind": "fee", "amount": 1,
                              "paid": False, "paidOnline": False})
    record["fees"][2]["paid"] = True
    record["fees"][2]["feeKind"] = "tax"
    record["files"][1]["displayName"] = "x" * 4001
    with pytest.raises(RecordInvalid) as caught:
        dossier.apply(record)
    assert fields_and_rules(caught.value) == [
        ("TaiLieuNop[1].TenTepDinhKem", "max_length"), ("DanhSachLePhi[1].LoaiPhiLePhi", "code_table")]
    assert caught.value.errors[1].message.startswith("fees[2].feeKind 'tax' is not in code table loai_phi_le_phi")


@pytest.mark.parametrize("change, expected", [
    # HoSoCoThanhPhanSoHoa reads the files too, so it reports the same broken shape
    (lambda r: r.update(files="none"), [("HoSoCoThanhPhanSoHoa", "type"), ("TaiLieuNop", "type")]),
    (lambda r: r["files"].__setitem__(0, "a.pdf"), [("HoSoCoThanhPhanSoHoa", "type"), ("TaiLieuNop[0]", "type")]),
    (lambda r: r.update(serviceName=12), [("TenTTHC", "type")]),
    (lambda r: r.update(briefNote="   "), [("TrichYeuHoSo", "required")]),
    (lambda r: r["files"][0].update(removed="no"), [("TaiLieuNop[0].IsDeleted", "type")]),
], ids=["list-not-a-list", "item-not-an-object", "number-for-text", "blank-text", "flag-not-boolean"])
def test_wrong_shapes_are_type_errors(dossier, change, expected):
    record = sample("new-at-counter")
    change(record)
    with pytest.raises(RecordInvalid) as caught:
        dossier.apply(record)
    assert fields_and_rules(caught.value) == expected


def test_record_that_is_not_an_object(dossier):
    with pytest.raises(RecordInvalid) as caught:
        dossier.apply(["not", "a", "record"])
    assert caught.value.record_key == "<no dossierNo>"
    assert caught.value.errors == (FieldError("<record>", "type", "the record is a list, expected an object"),)


def test_apply_leaves_the_source_record_alone(dossier):
    record = sample("processing-paid-online")
    before = copy.deepcopy(record)
    dossier.apply(record)
    assert record == before


def test_record_key(dossier):
    assert dossier.record_key(sample("new-at-counter")) == "000.00.01.H49-261102-0001"
    assert dossier.record_key({"dossierNo": ""}) == "<no dossierNo>"
    assert dossier.record_key({}) == "<no dossierNo>"


def test_mask_personal_hides_ids_phone_and_email(dossier):
    masked = dossier.mask_personal(dossier.apply(sample("processing-paid-online")))
    assert masked["SoGiayToChuHoSo"] == "*********321"
    assert masked["DinhDanhCHS"][0]["SoDinhDanh"] == "*********321"
    assert masked["Email"].endswith(".vn") and "tranvanduc" not in masked["Email"]
    assert masked["ChuHoSo"] == "Trần Văn Đức"


def test_typed_personal_value_is_masked_in_previews(tmp_path):
    mapping = load_mapping(write_mapping(tmp_path, "IdNo: {from: idNo, personal: true, type: integer}\n"
                                                   "Flag: {from: flag, personal: true, type: boolean}\n"))
    output = mapping.apply({"dossierNo": "k", "idNo": "12345678901", "flag": "false"})
    assert output == {"IdNo": 12345678901, "Flag": False}
    # it was shown unmasked: _mask only masked text
    assert mapping.mask_personal(output) == {"IdNo": "********901", "Flag": "***"}


# Blank text a transform gives (first/last picking a blank item) was sent, past required: every way
# the engine maps a field (the general step, the fast steps of a plain key and of outer.inner, the
# inline builder) now treats it as no value, as blank text read from a path is.
BLANK_FROM_A_TRANSFORM = [
    ("A: {from: 'x[*].y', transform: first, required: true}\n", {"x": [{"y": ""}]}),
    ("A: {from: 'x[*].y', transform: [last, string], required: true}\n", {"x": [{"y": "a"}, {"y": "   "}]}),
    ("A: {from: x, transform: first, required: true}\n", {"x": [" ", "a"]}),
    ("A: {from: o.x, transform: last, required: true}\n", {"o": {"x": ["a", "\t"]}}),
]


@pytest.mark.parametrize("fields, record", BLANK_FROM_A_TRANSFORM)
def test_blank_text_a_transform_gives_is_no_value(tmp_path, fields, record):
    required = load_mapping(write_mapping(tmp_path / "required", fields))
    with pytest.raises(RecordInvalid) as caught:
        required.apply({"dossierNo": "k", **record})
    assert fields_and_rules(caught.value) == [("A", "required")]
    plain = load_mapping(write_mapping(tmp_path / "plain", fields.replace(", required: true", "")))
    assert plain.apply({"dossierNo": "k", **record}) == {"A": ""}


CHAINED = """\
F: {from: flag, transform: [word_bool, bool_flag]}
R: {from: flag, transform: [word_bool, bool_text], required: true}
D: {from: flag, transform: [word_bool, bool_text], default: "false"}
P: {from: x.flag, transform: [word_bool, bool_flag]}
L:
  each:
    from: files
    fields:
      IsDeleted: {from: removed, transform: [word_bool, bool_text], default: "false"}
      N: {from: n, transform: [string, strip]}
"""


@pytest.mark.parametrize("flag", ["true", "false", "", "  ", None, "yes", 1, True, [], {"a": 1}, "TRUE"])
def test_chained_transforms_give_what_each_field_gives_alone(tmp_path, flag):
    """A field with several transforms is mapped inline by the generated builder (issue #8); what it
    gives, value or errors, is what the field's own step gives on the same record, and a default
    goes through the transforms like a source value."""
    mapping = load_mapping(write_mapping(tmp_path, CHAINED))
    record = {"flag": flag, "x": {"flag": flag}, "files": [{"removed": flag, "n": 7}, {"n": " a "}]}
    output, errors = mapping.translate(record)
    alone_errors: list[FieldError] = []
    alone = {name: step(record, record, alone_errors, None) for name, step in mapping._steps}
    assert output == alone
    assert [(e.field, e.rule, e.message) for e in errors] == [(e.field, e.rule, e.message) for e in alone_errors]
    words = {"true": ("1", "True"), "false": ("0", "False")}
    if isinstance(flag, str) and flag in words:
        flag_value, text = words[flag]
        assert (output["F"], output["R"], output["D"], output["P"]) == (flag_value, text, text, flag_value)
        assert output["L"] == [{"IsDeleted": text, "N": "7"}, {"IsDeleted": "False", "N": "a"}]
        assert errors == []
    elif flag in ("", None):
        assert (output["F"], output["D"], output["P"]) == ("", "False", "")
        assert [(e.field, e.rule) for e in errors] == [("R", "required")]
    elif isinstance(flag, str) and flag.isspace():
        assert [(e.field, e.rule) for e in errors] == [("R", "required")]
    else:
        assert {e.field for e in errors} == {"F", "R", "D", "P", "L[0].IsDeleted"}, errors
        assert {e.rule for e in errors} == {"type"}, errors


# \d of Python's re is any script's digit: '٠٤٩١٩٠٠٠١٢٣٤' (Arabic-Indic) met '\d{9}|\d{12}' and was sent
# to the portal as an ID number, a dossier code of such digits met the dossier code's pattern, and
# a typed integer field made 12 of '١٢'. Digits in patterns and typed numbers are 0-9 only.
ARABIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


def test_other_scripts_digits_do_not_meet_digit_patterns(tmp_path):
    mapping = load_mapping(write_mapping(tmp_path, "A: {from: a, pattern: '\\d{3}'}\nI: {from: i, type: integer}\n"
                                                   "N: {from: n, type: number}\n"
                                                   "U: {from: u, transform: unit_of_dossier_code}\n"))
    assert mapping.apply({"a": "123", "i": "12", "n": "1.5", "u": "000.00.01.H49-261102-0001"}) == {
        "A": "123", "I": 12, "N": 1.5, "U": "000.00.01.H49"}
    with pytest.raises(RecordInvalid) as caught:
        mapping.apply({"a": "١٢٣", "i": "١٢", "n": "١.٥", "u": "000.00.01.H49-261102-0001".translate(ARABIC)})
    assert fields_and_rules(caught.value) == [("A", "format"), ("I", "type"), ("N", "type"), ("U", "format")]


def test_a_dossier_in_other_scripts_digits_is_refused_naming_the_fields():
    record = sample("new-at-counter")
    for changed in ("dossierNo", "applicantIdNo"):
        broken = {**record, changed: record[changed].translate(ARABIC)}
        field = {"dossierNo": "MaHoSo", "applicantIdNo": "DinhDanhCHS[0].SoDinhDanh"}[changed]
        for name in (DOSSIER, "onestop__national_portal/dossier"):
            with pytest.raises(RecordInvalid) as caught:
                load_mapping(name).apply(broken)
            assert fields_and_rules(caught.value) == [(field, "format")]


@pytest.mark.parametrize("given", ["2026-11- 2", "2026- 1-02", "２０２６-11-02", "٢٠٢٦-11-02", "2026-11-0２"])
def test_portal_date_takes_only_ascii_digits_in_their_places(given):
    """strptime's %m/%d read a space for a leading zero and other scripts' digits as digits, so
    '2026-11- 2' became 20261102: a day written some other way is a format error, not a guess."""
    with pytest.raises(TransformError) as caught:
        TRANSFORMS["portal_date"].function(given)
    assert caught.value.rule == "format"
    assert TRANSFORMS["portal_date"].function("2026-11-02") == "20261102"
