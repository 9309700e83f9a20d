"""Secrets never leave their Connection (design.md §4.7, issue #7).

The four stand-ins run as real servers with distinctive secret values: the portal password, the
one-stop API key, the payment platform's checksum secret, the ledger password, and the session
tokens the portal issues. The three flows run through ``lienthong.tasks`` — once cleanly, once
with faults on (30 % errors, expiring portal sessions, SOAP Faults) and once with each wrong
credential, so the exception paths run too — and the CLI reads everything back (exchanges with
bodies, dead letters, payment mismatches, audit verify/show/export).

Then every place a secret could leak is scanned, for each secret in raw form and in its base64
and URL-encoded forms: the log records at DEBUG (messages, arguments and tracebacks) and the log
file, every column of every row of every table of the bus database and of the ministry database
(compressed blobs decoded), the reports, every exception's text and repr with its chained causes,
the CLI's stdout and stderr and the evidence bundle it exports, and the output of the stand-ins'
own command line (``python -m mocks up``), which reads the secrets from ``LIENTHONG_MOCK_*``.

The test proves it looked: logins succeeded with the secrets (sessions opened, receipts booked,
fees read), and each haystack holds many rows and lines.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import sys
import traceback
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import requests
from sqlalchemy import MetaData, Table, create_engine, inspect, select

from connectors.connection import connection_from_env
from lienthong import tasks

REPO = Path(__file__).resolve().parents[1]
T = 10
TAG = uuid.uuid4().hex
UNIT = "000.00.01.H49"
PARTNER = "DVC_H49"
PORTAL_USER = "lienthong.h49"
LEDGER_USER = "lienthong.h49"
# "+/~" make the URL-encoded and base64 forms differ from the raw one
SECRETS = {
    "portal password": f"S3cr3t-Portal-{TAG}+/~",
    "one-stop API key": f"S3cr3t-OneStop-{TAG}+/~",
    "payment secret": f"S3cr3t-Payment-{TAG}+/~",
    "ledger password": f"S3cr3t-Ledger-{TAG}+/~",
}
WRONG = {
    "wrong portal password": f"Wr0ng-Portal-{TAG}+/~",
    "wrong one-stop API key": f"Wr0ng-OneStop-{TAG}+/~",
    "wrong payment secret": f"Wr0ng-Payment-{TAG}+/~",
    "wrong ledger password": f"Wr0ng-Ledger-{TAG}+/~",
}

WRONG_FOR = {"portal": WRONG["wrong portal password"], "onestop": WRONG["wrong one-stop API key"],
             "payment": WRONG["wrong payment secret"], "ledger": WRONG["wrong ledger password"]}


# --- what a leak looks like ----------------------------------------------------------------------
def encoded_forms(secret: str) -> set[str]:
    """The secret raw, URL-encoded, JSON/XML-escaped, and base64 at each of the three alignments
    (a secret inside a longer base64 text, e.g. ``user:password`` in Basic auth)."""
    raw = secret.encode("utf-8")
    forms = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for offset in range(3):
            text = encode(b"\0" * offset + raw).decode("ascii").rstrip("=")
            core = text[4 if offset else 0:][:-4]  # drop the groups shared with what is around it
            if len(core) >= 12:
                forms.add(core)
    return forms


@dataclass
class Haystack:
    """Everything scanned, by where it came from."""

    texts: dict[str, list[str]] = field(default_factory=dict)

    def add(self, where: str, text: str) -> None:
        self.texts.setdefault(where, []).append(text)

    def count(self, where: str) -> int:
        return len(self.texts.get(where, []))

    def leaks(self, secrets: dict[str, str]) -> list[str]:
        found = []
        for name, secret in secrets.items():
            for form in encoded_forms(secret):
                for where, texts in self.texts.items():
                    for text in texts:
                        at = text.find(form)
                        if at >= 0:
                            found.append(f"{name} ({'raw' if form == secret else 'encoded ' + form!r}) in {where}: "
                                         f"…{text[max(0, at - 120):at + len(form) + 40]!r}…")
                            break
        return found


def _decode(value: Any) -> list[str]:
    """A column value as text; bytes raw (latin-1), zlib-inflated and UTF-8 decoded."""
    if value is None:
        return []
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        out = [data.decode("latin-1")]
        try:
            out.append(zlib.decompress(data).decode("utf-8", "replace"))
        except zlib.error:
            out.append(data.decode("utf-8", "replace"))
        return out
    if isinstance(value, (dict, list)):
        return [json.dumps(value, ensure_ascii=False, default=str), json.dumps(value, default=str)]
    return [str(value)]


def scan_database(url: str, where: str, hay: Haystack) -> dict[str, int]:
    """Every column of every row of every table; returns rows per table."""
    engine = create_engine(url)
    rows_per_table = {}
    try:
        with engine.connect() as conn:
            for table_name in inspect(conn).get_table_names():
                table = Table(table_name, MetaData(), autoload_with=conn)
                n = 0
                for row in conn.execute(select(table)).mappings():
                    n += 1
                    for column, value in row.items():
                        for text in _decode(value):
                            hay.add(f"{where} {table_name}.{column}", text)
                rows_per_table[table_name] = n
    finally:
        engine.dispose()
    return rows_per_table


def exception_texts(exc: BaseException) -> list[str]:
    """Text, repr, attributes and traceback of an exception and of every exception chained to it."""
    out: list[str] = []
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        out += [str(current), repr(current), repr(getattr(current, "args", ())),
                repr({k: v for k, v in vars(current).items() if not k.startswith("__")})]
        stack += [current.__cause__, current.__context__]
    out.append("".join(traceback.format_exception(exc)))
    return out


# --- the stand-ins -------------------------------------------------------------------------------
@dataclass
class Peers:
    onestop: Any
    portal: Any
    platform: Any
    ledger: Any
    tmp: Path
    tokens: set[str] = field(default_factory=set)

    def connections(self, **override: str) -> dict[str, dict]:
        def hp(mock: Any) -> tuple[str, int]:
            host, port = mock.url.removeprefix("http://").split(":")
            return host, int(port)

        o, p, pay, lg = hp(self.onestop), hp(self.portal), hp(self.platform), hp(self.ledger)
        return {
            "onestop_default": {"conn_type": "http", "host": o[0], "port": o[1], "schema": "http",
                                "password": override.get("onestop", SECRETS["one-stop API key"]),
                                "extra": {"page_size": 25, "read_timeout": 5, "max_attempts": 2}},
            "national_portal_default": {
                "conn_type": "http", "host": p[0], "port": p[1], "schema": "http", "login": PORTAL_USER,
                "password": override.get("portal", SECRETS["portal password"]),
                "extra": {"madonvi": UNIT, "dstcode": "DVCQG", "read_timeout": 5, "max_attempts": 2}},
            "payment_platform_default": {"conn_type": "http", "host": pay[0], "port": pay[1], "schema": "http",
                                         "login": PARTNER, "password": override.get("payment", SECRETS["payment secret"]),
                                         "extra": {"read_timeout": 5, "max_attempts": 2}},
            "ministry_ledger_default": {"conn_type": "http", "host": lg[0], "port": lg[1], "schema": "http",
                                        "login": LEDGER_USER, "password": override.get("ledger", SECRETS["ledger password"]),
                                        "extra": {"operation_timeout": 2.0, "max_attempts": 2, "batch_size": 5}},
            "lienthong_db": {"conn_type": "sqlite", "host": str(self.tmp / "bus.db")},
            "ministry_db_default": {"conn_type": "sqlite", "host": str(self.tmp / "ministry.db")},
        }

    def mocks(self) -> list[Any]:
        return [self.onestop, self.portal, self.platform, self.ledger]

    def faults(self, plan: dict[str, Any]) -> None:
        """Faults on every stand-in as ``plan`` says, with expiring portal sessions and SOAP Faults
        added; an empty plan turns every fault off (the ledger's SOAP Faults too)."""
        for mock in self.mocks():
            spec = dict(plan)
            if plan and mock is self.portal:
                spec["session_expire_every"] = 3
            if plan and mock is self.ledger:
                spec["soap_fault_rate"] = 0.2
            response = requests.post(mock.url + "/_admin/faults", json=spec, timeout=T)
            assert response.ok, (mock.name, response.text)

    def collect_tokens(self) -> None:
        """The session tokens the portal issued (its own state)."""
        with self.portal._sessions_lock:  # noqa: SLF001 - the stand-in's state, read by a test
            self.tokens.update(self.portal._sessions)  # noqa: SLF001


@pytest.fixture
def peers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Peers]:
    from mocks.ministry_ledger import MinistryLedgerMock
    from mocks.national_portal import NationalPortalMock
    from mocks.one_stop import OneStopMock
    from mocks.payment_platform import PaymentPlatformMock

    state = tmp_path / "mocks"
    onestop = OneStopMock(state_dir=state, port=0, api_key=SECRETS["one-stop API key"], seed_dossiers=20,
                          payment_secret=SECRETS["payment secret"], payment_partner=PARTNER).start()
    portal = NationalPortalMock(state_dir=state, port=0, catalogue_size=40,
                                accounts={PORTAL_USER: {"password": SECRETS["portal password"], "unit": UNIT}}).start()
    platform = PaymentPlatformMock(state_dir=state, port=0, partner_code=PARTNER, secret=SECRETS["payment secret"],
                                   seed_dossiers=20, callback_url=onestop.url + "/api/v1/payments/confirm",
                                   lost_share=0.3).start()
    onestop.payment_platform_url = platform.url
    ledger = MinistryLedgerMock(state_dir=state, port=0, username=LEDGER_USER,
                                password=SECRETS["ledger password"]).start()
    found = Peers(onestop, portal, platform, ledger, tmp_path)
    monkeypatch.setenv("LIENTHONG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LIENTHONG_SEAL_KEY", str(tmp_path / "keys" / "seal.key"))
    set_connections(monkeypatch, found.connections())
    try:
        yield found
    finally:
        platform.wait_callbacks(5)
        for mock in reversed(found.mocks()):
            mock.stop()


