"""Issue #8: ``audit verify`` recomputes the leaves through SQLite's aggregation (the fast path) and
says exactly what the exact path says; personal values are checked where they are read and in
full with ``--deep``."""

from __future__ import annotations

import zlib
from concurrent.futures import ProcessPoolExecutor

import pytest
from sqlalchemy import text

from lienthong.audit import seal_exchanges, verify_exchanges
from lienthong.audit.bundle import ExportError, export_bundle
from lienthong.audit.records import load_batch, scan_batch
from lienthong.audit.search import format_exchange, get_exchange
from lienthong.cli import main
from lienthong.exchange_log import BusRecorder

from .conftest import cli_env, fill
from .test_redaction import DOSSIER, REQUEST, _exchange


def sql(store, statement, **params):
    with store.begin() as conn:
        return conn.execute(text(statement), params)


def _log(store, keypair, *, batch_size=3):
    """12 exchanges: plain ones, JSON and SOAP bodies with personal fields, many record keys."""
    recorder = BusRecorder(store, "dossier_status", "run-1", "deliver")
    fill(store, 2)
    recorder.record(_exchange(1))  # 3
    recorder.record(_exchange(2, soap=True))  # 4
    recorder.record(_exchange(3, keys=[f"HS-{n:04d}" for n in range(40)]))  # 5
    # a key and personal paths that need JSON escapes: spliced text would differ, so exact path
    recorder.record(_exchange(4, body={**REQUEST, 'Ghi"Chu\\': {"SoDienThoai": "0912000111"}},
                              keys=['HS-"quoted"\\x', "HS-\u0001"]))  # 6
    fill(store, 6, start=20)  # 7..12
    seal_exchanges(store, keypair[0], batch_size=batch_size)


def test_the_fast_leaves_are_the_exact_leaves(store, keypair):
    _log(store, keypair)
    with store.engine.connect() as conn:
        fast = scan_batch(conn, 0, 12, chunk=4)
        exact = load_batch(conn, 0, 12, personal_values=False)
    assert fast.fast and fast.records == exact.records and fast.blobs == exact.blobs
    result = verify_exchanges(store, keypair[1])
    assert result.ok and result.records_checked == 12 and not result.deep, result.failure


@pytest.mark.parametrize("statement, kind, record_id, seq", [
    ("UPDATE exchange_log SET http_status = 500 WHERE id = 5", "record_altered", 5, 2),
    ("UPDATE exchange_log SET request_headers = '{\"Authorization\":\"x\"}' WHERE id = 8", "record_altered", 8, 3),
    ("UPDATE exchange_personal_field SET commitment = 'ab' WHERE exchange_id = 3 AND path = '/ChuHoSo'",
     "record_altered", 3, 1),
    ("UPDATE exchange_personal_field SET path = '/Other' WHERE exchange_id = 4 AND path = 'xml:SoCCCD[1]'",
     "record_altered", 4, 2),
    ("DELETE FROM exchange_key WHERE exchange_id = 5 AND record_key = 'HS-0007'", "record_altered", 5, 2),
    ("UPDATE exchange_key SET record_key = 'HS-\"x\"' WHERE exchange_id = 6 AND record_key = 'HS-\u0001'",
     "record_altered", 6, 2),
    ("UPDATE exchange_seal SET root = 'cd' WHERE seq = 3", "seal_altered", None, 3),
    ("UPDATE exchange_seal_leaf SET leaf_hash = 'ef' WHERE exchange_id = 10", "seal_leaves", 10, 4),
])
def test_the_default_verify_still_names_the_altered_record(store, keypair, statement, kind, record_id, seq):
    _log(store, keypair)
    sql(store, statement)
    result = verify_exchanges(store, keypair[1])
    assert not result.ok and (result.failure.kind, result.failure.record_id, result.failure.seal_seq) == (
        kind, record_id, seq), result.failure


