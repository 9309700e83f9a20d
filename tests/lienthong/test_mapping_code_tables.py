"""Shared code tables (code_tables_from + code-table files) and composite record keys."""

from __future__ import annotations

import os
import textwrap
import unicodedata
from pathlib import Path

import pytest

from connectors.errors import ConfigurationError
from lienthong.mapping import (
    MappingFileError,
    is_code_table_file,
    list_code_table_files,
    list_mappings,
    load_code_tables,
    load_mapping,
)

REPO = Path(__file__).resolve().parents[2]
DIRECTORY = "onestop__national_portal"

STATUS_TABLE = """\
description: shared test tables
code_tables:
  status:
    values: {new: "2", done: "10"}
    not_mapped: {interoperating: handed to another system}
"""


@pytest.fixture(autouse=True)
def _repo_mappings(monkeypatch):
    monkeypatch.delenv("LIENTHONG_MAPPINGS_DIR", raising=False)


def mapping_text(name: str = "case", *, tables_from: str | None = "code_tables.yaml", own_tables: str = "",
                 record_key: str = "dossierNo", fields: str = "S: {from: st, code_table: status, required: true}\n") -> str:
    lines = [
        f"name: {DIRECTORY}/{name}",
        "version: 1",
        "description: a test mapping",
        "source: {system: onestop, record: dossier}",
        "target: {system: national_portal, record: DongBoHoSoMC}",
        f"record_key: {record_key}",
    ]
    if tables_from is not None:
        lines.append(f"code_tables_from: {tables_from}")
    if own_tables:
        lines.append("code_tables:\n" + textwrap.indent(textwrap.dedent(own_tables), "  ").rstrip("\n"))
    lines.append("fields:\n" + textwrap.indent(textwrap.dedent(fields), "  ").rstrip("\n"))
    return "\n".join(lines) + "\n"


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def touch_later(path: Path) -> None:
    """Make a rewrite visible to the cache even on a coarse clock."""
    later = path.stat().st_mtime_ns + 10_000_000
    os.utime(path, ns=(later, later))


# ---------------------------------------------------------------------------------------------
# Using shared tables


def test_a_mapping_uses_the_tables_of_its_code_table_file(tmp_path):
    tables = write(tmp_path, f"{DIRECTORY}/code_tables.yaml", STATUS_TABLE)
    mapping = load_mapping(write(tmp_path, f"{DIRECTORY}/case.yaml", mapping_text()))
    assert mapping.apply({"st": "done"}) == {"S": "10"}
    assert mapping.code_table_files == (tables.resolve(),)
    assert list(mapping.code_tables) == ["status"]


def test_shared_and_own_tables_together_and_a_list_of_files_in_a_sibling_directory(tmp_path):
    write(tmp_path, f"{DIRECTORY}/code_tables.yaml", STATUS_TABLE)
    write(tmp_path, "shared/channel_code_tables.yaml", 'code_tables:\n  channel: {values: {online: "2"}}\n')
    text = mapping_text(
        tables_from="[code_tables.yaml, ../shared/channel_code_tables.yaml]",
        own_tables='kind: {values: {citizen: "1"}}\n',
        fields="S: {from: st, code_table: status}\nC: {from: ch, code_table: channel}\nK: {from: k, code_table: kind}\n",
    )
    mapping = load_mapping(write(tmp_path, f"{DIRECTORY}/case.yaml", text))
    assert mapping.apply({"st": "new", "ch": "online", "k": "citizen"}) == {"S": "2", "C": "2", "K": "1"}
    assert [p.name for p in mapping.code_table_files] == ["code_tables.yaml", "channel_code_tables.yaml"]


def test_a_shared_table_keeps_its_not_mapped_reasons(tmp_path):
    write(tmp_path, f"{DIRECTORY}/code_tables.yaml", STATUS_TABLE)
    mapping = load_mapping(write(tmp_path, f"{DIRECTORY}/case.yaml", mapping_text()))
    _output, errors = mapping.translate({"st": "interoperating"})
    assert [(e.field, e.rule, e.message) for e in errors] == [
        ("S", "code_table", "st 'interoperating' is not in code table status (known: new, done); "
                            "deliberately not mapped: handed to another system")]


def test_two_mappings_share_one_loaded_table(tmp_path):
    write(tmp_path, f"{DIRECTORY}/code_tables.yaml", STATUS_TABLE)
    one = load_mapping(write(tmp_path, f"{DIRECTORY}/one.yaml", mapping_text("one")))
    two = load_mapping(write(tmp_path, f"{DIRECTORY}/two.yaml", mapping_text("two")))
    assert one.code_tables["status"] is two.code_tables["status"]