def set_connections(monkeypatch: pytest.MonkeyPatch, connections: dict[str, dict]) -> None:
    for conn_id, conn in connections.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


# --- the runs ------------------------------------------------------------------------------------
STEPS = (
    ("stage", lambda r: tasks.stage_dossier_changes(connection_from_env, run_id=r, task_id="stage")),
    ("deliver", lambda r: tasks.deliver_dossier_statuses(connection_from_env, run_id=r, task_id="deliver")),
    ("progress", lambda r: tasks.deliver_dossier_progress(connection_from_env, run_id=r, task_id="progress")),
    ("dossier summary", lambda r: tasks.dossier_run_summary(connection_from_env, run_id=r)),
    ("pull", lambda r: tasks.pull_procedure_catalogue(connection_from_env, run_id=r, task_id="pull")),
    ("push onestop", lambda r: tasks.push_procedure_catalogue(connection_from_env, run_id=r, task_id="push_onestop",
                                                               destination="onestop")),
    ("push ministry", lambda r: tasks.push_procedure_catalogue(connection_from_env, run_id=r, task_id="push_ministry",
                                                                destination="ministry")),
    ("collect", lambda r: tasks.collect_payments(connection_from_env, run_id=r, task_id="collect")),
    ("fees", lambda r: tasks.update_onestop_fees(connection_from_env, run_id=r, task_id="fees")),
    ("receipts", lambda r: tasks.submit_payment_receipts(connection_from_env, run_id=r, task_id="receipts")),
)


