"""Sealing and verifying the exchange log, and every kind of tampering being detected and named."""

from __future__ import annotations

import stat
import zlib

import pytest
from sqlalchemy import text

from lienthong.audit import (
    generate_keypair,
    key_fingerprint,
    seal_exchanges,
    verify_exchanges,
)
from lienthong.audit.keys import load_public_key
from lienthong.audit.records import LEAF_FIELDS, seal_body
from lienthong.store import exchange_log

from .conftest import fill


def sql(store, statement, **params):
    with store.begin() as conn:
        return conn.execute(text(statement), params)


def test_the_leaf_covers_every_column_of_the_exchange_log():
    assert tuple(c.name for c in exchange_log.columns) == LEAF_FIELDS


def test_keygen_writes_a_private_file_only_its_owner_reads_and_never_overwrites(tmp_path):
    private_path, public_path, fingerprint = generate_keypair(tmp_path / "k" / "seal.key")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert key_fingerprint(load_public_key(public_path)) == fingerprint
    with pytest.raises(Exception, match="already exists"):
        generate_keypair(private_path)


def test_seal_then_verify_and_seal_again_chains(store, keypair):
    private, public, *_ = keypair
    fill(store, 10)
    result = seal_exchanges(store, private, batch_size=4)
    assert [(s["seq"], s["first_id"], s["last_id"], s["count"]) for s in result.seals] == [
        (1, 1, 4, 4), (2, 5, 8, 4), (3, 9, 10, 2)]
    assert result.seals[1]["prev_hash"] == result.seals[0]["seal_hash"]
    assert seal_exchanges(store, private).seals == []  # nothing new: nothing sealed

    fill(store, 3, start=11)
    verified = verify_exchanges(store, public)
    assert verified.ok and verified.records_checked == 10 and verified.seals_checked == 3
    assert verified.unsealed_records == 3 and verified.failure is None

    again = seal_exchanges(store, private)
    assert [(s["seq"], s["first_id"], s["last_id"]) for s in again.seals] == [(4, 11, 13)]
    assert again.seals[0]["prev_hash"] == result.seals[-1]["seal_hash"]
    verified = verify_exchanges(store, public, expect_head=(4, again.head["seal_hash"]))
    assert verified.ok and verified.records_checked == 13 and verified.unsealed_records == 0
    assert (verified.head_seq, verified.head_hash) == (4, again.head["seal_hash"])


def test_an_empty_log_seals_nothing_and_verifies(store, keypair):
    private, public, *_ = keypair
    assert seal_exchanges(store, private).seals == []
    assert verify_exchanges(store, public).ok


