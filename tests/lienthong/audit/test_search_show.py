"""`audit search` finds exactly the exchanges asked for; `audit show` masks personal data unless revealed."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from connectors.transport import Exchange
from lienthong.audit.search import (
    format_exchange,
    get_exchange,
    mask_json,
    mask_text,
    parse_time,
    search_exchanges,
)
from lienthong.cli import main
from lienthong.exchange_log import BusRecorder

from .conftest import T0, cli_env

DOSSIER_A = "000.00.01.H49-261102-0001"
DOSSIER_B = "000.00.01.H49-261102-0002"
PROCEDURE = "1.001234.000.00.00.H49"
RECEIPT = "BN-2026-000123"

PERSONAL = {
    "MaHoSo": DOSSIER_A,
    "MaTTHC": PROCEDURE,
    "ThoiDiemXuLy": "20261102081500",
    "ChuHoSo": {"HoTen": "Nguyễn Văn A", "SoGiayToChuHoSo": "001095012345", "SoDienThoai": "0912345678",
                "Email": "nguyenvana@example.vn"},
    "applicantIdNo": 123456789,
    "GhiChu": "liên hệ 0987654321 hoặc +84912345678, thư lan.tran@gov.vn, CMND 012345678",
    "NgayTiepNhan": "20261102081500",
    "MaBienNhan": RECEIPT,
}


def _exchange(n, *, peer="national_portal", operation="DongBoHoSoMC", outcome="ok", keys=(), body=None,
              headers=None):
    return Exchange(
        peer=peer, operation=operation, method="POST", url=f"http://127.0.0.1:18082/api/{operation}",
        started_at=T0 + timedelta(minutes=n), duration_ms=10.0 + n, attempt=1, outcome=outcome,
        record_keys=tuple(keys), request_headers=headers or {"Content-Type": "application/json"},
        request_body=json.dumps(body or {"n": n}, ensure_ascii=False).encode(), response_status=200,
        response_headers={"Content-Type": "application/json"},
        response_body=b'{"error_code":0,"SoDienThoai":"0901234567"}', peer_code="0",
        error="peer said: call 0912345678" if outcome != "ok" else None)


def _fill(store):
    recorder = BusRecorder(store, "dossier_status", "run-1", "deliver")
    plan = [
        {"keys": (DOSSIER_A, PROCEDURE, RECEIPT), "body": PERSONAL},                      # 1
        {"keys": (DOSSIER_B,), "peer": "onestop", "operation": "changes"},                  # 2
        {"keys": (DOSSIER_A,), "outcome": "peer_error"},                                 # 3
        {"keys": (DOSSIER_B, PROCEDURE), "outcome": "http_error"},                       # 4
        {"keys": (), "peer": "onestop", "operation": "changes"},                            # 5
        {"keys": (DOSSIER_A,), "peer": "onestop", "operation": "progress"},                 # 6
    ]
    for n, kwargs in enumerate(plan, start=1):
        recorder.record(_exchange(n, **kwargs))


def _ids(store, **filters):
    return [r["id"] for r in search_exchanges(store, **filters)]


def test_search_by_key_peer_operation_outcome_and_time(store):
    _fill(store)
    assert _ids(store) == [1, 2, 3, 4, 5, 6]
    assert _ids(store, key=DOSSIER_A) == [1, 3, 6]
    assert _ids(store, key=PROCEDURE) == [1, 4]
    assert _ids(store, key=RECEIPT) == [1]
    assert _ids(store, key="000.00.01.H49-261102-9999") == []
    assert _ids(store, peer="onestop") == [2, 5, 6]
    assert _ids(store, operation="changes") == [2, 5]
    assert _ids(store, outcome="peer_error") == [3]
    assert _ids(store, key=DOSSIER_A, peer="onestop") == [6]
    assert _ids(store, since=T0 + timedelta(minutes=3)) == [3, 4, 5, 6]
    assert _ids(store, until=T0 + timedelta(minutes=3)) == [1, 2]  # --to is exclusive
    assert _ids(store, since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=5), key=DOSSIER_B) == [2, 4]
    assert _ids(store, limit=2, peer="onestop") == [2, 5]
    row = search_exchanges(store, key=RECEIPT)[0]
    assert row["record_keys"] == sorted([DOSSIER_A, PROCEDURE, RECEIPT]) and "request_body" not in row


def test_parse_time_reads_dates_zulu_and_offsets_as_utc():
    assert parse_time("2026-03-01") == T0.replace(hour=0, minute=0)
    assert parse_time("2026-03-01T02:30:00Z") == T0
    assert parse_time("2026-03-01T09:30:00+07:00") == T0


def test_masking_patterns_spare_codes_and_times():
    kept = [DOSSIER_A, PROCEDURE, "20261102081500", "2.002120.000.00.00.H12", "1761234567", "HS0912345678",
            "2026-11-02T08:15:00+07:00", "BN-2026-000123", "12345678901234"]
    for text in kept:
        assert mask_text(text) == text, text
    assert mask_text("0912345678") == "0********8"
    assert mask_text("CCCD 001095012345.") == "CCCD 0**********5."
    assert mask_text("CMND: 012345678") == "CMND: 0*******8"
    assert mask_text("+84912345678") == "+84********8"
    assert mask_text("gọi 09123456789!") == "gọi 0*********9!"
    assert mask_text("a nguyenvana@example.vn b") == "a n*********@example.vn b"
    masked = mask_json(PERSONAL)
    assert masked["ChuHoSo"]["SoGiayToChuHoSo"] == "0**********5"
    assert masked["ChuHoSo"]["SoDienThoai"] == "0********8"
    assert masked["ChuHoSo"]["Email"] == "n*********@example.vn"
    assert masked["applicantIdNo"] == "1*******9"
    assert masked["ChuHoSo"]["HoTen"] == "Nguyễn Văn A"
    assert {k: masked[k] for k in ("MaHoSo", "MaTTHC", "ThoiDiemXuLy", "NgayTiepNhan", "MaBienNhan")} == {
        k: PERSONAL[k] for k in ("MaHoSo", "MaTTHC", "ThoiDiemXuLy", "NgayTiepNhan", "MaBienNhan")}
    assert masked["GhiChu"] == "liên hệ 0********1 hoặc +84********8, thư l*******@gov.vn, CMND 0*******8"
    assert mask_json({"duration": 12.123456789, "count": 123456789, "n": 20261102081500}) == {
        "duration": 12.123456789, "count": "1*******9", "n": 20261102081500}
    # field names mask whatever the value looks like
    assert mask_json({"contactTelNo": "12-34", "contactEmail": "x@y.vn", "SoDinhDanh": "AB12"}) == {
        "contactTelNo": "1***4", "contactEmail": "x*@y.vn", "SoDinhDanh": "A**2"}


SECRETS = ["001095012345", "0912345678", "nguyenvana@example.vn", "123456789", "0987654321", "+84912345678",
           "lan.tran@gov.vn", "012345678", "0901234567"]


def test_show_masks_by_default_and_reveals_on_request(store):
    _fill(store)
    record = get_exchange(store, 1)
    assert record["record_keys"] == sorted([DOSSIER_A, PROCEDURE, RECEIPT]) and record["seal_seq"] is None
    masked = format_exchange(record)
    for secret in SECRETS:
        assert secret not in masked, secret
    for kept in (DOSSIER_A, PROCEDURE, RECEIPT, "20261102081500", "Nguyễn Văn A", "0**********5", "0********8",
                 "n*********@example.vn"):
        assert kept in masked, kept
    assert "exchange #1" in masked and "--- response body" in masked and "not sealed yet" in masked
    revealed = format_exchange(record, reveal=True)
    for secret in SECRETS:
        assert secret in revealed, secret
    assert "0**********5" not in revealed


def test_cli_search_and_show(store, tmp_path, monkeypatch, capsys):
    cli_env(store, tmp_path, monkeypatch)
    _fill(store)
    assert main(["audit", "search", "--key", DOSSIER_A, "--outcome", "ok"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["#1", "#6"]
    assert main(["audit", "search", "--peer", "onestop", "--from", "2026-03-01T02:34:00Z"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["#5", "#6"]

    assert main(["audit", "show", "3"]) == 0
    captured = capsys.readouterr()
    assert "0912345678" not in captured.out and "0********8" in captured.out and captured.err == ""
    assert main(["audit", "show", "1", "--reveal"]) == 0
    captured = capsys.readouterr()
    assert "001095012345" in captured.out and "REVEALED" in captured.err
    assert main(["audit", "show", "99"]) == 2


def test_reading_commands_refuse_a_missing_bus_database(tmp_path, monkeypatch, capsys, keypair):
    """A mistyped `lienthong_db` path: `audit verify` said 'verified: 0 records' (exit 0) and search,
    show and export read a fresh empty database they had just created there."""
    monkeypatch.setenv("LIENTHONG_HOME", str(tmp_path / "home"))
    missing = tmp_path / "nowhere" / "bus.db"
    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB", json.dumps({"conn_type": "sqlite", "host": str(missing)}))
    public = str(keypair[3])
    bundle = tmp_path / "bundle.zip"
    for argv in (["audit", "search", "--peer", "onestop"], ["audit", "show", "1"],
                 ["audit", "verify", "--public-key", public],
                 ["audit", "export", str(bundle), "--key", DOSSIER_A, "--public-key", public]):
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == "", argv
        assert f"no bus database at {missing}" in captured.err and "lienthong_db" in captured.err, argv
    assert not missing.parent.exists() and not bundle.exists()


def _usage_error(argv, capsys) -> str:
    """The argparse refusal of ``argv`` (exit 2), its stderr."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2, argv
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err, argv
    return captured.err