def run_flows(run_id: str, peers: Peers, hay: Haystack, errors: list[BaseException], *,
              expect_ok: bool, steps: tuple = STEPS) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, step in steps:
        try:
            results[name] = step(run_id)
        except Exception as exc:  # noqa: BLE001 - every failure's text is scanned; a clean run must not fail
            if expect_ok:
                raise
            errors.append(exc)
            results[name] = exc
        else:
            hay.add(f"task result {run_id} {name}", json.dumps(results[name], default=str, ensure_ascii=False))
        peers.collect_tokens()
    try:
        summary = tasks.reconcile_payments(connection_from_env, run_id=run_id, task_id="reconcile",
                                           report_dir=str(peers.tmp / "reports"))
        hay.add(f"task result {run_id} reconcile", json.dumps(summary, default=str, ensure_ascii=False))
        summary = tasks.catalogue_run_summary(connection_from_env, run_id=run_id, report_dir=str(peers.tmp / "reports"))
        hay.add(f"task result {run_id} catalogue summary", json.dumps(summary, default=str, ensure_ascii=False))
    except Exception as exc:  # noqa: BLE001 - as above
        if expect_ok:
            raise
        errors.append(exc)
    return results


def cli(args: list[str], env: dict[str, str], hay: Haystack, *, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(REPO / ".venv" / "bin" / "lienthong"), *args], env=env, capture_output=True,
                          text=True, timeout=60, cwd=str(REPO))
    hay.add(f"CLI lienthong {' '.join(args)} stdout", done.stdout)
    hay.add(f"CLI lienthong {' '.join(args)} stderr", done.stderr)
    if ok:
        assert done.returncode == 0, f"lienthong {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def mocks_cli(hay: Haystack, tmp: Path) -> int:
    """``python -m mocks up -v`` with the secrets from ``LIENTHONG_MOCK_*``: used, never printed."""
    env = {**os.environ, "LIENTHONG_MOCK_ONESTOP_API_KEY": SECRETS["one-stop API key"],
           "LIENTHONG_MOCK_PORTAL_PASSWORD": SECRETS["portal password"],
           "LIENTHONG_MOCK_PAYMENT_SECRET": SECRETS["payment secret"],
           "LIENTHONG_MOCK_LEDGER_PASSWORD": SECRETS["ledger password"], "PYTHONUNBUFFERED": "1"}
    log = tmp / "mocks-cli.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mocks", "up", "-v", "--state-dir", str(tmp / "mocks-cli"),
             "--onestop-port", "0", "--portal-port", "0", "--payment-port", "0", "--ledger-port", "0",
             "--seed-dossiers", "3", "--catalogue-size", "20"],
            cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        banner = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                banner.append(line)
                if line.startswith("Ctrl-C"):
                    break
            urls = dict(re.findall(r"^  (one-stop|national portal)\s+(http://127\.0\.0\.1:\d+)", "".join(banner), re.M))
            login = requests.post(urls["national portal"] + "/auth", timeout=T, headers={"dstcode": "DVCQG"},
                                  json={"username": PORTAL_USER, "password": SECRETS["portal password"]}).json()
            refused = requests.post(urls["national portal"] + "/auth", timeout=T, headers={"dstcode": "DVCQG"},
                                    json={"username": PORTAL_USER, "password": WRONG["wrong portal password"]}).json()
            listed = requests.get(urls["one-stop"] + "/api/v1/dossiers", timeout=T,
                                  headers={"X-Api-Key": SECRETS["one-stop API key"]})
            assert login.get("session") and not refused.get("session") and listed.ok, (login, refused, listed.text)
        finally:
            proc.terminate()
            rest, _ = proc.communicate(timeout=15)
            banner.append(rest)
    hay.add("python -m mocks up stdout", "".join(banner))
    hay.add("python -m mocks up log (stderr)", log.read_text())
    return len("".join(banner).splitlines()) + len(log.read_text().splitlines())


