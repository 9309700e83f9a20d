"""Retention: old sealed batches go to verified bundles and leave the database; the chain still verifies."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from lienthong.audit import bundle_verify, seal_exchanges, verify_exchanges
from lienthong.audit.archive import ArchiveError, archive_exchanges, retention_days
from lienthong.cli import main
from lienthong.exchange_log import BusRecorder, blob_info, put_blob, read_blob
from lienthong.store import (
    Store,
    exchange_archive,
    exchange_blob,
    exchange_key,
    exchange_log,
    exchange_personal_field,
    exchange_seal_leaf,
)

from .conftest import T0, cli_env, fill
from .test_blobs import PDF, _bill
from .test_redaction import _exchange


def _count(store, table, *where):
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def _log(store):
    """12 sealed records in 3 seals (a receipt PDF and personal fields in seal 1), 2 unsealed."""
    fill(store, 2)
    recorder = BusRecorder(store, "payment", "run-1", "fetch")
    recorder.record(_bill(0))  # record 3, started T0
    recorder.record(_exchange(0))  # record 4: personal fields
    fill(store, 8, start=5)  # records 5..12, started T0 + 5..12 s
    seal_exchanges(store, store_key(store), batch_size=4)
    fill(store, 2, start=13)  # unsealed, just as old


_KEYS: dict[str, object] = {}


def store_key(store):
    return _KEYS[store.url]


@pytest.fixture
def log(store, keypair):
    _KEYS[store.url] = keypair[0]
    _log(store)
    with store.begin() as conn:
        pinned = put_blob(conn, b"%PDF kept by the payment flow", "application/pdf", pinned=True)
    return store, keypair, pinned


def test_archive_writes_verified_bundles_prunes_and_the_chain_still_verifies(log, tmp_path):
    store, keypair, pinned = log
    pdf_sha = hashlib.sha256(PDF).hexdigest()
    result = archive_exchanges(store, [keypair[1]], key=keypair[0], older_than_days=30, out_dir=tmp_path / "archive",
                               now=T0 + timedelta(days=90), max_records=8)
    assert [(a["first_seq"], a["last_seq"], a["records"]) for a in result.archives] == [(1, 2, 8), (3, 3, 4)]
    assert result.records == 12 and result.blobs_pruned == 1
    # unsealed records untouched; everything of the archived ones gone
    with store.engine.connect() as conn:
        assert conn.execute(select(exchange_log.c.id).order_by(exchange_log.c.id)).scalars().all() == [13, 14]
    assert _count(store, exchange_key, exchange_key.c.exchange_id <= 12) == 0
    assert _count(store, exchange_personal_field) == 0
    assert blob_info(store, pdf_sha) is None and read_blob(store, pinned)  # the pinned receipt stays
    assert _count(store, exchange_seal_leaf) == 12 and _count(store, exchange_archive) == 2

    for archive in result.archives:
        path = Path(archive["bundle_path"])
        assert path.parent == (tmp_path / "archive").resolve()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == archive["bundle_sha256"]
        with zipfile.ZipFile(path) as zf:
            assert hashlib.sha256(zf.read("manifest.json")).hexdigest() == archive["manifest_sha256"]
            manifest = json.loads(zf.read("manifest.json"))
        assert manifest["selection"]["seals"] == [archive["first_seq"], archive["last_seq"]]
        check = bundle_verify.verify_bundle(str(path), keypair[3].read_bytes())
        assert check.ok and check.records_checked == archive["records"], check.failure
    with zipfile.ZipFile(result.archives[0]["bundle_path"]) as zf:
        assert zf.read(f"blobs/{pdf_sha}") == PDF

    verified = verify_exchanges(store, keypair[1])
    assert verified.ok, verified.failure
    assert (verified.seals_checked, verified.archived_records, verified.records_checked,
            verified.unsealed_records) == (3, 12, 0, 2)
    assert [(a["first_seq"], a["last_seq"], a["bundle_sha256"]) for a in verified.archives] == [
        (a["first_seq"], a["last_seq"], a["bundle_sha256"]) for a in result.archives]

    # sealing continues the chain after the archived range
    seal_exchanges(store, keypair[0])
    verified = verify_exchanges(store, keypair[1])
    assert verified.ok and verified.seals_checked == 4 and verified.records_checked == 2
    # seal 4 holds the newest record: on SQLite it waits for a newer one (SQLite would give its ids
    # again to the next records, inside the archived range), then the next run takes it
    assert archive_exchanges(store, [keypair[1]], key=keypair[0], older_than_days=30, out_dir=tmp_path / "archive",
                             now=T0 + timedelta(days=90)).records == 0
    fill(store, 1, start=15)
    assert archive_exchanges(store, [keypair[1]], key=keypair[0], older_than_days=30, out_dir=tmp_path / "archive",
                             now=T0 + timedelta(days=90)).records == 2

    # an archived seal's leaf index or its bundle edited afterwards
    Path(result.archives[1]["bundle_path"]).write_bytes(b"PK gone")
    failure = verify_exchanges(store, keypair[1]).failure
    assert failure.kind == "archive_altered" and failure.seal_seq == 3
    Path(result.archives[1]["bundle_path"]).unlink()
    verified = verify_exchanges(store, keypair[1])
    assert verified.ok and any("moved off-site" in w for w in verified.warnings)
    with store.begin() as conn:
        conn.execute(text("UPDATE exchange_seal_leaf SET leaf_hash = :h WHERE exchange_id = 6"), {"h": "cd" * 32})
    failure = verify_exchanges(store, keypair[1]).failure
    assert failure.kind == "archive_altered" and failure.seal_seq == 2


def test_only_whole_batches_older_than_the_age_and_tampering_left_is_detected(log, tmp_path):
    store, keypair, _ = log
    # seal 2 holds records started T0+5..8 s: a cutoff at T0+7 s keeps it (and what follows)
    result = archive_exchanges(store, [keypair[1]], key=keypair[0], older_than_days=0, out_dir=tmp_path,
                               now=T0 + timedelta(seconds=7))
    assert [(a["first_seq"], a["last_seq"]) for a in result.archives] == [(1, 1)] and result.records == 4
    assert _count(store, exchange_log) == 10
    assert verify_exchanges(store, keypair[1]).ok
    assert archive_exchanges(store, [keypair[1]], key=keypair[0], older_than_days=0, out_dir=tmp_path,
                             now=T0 + timedelta(seconds=7)).archives == []

    with store.begin() as conn:
        conn.execute(text("UPDATE exchange_log SET outcome = 'peer_error' WHERE id = 9"))
    failure = verify_exchanges(store, keypair[1]).failure
    assert (failure.kind, failure.record_id, failure.seal_seq) == ("record_altered", 9, 3)
    # a damaged log is not archived: the bundle would not verify, nothing is pruned
    with pytest.raises(ArchiveError):
        archive_exchanges(store, [keypair[1]], key=keypair[0], older_than_days=0, out_dir=tmp_path, now=T0 + timedelta(days=1))
    assert _count(store, exchange_log) == 10 and _count(store, exchange_archive) == 1


def test_retention_days_from_the_environment(monkeypatch):
    monkeypatch.delenv("LIENTHONG_RETENTION_DAYS", raising=False)
    assert retention_days() == 30 and retention_days(7) == 7
    monkeypatch.setenv("LIENTHONG_RETENTION_DAYS", "90")
    assert retention_days() == 90
    monkeypatch.setenv("LIENTHONG_RETENTION_DAYS", "soon")
    with pytest.raises(Exception, match="LIENTHONG_RETENTION_DAYS"):
        retention_days()


def test_cli_archive_then_verify(log, tmp_path, monkeypatch, capsys):
    store, keypair, _ = log
    home = tmp_path / "home"
    monkeypatch.setenv("LIENTHONG_HOME", str(home))
    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB",
                       json.dumps({"conn_type": "sqlite", "host": store.url.removeprefix("sqlite:///")}))
    monkeypatch.setenv("LIENTHONG_SEAL_KEY", str(keypair[2]))
    monkeypatch.setenv("LIENTHONG_RETENTION_DAYS", "100000")
    assert main(["audit", "archive"]) == 0
    assert "nothing to archive" in capsys.readouterr().out
    monkeypatch.setenv("LIENTHONG_RETENTION_DAYS", "30")  # the records are from March 2026
    assert main(["audit", "archive"]) == 0
    out = capsys.readouterr().out
    assert "archived seals 1..3 (12 records) to " + str((home / "archive").resolve()) in out
    assert "pruned 12 records and 1 blobs" in out
    assert main(["audit", "verify"]) == 0
    out = capsys.readouterr().out
    assert "verified: 0 records in 3 seals; 2 records not sealed yet" in out and "archived: seals 1..3" in out
    assert _count(store, exchange_blob) == 1  # the pinned one


def test_a_record_deleted_under_a_forged_archive_row_is_detected(log, tmp_path):
    store, keypair, _ = log
    result = archive_exchanges(store, [keypair[1]], key=keypair[0], older_than_days=0, out_dir=tmp_path,
                               now=T0 + timedelta(seconds=7))
    assert result.archives[0]["last_seq"] == 1
    with store.begin() as conn:  # claim seal 2 was archived into the same bundle, and delete one of its records
        conn.execute(text("UPDATE exchange_archive SET last_seq = 2"))
        conn.execute(text("DELETE FROM exchange_key WHERE exchange_id = 6"))
        conn.execute(text("DELETE FROM exchange_log WHERE id = 6"))
    failure = verify_exchanges(store, keypair[1]).failure
    assert failure.kind == "archive_altered" and "signature does not verify" in failure.explanation
    with store.begin() as conn:  # unsigned (a row of an older version): its bundle, still there, is checked
        conn.execute(text("UPDATE exchange_archive SET signature = NULL, key_fingerprint = NULL"))
    failure = verify_exchanges(store, keypair[1]).failure
    assert failure.kind == "archive_altered" and "record #6" in failure.explanation


@pytest.mark.parametrize("pinned", [False, True], ids=["recorded", "pinned"])
def test_a_blob_found_present_is_not_pruned_under_the_new_reference(bus_store, keypair, tmp_path, monkeypatch, pinned):
    """audit archive prunes the receipt PDF of an archived record while a recorder (or the payment
    flow pinning it) has just found it present and not yet committed its reference: the new
    reference must not be left pointing at nothing, on SQLite and on PostgreSQL."""
    import threading

    import lienthong.exchange_log as exchange_log_module

    store = bus_store
    _KEYS[store.url] = keypair[0]
    _log(store)
    with store.engine.connect() as conn:
        sha = conn.execute(select(exchange_log.c.response_blob_sha256).where(exchange_log.c.id == 3)).scalar_one()
    checked, go = threading.Event(), threading.Event()
    original = exchange_log_module.put_blob

    def put_then_pause(conn, data, *args, **kwargs):
        out = original(conn, data, *args, **kwargs)
        checked.set()
        assert go.wait(20)
        return out

    monkeypatch.setattr(exchange_log_module, "put_blob", put_then_pause)
    errors: list[BaseException] = []

    def keep_the_receipt():
        try:
            if pinned:  # the payment flow keeps the receipt it booked
                with store.begin() as conn:
                    exchange_log_module.put_blob(conn, PDF, "application/pdf", pinned=True)
            else:  # the same receipt downloaded again: a new record referencing the stored blob
                BusRecorder(store, "payment", "run-2", "fetch").record(_bill(0))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            checked.set()

    keeper = threading.Thread(target=keep_the_receipt)
    keeper.start()
    assert checked.wait(20)
    archived: list[object] = []
    archiver = threading.Thread(target=lambda: archived.append(archive_exchanges(
        store, [keypair[1]], key=keypair[0], older_than_days=30, out_dir=tmp_path / "archive")))
    archiver.start()
    archiver.join(2.0)  # the archiver gets as far as it can while the keeper holds the blob
    go.set()
    keeper.join(30)
    archiver.join(60)
    assert not errors and not keeper.is_alive() and not archiver.is_alive()
    assert archived and archived[0].records == 12  # the old records did go
    assert read_blob(store, sha) == PDF  # and the blob the keeper relied on is still there
    if pinned:
        assert blob_info(store, sha)["pinned"] is True


def test_an_archive_row_is_signed_and_a_forged_one_does_not_hide_deleted_records(log, tmp_path):
    """The archive row is what lets a seal's records be absent. Unsigned, a row forged for seal 2
    with a bundle path that is not there (as if moved off-site) turned the deletion of seal 2's
    records into a warning. Signed with the seal key, a moved bundle is still a warning; a forged
    or altered row is a failure."""
    store, keypair, _ = log
    result = archive_exchanges(store, [keypair[1]], key=keypair[0], older_than_days=0, out_dir=tmp_path,
                               now=T0 + timedelta(seconds=7))
    assert result.archives[0]["last_seq"] == 1
    moved = tmp_path / "off-site.zip"
    Path(result.archives[0]["bundle_path"]).rename(moved)
    fine = verify_exchanges(store, keypair[1])
    assert fine.ok and any("moved off-site" in w for w in fine.warnings)
    assert fine.archives[0]["signed"] is True
    Path(moved).rename(result.archives[0]["bundle_path"])

    with store.begin() as conn:  # seal 2's records deleted, and a row claiming they were archived
        row = dict(conn.execute(select(exchange_archive)).mappings().one())
        ids = conn.execute(select(exchange_seal_leaf.c.exchange_id).where(exchange_seal_leaf.c.seal_seq == 2)).scalars().all()
        conn.execute(exchange_personal_field.delete().where(exchange_personal_field.c.exchange_id.in_(ids)))
        conn.execute(exchange_key.delete().where(exchange_key.c.exchange_id.in_(ids)))
        conn.execute(exchange_log.delete().where(exchange_log.c.id.in_(ids)))
        forged = {k: v for k, v in row.items() if k != "id"}
        forged.update(first_seq=2, last_seq=2, first_id=min(ids), last_id=max(ids), records=len(ids),
                      bundle_path=str(tmp_path / "gone-off-site.zip"))
        conn.execute(exchange_archive.insert().values(**forged))  # the signature of seal 1's row, copied
    failure = verify_exchanges(store, keypair[1]).failure
    assert failure is not None and failure.kind == "archive_altered" and failure.seal_seq == 2
    assert "signature" in failure.explanation

    with store.begin() as conn:  # unsigned, as a row of an older version would be
        conn.execute(exchange_archive.update().where(exchange_archive.c.first_seq == 2)
                     .values(signature=None, key_fingerprint=None))
    failure = verify_exchanges(store, keypair[1]).failure
    assert failure is not None and failure.kind == "archive_altered" and failure.seal_seq == 2
    assert "unsigned" in failure.explanation and "gone-off-site.zip" in failure.explanation

    with store.begin() as conn:  # the genuine row altered: one record fewer claimed
        conn.execute(exchange_archive.delete().where(exchange_archive.c.first_seq == 2))
        conn.execute(exchange_archive.update().values(records=row["records"] - 1))
    failure = verify_exchanges(store, keypair[1]).failure
    assert failure is not None and failure.kind == "archive_altered" and failure.seal_seq == 1


def _pdf_pair() -> tuple[bytes, bytes]:
    """Two receipt-like binary bodies (stored by hash), (lower hash, higher hash)."""
    one, two = (b"%PDF-1.4\n" + os.urandom(2000) + b"\n%%EOF\n" for _ in range(2))
    return tuple(sorted((one, two), key=lambda b: hashlib.sha256(b).hexdigest()))  # type: ignore[return-value]


def _waiting_backends(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND wait_event_type = 'Lock'")).scalar_one()
    finally:
        engine.dispose()


def test_a_transaction_writing_several_held_exchanges_does_not_deadlock_with_audit_archive(tmp_path):
    """dc54650/8d575da: 'a record with two stored bodies holds its blobs in hash order, the order
    audit archive locks them in, so the two never deadlock on PostgreSQL'. The order is sorted only
    within one exchange (BusRecorder._write); answer_transactions' begin() (and holding()'s end)
    writes every held exchange in one transaction in call order, each put_blob now holding its blob
    (FOR SHARE) to the end. Two held exchanges whose bodies the archive is pruning (a catalogue
    list or a receipt fetched again, identical bytes) are locked in the opposite order to the
    archive's sorted FOR UPDATE: PostgreSQL aborts one with a deadlock."""
    import lienthong.exchange_log as exchange_log_module
    from lienthong.audit import seal_exchanges
    from lienthong.audit.archive import archive_exchanges
    from lienthong.audit.keys import generate_keypair, load_private_key, load_public_key
    from lienthong.exchange_log import BusRecorder
    from tests.conftest import postgres_database
    from tests.lienthong.audit.conftest import T0, fill
    from tests.lienthong.audit.test_blobs import _bill

    private_path, public_path, _ = generate_keypair(tmp_path / "keys" / "seal.key")
    private, public = load_private_key(private_path), load_public_key(public_path)
    low, high = _pdf_pair()
    with postgres_database("lienthong_review") as url:
        store = Store(url)
        store.create_schema()
        try:
            recorder = BusRecorder(store, "payment", "run-1", "fetch")
            recorder.record(_bill(0, pdf=low))
            recorder.record(_bill(1, pdf=high))
            fill(store, 2, start=10)
            seal_exchanges(store, private, batch_size=4)

            first_held, go = threading.Event(), threading.Event()
            original = exchange_log_module.put_blob
            calls = {"n": 0}

            def put_then_pause(conn, data, *args, **kwargs):
                out = original(conn, data, *args, **kwargs)
                calls["n"] += 1
                if calls["n"] == 1:
                    first_held.set()
                    go.wait(30)
                return out

            errors: list[BaseException] = []

            def keep_answers() -> None:
                """What a step does with two answers (GET_BILL of two receipts fetched again, the
                catalogue's lists): held, then written by the transaction acting on them."""
                try:
                    again = BusRecorder(store, "payment", "run-2", "collect")
                    with again.holding():
                        again.record(_bill(100, pdf=high))
                        again.record(_bill(101, pdf=low))
                        with again.begin():
                            pass
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)
                    first_held.set()

            def archive() -> None:
                try:
                    archive_exchanges(store, [public], key=private, older_than_days=30,
                                      out_dir=tmp_path / "archive", now=T0 + timedelta(days=90))
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)

            exchange_log_module.put_blob = put_then_pause
            try:
                keeper = threading.Thread(target=keep_answers)
                keeper.start()
                assert first_held.wait(30)
                archiver = threading.Thread(target=archive)
                archiver.start()
                deadline = time.monotonic() + 20
                while _waiting_backends(url) == 0 and archiver.is_alive() and time.monotonic() < deadline:
                    time.sleep(0.1)  # the archiver waits for the blob the keeper holds
                go.set()
                keeper.join(60)
                archiver.join(60)
            finally:
                exchange_log_module.put_blob = original
            assert not keeper.is_alive() and not archiver.is_alive()
            assert not errors, [f"{type(e).__name__}: {str(e).splitlines()[0]}" for e in errors]
        finally:
            store.dispose()


