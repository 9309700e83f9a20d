"""Large or binary bodies are stored once by content hash; the seal, verify, show and bundles follow them."""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

from connectors.transport import Exchange
from lienthong.audit import seal_exchanges, verify_exchanges
from lienthong.audit.bundle import export_bundle
from lienthong.audit.bundle_verify import verify_bundle
from lienthong.audit.search import format_exchange, get_exchange
from lienthong.exchange_log import (
    BlobCorruptError,
    BlobNotFoundError,
    BusRecorder,
    blob_info,
    exchange_body,
    is_binary,
    put_blob,
    read_blob,
)
from lienthong.store import exchange_blob, exchange_log

from .conftest import T0, fill

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj <</Type /Catalog>> endobj\n" + os.urandom(3000) + b"\n%%EOF\n"
RECEIPT = "BL-2026-000777"


def _bill(n: int, pdf: bytes = PDF, **kwargs) -> Exchange:
    return Exchange(
        peer="payment", operation="GET_BILL", method="GET", url=f"http://127.0.0.1:18083/bill/{RECEIPT}",
        started_at=T0 + timedelta(minutes=n), duration_ms=20.0, attempt=1, outcome="ok",
        record_keys=(RECEIPT,), request_headers={"Accept": "application/pdf"}, request_body=b"",
        response_status=200, response_headers={"Content-Type": "application/pdf"}, response_body=pdf,
        peer_code="0", **kwargs)


def sql(store, statement, **params):
    with store.begin() as conn:
        return conn.execute(text(statement), params)


def test_a_pdf_is_stored_once_by_hash_and_read_back(store):
    recorder = BusRecorder(store, "payment", "run-1", "fetch")
    recorder.record(_bill(1))
    recorder.record(_bill(2))  # the same receipt fetched again: one blob
    sha = hashlib.sha256(PDF).hexdigest()
    with store.engine.connect() as conn:
        rows = conn.execute(select(exchange_log).order_by(exchange_log.c.id)).mappings().all()
        blobs = conn.execute(select(func.count()).select_from(exchange_blob)).scalar_one()
    assert blobs == 1
    for row in rows:
        assert row["response_blob_sha256"] == row["response_sha256"] == sha and row["response_size"] == len(PDF)
        assert zlib.decompress(row["response_body"]) == b""  # not inlined
        assert row["request_blob_sha256"] is None and row["leaf_version"] == 3
        assert exchange_body(store, row, "response") == PDF
    assert read_blob(store, sha) == PDF
    assert blob_info(store, sha)["content_type"] == "application/pdf" and blob_info(store, sha)["size"] == len(PDF)
    with pytest.raises(BlobNotFoundError):
        read_blob(store, "0" * 64)
    sql(store, "UPDATE exchange_blob SET data = :d", d=zlib.compress(PDF + b"x"))
    with pytest.raises(BlobCorruptError):
        read_blob(store, sha)


def test_the_flow_can_keep_a_receipt_by_hash(store):
    with store.begin() as conn:
        sha = put_blob(conn, PDF, "application/pdf", pinned=True)
        assert put_blob(conn, PDF, "application/pdf") == sha
    assert read_blob(store, sha) == PDF and blob_info(store, sha)["pinned"] is True


def test_binary_detection_and_the_size_threshold(store):
    assert is_binary(b"\x00\x01", "application/octet-stream") and is_binary(b"%PDF", "application/pdf")
    assert not is_binary(b"{}", "application/json; charset=utf-8") and not is_binary(b"<a/>", "text/xml")
    assert not is_binary(b"a=1", "application/x-www-form-urlencoded") and not is_binary(b"<p>", "text/html")
    assert is_binary(b"\xff\xfe\x00", None) and not is_binary("tiếng Việt".encode(), None)
    recorder = BusRecorder(store, "payment", "run-1", "pay", blob_threshold=1000)
    big = json.dumps({"items": ["x" * 50] * 40}).encode()
    upload = os.urandom(200)
    recorder.record(Exchange(peer="p", operation="UPLOAD", method="POST", url="http://x/", started_at=T0,
                             duration_ms=1.0, attempt=1, outcome="ok",
                             request_headers={"Content-Type": "application/octet-stream"}, request_body=upload,
                             response_headers={"Content-Type": "application/json"}, response_body=big))
    recorder.record(Exchange(peer="p", operation="SMALL", method="POST", url="http://x/", started_at=T0,
                             duration_ms=1.0, attempt=1, outcome="ok", request_body=b'{"a":1}',
                             response_headers={"Content-Type": "application/json"}, response_body=b"{}"))
    with store.engine.connect() as conn:
        first, second = conn.execute(select(exchange_log).order_by(exchange_log.c.id)).mappings().all()
    assert first["request_blob_sha256"] == hashlib.sha256(upload).hexdigest()
    assert first["response_blob_sha256"] == hashlib.sha256(big).hexdigest()
    assert exchange_body(store, first, "request") == upload and exchange_body(store, first, "response") == big
    assert second["request_blob_sha256"] is None and second["response_blob_sha256"] is None
    assert zlib.decompress(second["request_body"]) == b'{"a":1}'