# --- the test ------------------------------------------------------------------------------------
def test_no_secret_leaves_its_connection(peers: Peers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    hay = Haystack()
    errors: list[BaseException] = []
    caplog.set_level(logging.DEBUG)
    log_file = tmp_path / "lienthong-debug.log"
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setLevel(logging.DEBUG)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(file_handler)
    try:
        # 1. a clean run of the three flows
        requests.post(peers.onestop.url + "/_admin/advance", json={"new": 3, "changes": 5}, timeout=T).raise_for_status()
        settled = requests.post(peers.platform.url + "/_admin/payments/settle", json={"n": 6}, timeout=T).json()
        peers.platform.wait_callbacks(10)
        clean = run_flows("secrets-clean", peers, hay, errors, expect_ok=True)

        # 2. faults on: errors, expiring sessions, SOAP Faults; new work so every step has some
        requests.post(peers.onestop.url + "/_admin/advance", json={"new": 4, "changes": 8}, timeout=T).raise_for_status()
        requests.post(peers.platform.url + "/_admin/payments/settle", json={"n": 6}, timeout=T)
        peers.platform.wait_callbacks(10)
        peers.faults({"error_rate": 0.3, "http_status": 503, "seed": 7})
        for n in range(2):
            run_flows(f"secrets-faults-{n}", peers, hay, errors, expect_ok=False)
        peers.faults({})

        # 3. each credential wrong once: authentication fails, the exception is scanned
        requests.post(peers.onestop.url + "/_admin/advance", json={"new": 2, "changes": 3}, timeout=T).raise_for_status()
        requests.post(peers.platform.url + "/_admin/payments/settle", json={"n": 3}, timeout=T)
        peers.platform.wait_callbacks(10)
        wrong_steps = {"portal": ("stage", "deliver", "pull"), "onestop": ("stage",),
                       "payment": ("collect",), "ledger": ("receipts",)}
        before = len(errors)
        for which, step_names in wrong_steps.items():
            set_connections(monkeypatch, peers.connections(**{which: WRONG_FOR[which]}))
            run_flows(f"secrets-wrong-{which}", peers, hay, errors, expect_ok=False,
                      steps=tuple(s for s in STEPS if s[0] in step_names))
        set_connections(monkeypatch, peers.connections())
        auth_failures = [e for e in errors[before:] if type(e).__name__ in ("AuthenticationFailed", "ChecksumMismatch")]
        assert len(auth_failures) >= 3, [repr(e) for e in errors[before:]]
        run_flows("secrets-after", peers, hay, errors, expect_ok=False)

        # 4. the CLI reads it all back
        env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
        cli(["run", "dossier-status"], env, hay)
        cli(["run", "payment-receipts"], env, hay)
        for which, conn_id in (("portal", "national_portal_default"), ("ledger", "ministry_ledger_default")):
            requests.post(peers.onestop.url + "/_admin/advance", json={"new": 2, "changes": 2}, timeout=T)
            requests.post(peers.platform.url + "/_admin/payments/settle", json={"n": 2}, timeout=T)
            peers.platform.wait_callbacks(10)
            wrong = {**env, f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(
                peers.connections(**{which: WRONG_FOR[which]})[conn_id])}
            if which == "ledger":  # a citizen pays now: a new request is asked at once, its receipt booked
                opened = requests.post(peers.onestop.url + "/_admin/payments/open", json={"n": 1}, timeout=T).json()
                requests.post(peers.platform.url + "/_admin/payments/settle", json={
                    "n": 0, "outcome": "paid", "references": [o["reference"] for o in opened["opened"]]}, timeout=T)
                assert opened["opened"], opened
            failed = cli(["run", "payment-receipts" if which == "ledger" else "dossier-status"], wrong, hay, ok=False)
            assert failed.returncode != 0 and "AuthenticationFailed" in failed.stderr, failed.stderr[-2000:]
        cli(["audit", "keygen", str(tmp_path / "keys" / "seal.key")], env, hay)
        cli(["audit", "seal"], env, hay)
        cli(["audit", "verify"], env, hay)
        cli(["exchanges", "--bodies", "--limit", "100000"], env, hay)
        cli(["deadletter", "list", "--all"], env, hay)
        cli(["payments", "mismatches", "--all"], env, hay)
        cli(["payments", "mismatches", "--all", "--json"], env, hay)
        store = tasks.open_store(connection_from_env)
        from lienthong.store import dead_letter, exchange_log

        with store.engine.connect() as conn:
            letters = list(conn.execute(select(dead_letter.c.id).order_by(dead_letter.c.id)).scalars())
            logins = list(conn.execute(select(exchange_log.c.id).where(exchange_log.c.peer == "national_portal")
                                       .order_by(exchange_log.c.id)).scalars())
            others = list(conn.execute(select(exchange_log.c.id).where(exchange_log.c.peer != "national_portal")
                                       .order_by(exchange_log.c.id)).scalars())
        store.dispose()
        for letter in letters[:2] + letters[-2:]:
            cli(["deadletter", "show", str(letter)], env, hay)
        for exchange in logins[:3] + others[:2] + others[-2:]:
            cli(["audit", "show", str(exchange), "--reveal"], env, hay)
        cli(["audit", "export", str(tmp_path / "evidence.zip"), "--from", "2000-01-01T00:00:00+00:00",
             "--to", "2100-01-01T00:00:00+00:00"], env, hay)
        with zipfile.ZipFile(tmp_path / "evidence.zip") as bundle:
            for name in bundle.namelist():
                hay.add(f"evidence bundle {name}", bundle.read(name).decode("utf-8", "replace"))
        mock_cli_lines = mocks_cli(hay, tmp_path)
    finally:
        logging.getLogger().removeHandler(file_handler)
        file_handler.close()

    # 5. what was scanned, and that the secrets were really used
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in caplog.records:
        hay.add("log records", formatter.format(record))
        hay.add("log record arguments", repr(record.args))
    hay.add("log file", log_file.read_text(encoding="utf-8"))
    for exc in errors:
        for text in exception_texts(exc):
            hay.add(f"exception {type(exc).__name__}", text)
    for report in [*(tmp_path / "reports").glob("*"), *(tmp_path / "home" / "reports").glob("*")]:
        hay.add(f"report {report.name}", report.read_text(encoding="utf-8"))
    bus_rows = scan_database(f"sqlite:///{tmp_path / 'bus.db'}", "bus DB", hay)
    ministry_rows = scan_database(f"sqlite:///{tmp_path / 'ministry.db'}", "ministry DB", hay)

    peers.collect_tokens()
    tokens = {f"portal session token {n}": token for n, token in enumerate(sorted(peers.tokens))}
    ledger_receipts = requests.get(peers.ledger.url + "/_state/receipts", timeout=T).json()["receipts"]
    assert settled and clean["collect"] and ledger_receipts, "the payment flow ran with the secrets"
    assert len(tokens) >= 2, "the portal opened sessions (logins with the password succeeded, sessions expired)"
    assert bus_rows.get("exchange_log", 0) >= 100 and bus_rows.get("dead_letter", 0) >= 1, bus_rows
    assert sum(ministry_rows.values()) >= 10, ministry_rows
    assert {e for e in caplog.records if e.levelno == logging.DEBUG}, "DEBUG records were captured"
    assert len(caplog.records) >= 50 and len(log_file.read_text().splitlines()) >= 50
    assert len(errors) >= 5, "the fault runs raised exceptions whose text was scanned"
    assert sum(len(t) for w, ts in hay.texts.items() if w.startswith("CLI") for t in ts) >= 10_000
    assert mock_cli_lines >= 10
    assert {"onestop", "national_portal", "payment_platform", "ministry_ledger", "ministry_db"} <= \
        peers_with_ok_exchanges(tmp_path / "bus.db"), "every peer was reached with its secret"

    # the places the secrets travelled were recorded, and scanned: redacted there, not absent
    bus_text = "\n".join(t for where, texts in hay.texts.items() if where.startswith("bus DB") for t in texts)
    for where_it_was in (r'"password":\s*"\*\*\*"', r'"session":\s*"\*\*\*"', r'Password[^>]*>\*\*\*<',
                         r'"?[Xx]-[Aa]pi-[Kk]ey"?:\s*"\*\*\*"'):
        assert re.search(where_it_was, bus_text), f"no redacted {where_it_was} in the exchange log: was it recorded?"

    leaks = hay.leaks({**SECRETS, **WRONG, **tokens})
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks[:20])