def test_rows_archived_before_signing_are_signed_once_their_bundle_proves_them(log, tmp_path, monkeypatch, capsys):
    """A row of revision < 0007 is unsigned: verify accepts it only with its bundle at its path.
    `audit archive --sign-unsigned` signs it, but only while its bundle is there, unchanged and
    verifying; then the bundle may move off-site (a warning, as for any signed row)."""
    from lienthong.audit.archive import sign_archive_rows

    store, keypair, _ = log
    result = archive_exchanges(store, [keypair[1]], key=keypair[0], older_than_days=0, out_dir=tmp_path,
                               now=T0 + timedelta(seconds=7))
    bundle = Path(result.archives[0]["bundle_path"])
    with store.begin() as conn:  # as an older version wrote it
        conn.execute(text("UPDATE exchange_archive SET signature = NULL, key_fingerprint = NULL"))
    bundle.rename(tmp_path / "away.zip")
    assert verify_exchanges(store, keypair[1]).failure.kind == "archive_altered"
    with pytest.raises(ArchiveError, match="put it back there to sign its row"):
        sign_archive_rows(store, keypair[0])
    (tmp_path / "away.zip").rename(bundle)
    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB",
                       json.dumps({"conn_type": "sqlite", "host": store.url.removeprefix("sqlite:///")}))
    monkeypatch.setenv("LIENTHONG_HOME", str(tmp_path / "home"))
    assert main(["audit", "archive", "--sign-unsigned", "--key", str(keypair[2])]) == 0
    assert "signed the archive row of seals 1..1" in capsys.readouterr().out
    bundle.rename(tmp_path / "off-site.zip")  # now moving it is only a warning
    moved = verify_exchanges(store, keypair[1])
    assert moved.ok and moved.archives[0]["signed"] and any("moved off-site" in w for w in moved.warnings)
    assert sign_archive_rows(store, keypair[0]) == []  # nothing left unsigned


