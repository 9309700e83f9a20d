"""The CLI, run in-process against the stand-ins; its help must stay true."""

import json
import re
from pathlib import Path

from lienthong.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_every_command_the_readme_names(capsys):
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    assert commands >= {"demo", "mocks", "airflow", "env", "db", "run", "exchanges", "deadletter", "mapping"}
    readme = (REPO / "README.md").read_text()
    for command in re.findall(r"`lienthong ([a-z0-9-]+)", readme):
        assert command in commands, command


def test_make_targets_named_in_the_readme_exist():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z0-9-]+):", makefile, flags=re.M))
    for target in re.findall(r"make ([a-z0-9-]+)", (REPO / "README.md").read_text()):
        assert target in targets, target


def test_run_then_read_the_exchange_log_and_dead_letters(bus_env, capsys):
    assert main(["run", "dossier-status", "--run-id", "cli-run-1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run_id"] == "cli-run-1"
    assert out["delivered"]["delivered_new"] > 0 and out["delivered"]["rejected"] == 2

    assert main(["exchanges", "--run-id", "cli-run-1", "--bodies"]) == 0
    text = capsys.readouterr().out
    assert "DongBoHoSoMC" in text and "login" in text and "changes" in text
    assert "test-portal-secret" not in text and "test-onestop-key" not in text

    assert main(["deadletter", "list"]) == 0
    text = capsys.readouterr().out
    assert text.count("dossier_status") == 2
    assert "[required]" in text or "[code_table]" in text


def test_missing_connection_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LIENTHONG_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW_CONN_ONESTOP_DEFAULT", "{broken")
    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "b.db")}))
    assert main(["run", "dossier-status"]) == 2
    assert "AIRFLOW_CONN_ONESTOP_DEFAULT is not valid JSON" in capsys.readouterr().err


def test_deadletter_show_and_replay(bus_env, capsys):
    assert main(["run", "dossier-status", "--run-id", "cli-run-1"]) == 0
    capsys.readouterr()
    from connectors.connection import connection_from_env
    from lienthong.tasks import open_store

    letters = open_store(connection_from_env).dead_letters("dossier_status")
    first = letters[0]
    assert main(["deadletter", "show", str(first["id"])]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["record_key"] == first["record_key"]
    assert shown["source_payload"]["dossierNo"] == first["record_key"]  # the original record is kept
    assert main(["deadletter", "show", "999999"]) == 1
    assert main(["deadletter", "replay"]) == 2  # says what to replay
    capsys.readouterr()
    # replaying without a fix sends it through the same rule again: dead-lettered anew, once
    assert main(["deadletter", "replay", str(first["id"])]) == 0
    out = capsys.readouterr().out
    assert f"resolved 1 dead letters; requeued: {first['record_key']}" in out
    report = json.loads(out[out.index("{"):])
    assert report["delivered"]["rejected"] == 1 and report["delivered"]["considered"] == 1
    assert main(["deadletter", "list", "--all"]) == 0
    assert "resolved: replayed by" in capsys.readouterr().out