def test_out_of_range_ids_and_times_are_usage_errors_not_tracebacks(store, tmp_path, monkeypatch, capsys):
    """An id beyond a database integer, a time that leaves the calendar once moved to UTC: the CLI
    raised OverflowError (a traceback, exit 1, which means 'does not verify'); the page already
    answered 404 and 400."""
    cli_env(store, tmp_path, monkeypatch)
    _fill(store)
    assert main(["audit", "show", "99999999999999999999"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "lienthong: no exchange #99999999999999999999\n"
    assert main(["audit", "show", "-1"]) == 2
    assert capsys.readouterr().err == "lienthong: no exchange #-1\n"
    for option, value in (("--from", "0001-01-01T00:00:00+01:00"), ("--to", "9999-12-31T23:00:00-05:00")):
        err = _usage_error(["audit", "search", option, value], capsys)
        assert f"argument {option}: expected an ISO 8601 date or time" in err
        err = _usage_error(["audit", "export", str(tmp_path / "b.zip"), option, value], capsys)
        assert f"argument {option}: expected an ISO 8601 date or time" in err


def test_search_refuses_an_unknown_outcome_and_a_limit_below_one(store, tmp_path, monkeypatch, capsys):
    """`--outcome okay` matched nothing ('no exchange matches', exit 0) and `--limit -1` listed
    everything (SQLite's LIMIT -1); `--outcome protocol_error` (an unreadable answer) is searchable."""
    cli_env(store, tmp_path, monkeypatch)
    _fill(store)
    BusRecorder(store, "dossier_status", "run-1", "deliver").record(_exchange(7, outcome="protocol_error"))
    assert main(["audit", "search", "--outcome", "protocol_error"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["#7"]
    err = _usage_error(["audit", "search", "--outcome", "okay"], capsys)
    assert "argument --outcome: invalid choice: 'okay'" in err
    assert "'ok', 'peer_error', 'http_error', 'protocol_error', 'transport_error'" in err
    for limit in ("0", "-1", "two"):
        err = _usage_error(["audit", "search", "--limit", limit], capsys)
        assert f"argument --limit: expected a whole number of at least 1, got '{limit}'" in err
    assert main(["audit", "search", "--limit", "2"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["#1", "#2"]


def test_a_value_erased_without_a_redaction_record_is_shown_as_altered_not_redacted(store, tmp_path, monkeypatch,
                                                                                    capsys):
    """Salt and value set to NULL in the database, with no `audit redact` behind it, is what
    `audit verify --deep` calls altered; `audit show` (exit 0) and the auditor page presented it as a
    lawful redaction ('[redacted]', '1 personal field(s) of this body were redacted')."""
    from sqlalchemy import text

    cli_env(store, tmp_path, monkeypatch)
    _fill(store)
    with store.begin() as conn:
        conn.execute(text("UPDATE exchange_personal_field SET salt = NULL, value = NULL "
                          "WHERE exchange_id = 1 AND path = '/ChuHoSo/SoGiayToChuHoSo'"))
    record = get_exchange(store, 1)
    assert [(f.side, f.path) for f in record["personal_altered"]] == [("request", "/ChuHoSo/SoGiayToChuHoSo")]
    shown = format_exchange(record, reveal=True)
    assert shown.splitlines()[1].startswith("WARNING: 1 stored personal value(s) do not match")
    assert '"SoGiayToChuHoSo": "[altered]"' in shown
    assert "[redacted]" not in shown and "were redacted" not in shown
    assert main(["audit", "show", "1"]) == 1
    assert "request /ChuHoSo/SoGiayToChuHoSo" in capsys.readouterr().err

    # a later `audit redact` erases the other values (redacted), and does not make the first one lawful
    assert main(["audit", "redact", "--key", RECEIPT, "--exchange-id", "1", "--reason", "lawful request 9/2026",
                 "--actor", "auditor"]) == 0
    capsys.readouterr()
    record = get_exchange(store, 1)
    assert [(f.side, f.path) for f in record["personal_altered"]] == [("request", "/ChuHoSo/SoGiayToChuHoSo")]
    shown = format_exchange(record, reveal=True)
    assert '"SoGiayToChuHoSo": "[altered]"' in shown and '"SoDienThoai": "[redacted]"' in shown
    assert "(4 personal field(s) of this body were redacted)" in shown  # Email, HoTen, SoDienThoai, applicantIdNo
    assert main(["audit", "show", "1"]) == 1


def test_the_masked_view_says_which_values_are_redacted_or_altered(store, tmp_path, monkeypatch, capsys):
    """Masking took the '[redacted]' and '[altered]' put in a personal field's place for a value and
    starred it ('[********]'), so the default view of the page and of `audit show` looked as if the
    value were there, masked, and did not say which field was erased or altered."""
    from sqlalchemy import text

    cli_env(store, tmp_path, monkeypatch)
    _fill(store)
    assert main(["audit", "redact", "--key", RECEIPT, "--exchange-id", "1", "--reason", "lawful request 9/2026",
                 "--actor", "auditor"]) == 0
    with store.begin() as conn:  # an erased value put back
        conn.execute(text("UPDATE exchange_personal_field SET value = :v WHERE exchange_id = 1 AND path = :p"),
                     {"v": b'"079099000111"', "p": "/ChuHoSo/SoGiayToChuHoSo"})
    masked = format_exchange(get_exchange(store, 1))
    body = json.loads(masked.split("--- request body", 1)[1].split("\n", 1)[1].split("\n}\n", 1)[0] + "}")
    assert body["ChuHoSo"] == {"HoTen": "[redacted]", "SoGiayToChuHoSo": "[altered]", "SoDienThoai": "[redacted]",
                               "Email": "[redacted]"}
    assert body["applicantIdNo"] == "[redacted]"
    assert "*]" not in masked


def test_a_selection_larger_than_the_bound_variable_limit_is_read_in_pages(store):
    """search_exchanges put every matching id in one `IN (...)`: past SQLite's bound-variable limit
    (999 before SQLite 3.32, 32766 or 250000 since, by build) `audit search` of a long log failed
    with 'too many SQL variables'. Shown here with the limit set to 999 on the connection."""
    import sqlite3

    from sqlalchemy import event

    from .conftest import fill

    fill(store, 1010)
    event.listen(store.engine, "connect",
                 lambda dbapi_connection, _record: dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999))
    store.engine.dispose()  # the next connections get the limit
    rows = search_exchanges(store, peer="national_portal")
    assert [r["id"] for r in rows] == list(range(1, 1011, 2))  # odd numbers are the portal's
    assert rows[-1]["record_keys"] == ["HS-1009", "HS-1010"]
    everything = search_exchanges(store)
    assert [r["id"] for r in everything] == list(range(1, 1011))
    assert [r["id"] for r in search_exchanges(store, limit=1001)] == list(range(1, 1002))


def test_control_characters_from_a_peer_reach_the_terminal_as_visible_escapes(store, tmp_path, monkeypatch, capsys):
    """A peer's plain-text answer, error text and code were printed as received: escape sequences in
    them moved the cursor, erased lines (the WARNING that a value was altered, say) or set the window
    title of the auditor's terminal. They are shown as \\x1b, \\r... (JSON bodies and headers already
    were, by json.dumps)."""
    import dataclasses

    cli_env(store, tmp_path, monkeypatch)
    hostile = "\x1b[1A\x1b[2K\r\x1b]0;owned\x07\x9b2J\x7f"
    exchange = dataclasses.replace(
        _exchange(1, outcome="peer_error", keys=(DOSSIER_A,)), peer_code=f"E1{hostile}",
        error=f"peer said: {hostile}", response_headers={"Content-Type": "text/plain"},
        response_body=f"Lỗi hệ thống{hostile}\nthử lại sau\tnhé".encode())
    BusRecorder(store, "dossier_status", "run-1", "deliver").record(exchange)
    assert main(["audit", "show", "1"]) == 0
    out = capsys.readouterr().out
    assert main(["audit", "search", "--key", DOSSIER_A]) == 0
    line = capsys.readouterr().out
    for text in (out, line, format_exchange(get_exchange(store, 1), reveal=True)):
        assert not any(c in text for c in "\x1b\r\x07\x9b\x7f"), repr(text)
        assert "E1\\x1b[1A\\x1b[2K\\r\\x1b]0;owned\\x07\\x9b2J\\x7f" in text
    assert "Lỗi hệ thống\\x1b[1A" in out and "\nthử lại sau\tnhé" in out  # new lines and tabs stay
    assert "error:        peer said: \\x1b[1A" in out


def test_a_reversed_time_range_is_a_usage_error(store, tmp_path, monkeypatch, capsys, keypair):
    """`--from` at or after `--to` matched nothing ('no exchange matches', exit 0), as if the log
    had nothing then; the auditor page answers 400."""
    cli_env(store, tmp_path, monkeypatch)
    _fill(store)
    for argv in (["audit", "search"], ["audit", "export", str(tmp_path / "b.zip"), "--public-key", str(keypair[3])]):
        assert main([*argv, "--from", "2026-03-02", "--to", "2026-03-01T09:00:00+07:00"]) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == ("lienthong: --from (2026-03-02T00:00:00+00:00) must be before --to "
                                "(2026-03-01T02:00:00+00:00)\n"), argv
    assert not (tmp_path / "b.zip").exists()


def test_phone_numbers_written_in_groups_are_masked_too():
    """Only an unbroken run of digits was taken for a phone number: a note saying 'SĐT 0912 345 678'
    or '0912.345.678' (as people write them) showed the number whole in the masked view."""
    assert mask_text("SĐT 0912 345 678.") == "SĐT 0**********8."
    assert mask_text("gọi 0912.345.678 nhé") == "gọi 0**********8 nhé"
    assert mask_text("(0912-345-678)") == "(0**********8)"
    assert mask_text("091 234 5678") == "0**********8"
    assert mask_text("+84 912 345 678") == "+84***********8"
    assert mask_text("+84 91 234 5678") == "+84***********8"
    assert mask_text("máy bàn 0236.3822.123") == "máy bàn 0***********3"
    kept = [DOSSIER_A, PROCEDURE, "01.02.2026", "000 000 000", "0.5 - 1.5", "2026-11-02 08:15:00",
            "12 345 678", "0912 345 67", "0912 345.678", "000.00.01.H49 261102 0001", "1.000.000 đồng",
            "0 912 345 678 901"]
    for text in kept:
        assert mask_text(text) == text, text
    masked = format_exchange({**_record_with_note("liên hệ 0987 654 321 hoặc 0987.654.321")})
    assert "0987 654 321" not in masked and "0987.654.321" not in masked and "0**********1" in masked


def test_id_numbers_written_in_groups_are_masked_too():
    """Only an unbroken run of 9 or 12 digits was taken for an ID number: a note saying
    'CCCD 001 203 004 567' or '001-203-004-567' showed the number whole in the masked view."""
    assert mask_text("CCCD 001 203 004 567.") == "CCCD 0*************7."
    assert mask_text("số 001-203-004-567") == "số 0*************7"
    assert mask_text("(001.203.004.567)") == "(0*************7)"
    assert mask_text("CCCD: 0012 0300 4567") == "CCCD: 0************7"
    assert mask_text("CMND 123 456 789, cấp 2015") == "CMND 1*********9, cấp 2015"
    kept = ["000 000 000", "0 912 345 678 901", "001 203 004 567 890", "12 345 678", "123 456", "001 203-004 567",
            "1.000.000 đồng", "000.00.01.H49 261102 0001", "0123 4567"]
    for text in kept:
        assert mask_text(text) == text, text
    masked = format_exchange({**_record_with_note("chủ hồ sơ CCCD 079 203 004 567, CMND 123-456-789")})
    assert "079 203 004 567" not in masked and "123-456-789" not in masked
    assert "0*************7" in masked and "1*********9" in masked


def _record_with_note(note: str) -> dict:
    import zlib

    body = json.dumps({"GhiChu": note}, ensure_ascii=False).encode()
    return {"id": 1, "seal_seq": None, "started_at": None, "duration_ms": 1, "flow": "f", "run_id": "r",
            "task_id": "t", "peer": "p", "operation": "o", "direction": "outbound", "method": "POST",
            "url": "http://127.0.0.1/", "attempt": 1, "outcome": "ok", "http_status": 200, "peer_code": None,
            "record_keys": [], "error": None, "request_headers": {}, "response_headers": {},
            "request_body": zlib.compress(body), "response_body": zlib.compress(b""), "request_size": len(body),
            "response_size": 0, "request_sha256": "-", "response_sha256": "-"}


def test_exchanges_bodies_judge_an_unrecorded_erasure_altered_and_escape_control_characters(
        store, tmp_path, monkeypatch, capsys):
    """`lienthong exchanges --bodies` shows the same bodies as `audit show`: it called a value erased
    in the database without `audit redact` behind it '[redacted]', and printed a peer's escape
    sequences (in a plain-text answer, a peer code) to the terminal as received."""
    import dataclasses

    from sqlalchemy import text

    cli_env(store, tmp_path, monkeypatch)
    _fill(store)
    hostile = "\x1b[1A\x1b[2K\r\x1b]0;owned\x07"
    BusRecorder(store, "dossier_status", "run-1", "deliver").record(dataclasses.replace(
        _exchange(7, outcome="peer_error", keys=(DOSSIER_A,)), peer_code=f"E1{hostile}",
        response_headers={"Content-Type": "text/plain"}, response_body=f"Lỗi{hostile}".encode()))
    with store.begin() as conn:
        conn.execute(text("UPDATE exchange_personal_field SET salt = NULL, value = NULL "
                          "WHERE exchange_id = 1 AND path = '/ChuHoSo/SoGiayToChuHoSo'"))
    assert main(["exchanges", "--bodies", "--limit", "100"]) == 0
    captured = capsys.readouterr()
    assert '"SoGiayToChuHoSo": "[altered]"' in captured.out and "[redacted]" not in captured.out
    assert "exchange #1: 1 stored personal value(s) do not match" in captured.err
    assert not any(c in captured.out for c in "\x1b\x07\r")
    assert "Lỗi\\x1b[1A\\x1b[2K\\r\\x1b]0;owned\\x07" in captured.out and "code=E1\\x1b[1A" in captured.out