def _sealed_with_bills(store, keypair):
    fill(store, 3)
    recorder = BusRecorder(store, "payment", "run-1", "fetch")
    recorder.record(_bill(10))
    recorder.record(_bill(11, pdf=PDF + b"second"))
    fill(store, 2, start=20)
    seal_exchanges(store, keypair[0], batch_size=4)
    return hashlib.sha256(PDF).hexdigest(), hashlib.sha256(PDF + b"second").hexdigest()


def test_seal_and_verify_check_the_blobs_and_name_a_deleted_or_edited_one(store, keypair):
    sha, sha2 = _sealed_with_bills(store, keypair)
    result = verify_exchanges(store, keypair[1])
    assert result.ok and result.blobs_checked == 2 and result.records_checked == 7, result.failure
    deep = verify_exchanges(store, keypair[1], deep=True)  # the PDFs rebuilt against their recorded digests
    assert deep.ok and deep.bodies_checked == 14, deep.failure

    sql(store, "UPDATE exchange_blob SET data = :d WHERE sha256 = :s", d=zlib.compress(PDF[:-1] + b"X"), s=sha2)
    deep = verify_exchanges(store, keypair[1], deep=True)  # the blob itself is named, not its body's digest
    assert not deep.ok and (deep.failure.kind, deep.failure.record_id) == ("blob_altered", 5), deep.failure
    result = verify_exchanges(store, keypair[1])
    assert not result.ok and (result.failure.kind, result.failure.record_id, result.failure.seal_seq) == (
        "blob_altered", 5, 2), result.failure
    assert "record #5" in str(result.failure)

    sql(store, "DELETE FROM exchange_blob WHERE sha256 = :s", s=sha)
    result = verify_exchanges(store, keypair[1])
    assert not result.ok and (result.failure.kind, result.failure.record_id, result.failure.seal_seq) == (
        "blob_missing", 4, 1), result.failure

    # pointing the row at another blob changes the sealed reference
    sql(store, "UPDATE exchange_log SET response_blob_sha256 = :s WHERE id = 4", s=sha2)
    result = verify_exchanges(store, keypair[1])
    assert not result.ok and (result.failure.kind, result.failure.record_id) == ("record_altered", 4)


def test_show_prints_the_reference_not_the_bytes(store):
    BusRecorder(store, "payment", "run-1", "fetch").record(_bill(1))
    shown = format_exchange(get_exchange(store, 1), reveal=True)
    sha = hashlib.sha256(PDF).hexdigest()
    assert f"stored by content hash: sha256 {sha}, application/pdf, {len(PDF)} bytes" in shown
    assert "%PDF" not in shown


def test_export_copies_the_blobs_and_the_offline_verifier_checks_them(store, keypair, tmp_path):
    import zipfile

    sha, sha2 = _sealed_with_bills(store, keypair)
    out = tmp_path / "bills.zip"
    result = export_bundle(store, out, [keypair[1]], key=RECEIPT)
    assert result.record_ids == [4, 5]
    with zipfile.ZipFile(out) as zf:
        assert zf.read(f"blobs/{sha}") == PDF and zf.read(f"blobs/{sha2}") == PDF + b"second"
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["blobs"][sha] == {"content_type": "application/pdf", "size": len(PDF)}
    check = verify_bundle(str(out), keypair[3].read_bytes())
    assert check.ok and check.blobs_checked == 2, check.failure

    def rewrite(dst, edit):
        with zipfile.ZipFile(out) as zin, zipfile.ZipFile(dst, "w") as zout:
            for info in zin.infolist():
                data = edit(info.filename, zin.read(info.filename))
                if data is not None:
                    zout.writestr(info.filename, data)

    rewrite(tmp_path / "edited.zip", lambda n, d: d + b"!" if n == f"blobs/{sha2}" else d)
    check = verify_bundle(str(tmp_path / "edited.zip"))
    assert not check.ok and check.failure_kind == "blob_altered" and "record #5" in check.failure

    rewrite(tmp_path / "gone.zip", lambda n, d: None if n == f"blobs/{sha}" else d)
    check = verify_bundle(str(tmp_path / "gone.zip"))
    assert not check.ok and check.failure_kind == "blob_missing" and "record #4" in check.failure