# ---------------------------------------------------------------------------------------------
# Fingerprint and cache follow the code-table file


def test_changing_a_shared_table_reloads_the_mapping_and_changes_its_fingerprint(tmp_path):
    tables = write(tmp_path, f"{DIRECTORY}/code_tables.yaml", STATUS_TABLE)
    path = write(tmp_path, f"{DIRECTORY}/case.yaml", mapping_text())
    first = load_mapping(path)
    assert load_mapping(path) is first
    tables.write_text(STATUS_TABLE.replace('done: "10"', 'done: "9"'), encoding="utf-8")
    touch_later(tables)
    second = load_mapping(path)  # the mapping file itself did not change
    assert second is not first
    assert second.apply({"st": "done"}) == {"S": "9"}
    assert second.fingerprint != first.fingerprint


def test_the_fingerprint_ignores_comments_and_layout_of_the_code_table_file(tmp_path):
    write(tmp_path, f"a/{DIRECTORY}/code_tables.yaml", STATUS_TABLE)
    write(tmp_path, f"b/{DIRECTORY}/code_tables.yaml", "# the same tables\n" + STATUS_TABLE.replace(
        'values: {new: "2", done: "10"}', 'values:\n      new: "2"     # received\n      done: "10"'))
    a = load_mapping(write(tmp_path, f"a/{DIRECTORY}/case.yaml", mapping_text()))
    b = load_mapping(write(tmp_path, f"b/{DIRECTORY}/case.yaml", mapping_text()))
    assert a.fingerprint == b.fingerprint


def test_moving_a_table_into_a_code_table_file_keeps_the_output(tmp_path):
    own = load_mapping(write(tmp_path, f"a/{DIRECTORY}/case.yaml", mapping_text(
        tables_from=None, own_tables='status: {values: {new: "2", done: "10"}}\n')))
    write(tmp_path, f"b/{DIRECTORY}/code_tables.yaml", STATUS_TABLE)
    shared = load_mapping(write(tmp_path, f"b/{DIRECTORY}/case.yaml", mapping_text()))
    for status in ("new", "done"):
        assert own.apply({"st": status}) == shared.apply({"st": status})
    assert own.fingerprint != shared.fingerprint


# ---------------------------------------------------------------------------------------------
# Broken references and broken code-table files

MAPPING_PROBLEMS = [
    # (id, files to write {relative path: text}, expected (path, rule) in the mapping file)
    ("file-missing", {}, ("code_tables_from", "code_tables_from")),
    ("file-missing-in-a-list", {"code_tables.yaml": STATUS_TABLE},
     ("code_tables_from[1]", "code_tables_from")),
    ("table-also-defined-in-the-mapping", {"code_tables.yaml": STATUS_TABLE},
     ("code_tables.status", "duplicate_code_table")),
    ("table-defined-in-two-files", {"code_tables.yaml": STATUS_TABLE, "other_code_tables.yaml": STATUS_TABLE},
     ("code_tables_from[1]", "duplicate_code_table")),
    ("table-in-no-file", {"code_tables.yaml": STATUS_TABLE.replace("  status:", "  state:")},
     ("fields.S.code_table", "unknown_code_table")),
]
REFERENCES = {
    "file-missing": "code_tables.yaml",
    "file-missing-in-a-list": "[code_tables.yaml, absent_code_tables.yaml]",
    "table-also-defined-in-the-mapping": "code_tables.yaml",
    "table-defined-in-two-files": "[code_tables.yaml, other_code_tables.yaml]",
    "table-in-no-file": "code_tables.yaml",
}


@pytest.mark.parametrize("case, files, expected", MAPPING_PROBLEMS, ids=[c[0] for c in MAPPING_PROBLEMS])
def test_broken_references_name_the_mapping_file_the_place_and_the_rule(tmp_path, case, files, expected):
    for relative, text in files.items():
        write(tmp_path, f"{DIRECTORY}/{relative}", text)
    own = 'status: {values: {new: "2"}}\n' if case == "table-also-defined-in-the-mapping" else ""
    path = write(tmp_path, f"{DIRECTORY}/case.yaml", mapping_text(tables_from=REFERENCES[case], own_tables=own))
    with pytest.raises(MappingFileError) as caught:
        load_mapping(path)
    error = caught.value
    assert isinstance(error, ConfigurationError)
    assert error.file == path.resolve() and error.included_by is None
    assert expected in [(p.path, p.rule) for p in error.problems], error.problems
    assert str(error).startswith(f"mapping file {path.resolve()}")


