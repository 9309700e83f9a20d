"""The CLI, run in-process against the stand-ins; its help must stay true."""

import json
import os
import re
from pathlib import Path

import pytest

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


def test_help_texts_name_what_the_code_does(capsys):
    """``make help`` said the demo runs "the dossier flow" (it runs the three), and ``exchanges
    --peer`` named two peers of the five the exchange log records (the pools are one per peer)."""
    from lienthong.localenv import POOLS

    makefile = (REPO / "Makefile").read_text()
    (demo_line,) = re.findall(r'@echo "make demo +(.*)"', makefile)
    assert "three flows" in demo_line and "dossier flow once" not in demo_line
    with pytest.raises(SystemExit):
        main(["exchanges", "--help"])
    peer_help = " ".join(capsys.readouterr().out.split())
    for peer in POOLS:
        assert peer in peer_help, peer


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
    # personal data masked as `exchanges --bodies` masks it, unless --reveal (said on stderr)
    stored = first["source_payload"]
    secrets = [stored[k] for k in ("applicantIdNo", "contactTelNo", "contactEmail") if stored.get(k)]
    assert secrets and not any(value in json.dumps(shown, ensure_ascii=False) for value in secrets)
    assert main(["deadletter", "show", str(first["id"]), "--reveal"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["source_payload"] == stored
    assert "REVEALED (--reveal)" in captured.err
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


@pytest.fixture
def bus_only(tmp_path, monkeypatch):
    """A bus database and a ministry database, no peer."""
    monkeypatch.setenv("LIENTHONG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "bus.db")}))
    monkeypatch.setenv("AIRFLOW_CONN_MINISTRY_DB_DEFAULT",
                       json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "ministry.db")}))
    return tmp_path


def _catalogue_letter(store) -> int:
    from sqlalchemy import select

    from connectors.errors import FieldError, RecordRejected
    from lienthong.store import Store, dead_letter

    exc = RecordRejected("1.000001", [FieldError("fee", "amount", "not an amount")])
    with store.begin() as conn:
        Store.add_dead_letter(conn, flow="procedure_catalogue", record_key="1.000001", outbox_id=None,
                              run_id="r1", stage="normalise", error=exc, errors=exc.error_dicts(),
                              source_payload={"MATTHC": "1.000001"})
        return conn.execute(select(dead_letter.c.id).order_by(dead_letter.c.id.desc())).scalar()


def test_deadletter_replay_of_a_catalogue_letter_resolves_it_for_the_next_pull(bus_only, capsys):
    """A catalogue dead letter replayed printed "resolved 0" and exited 0, and stayed listed for
    ever: nothing in the catalogue flow resolved one. Now it is resolved, and the next catalogue
    run reads the procedure again (tests/lienthong/flows/test_catalogue_edges.py)."""
    from connectors.connection import connection_from_env
    from lienthong.tasks import open_store

    store = open_store(connection_from_env)
    letter = _catalogue_letter(store)
    assert main(["deadletter", "replay", str(letter), "--no-deliver"]) == 0
    out = capsys.readouterr().out
    assert "resolved 1 catalogue dead letters" in out and "1.000001" in out and "resolved 0" not in out
    assert store.dead_letters() == []
    # replayed already: named, exit 1
    assert main(["deadletter", "replay", str(letter), "--no-deliver"]) == 1
    assert f"dead letter #{letter} not replayed: already resolved" in capsys.readouterr().err