def _flip_body_byte(store):
    blob = bytearray(sql(store, "SELECT response_body FROM exchange_log WHERE id = 5").scalar_one())
    blob[len(blob) // 2] ^= 0x01
    sql(store, "UPDATE exchange_log SET response_body = :b WHERE id = 5", b=bytes(blob))


def _recompress_body(store):
    # the same redacted bytes compressed differently: the stored blob changed, so did the leaf
    blob = sql(store, "SELECT request_body FROM exchange_log WHERE id = 5").scalar_one()
    sql(store, "UPDATE exchange_log SET request_body = :b WHERE id = 5", b=zlib.compress(zlib.decompress(blob), 1))


def _swap_contents(store):
    columns = [c for c in LEAF_FIELDS if c != "id"]
    sql(store, "CREATE TEMP TABLE t AS SELECT * FROM exchange_log WHERE id IN (6, 7)")
    assigns = ", ".join(f"{c} = (SELECT {c} FROM t WHERE t.id = :other)" for c in columns)
    with store.begin() as conn:
        conn.execute(text(f"UPDATE exchange_log SET {assigns} WHERE id = :me"), {"me": 6, "other": 7})
        conn.execute(text(f"UPDATE exchange_log SET {assigns} WHERE id = :me"), {"me": 7, "other": 6})


def _delete_record(store):
    sql(store, "DELETE FROM exchange_key WHERE exchange_id = 6")
    sql(store, "DELETE FROM exchange_log WHERE id = 6")


def _delete_record_and_its_leaf(store):
    _delete_record(store)
    sql(store, "DELETE FROM exchange_seal_leaf WHERE exchange_id = 6")


def _replace_record(store):  # a failed exchange rewritten to look successful
    sql(store, "UPDATE exchange_log SET outcome = 'ok', http_status = 200, error = NULL WHERE id = 6")
    sql(store, "UPDATE exchange_log SET peer_code = '99' WHERE id = 6")


CASES = {
    "body byte": (_flip_body_byte, "record_altered", 5, 2),
    "recompressed body": (_recompress_body, "record_altered", 5, 2),
    "status field": (lambda s: sql(s, "UPDATE exchange_log SET http_status = 500 WHERE id = 7"), "record_altered", 7, 2),
    "started_at": (lambda s: sql(s, "UPDATE exchange_log SET started_at = '2026-03-01 02:30:09.000124' WHERE id = 9"),
                   "record_altered", 9, 3),
    "recorded sha256": (lambda s: sql(s, "UPDATE exchange_log SET request_sha256 = '00' WHERE id = 1"),
                        "record_altered", 1, 1),
    "headers": (lambda s: sql(s, "UPDATE exchange_log SET request_headers = '{\"Authorization\":\"x\"}' WHERE id = 2"),
                "record_altered", 2, 1),
    "record key edited": (lambda s: sql(s, "UPDATE exchange_key SET record_key = 'HS-9999' WHERE exchange_id = 3 "
                                           "AND record_key = 'HS-0003'"), "record_altered", 3, 1),
    "record key added": (lambda s: sql(s, "INSERT INTO exchange_key VALUES (3, 'HS-7777')"), "record_altered", 3, 1),
    "forged record": (_replace_record, "record_altered", 6, 2),
    "swapped records": (_swap_contents, "record_altered", 6, 2),
    "deleted record": (_delete_record, "record_deleted", 6, 2),
    "deleted record and leaf": (_delete_record_and_its_leaf, "record_deleted", 6, 2),
    "inserted record": (lambda s: sql(s, "INSERT INTO exchange_log SELECT 3 AS id, started_at, flow, run_id, task_id, "
                                         "peer, operation, direction, method, url, attempt, outcome, peer_code, "
                                         "http_status, duration_ms, record_count, request_headers, request_body, "
                                         "request_sha256, request_size, response_headers, response_body, "
                                         "response_sha256, response_size, error, leaf_version, request_blob_sha256, "
                                         "response_blob_sha256 FROM exchange_log WHERE id = 2"),
                        "record_inserted", 3, 1),
    "seal root": (lambda s: sql(s, "UPDATE exchange_seal SET root = :r WHERE seq = 2", r="ab" * 32),
                  "seal_altered", None, 2),
    "seal time": (lambda s: sql(s, "UPDATE exchange_seal SET sealed_at = '2020-01-01 00:00:00.000000' WHERE seq = 3"),
                  "seal_altered", None, 3),
    "seal signature": (lambda s: sql(s, "UPDATE exchange_seal SET signature = :g WHERE seq = 1", g="00" * 64),
                       "seal_signature", None, 1),
    "deleted middle seal": (lambda s: sql(s, "DELETE FROM exchange_seal WHERE seq = 2"), "seal_missing", None, 2),
    "deleted last seal": (lambda s: sql(s, "DELETE FROM exchange_seal WHERE seq = 3"), "seal_missing", 9, 3),
    "leaf index": (lambda s: sql(s, "UPDATE exchange_seal_leaf SET leaf_hash = :h WHERE exchange_id = 8", h="cd" * 32),
                   "seal_leaves", 8, 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tampering_is_detected_and_named(store, keypair, case):
    private, public, *_ = keypair
    fill(store, 12)
    if case == "inserted record":  # a legitimate gap in the ids (a rolled-back insert), filled later
        sql(store, "DELETE FROM exchange_key WHERE exchange_id = 3")
        sql(store, "DELETE FROM exchange_log WHERE id = 3")
    seal_exchanges(store, private, batch_size=4)
    assert verify_exchanges(store, public).ok
    tamper, kind, record_id, seq = CASES[case]
    tamper(store)
    result = verify_exchanges(store, public)
    assert not result.ok
    assert (result.failure.kind, result.failure.record_id, result.failure.seal_seq) == (kind, record_id, seq), \
        result.failure
    assert str(seq) in result.failure.explanation
    if record_id is not None:
        assert f"#{record_id}" in result.failure.explanation or f"record #{record_id}" in str(result.failure)


def test_seals_deleted_from_the_end_with_their_leaves_fail_an_expected_head(store, keypair):
    private, public, *_ = keypair
    fill(store, 6)
    head = seal_exchanges(store, private, batch_size=3).head
    sql(store, "DELETE FROM exchange_seal_leaf WHERE seal_seq = 2")
    sql(store, "DELETE FROM exchange_seal WHERE seq = 2")
    assert verify_exchanges(store, public).unsealed_records == 3  # looks merely unsealed...
    result = verify_exchanges(store, public, expect_head=(2, head["seal_hash"]))
    assert not result.ok and result.failure.kind == "head_mismatch" and result.failure.seal_seq == 2


def test_a_wrong_public_key_or_a_log_resealed_with_another_key_fails(store, keypair, tmp_path):
    private, public, *_ = keypair
    fill(store, 5)
    seal_exchanges(store, private)
    other_private_path, other_public_path, _ = generate_keypair(tmp_path / "other.key")
    result = verify_exchanges(store, load_public_key(other_public_path))
    assert not result.ok and (result.failure.kind, result.failure.seal_seq) == ("seal_unknown_key", 1)

    # an attacker who rewrites the log and reseals it all with their own key
    sql(store, "UPDATE exchange_log SET http_status = 500 WHERE id = 2")
    sql(store, "DELETE FROM exchange_seal_leaf")
    sql(store, "DELETE FROM exchange_seal")
    seal_exchanges(store, other_private_path)
    result = verify_exchanges(store, public)
    assert not result.ok and (result.failure.kind, result.failure.seal_seq) == ("seal_unknown_key", 1)
    # ... and one who also forges the fingerprint column
    sql(store, "UPDATE exchange_seal SET key_fingerprint = :f", f=key_fingerprint(public))
    result = verify_exchanges(store, public)
    assert not result.ok and result.failure.kind == "seal_altered"
    # rotated keys: several public keys may be given
    assert verify_exchanges(store, [public, load_public_key(other_public_path)]).failure.kind == "seal_altered"


def test_the_seal_body_is_what_is_signed(store, keypair):
    private, public, *_ = keypair
    fill(store, 2)
    seal = seal_exchanges(store, private).head
    public.verify(bytes.fromhex(seal["signature"]), seal_body(seal))
    assert b'"format":"lienthong-seal/1"' in seal_body(seal)


def test_after_key_rotation_old_seals_verify_with_the_old_key_and_verify_names_each_key(
        store, keypair, tmp_path, monkeypatch, capsys):
    from lienthong.cli import main

    from .conftest import cli_env

    private, public, private_path, public_path = keypair
    old = key_fingerprint(public)
    fill(store, 4)
    seal_exchanges(store, private, batch_size=2)
    new_private_path, new_public_path, new = generate_keypair(tmp_path / "keys" / "seal-2026.key")
    fill(store, 3, start=10)
    seal_exchanges(store, new_private_path, batch_size=2)  # seals 3 and 4
    result = verify_exchanges(store, [public, load_public_key(new_public_path)])
    assert result.ok and result.records_checked == 7
    assert result.keys == [{"fingerprint": old, "first_seq": 1, "last_seq": 2, "seals": 2},
                           {"fingerprint": new, "first_seq": 3, "last_seq": 4, "seals": 2}]
    only_new = verify_exchanges(store, load_public_key(new_public_path))
    assert not only_new.ok and (only_new.failure.kind, only_new.failure.seal_seq) == ("seal_unknown_key", 1)
    assert old[:16] in str(only_new.failure)

    cli_env(store, tmp_path, monkeypatch)
    assert main(["audit", "verify", "--workers", "1", "--public-key", str(public_path),
                 "--public-key", str(new_public_path)]) == 0
    out = capsys.readouterr().out
    assert f"seals 1..2 signed by key {old}" in out and f"seals 3..4 signed by key {new}" in out