def test_duplicate_and_missing_tables_are_explained(tmp_path):
    write(tmp_path, f"{DIRECTORY}/code_tables.yaml", STATUS_TABLE)
    write(tmp_path, f"{DIRECTORY}/other_code_tables.yaml", STATUS_TABLE)
    path = write(tmp_path, f"{DIRECTORY}/case.yaml", mapping_text(
        tables_from="[code_tables.yaml, other_code_tables.yaml, gone_code_tables.yaml]",
        own_tables='status: {values: {new: "2"}}\n'))
    with pytest.raises(MappingFileError) as caught:
        load_mapping(path)
    gone = (path.parent / "gone_code_tables.yaml").resolve()
    assert [(p.path, p.rule, p.message) for p in caught.value.problems] == [
        ("code_tables_from[1]", "duplicate_code_table",
         "code table 'status' is defined in both code_tables.yaml and other_code_tables.yaml; define it in one place"),
        ("code_tables_from[2]", "code_tables_from", f"no code-table file 'gone_code_tables.yaml' (looked for {gone})"),
        ("code_tables.status", "duplicate_code_table",
         "code table 'status' is also defined in code_tables.yaml (code_tables_from); define it in one place"),
    ]


TABLE_FILE_PROBLEMS = [
    # (id, code-table file text, expected (path, rule) in the code-table file)
    ("unquoted-code", STATUS_TABLE.replace('new: "2"', "new: 2"), ("code_tables.status.values.new", "type")),
    ("a-mapping-key", STATUS_TABLE + "fields: {A: {from: a}}\n", ("fields", "additionalProperties")),
    ("no-tables", "description: nothing\n", ("", "required")),
    ("empty-tables", "code_tables: {}\n", ("code_tables", "minProperties")),
    ("bad-table-name", STATUS_TABLE.replace("  status:", "  Status:"), ("code_tables", "pattern")),
    ("mapped-and-not-mapped", STATUS_TABLE.replace("{interoperating:", "{done:"),
     ("code_tables.status.not_mapped.done", "conflict")),
    ("table-twice", STATUS_TABLE + '  status: {values: {x: "1"}}\n', ("code_tables.status", "duplicate_key")),
    ("key-in-two-unicode-forms", STATUS_TABLE.replace("done:", '"Ngày": "1", "Nga\u0300y":'),
     ("code_tables.status.values.Ngày", "duplicate_key")),
    ("blank-key", STATUS_TABLE.replace('new: "2"', 'new: "2", " ": "0"'), ("code_tables.status.values", "code_table_key")),
    ("not-yaml", "code_tables: {status: [\n", ("", "yaml")),
    ("not-a-mapping", "- status\n", ("", "type")),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in TABLE_FILE_PROBLEMS], ids=[c[0] for c in TABLE_FILE_PROBLEMS])
def test_a_broken_code_table_file_is_named_with_the_place_and_the_rule(tmp_path, text, expected):
    tables = write(tmp_path, f"{DIRECTORY}/code_tables.yaml", text)
    path = write(tmp_path, f"{DIRECTORY}/case.yaml", mapping_text())
    with pytest.raises(MappingFileError) as caught:
        load_mapping(path)
    error = caught.value
    assert error.file == tables.resolve() and error.included_by == path.resolve()
    assert expected in [(p.path, p.rule) for p in error.problems], error.problems
    assert str(error).startswith(f"code-table file {tables.resolve()} (in code_tables_from of {path.resolve()}):")
    # the same problems when the file is loaded on its own
    with pytest.raises(MappingFileError) as alone:
        load_code_tables(tables)
    assert alone.value.problems == error.problems and alone.value.included_by is None


def test_code_table_keys_equal_after_nfc_are_a_duplicate_key(tmp_path):
    nfc = "Ngày"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    own = f'''\
        unit:
          values:
            "{nfc}": day
            "{nfd}": working_day
        '''
    path = write(tmp_path, f"{DIRECTORY}/case.yaml",
                 mapping_text(tables_from=None, own_tables=own, fields="Unit: {from: unit, code_table: unit}\n"))
    with pytest.raises(MappingFileError) as caught:
        # it loaded, the file read as NFC: "Ngày" (either form) → working_day, the "day" entry silently dropped
        load_mapping(path)
    assert [(p.path, p.rule) for p in caught.value.problems] == [("code_tables.unit.values.Ngày", "duplicate_key")]
    assert "two Unicode forms" in str(caught.value)