def test_deadletter_replay_names_the_ids_and_the_record_it_did_not_replay(bus_only, capsys):
    from connectors.connection import connection_from_env
    from lienthong.tasks import open_store

    letter = _catalogue_letter(open_store(connection_from_env))
    assert main(["deadletter", "replay", "424242", "--no-deliver"]) == 1
    captured = capsys.readouterr()
    assert "dead letter #424242 not replayed: no such dead letter" in captured.err
    assert open_store(connection_from_env).dead_letters()[0]["id"] == letter  # an unknown id replays nothing else
    # the known one is replayed, the unknown one named, exit 1
    assert main(["deadletter", "replay", str(letter), "424242", "--no-deliver"]) == 1
    captured = capsys.readouterr()
    assert "resolved 1 catalogue dead letters" in captured.out and "#424242" in captured.err
    assert main(["deadletter", "replay", "--record", "no-such-dossier", "--no-deliver"]) == 1
    assert "no unresolved dead letter of record 'no-such-dossier'" in capsys.readouterr().err
    assert main(["deadletter", "replay", "--all", "--no-deliver"]) == 0  # nothing left: nothing to say no to


def _refused_dossier_with_a_held_change(store) -> tuple[int, int, int]:
    """A dossier snapshot refused (its dead letter) and a later change held behind it: (letter, refused
    outbox row, held outbox row)."""
    from sqlalchemy import select

    from connectors.errors import FieldError, RecordRejected
    from lienthong.store import Store, dead_letter, outbox, utcnow

    code = "000.00.01.H49-261120-0001"
    rows = [{"flow": "dossier_status", "record_key": code, "source_seq": seq, "source_version": seq,
             "source_payload": {"dossierNo": code, "version": seq}, "state": state, "attempts": 0,
             "staged_at": utcnow()} for seq, state in ((1, "rejected"), (2, "held"))]
    exc = RecordRejected(code, [FieldError("receiveDate", "required", "missing")])
    with store.begin() as conn:
        refused, held = (conn.execute(outbox.insert().values(**r).returning(outbox.c.id)).scalar() for r in rows)
        Store.add_dead_letter(conn, flow="dossier_status", record_key=code, outbox_id=refused, run_id="r1",
                              stage="mapping", error=exc, errors=exc.error_dicts(),
                              source_payload=rows[0]["source_payload"])
        letter = conn.execute(select(dead_letter.c.id).order_by(dead_letter.c.id.desc())).scalar()
    return letter, refused, held


def test_deadletter_discard_resolves_without_resending_and_releases_what_it_held(bus_only, capsys, monkeypatch):
    """Operators could only replay a dead letter (resending its record): one whose record had
    reached the portal anyway held its dossier's later changes back for ever. ``discard`` resolves
    it naming who and why, marks the refused record discarded (never sent), and releases the held
    change for the next run; it names what it could not discard, exit 1."""
    from sqlalchemy import select

    from connectors.connection import connection_from_env
    from lienthong.store import outbox
    from lienthong.tasks import open_store

    store = open_store(connection_from_env)
    letter, refused, held = _refused_dossier_with_a_held_change(store)
    catalogue_letter = _catalogue_letter(store)
    with pytest.raises(SystemExit):  # the reason is required
        main(["deadletter", "discard", str(letter)])
    capsys.readouterr()
    assert main(["deadletter", "discard", "--reason", "x"]) == 2  # says which
    assert "ids or --record" in capsys.readouterr().err
    assert main(["deadletter", "discard", str(letter), "--reason", "  "]) == 2
    assert "--reason" in capsys.readouterr().err
    # a catalogue letter and an unknown id: named, nothing discarded
    assert main(["deadletter", "discard", str(catalogue_letter), "424242", "--reason", "x"]) == 1
    err = capsys.readouterr().err
    assert f"dead letter #{catalogue_letter} not discarded: flow procedure_catalogue, which discard does not " \
           f"handle" in err and "dead letter #424242 not discarded: no such dead letter" in err
    assert {d["id"] for d in store.dead_letters()} == {letter, catalogue_letter}
    assert main(["deadletter", "discard", "--record", "1.000001", "--reason", "x"]) == 1
    assert "no unresolved dossier_status, dossier_progress or payment_receipts dead letter of record '1.000001' " \
           "that discard handles" in capsys.readouterr().err

    monkeypatch.setattr("getpass.getuser", lambda: "nguyen.van.a")
    assert main(["deadletter", "discard", str(letter), "--reason", "nộp bản giấy,\n đã cập nhật tay"]) == 0
    out = capsys.readouterr().out
    assert f"discarded 1 dead letters (#{letter})" in out and "000.00.01.H49-261120-0001" in out
    with store.engine.connect() as conn:
        states = dict(conn.execute(select(outbox.c.id, outbox.c.state)).all())
    assert states == {refused: "discarded", held: "pending"}
    (done,) = [d for d in store.dead_letters(unresolved_only=False) if d["id"] == letter]
    assert done["resolved_at"] is not None
    assert done["resolution"] == "discarded by nguyen.van.a: nộp bản giấy, đã cập nhật tay"
    assert main(["deadletter", "list", "--all"]) == 0
    assert "resolved: discarded by nguyen.van.a: nộp bản giấy" in capsys.readouterr().out
    # discarded already: named, exit 1; nothing changes
    assert main(["deadletter", "discard", str(letter), "--reason", "again", "--actor", "qa"]) == 1
    assert f"dead letter #{letter} not discarded: already resolved" in capsys.readouterr().err
    (done,) = [d for d in store.dead_letters(unresolved_only=False) if d["id"] == letter]
    assert done["resolution"].startswith("discarded by nguyen.van.a")