def test_an_altered_body_is_caught_by_default(store, keypair):
    _log(store, keypair)
    with store.engine.connect() as conn:
        body = zlib.decompress(conn.execute(text("SELECT request_body FROM exchange_log WHERE id = 3")).scalar())
    sql(store, "UPDATE exchange_log SET request_body = :b WHERE id = 3",
        b=zlib.compress(body.replace(DOSSIER.encode(), DOSSIER.encode()[:-1] + b"3")))  # the same size
    result = verify_exchanges(store, keypair[1])
    assert not result.ok and (result.failure.kind, result.failure.record_id) == ("record_altered", 3)


def _alter_value(store):
    sql(store, "UPDATE exchange_personal_field SET value = :v WHERE exchange_id = 3 AND path = '/SoGiayToChuHoSo'",
        v=b'"079099000111"')


def test_an_altered_personal_value_is_caught_by_deep_and_when_read(store, keypair, tmp_path):
    _log(store, keypair)
    _alter_value(store)
    assert verify_exchanges(store, keypair[1]).ok  # not what the seal covers: checked where it is read
    deep = verify_exchanges(store, keypair[1], deep=True)
    assert not deep.ok and deep.deep
    assert (deep.failure.kind, deep.failure.record_id, deep.failure.seal_seq) == ("personal_field_altered", 3, 1)

    record = get_exchange(store, 3)
    assert [(f.side, f.path) for f in record["personal_altered"]] == [("request", "/SoGiayToChuHoSo")]
    for reveal in (False, True):  # never shown, even revealed
        shown = format_exchange(record, reveal=reveal)
        assert "079099000111" not in shown and "[altered]" in shown and shown.splitlines()[1].startswith("WARNING")
    assert "[altered]" not in format_exchange(get_exchange(store, 4), reveal=True)

    with pytest.raises(ExportError, match=r"record #3: 1 stored personal value\(s\) do not match"):
        export_bundle(store, tmp_path / "out.zip", [keypair[1]], key=DOSSIER)
    assert not (tmp_path / "out.zip").exists()


def test_deep_counts_the_values_and_redactions_still_verify(store, keypair):
    _log(store, keypair)
    result = verify_exchanges(store, keypair[1], deep=True)
    with store.engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM exchange_personal_field")).scalar()
    assert result.ok and result.deep and result.personal_values_checked == stored > 0


def test_cli_show_flags_an_altered_value_and_verify_deep_reports_it(store, keypair, tmp_path, monkeypatch, capsys):
    cli_env(store, tmp_path, monkeypatch)
    monkeypatch.setenv("LIENTHONG_SEAL_KEY", str(keypair[2]))
    _log(store, keypair)
    assert main(["audit", "verify", "--deep", "--workers", "1"]) == 0
    assert "deep: " in capsys.readouterr().out
    _alter_value(store)
    assert main(["audit", "show", "3", "--reveal"]) == 1
    captured = capsys.readouterr()
    assert "079099000111" not in captured.out and "[altered]" in captured.out
    assert "do not match their sealed commitment" in captured.err and "verify --deep" in captured.err
    assert main(["audit", "verify", "--workers", "1"]) == 0
    assert "checked where they are read" in capsys.readouterr().out
    assert main(["audit", "verify", "--deep", "--workers", "1"]) == 1
    assert "personal_field_altered (record #3, seal 1)" in capsys.readouterr().out


def test_worker_processes_say_the_same(store, keypair, monkeypatch):
    monkeypatch.setattr("lienthong.audit.verify.POOL_MIN_RECORDS", 0)
    submitted = []
    submit = ProcessPoolExecutor.submit
    monkeypatch.setattr(ProcessPoolExecutor, "submit",
                        lambda pool, fn, *args: submitted.append(args[1:]) or submit(pool, fn, *args))
    _log(store, keypair, batch_size=2)
    assert verify_exchanges(store, keypair[1], workers=2).records_checked == 12
    assert submitted[:2] == [(0, 2), (2, 4)] and len(submitted) == 6  # one seal per job
    submitted.clear()
    sql(store, "UPDATE exchange_log SET outcome = 'peer_error' WHERE id = 11")
    result = verify_exchanges(store, keypair[1], workers=2)
    assert not result.ok and (result.failure.kind, result.failure.record_id, result.failure.seal_seq) == (
        "record_altered", 11, 6), result.failure