def peers_with_ok_exchanges(bus_db: Path) -> set[str]:
    """The peers the exchange log recorded an ``ok`` exchange with."""
    from lienthong.store import exchange_log

    engine = create_engine(f"sqlite:///{bus_db}")
    try:
        with engine.connect() as conn:
            return set(conn.execute(select(exchange_log.c.peer).where(exchange_log.c.outcome == "ok")
                                    .distinct()).scalars())
    finally:
        engine.dispose()


@pytest.mark.parametrize("disguise", [
    lambda s: f"password={s}&x=1",
    lambda s: f"password={quote(s, safe='')}&x=1",
    lambda s: f"password={quote_plus(s)}",
    lambda s: "Authorization: Basic " + base64.b64encode(f"{PORTAL_USER}:{s}".encode()).decode(),
    lambda s: "token " + base64.urlsafe_b64encode(f"x{s}yz".encode()).decode(),
    lambda s: json.dumps({"password": s}),
], ids=["raw", "urlencoded", "quote_plus", "basic-auth", "urlsafe-b64", "json"])
def test_the_scanner_finds_a_secret_in_each_form(disguise: Any) -> None:
    """The scan is only as good as its eyes: each form of a secret is found, also zlib-compressed
    in a database blob."""
    secret = SECRETS["portal password"]
    hay = Haystack()
    hay.add("plain", disguise(secret))
    assert hay.leaks({"portal password": secret})
    blob = Haystack()
    for text in _decode(zlib.compress(disguise(secret).encode())):
        blob.add("blob", text)
    assert blob.leaks({"portal password": secret})
    assert not Haystack({"clean": [disguise("something-else-entirely-1234567890")]}).leaks({"portal password": secret})
