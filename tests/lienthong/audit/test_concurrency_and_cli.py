"""Sealers running at once leave no gap and seal nothing twice; the CLI; the private key stays out."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from itertools import pairwise
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from sqlalchemy import text

from lienthong.audit import seal_exchanges, verify_exchanges
from lienthong.cli import main
from lienthong.store import Store

from .conftest import cli_env, fill

REPO = Path(__file__).resolve().parents[3]


def _seals(store):
    with store.engine.connect() as conn:
        seals = conn.execute(text("SELECT seq, first_id, last_id, count FROM exchange_seal ORDER BY seq")).all()
        leaves = conn.execute(text("SELECT exchange_id FROM exchange_seal_leaf ORDER BY exchange_id")).scalars().all()
        ids = conn.execute(text("SELECT id FROM exchange_log ORDER BY id")).scalars().all()
    return seals, leaves, ids


def _assert_contiguous(store):
    seals, leaves, ids = _seals(store)
    assert [s.seq for s in seals] == list(range(1, len(seals) + 1))
    for before, after in pairwise(seals):
        assert after.first_id > before.last_id
    assert sum(s.count for s in seals) == len(leaves) == len(set(leaves))  # nothing sealed twice
    assert leaves == [i for i in ids if i <= seals[-1].last_id]  # no gap


def test_threads_sealing_while_exchanges_are_recorded(bus_store, keypair, tmp_path):
    """On SQLite and on PostgreSQL, whose row locks are what serialise sealers there."""
    store = bus_store
    private, public, *_ = keypair
    fill(store, 20)
    url = store.url
    errors: list[BaseException] = []

    def writer():
        own = Store(url)
        try:
            fill(own, 30, start=100)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            own.dispose()

    def sealer():
        own = Store(url)
        try:
            for _ in range(6):
                seal_exchanges(own, private, batch_size=3)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=sealer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    seal_exchanges(store, private, batch_size=3)
    _assert_contiguous(store)
    result = verify_exchanges(store, public)
    assert result.ok and result.records_checked == 50 and result.unsealed_records == 0


def test_two_processes_sealing_at_once(bus_store, keypair):
    store = bus_store
    _, public, private_path, _ = keypair
    fill(store, 40)
    code = ("import sys; from lienthong.store import Store; from lienthong.audit import seal_exchanges; "
            "r = seal_exchanges(Store(sys.argv[1]), sys.argv[2], batch_size=2); print(r.records)")
    procs = [subprocess.Popen([sys.executable, "-c", code, store.url, str(private_path)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert sum(int(out) for out, _ in outputs) == 40  # each record sealed by exactly one of them
    _assert_contiguous(store)
    assert verify_exchanges(store, public).ok


def _private_material(private_path: Path) -> list[bytes]:
    pem = private_path.read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    body = b"".join(pem.splitlines()[1:-1])
    return [raw, raw.hex().encode(), base64.b64encode(raw), body, base64.b64decode(body)]


def test_cli_keygen_seal_verify_and_a_tampered_log(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LIENTHONG_HOME", str(tmp_path / "home"))
    db = tmp_path / "bus.db"
    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    monkeypatch.delenv("LIENTHONG_SEAL_KEY", raising=False)
    monkeypatch.delenv("LIENTHONG_SEAL_PUBLIC_KEY", raising=False)
    key = tmp_path / "keys" / "seal.key"

    assert main(["audit", "keygen", str(key)]) == 0
    assert main(["audit", "keygen", str(key)]) == 2  # never overwrites
    store = Store(f"sqlite:///{db}")
    store.create_schema()
    fill(store, 7)

    assert main(["audit", "verify", "--public-key", f"{key}.pub"]) == 0  # nothing sealed yet
    assert main(["audit", "seal"]) == 2  # no key given
    assert main(["audit", "seal", "--key", str(key), "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    assert "sealed 7 records in 3 seals" in out
    head = out.split("head: ")[1].split()[0]

    monkeypatch.setenv("LIENTHONG_SEAL_KEY", str(key))  # verify finds <key>.pub from it
    assert main(["audit", "seal"]) == 0 and "nothing to seal" in capsys.readouterr().out
    assert main(["audit", "verify", "--expect-head", head]) == 0
    assert "verified: 7 records in 3 seals" in capsys.readouterr().out

    with store.begin() as conn:
        conn.execute(text("UPDATE exchange_log SET url = 'http://elsewhere/' WHERE id = 5"))
    assert main(["audit", "verify"]) == 1
    out = capsys.readouterr().out
    assert "NOT VERIFIED" in out and "record #5" in out and "seal 2" in out
    assert main(["audit", "verify", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["failure"]["record_id"] == 5 and report["failure"]["seal_seq"] == 2

    try:
        main(["audit", "verify", "--expect-head", "x"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("a malformed --expect-head must be refused")
    store.dispose()


def test_the_private_key_never_reaches_the_database_or_the_output(tmp_path, monkeypatch, capsys, store, keypair):
    _, _, private_path, _ = keypair
    cli_env(store, tmp_path, monkeypatch)
    fill(store, 5)
    assert main(["audit", "seal", "--key", str(private_path)]) == 0
    assert main(["audit", "verify", "--public-key", f"{private_path}.pub", "--json"]) == 0
    assert main(["audit", "keygen", str(tmp_path / "second.key")]) == 0
    captured = capsys.readouterr()
    output = (captured.out + captured.err).encode()
    secrets = _private_material(private_path) + _private_material(tmp_path / "second.key")
    db_bytes = b"".join(p.read_bytes() for p in Path(store.url.removeprefix("sqlite:///")).parent.glob("bus.db*"))
    with store.engine.connect() as conn:
        dumped = "\n".join(str(tuple(r)) for table in ("exchange_seal", "exchange_seal_leaf")
                           for r in conn.execute(text(f"SELECT * FROM {table}"))).encode()
    for secret in secrets:
        assert secret not in output and secret not in db_bytes and secret not in dumped


def test_counts_below_one_are_usage_errors(tmp_path, monkeypatch, capsys, store, keypair):
    """`audit seal --batch-size 0` raised ValueError (a traceback, exit 1, which means 'does not
    verify'); `audit verify --workers 0` or `-2` quietly ran one process."""
    import pytest

    _, _, private_path, _ = keypair
    cli_env(store, tmp_path, monkeypatch)
    fill(store, 3)
    for argv in (["audit", "seal", "--key", str(private_path), "--batch-size", "0"],
                 ["audit", "verify", "--public-key", f"{private_path}.pub", "--workers", "0"],
                 ["audit", "verify", "--public-key", f"{private_path}.pub", "--workers", "-2"]):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2, argv
        captured = capsys.readouterr()
        assert f"argument {argv[-2]}: expected a whole number of at least 1, got '{argv[-1]}'" in captured.err
        assert "Traceback" not in captured.err and captured.out == ""
    assert _seals(store)[0] == []  # nothing sealed


def test_an_expected_head_that_is_no_seal_hash_is_a_usage_error(tmp_path, monkeypatch, capsys, store, keypair):
    """`--expect-head 1:<64 characters that are not hex>` (a head pasted with a stray character)
    was taken, and the log reported NOT VERIFIED (exit 1, which means it was altered)."""
    import pytest

    _, _, private_path, _ = keypair
    cli_env(store, tmp_path, monkeypatch)
    fill(store, 3)
    assert main(["audit", "seal", "--key", str(private_path)]) == 0
    head = capsys.readouterr().out.split("head: ")[1].split()[0]
    public = ["--public-key", f"{private_path}.pub"]
    for bad in (head[:-1] + "g", head[:2] + " " + head[3:], "²:" + head.split(":")[1]):
        with pytest.raises(SystemExit) as caught:
            main(["audit", "verify", *public, "--expect-head", bad])
        assert caught.value.code == 2, bad
        captured = capsys.readouterr()
        assert "expected SEQ:SEAL_HASH" in captured.err and captured.out == "", bad
    assert main(["audit", "verify", *public, "--expect-head", head.upper()]) == 0  # hex in either case