def test_deadletter_discard_closes_a_payment_letter_and_refuses_a_source_one_by_name(bus_only, capsys):
    """A payment's ledger dead letter is discarded (its receipt never submitted again: ledger_state
    discarded) with the dossier ones' wording; a malformed one-stop request's (stage source) is
    named and left, exit 1."""
    from sqlalchemy import select

    from connectors.connection import connection_from_env
    from connectors.errors import FieldError, RecordRejected
    from lienthong.store import Store, dead_letter, payment_txn, utcnow
    from lienthong.tasks import open_store

    store = open_store(connection_from_env)
    exc = RecordRejected("REF-1", [FieldError("PayerName", "max_length", "too long")])
    with store.begin() as conn:
        conn.execute(payment_txn.insert().values(reference="REF-1", dossier_code="000.00.01.H49-261120-0001",
                                                 platform_status="paid", onestop_state="updated",
                                                 ledger_state="rejected", updated_at=utcnow()))
        for key, stage in (("REF-1", "mapping"), ("REF-2", "source")):
            Store.add_dead_letter(conn, flow="payment_receipts", record_key=key, outbox_id=None, run_id="r1",
                                  stage=stage, error=exc, errors=exc.error_dicts(), source_payload={"reference": key})
        ledger_letter, source_letter = conn.execute(select(dead_letter.c.id).order_by(dead_letter.c.id)).scalars()
    assert main(["deadletter", "discard", str(ledger_letter), str(source_letter), "--reason", "ghi tay",
                 "--actor", "qa"]) == 1
    captured = capsys.readouterr()
    assert f"discarded 1 payment dead letters (#{ledger_letter})" in captured.out and "REF-1" in captured.out
    assert f"dead letter #{source_letter} not discarded: stage source" in captured.err
    assert [d["id"] for d in store.dead_letters()] == [source_letter]
    (done,) = [d for d in store.dead_letters(unresolved_only=False) if d["id"] == ledger_letter]
    assert done["resolution"] == "discarded by qa: ghi tay"
    with store.engine.connect() as conn:
        assert conn.execute(select(payment_txn.c.ledger_state)).scalar() == "discarded"
    assert main(["deadletter", "discard", "--record", "REF-2", "--reason", "x"]) == 1
    err = capsys.readouterr().err
    assert f"dead letter #{source_letter} not discarded: stage source" in err and "'REF-2'" in err


