"""The progress mapping: one one-stop progress entry (+ dossierNo) → one CapNhatTienDoHoSoMC record."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from connectors.errors import RecordRejected
from lienthong.mapping import Mapping, RecordInvalid, load_mapping

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "fixtures" / "samples" / "onestop"
PROGRESS = "onestop__national_portal/progress.direct"  # the direct mapping; the chain: test_mapping_chain.py
DIRECT = Path(__file__).resolve().parents[2] / "mappings" / "onestop__national_portal"


@pytest.fixture(autouse=True)
def _repo_mappings(monkeypatch):
    monkeypatch.delenv("LIENTHONG_MAPPINGS_DIR", raising=False)


@pytest.fixture(scope="module")
def progress() -> Mapping:
    return load_mapping(DIRECT / "progress.direct.yaml")


def sample(name: str) -> dict:
    return json.loads((SAMPLES / f"progress.{name}.json").read_text(encoding="utf-8"))


def errors_of(mapping: Mapping, record: dict) -> list[tuple[str, str, str]]:
    with pytest.raises(RecordInvalid) as caught:
        mapping.apply(record)
    return [(e.field, e.rule, e.message) for e in caught.value.errors]


def test_progress_mapping_metadata(progress):
    assert progress.name == PROGRESS and progress.version == 2
    assert progress.source["system"] == "onestop" and progress.source["record"] == "progress"
    assert progress.target["system"] == "national_portal" and progress.target["record"] == "CapNhatTienDoHoSoMC"
    assert progress.target_fields == (
        "MaHoSo", "NguoiXuLy", "ChucDanh", "ThoiDiemXuLy", "PhongBanXuLy", "NoiDungXuLy", "TrangThai",
        "NgayBatDau", "NgayKetThucTheoQuyDinh")
    assert progress.record_key_paths == ("dossierNo", "stepId")
    assert progress.personal_fields == ()
    assert [p.name for p in progress.code_table_files] == ["code_tables.yaml"]


# ---------------------------------------------------------------------------------------------
# Exact output of every valid sample

VALID = [
    ("received-at-counter", "000.00.01.H49-261102-0001#1", {
        "MaHoSo": "000.00.01.H49-261102-0001",
        "NguoiXuLy": "Lê Văn Tâm",
        "ChucDanh": "Chuyên viên",
        "ThoiDiemXuLy": "20261102081500",
        "PhongBanXuLy": "Bộ phận tiếp nhận và trả kết quả",
        "NoiDungXuLy": "Tiếp nhận hồ sơ-Hồ sơ đầy đủ, hợp lệ",
        "TrangThai": "2",
        "NgayBatDau": "20261102081000",
        "NgayKetThucTheoQuyDinh": "20261102113000",
    }),
    # still under way: no finishedAt, so the step's start is the time of the action
    ("in-processing", "000.00.01.H49-261029-0012#2", {
        "MaHoSo": "000.00.01.H49-261029-0012",
        "NguoiXuLy": "Võ Minh Khoa",
        "ChucDanh": "Chuyên viên",
        "ThoiDiemXuLy": "20261030083000",
        "PhongBanXuLy": "Phòng Hành chính tư pháp",
        "NoiDungXuLy": "Chuyển xử lý-Tra cứu dữ liệu lý lịch tư pháp",
        "TrangThai": "4",
        "NgayBatDau": "20261030083000",
        "NgayKetThucTheoQuyDinh": "20261110170000",
    }),
    ("denied-at-reception", "000.00.01.H49-261104-0009#1", {
        "MaHoSo": "000.00.01.H49-261104-0009",
        "NguoiXuLy": "Lê Văn Tâm",
        "ChucDanh": "Chuyên viên",
        "ThoiDiemXuLy": "20261104092000",
        "PhongBanXuLy": "Bộ phận tiếp nhận và trả kết quả",
        "NoiDungXuLy": "Từ chối tiếp nhận-Giấy chứng sinh không đọc được, đề nghị nộp lại bản rõ nét",
        "TrangThai": "3",
        "NgayBatDau": "20261104090000",
        "NgayKetThucTheoQuyDinh": "20261104113000",
    }),
    # an empty note: the action alone, no trailing "-"; no dueAt: ""
    ("signed-without-note", "000.00.01.H49-261020-0007#3", {
        "MaHoSo": "000.00.01.H49-261020-0007",
        "NguoiXuLy": "Đinh Văn Hùng",
        "ChucDanh": "Phó Giám đốc Sở",
        "ThoiDiemXuLy": "20261104164500",
        "PhongBanXuLy": "Ban Giám đốc",
        "NoiDungXuLy": "Ký duyệt",
        "TrangThai": "9",
        "NgayBatDau": "20261104080000",
        "NgayKetThucTheoQuyDinh": "",
    }),
]


@pytest.mark.parametrize("name, key, expected", VALID, ids=[c[0] for c in VALID])
def test_valid_samples_map_to_exactly_this_record(progress, name, key, expected):
    record = sample(name)
    assert progress.apply(record) == expected
    assert progress.record_key(record) == key


def test_every_valid_sample_maps_and_every_defective_one_fails(progress):
    files = sorted(SAMPLES.glob("progress.*.json"))
    assert len(files) == 7
    for path in files:
        _output, errors = progress.translate(json.loads(path.read_text(encoding="utf-8")))
        assert bool(errors) == (".defective-" in path.name), (path.name, errors)


# ---------------------------------------------------------------------------------------------
# Exact errors of every defective sample

INTEROPERATING = (
    "status 'interoperating' is not in code table trang_thai_ho_so (known: receiving, new, denied, processing, "
    "waiting, paying, cancelled, unresolved, releasing, done); deliberately not mapped: the dossier was handed to "
    "another agency's system and the portal has no status for that; a dossier cannot be sent until it comes back "
    "with a mapped status, and a progress step that left it in this status cannot be sent at all")

DEFECTIVE = [
    ("long-actor", "000.00.01.H49-261020-0007#2", [
        ("NguoiXuLy", "max_length",
         "actor is 60 characters long; NguoiXuLy allows at most 50 (values are never truncated)")]),
    ("interoperating", "000.00.01.H49-261027-0003#3", [("TrangThai", "code_table", INTEROPERATING)]),
    ("no-time", "000.00.01.H49-261029-0012#2", [
        ("ThoiDiemXuLy", "required", "finishedAt is missing and so is its fallback startedAt; ThoiDiemXuLy is required")]),
]


@pytest.mark.parametrize("name, key, expected", DEFECTIVE, ids=[c[0] for c in DEFECTIVE])
def test_defective_samples_give_exactly_these_errors(progress, name, key, expected):
    with pytest.raises(RecordInvalid) as caught:
        progress.apply(sample(f"defective-{name}"))
    assert isinstance(caught.value, RecordRejected)
    assert caught.value.record_key == key
    assert caught.value.mapping == PROGRESS
    assert [(e.field, e.rule, e.message) for e in caught.value.errors] == expected


# ---------------------------------------------------------------------------------------------
# The rules, one by one


def test_the_handler_name_is_never_truncated_nor_replaced(progress):
    record = sample("received-at-counter")
    record["actor"] = "Nguyễn " + "x" * 43  # exactly 50 characters
    assert progress.apply(record)["NguoiXuLy"] == record["actor"]
    record["actor"] = unicodedata.normalize("NFD", "Nguyễn Thị Thu Hà ") + "y" * 32  # 50 once NFC
    assert len(progress.apply(record)["NguoiXuLy"]) == 50
    record["actor"] += "z"
    assert errors_of(progress, record) == [
        ("NguoiXuLy", "max_length", "actor is 51 characters long; NguoiXuLy allows at most 50 (values are never truncated)")]
    for missing in (None, "", "   "):
        record["actor"] = missing
        ((field, rule, message),) = errors_of(progress, record)
        assert (field, rule) == ("NguoiXuLy", "required") and message.endswith("; NguoiXuLy is required")
    del record["actor"]
    assert errors_of(progress, record) == [("NguoiXuLy", "required", "actor is missing; NguoiXuLy is required")]


@pytest.mark.parametrize("action, note, expected", [
    ("Tiếp nhận hồ sơ", "Hồ sơ đầy đủ", "Tiếp nhận hồ sơ-Hồ sơ đầy đủ"),
    ("Ký duyệt", "", "Ký duyệt"),
    ("Ký duyệt", None, "Ký duyệt"),
    ("Ký duyệt", "  ", "Ký duyệt"),
    ("Trả kết quả", "Gửi qua bưu chính - bưu điện Tam Kỳ", "Trả kết quả-Gửi qua bưu chính - bưu điện Tam Kỳ"),
])
def test_the_action_text_is_action_dash_note(progress, action, note, expected):
    record = sample("received-at-counter")
    record.update(action=action, note=note)
    assert progress.apply(record)["NoiDungXuLy"] == expected


def test_the_action_text_is_required_and_limited_to_2000_characters(progress):
    record = sample("received-at-counter")
    record.update(action="", note=None)
    assert errors_of(progress, record) == [
        ("NoiDungXuLy", "required", "every one of [action, note] is missing or blank; NoiDungXuLy is required")]
    record.update(action="a" * 1000, note="n" * 999)  # 2000 with the "-"
    assert len(progress.apply(record)["NoiDungXuLy"]) == 2000
    record["note"] += "n"
    assert errors_of(progress, record) == [
        ("NoiDungXuLy", "max_length",
         "[action, note] is 2001 characters long; NoiDungXuLy allows at most 2000 (values are never truncated)")]
    record.update(note=7)
    assert errors_of(progress, record) == [
        ("NoiDungXuLy", "type", "[action, note] holds an integer, expected only text (transform join)")]


def test_the_time_of_the_action_is_the_end_else_the_start_of_the_step(progress):
    record = sample("received-at-counter")
    assert progress.apply(record)["ThoiDiemXuLy"] == "20261102081500"
    record["finishedAt"] = None
    assert progress.apply(record)["ThoiDiemXuLy"] == "20261102081000"
    record["finishedAt"] = "2026-11-02T01:20:00+00:00"  # converted to Hồ Chí Minh time
    assert progress.apply(record)["ThoiDiemXuLy"] == "20261102082000"
    record["finishedAt"] = "2026-11-02T08:20:00"
    ((field, rule, _message),) = errors_of(progress, record)
    assert (field, rule) == ("ThoiDiemXuLy", "timezone")


def test_optional_fields_are_empty_text_when_missing(progress):
    record = sample("received-at-counter")
    for name in ("actorTitle", "department", "startedAt", "dueAt"):
        record[name] = None
    output = progress.apply(record)
    assert (output["ChucDanh"], output["PhongBanXuLy"], output["NgayBatDau"], output["NgayKetThucTheoQuyDinh"]) == (
        "", "", "", "")
    assert output["ThoiDiemXuLy"] == "20261102081500"


def test_a_bad_dossier_number_is_refused(progress):
    record = sample("received-at-counter")
    record["dossierNo"] = "BN-261102-0001"
    assert errors_of(progress, record) == [
        ("MaHoSo", "format",
         "dossierNo 'BN-261102-0001' does not have the required form [0-9]{3}\\.[0-9]{2}\\.[0-9]{2}\\.H[0-9]{2}-[0-9]{6}-[0-9]{4}")]
    del record["dossierNo"]
    with pytest.raises(RecordInvalid) as caught:
        progress.apply(record)
    assert caught.value.record_key == "<no dossierNo>#1"


def test_every_status_maps_as_the_dossier_status_does(progress):
    dossier = load_mapping(DIRECT / "dossier.direct.yaml")
    record = sample("received-at-counter")
    table = progress.code_tables["trang_thai_ho_so"]
    assert table is dossier.code_tables["trang_thai_ho_so"]
    for status, code in table.values.items():
        record["status"] = status
        assert progress.apply(record)["TrangThai"] == code


def test_every_progress_entry_of_the_dossier_samples_maps(progress):
    """The entries the flow will hand over: each dossier sample's progress, with its dossierNo."""
    keys = []
    for path in sorted(SAMPLES.glob("dossier.*.json")):
        dossier = json.loads(path.read_text(encoding="utf-8"))
        if not dossier.get("dossierNo"):
            continue
        for entry in dossier["progress"]:
            record = {**entry, "dossierNo": dossier["dossierNo"]}
            _output, errors = progress.translate(record)
            assert [e.rule for e in errors] == (["code_table"] if entry["status"] == "interoperating" else []), (
                path.name, entry["stepId"], errors)
            keys.append(progress.record_key(record))
    assert len(keys) == len(set(keys)) == 19