# ---------------------------------------------------------------------------------------------
# A code-table file is not a mapping


def test_code_table_files_are_not_mappings(tmp_path, monkeypatch):
    write(tmp_path, f"{DIRECTORY}/code_tables.yaml", STATUS_TABLE)
    write(tmp_path, f"{DIRECTORY}/dates_code_tables.yaml", 'code_tables:\n  d: {values: {a: "1"}}\n')
    write(tmp_path, f"{DIRECTORY}/case.yaml", mapping_text())
    monkeypatch.setenv("LIENTHONG_MAPPINGS_DIR", str(tmp_path))
    assert list_mappings() == [f"{DIRECTORY}/case"]
    assert [p.name for p in list_code_table_files()] == ["code_tables.yaml", "dates_code_tables.yaml"]
    with pytest.raises(ConfigurationError, match="is a code-table file, not a mapping"):
        load_mapping(f"{DIRECTORY}/code_tables")
    with pytest.raises(ConfigurationError, match="is a code-table file, not a mapping"):
        load_mapping(tmp_path / DIRECTORY / "dates_code_tables.yaml")
    assert is_code_table_file("x/code_tables.yaml") and is_code_table_file("status_code_tables.yaml")
    assert not is_code_table_file("x/progress.yaml") and not is_code_table_file("mycode_tables.yaml")


def test_the_repository_status_table_is_shared_by_dossier_and_progress():
    shared = REPO / "mappings" / DIRECTORY / "code_tables.yaml"
    loaded = load_code_tables(shared)
    assert list(loaded.tables) == ["trang_thai_ho_so"]
    # the direct mappings (the names onestop__national_portal/dossier and /progress are chains now)
    dossier = load_mapping(REPO / "mappings" / DIRECTORY / "dossier.direct.yaml")
    progress = load_mapping(REPO / "mappings" / DIRECTORY / "progress.direct.yaml")
    assert dossier.code_table_files == progress.code_table_files == (shared.resolve(),)
    assert dossier.code_tables["trang_thai_ho_so"] is progress.code_tables["trang_thai_ho_so"]
    # defined once: no mapping file of the directory copies the table
    for name in list_mappings():
        text = (REPO / "mappings" / f"{name}.yaml").read_text(encoding="utf-8")
        assert "\n  trang_thai_ho_so:" not in text, name
        assert "\n  canonical_status:" not in text, name
    assert loaded.tables["trang_thai_ho_so"].values == {
        "receiving": "1", "new": "2", "denied": "3", "processing": "4", "waiting": "5", "paying": "6",
        "cancelled": "7", "unresolved": "8", "releasing": "9", "done": "10"}


# ---------------------------------------------------------------------------------------------
# Composite record keys


@pytest.fixture()
def keyed(tmp_path):
    write(tmp_path, f"{DIRECTORY}/code_tables.yaml", STATUS_TABLE)
    return load_mapping(write(tmp_path, f"{DIRECTORY}/case.yaml", mapping_text(record_key="[dossierNo, stepId]")))


def test_a_composite_key_joins_its_parts_with_a_hash(keyed):
    assert keyed.record_key_paths == ("dossierNo", "stepId")
    assert keyed.record_key_path == "dossierNo#stepId"
    assert keyed.record_key({"dossierNo": "000.00.01.H49-261029-0012", "stepId": 2}) == "000.00.01.H49-261029-0012#2"
    assert keyed.record_key({"dossierNo": "D", "stepId": "7a"}) == "D#7a"


@pytest.mark.parametrize("record, expected", [
    ({"dossierNo": "D"}, "D#<no stepId>"),
    ({"stepId": 3}, "<no dossierNo>#3"),
    ({"dossierNo": " ", "stepId": True}, "<no dossierNo>#<no stepId>"),
    ({"dossierNo": "D", "stepId": 2.5}, "D#<no stepId>"),
    ([], "<no dossierNo>#<no stepId>"),
])
def test_missing_parts_of_a_composite_key_are_named(keyed, record, expected):
    assert keyed.record_key(record) == expected


def test_a_rejected_record_carries_its_composite_key(keyed):
    from lienthong.mapping import RecordInvalid

    with pytest.raises(RecordInvalid) as caught:
        keyed.apply({"dossierNo": "D", "stepId": 4, "st": "interoperating"})
    assert caught.value.record_key == "D#4"