def test_cli_does_not_silently_use_a_local_bus_database_when_lienthong_db_is_not_in_the_environment(
        tmp_path, monkeypatch, capsys):
    """A deployment whose peers are in AIRFLOW_CONN_* variables and whose lienthong_db is not (an
    Airflow UI connection, or simply missing) got an empty local database created under
    $LIENTHONG_HOME and a clean bill of health. Now the local topology is used only when no
    AIRFLOW_CONN_* variable is set; otherwise Airflow is asked (tests/dags/test_cli_connections.py)
    and a connection found nowhere is an error naming it."""
    home = tmp_path / "home"
    monkeypatch.setenv("LIENTHONG_HOME", str(home))
    monkeypatch.setenv("AIRFLOW_CONN_ONESTOP_DEFAULT", json.dumps(
        {"conn_type": "http", "host": "onestop.example.gov.vn", "password": "k"}))
    monkeypatch.setenv("AIRFLOW_CONN_NATIONAL_PORTAL_DEFAULT", json.dumps(
        {"conn_type": "http", "host": "dichvucong.gov.vn", "login": "u", "password": "p"}))
    code = main(["deadletter", "list"])
    captured = capsys.readouterr()
    assert not (home / "lienthong.db").exists(), "a fresh local bus database was created and read"
    assert code == 2 and "connection 'lienthong_db' is not defined" in captured.err, (code, captured)
    assert "AIRFLOW_CONN_LIENTHONG_DB" in captured.err


def test_cli_uses_the_local_topology_when_no_connection_is_configured(tmp_path, monkeypatch, capsys):
    """This machine, `make demo` and the commands the README shows after it: no AIRFLOW_CONN_*."""
    home = tmp_path / "home"
    monkeypatch.setenv("LIENTHONG_HOME", str(home))
    assert main(["db", "init"]) == 0
    assert str(home / "lienthong.db") in capsys.readouterr().out and (home / "lienthong.db").exists()


def test_exchanges_bodies_mask_personal_data_unless_revealed(bus_env, capsys):
    """Personal data (ID numbers, phones, e-mails) is masked in views: `audit show` masks them
    unless --reveal, and says so on stderr. `lienthong exchanges --bodies` printed them in clear."""
    import requests

    assert main(["run", "dossier-status", "--run-id", "pii-1"]) == 0
    capsys.readouterr()
    dossiers = requests.get(bus_env.onestop.url + "/_state/dossiers", timeout=10).json()["dossiers"]
    id_numbers = {d["applicantIdNo"] for d in dossiers if d.get("applicantIdNo")}
    phones = {d["contactTelNo"] for d in dossiers if d.get("contactTelNo")}
    assert id_numbers and phones

    assert main(["exchanges", "--run-id", "pii-1", "--bodies", "--limit", "1000"]) == 0
    captured = capsys.readouterr()
    shown = sorted(v for v in id_numbers | phones if v in captured.out)
    assert not shown, f"{len(shown)} ID numbers / phone numbers printed in clear, e.g. {shown[:3]}"
    assert "DongBoHoSoMC" in captured.out and "REVEALED" not in captured.err

    assert main(["exchanges", "--run-id", "pii-1", "--bodies", "--reveal", "--limit", "1000"]) == 0
    captured = capsys.readouterr()
    assert any(v in captured.out for v in id_numbers) and any(v in captured.out for v in phones)
    assert "personal data REVEALED (--reveal)" in captured.err