def test_an_archived_exchange_is_named_with_its_bundle_not_reported_missing(log, tmp_path, monkeypatch, capsys):
    """Once `audit archive` pruned a range (after 30 days by default), `audit show 5` said 'no
    exchange #5' and `audit search` 'no exchange matches', as if it had never been: they now name
    the evidence bundle that holds it."""
    store, keypair, _ = log
    cli_env(store, tmp_path, monkeypatch)
    monkeypatch.setenv("LIENTHONG_SEAL_KEY", str(keypair[2]))
    assert main(["audit", "archive", "--older-than", "30"]) == 0
    capsys.readouterr()
    with store.engine.connect() as conn:
        (bundle,) = conn.execute(select(exchange_archive.c.bundle_path)).scalars().all()
    assert main(["audit", "show", "5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"lienthong: exchange #5 was archived (audit archive): it is in the evidence bundle "
                            f"{bundle} (seals 1..3, records #1..#12), no longer in the database\n")
    assert main(["audit", "show", "99"]) == 2
    assert capsys.readouterr().err == "lienthong: no exchange #99\n"
    assert main(["audit", "search", "--key", "HS-0005"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("no exchange matches\n"
                            f"lienthong: records #1..#12 were archived (audit archive) and are not searched here: "
                            f"they are in the evidence bundle {bundle} (seals 1..3)\n")
    assert main(["audit", "search", "--key", "HS-0014"]) == 0  # record 13 is still in the database
    captured = capsys.readouterr()
    assert [line.split()[0] for line in captured.out.splitlines()] == ["#13", "#14"]
    assert "records #1..#12 were archived" in captured.err


def test_two_archive_runs_at_once_archive_each_seal_once(bus_store, keypair, tmp_path, monkeypatch):
    """Two `audit archive` runs at once both chose the same seals (_eligible) before either pruned
    them: each wrote its bundle (the second over the first's path, same name) and an archive row,
    so seals 1..2 had two rows and one row's bundle hash no longer matched. Now a run holds the
    archive lock (PostgreSQL: an advisory lock; SQLite: a lock file next to the database, and the
    prune re-checks under the write lock): the second waits and finds nothing left to archive."""
    from lienthong.audit import archive as archive_module

    store = bus_store
    private, public, *_ = keypair
    fill(store, 8)
    seal_exchanges(store, private, batch_size=4)
    fill(store, 1, start=20)  # newer, so SQLite lets both seals go
    original = archive_module._eligible

    def eligible_together(conn, cutoff):
        out = original(conn, cutoff)
        time.sleep(0.5)  # long enough for the other run to choose too, if nothing stops it
        return out

    monkeypatch.setattr(archive_module, "_eligible", eligible_together)
    results, errors = [], []

    def run() -> None:
        try:
            results.append(archive_exchanges(store, [public], key=private, older_than_days=30,
                                             out_dir=tmp_path / "archive", now=T0 + timedelta(days=90)))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(r.records for r in results) == [0, 8]
    with store.engine.connect() as conn:
        rows = conn.execute(select(exchange_archive.c.first_seq, exchange_archive.c.last_seq,
                                   exchange_archive.c.bundle_path)).all()
    assert [(r.first_seq, r.last_seq) for r in rows] == [(1, 2)]
    assert sorted(os.listdir(tmp_path / "archive")) == [Path(rows[0].bundle_path).name]
    verified = verify_exchanges(store, public)
    assert verified.ok and verified.archived_records == 8, verified.failure


def test_a_prune_overtaken_by_another_run_prunes_nothing_and_says_so(store, keypair, tmp_path, monkeypatch):
    """The prune's own guard, without the run lock (two runs that both chose seals 1..2)."""
    import contextlib

    from lienthong.audit import archive as archive_module

    private, public, *_ = keypair
    fill(store, 8)
    seal_exchanges(store, private, batch_size=4)
    fill(store, 1, start=20)
    with store.engine.connect() as conn:
        chosen = archive_module._eligible(conn, T0 + timedelta(days=60))
    assert [s["seq"] for s in chosen] == [1, 2]
    archive_exchanges(store, [public], key=private, older_than_days=30, out_dir=tmp_path / "a",
                      now=T0 + timedelta(days=90))
    monkeypatch.setattr(archive_module, "_archive_lock", lambda _store: contextlib.nullcontext())
    monkeypatch.setattr(archive_module, "_eligible", lambda conn, cutoff: [dict(s) for s in chosen])

    def fake_export(_store, path, *args, **kwargs):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w") as zf:  # what the records, pruned by the other run, gave
            zf.writestr("manifest.json", "{}")
        return type("Exported", (), {"records": 8})

    monkeypatch.setattr(archive_module, "export_bundle", fake_export)
    with pytest.raises(ArchiveError, match=r"seals 1\.\.2: another `audit archive` archived up to seal 2 meanwhile"):
        archive_exchanges(store, [public], key=private, older_than_days=30, out_dir=tmp_path / "b",
                          now=T0 + timedelta(days=90))
    assert _count(store, exchange_archive) == 1 and os.listdir(tmp_path / "b") == []
