"""``mapping check`` / ``mapping preview`` through a real argparse parser: exit codes and output."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from lienthong.mapping_cli import add_mapping_commands

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "fixtures" / "samples" / "onestop"
DOSSIER = "onestop__national_portal/dossier"
PROGRESS = "onestop__national_portal/progress"
TABLES = "onestop__national_portal/code_tables"
DIRECT_DOSSIER = "onestop__national_portal/dossier.direct"
DIRECT_PROGRESS = "onestop__national_portal/progress.direct"


@pytest.fixture(autouse=True)
def _repo_defaults(monkeypatch):
    monkeypatch.delenv("LIENTHONG_MAPPINGS_DIR", raising=False)
    monkeypatch.delenv("LIENTHONG_SAMPLES_DIR", raising=False)


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="lienthong")
    add_mapping_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def samples_with(tmp_path: Path, *names: str, extra: dict[str, dict] | None = None) -> Path:
    """A samples directory holding the named repository samples plus extra records."""
    folder = tmp_path / "samples" / "onestop"
    folder.mkdir(parents=True)
    for name in names:
        shutil.copy(SAMPLES / f"dossier.{name}.json", folder)
    for file_name, record in (extra or {}).items():
        (folder / file_name).write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    return tmp_path / "samples"


def load(name: str) -> dict:
    return json.loads((SAMPLES / f"dossier.{name}.json").read_text(encoding="utf-8"))


def test_check_passes_on_the_repository(capsys):
    assert run("mapping", "check") == 0
    out = capsys.readouterr().out
    assert f"valid    {DOSSIER} v3" in out
    assert "  chain: onestop__canonical/dossier v2 → canonical__national_portal/dossier v2\n" in out
    assert "OK       dossier.defective-interoperating.json  rejected as meant" in out
    assert ("TrangThaiHoSo: [onestop__canonical/dossier: status] dossierStatus 'interoperating' is not in code "
            "table canonical_status") in out
    assert "samples: 11, all as meant" in out
    assert f"valid    {PROGRESS} v3" in out
    assert f"valid    {DIRECT_DOSSIER} v2" in out and f"valid    {DIRECT_PROGRESS} v2" in out
    assert "OK       progress.defective-long-actor.json  rejected as meant (000.00.01.H49-261020-0007#2):" in out
    assert ("NguoiXuLy: [onestop__canonical/progress: actor] actor is 60 characters long; actor allows at most 50 "
            "(values are never truncated) [max_length]") in out
    assert "NguoiXuLy: actor is 60 characters long; NguoiXuLy allows at most 50 (values are never truncated) [max_length]" in out
    assert "samples: 7, all as meant" in out
    assert "valid    canonical__national_portal/dossier v2" in out
    assert out.endswith(
        "valid    code tables mappings/onestop__national_portal/code_tables.yaml: trang_thai_ho_so\n"
        f"  used by: {DIRECT_DOSSIER}, {DIRECT_PROGRESS}\n")
    assert ("valid    code tables mappings/onestop__canonical/code_tables.yaml: canonical_status\n"
            f"  used by: onestop__canonical/dossier, onestop__canonical/progress, {DOSSIER}, {PROGRESS}\n") in out


def copy_mappings(tmp_path: Path, *names: str) -> Path:
    """A mappings directory holding copies of the named repository files (code_tables included)."""
    folder = tmp_path / "mappings" / "onestop__national_portal"
    folder.mkdir(parents=True)
    for name in names:
        shutil.copy(REPO / "mappings" / "onestop__national_portal" / f"{name}.yaml", folder)
    return tmp_path / "mappings"


def test_check_of_just_the_code_table_file(capsys):
    assert run("mapping", "check", TABLES) == 0
    assert capsys.readouterr().out == (
        "valid    code tables mappings/onestop__national_portal/code_tables.yaml: trang_thai_ho_so\n")


def test_check_reports_a_broken_code_table_file_for_it_and_for_every_mapping_using_it(tmp_path, monkeypatch, capsys):
    root = copy_mappings(tmp_path, "dossier.direct", "progress.direct", "code_tables")
    tables = root / "onestop__national_portal" / "code_tables.yaml"
    tables.write_text(tables.read_text(encoding="utf-8").replace('done: "10"', "done: 10"), encoding="utf-8")
    monkeypatch.setenv("LIENTHONG_MAPPINGS_DIR", str(root))
    assert run("mapping", "check") == 1
    out = capsys.readouterr().out
    problem = "    at code_tables.trang_thai_ho_so.values.done: a target code is text: quote it, e.g. \"1\" [type]"
    assert out.count(problem) == 3  # dossier, progress, and the file itself
    assert f"INVALID  {DIRECT_DOSSIER}\n  {tables}:\n{problem}\n" in out
    assert f"INVALID  {DIRECT_PROGRESS}\n  {tables}:\n{problem}\n" in out
    assert f"INVALID  {tables}\n  {tables}:\n{problem}\n" in out


def test_check_reports_an_unused_code_table_file(tmp_path, monkeypatch, capsys):
    root = copy_mappings(tmp_path, "code_tables")
    monkeypatch.setenv("LIENTHONG_MAPPINGS_DIR", str(root))
    assert run("mapping", "check") == 0
    assert "  used by no valid mapping" in capsys.readouterr().out


def test_a_code_table_file_cannot_be_previewed(capsys):
    assert run("mapping", "preview", TABLES) == 2
    assert "is a code-table file, not a mapping" in capsys.readouterr().err


def test_preview_of_the_progress_samples_shows_composite_keys(capsys):
    assert run("mapping", "preview", PROGRESS, "--field", "NoiDungXuLy") == 1  # the defective samples do not map
    records = {r["input"]: r for r in json.loads(capsys.readouterr().out)["records"]}
    assert len(records) == 7
    signed = records["progress.signed-without-note.json"]
    assert signed["output"] == {"NoiDungXuLy": "Ký duyệt"}
    assert (signed["record_key"], signed["ok"], signed["errors"]) == ("000.00.01.H49-261020-0007#3", True, [])
    # a chain shows the canonical record between its stages
    canonical = signed["intermediate"]["onestop__canonical/progress"]
    assert (canonical["action"], canonical["note"], canonical["step_id"]) == ("Ký duyệt", "", "3")
    bad = records["progress.defective-no-time.json"]
    assert bad["record_key"] == "000.00.01.H49-261029-0012#2" and bad["errors_in_other_fields"] == 1


def test_check_fails_when_a_valid_sample_is_rejected(tmp_path, capsys):
    broken = load("new-at-counter")
    broken["dossierStatus"] = "interoperating"
    root = samples_with(tmp_path, "done-with-result", extra={"dossier.looks-fine.json": broken})
    assert run("mapping", "check", DOSSIER, "--samples-dir", str(root)) == 1
    out = capsys.readouterr().out
    assert "FAILED   dossier.looks-fine.json  a valid sample was rejected" in out
    assert "OK       dossier.done-with-result.json" in out


def test_check_fails_when_a_defective_sample_passes(tmp_path, monkeypatch, capsys):
    root = samples_with(tmp_path, extra={"dossier.defective-not-really.json": load("new-at-counter")})
    monkeypatch.setenv("LIENTHONG_SAMPLES_DIR", str(root))
    assert run("mapping", "check", DOSSIER) == 1
    assert "FAILED   dossier.defective-not-really.json  a defective sample was accepted" in capsys.readouterr().out


def test_check_reads_arrays_of_records(tmp_path, capsys):
    root = samples_with(tmp_path, extra={"dossier.batch.json": [load("new-at-counter"), load("done-with-result")]})
    assert run("mapping", "check", DOSSIER, "--samples-dir", str(root)) == 0
    assert "OK       dossier.batch.json[1]" in capsys.readouterr().out


def test_check_reports_an_invalid_mapping_file(tmp_path, monkeypatch, capsys):
    root = copy_mappings(tmp_path, "code_tables")
    text = (REPO / "mappings" / f"{DIRECT_DOSSIER}.yaml").read_text(encoding="utf-8")
    (root / f"{DIRECT_DOSSIER}.yaml").write_text(text.replace("transform: bool_text", "transform: bool_txt"), encoding="utf-8")
    monkeypatch.setenv("LIENTHONG_MAPPINGS_DIR", str(root))
    assert run("mapping", "check") == 1
    out = capsys.readouterr().out
    assert f"INVALID  {DIRECT_DOSSIER}" in out
    assert "at fields.TaiLieuNop.each.fields.IsDeleted.transform: no transform named 'bool_txt'" in out
    assert "[unknown_transform]" in out
    assert "[code_tables_from]" not in out and "used by no valid mapping" in out


def test_check_of_an_unknown_name_is_a_usage_error(capsys):
    assert run("mapping", "check", "onestop__national_portal/nothing") == 2
    assert "UNKNOWN" in capsys.readouterr().out


def test_check_of_a_path_to_no_file_is_a_usage_error(tmp_path, capsys):
    # check --help: "2 when a NAME names no mapping" (it was 1, the missing file reported as invalid)
    assert run("mapping", "check", str(tmp_path / "typo.yaml")) == 2
    assert "UNKNOWN" in capsys.readouterr().out


def test_preview_of_a_clean_file_with_selected_fields(tmp_path, capsys):
    source = tmp_path / "one.json"
    source.write_text(json.dumps(load("processing-paid-online"), ensure_ascii=False), encoding="utf-8")
    assert run("mapping", "preview", DOSSIER, "--input", str(source),
               "--field", "TrangThaiHoSo,DanhSachLePhi", "--field", "SoGiayToChuHoSo") == 0
    document = json.loads(capsys.readouterr().out)
    assert document["mapping"] == DOSSIER and len(document["fingerprint"]) == 64
    (entry,) = document["records"]
    assert entry["ok"] is True and entry["errors"] == []
    assert entry["record_key"] == "000.00.01.H49-261029-0012"
    assert entry["output"] == {
        "TrangThaiHoSo": "4",
        "DanhSachLePhi": [{"TenPhiLePhi": "Phí cung cấp thông tin lý lịch tư pháp", "MaPhiLePhi": "PLLTP01",
                           "Gia": "200000", "LoaiPhiLePhi": "1"}],
        "SoGiayToChuHoSo": "*********321",  # personal data is masked by default
    }


def test_preview_shows_personal_data_only_when_asked(tmp_path, capsys):
    source = tmp_path / "one.json"
    source.write_text(json.dumps(load("processing-paid-online"), ensure_ascii=False), encoding="utf-8")
    assert run("mapping", "preview", DOSSIER, "--input", str(source), "--field", "Email", "--show-personal") == 0
    assert json.loads(capsys.readouterr().out)["records"][0]["output"] == {"Email": "tranvanduc@example.vn"}


def test_preview_of_the_samples_shows_errors_next_to_output(capsys):
    assert run("mapping", "preview", DOSSIER) == 1  # the defective samples do not map
    records = {r["input"]: r for r in json.loads(capsys.readouterr().out)["records"]}
    assert len(records) == 11
    bad = records["dossier.defective-naive-datetime.json"]
    assert bad["ok"] is False
    assert [(e["field"], e["rule"]) for e in bad["errors"]] == [("NgayHenTra", "timezone")]
    assert bad["output"]["NgayHenTra"] == "" and bad["output"]["TrangThaiHoSo"] == "2"
    assert records["dossier.done-with-result.json"]["ok"] is True


def test_preview_field_filter_keeps_ok_for_the_whole_record(capsys):
    assert run("mapping", "preview", DOSSIER, "--field", "TrangThaiHoSo") == 1
    records = {r["input"]: r for r in json.loads(capsys.readouterr().out)["records"]}
    entry = records["dossier.defective-empty-service-code.json"]
    assert entry["ok"] is False and entry["errors"] == [] and entry["errors_in_other_fields"] == 1


@pytest.mark.parametrize("argv", [
    ("mapping", "preview", DOSSIER, "--field", "NoSuchField"),
    ("mapping", "preview", "onestop__national_portal/nothing"),
    ("mapping", "preview", "/nonexistent/typo.yaml"),  # a path to no file (it exited 1, as an invalid file)
    ("mapping", "preview", DOSSIER, "--input", "/nonexistent/records.json"),
])
def test_preview_usage_errors(argv, capsys):
    assert run(*argv) == 2
    assert capsys.readouterr().err.strip()


@pytest.mark.parametrize("argv", [("mapping", "--help"), ("mapping", "check", "--help"), ("mapping", "preview", "--help")])
def test_help_texts(argv, capsys):
    with pytest.raises(SystemExit) as done:
        run(*argv)
    assert done.value.code == 0
    assert "usage: lienthong mapping" in capsys.readouterr().out


def test_mapping_without_a_command_is_refused():
    with pytest.raises(SystemExit) as done:
        run("mapping")
    assert done.value.code == 2