def test_output_piped_into_a_reader_that_stops_early_ends_quietly():
    """`lienthong exchanges | head`, `lienthong mapping check | head`: the reader closing the pipe
    made every command end in a BrokenPipeError traceback on stderr. It now stops writing and exits
    141 (what a shell reports for a command ended by SIGPIPE), with nothing on stderr."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "lienthong", "mapping", "check"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the first line: every write fails
    _, err = process.communicate(timeout=60)
    assert err.decode() == "" and process.returncode == 141, (process.returncode, err.decode())


def test_exchanges_list_a_call_without_http_status_or_task_plainly(bus_only, capsys):
    """The ministry database's SQL records (and a call that got no answer) carry no HTTP status and,
    outside Airflow, no task: the list printed 'HTTP None ... task=None'."""
    from datetime import UTC, datetime

    from connectors.connection import connection_from_env
    from connectors.transport import Exchange
    from lienthong.exchange_log import BusRecorder
    from lienthong.tasks import open_store

    store = open_store(connection_from_env)
    BusRecorder(store, "procedure_catalogue", "sql-1", None).record(Exchange(
        peer="ministry_db", operation="upsert_procedures", method="SQL", url="sqlite:///ministry.db",
        started_at=datetime(2026, 11, 27, 8, 0, tzinfo=UTC), duration_ms=3.0, attempt=1, outcome="ok",
        record_keys=("1.000001",), request_headers={}, request_body=b"{}", response_status=None,
        response_body=b"{}"))
    assert main(["exchanges", "--run-id", "sql-1"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "ministry_db" in line and "no HTTP status" in line and line.endswith("task=-"), line
    assert "None" not in line


def test_a_peer_that_does_not_answer_is_named_with_what_to_check(monkeypatch, capsys):
    """`lienthong report agreement` with the stand-ins down ended on 'PeerUnavailable: onestop
    dossiers: connection failed', naming neither where the bus looks for it nor how to start it."""
    import argparse

    from connectors.errors import PeerUnavailable
    from lienthong import cli

    def down(args: argparse.Namespace) -> int:
        raise PeerUnavailable("onestop dossiers: connection failed", peer="onestop", operation="dossiers")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv: argparse.Namespace(command="report", func=down))
    assert main(["report", "agreement"]) == 2
    err = capsys.readouterr().err
    assert "PeerUnavailable: onestop dossiers: connection failed" in err
    assert "is onestop running and reachable? `lienthong env` shows the connections" in err
    assert "make mocks" in err


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_run_whose_step_fails_closes_its_summary_failed_naming_the_step(bus_env, monkeypatch, capsys):
    """`lienthong run dossier-status` with the portal not answering: the delivery step raised and
    the run summary stayed open (finished_at empty, nothing saying the run failed), while the DAG
    closes it with outcome and failed_tasks. The CLI now closes it the same way, with what the run
    did before (the feed staged), and still exits non-zero naming the error."""
    from connectors.connection import connection_from_env
    from lienthong.flows import dossier_status
    from lienthong.tasks import open_store

    portal = json.loads(os.environ["AIRFLOW_CONN_NATIONAL_PORTAL_DEFAULT"])
    monkeypatch.setenv("AIRFLOW_CONN_NATIONAL_PORTAL_DEFAULT", json.dumps(
        {**portal, "port": _closed_port(), "extra": {**portal["extra"], "max_attempts": 1}}))
    assert main(["run", "dossier-status", "--run-id", "cli-failed-1"]) == 2
    assert "PeerUnavailable" in capsys.readouterr().err
    summary = open_store(connection_from_env).run_summary(dossier_status.FLOW, "cli-failed-1")
    counts = summary["counts"]
    assert summary["finished_at"] is not None
    assert (counts["outcome"], counts["failed_tasks"]) == (
        "failed", {"deliver_dossier_statuses": "failed", "deliver_progress_entries": "upstream_failed"})
    assert (counts["staged"], counts["rejected"], counts["delivered_new"]) == (84, 2, 0)
    # the portal back: the next run delivers and closes as succeeded
    monkeypatch.setenv("AIRFLOW_CONN_NATIONAL_PORTAL_DEFAULT", json.dumps(portal))
    assert main(["run", "dossier-status", "--run-id", "cli-ok-2"]) == 0
    counts = open_store(connection_from_env).run_summary(dossier_status.FLOW, "cli-ok-2")["counts"]
    assert (counts["outcome"], counts["failed_tasks"], counts["delivered_new"]) == ("succeeded", {}, 38)
