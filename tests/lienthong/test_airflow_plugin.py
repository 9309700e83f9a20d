"""The auditor page inside Airflow (issue #6): a real ``airflow api-server`` loads the plugin from
this package's ``airflow.plugins`` entry point; Airflow's own log-in (SimpleAuthManager, JWT from
``POST /auth/token`` or the UI's ``_token`` cookie) guards it; a real browser drives the log-in
page and the search.

One api-server per module (about 10 s to migrate and start), killed by process group at the end.
The bus database is a real SQLite file written by ``BusRecorder`` and sealed with a real key.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from connectors.transport import Exchange
from lienthong.audit.bundle_verify import verify_bundle
from lienthong.audit.keys import generate_keypair, load_private_key
from lienthong.audit.seal import seal_exchanges
from lienthong.exchange_log import BusRecorder
from lienthong.store import Store

pytestmark = pytest.mark.airflow

REPO_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = Path(sys.executable).parent / "airflow"
PREFIX = "/lienthong-audit"
T = 30

DOSSIERS = ["000.00.01.H49-261127-0041", "000.00.01.H49-261127-0042", "000.00.01.H49-261127-0043"]
TARGET = DOSSIERS[1]  # exchange #2
ID_NUMBERS = ["001203004561", "001203004562", "001203004563"]  # CCCD, 12 digits
TARGET_ID = ID_NUMBERS[1]
TARGET_MASKED = "0**********2"
PHONE = "0912345678"
USERS = {"admin": ("admin", "admin-Pw-5tq"), "auditor": ("viewer", "auditor-Pw-8rz"), "ops": ("op", "ops-Pw-2mv")}
STARTED = [datetime(2026, 11, 27, 8, n, tzinfo=UTC) for n in (1, 2, 3)]


@dataclass
class AuditServer:
    url: str
    home: Path
    bus_db: Path
    public_key: Path
    log_path: Path

    def token(self, user: str) -> str:
        response = requests.post(f"{self.url}/auth/token", json={"username": user, "password": USERS[user][1]},
                                 timeout=T)
        assert response.status_code == 201, response.text
        return response.json()["access_token"]

    def get(self, path: str, user: str | None = None, **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if user:
            headers["Authorization"] = f"Bearer {self.token(user)}"
        return requests.get(f"{self.url}{PREFIX}{path}", headers=headers, timeout=T, **kwargs)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _seed(home: Path) -> tuple[Path, Path]:
    """Three dossier exchanges carrying a CCCD number and a phone number, sealed."""
    bus_db = home / "bus.db"
    store = Store(f"sqlite:///{bus_db}")
    store.create_schema()
    recorder = BusRecorder(store, "dossier_status", "manual__2026-11-27", "deliver")
    for n, (code, id_number) in enumerate(zip(DOSSIERS, ID_NUMBERS, strict=True)):
        body = {"MaHoSo": code, "ChuHoSo": "Nguyễn Văn An", "SoGiayToChuHoSo": id_number,
                "SoDienThoaiChuHoSo": PHONE, "TrangThai": "2"}
        recorder.record(Exchange(
            peer="national_portal", operation="DongBoHoSoMC", method="POST",
            url="http://127.0.0.1:18082/api/DongBoHoSoMC", started_at=STARTED[n], duration_ms=12.0, attempt=1,
            outcome="ok", record_keys=(code,), request_headers={"Content-Type": "application/json"},
            request_body=json.dumps(body, ensure_ascii=False).encode(), response_status=200,
            response_body=b'{"error_code":0,"message":"OK"}', peer_code="0"))
    private, public, _ = generate_keypair(home / "keys" / "seal.key")
    seal_exchanges(store, load_private_key(private))
    store.dispose()
    (home / "keys" / "seal.key").unlink()  # the api-server needs only the public key
    return bus_db, public


def _environment(home: Path, port: int, bus_db: Path, public_key: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__", "LIENTHONG_"))}
    airflow_home = home / "airflow"
    airflow_home.mkdir()
    (home / "plugins").mkdir()  # empty: the plugin must come from the package's entry point
    passwords = airflow_home / "passwords.json"
    passwords.write_text(json.dumps({user: pw for user, (_, pw) in USERS.items()}))
    env.update({
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{role}" for u, (role, _) in USERS.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API_AUTH__JWT_SECRET": os.urandom(48).hex(),
        "AIRFLOW__API__SECRET_KEY": os.urandom(24).hex(),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW_CONN_LIENTHONG_DB": json.dumps({"conn_type": "sqlite", "host": str(bus_db)}),
        "LIENTHONG_SEAL_PUBLIC_KEY": str(public_key),
        "PATH": str(AIRFLOW.parent) + os.pathsep + os.environ.get("PATH", ""),
    })
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditServer]:
    home = tmp_path_factory.mktemp("auditor-page")
    bus_db, public_key = _seed(home)
    port = _free_port()
    env = _environment(home, port, bus_db, public_key)
    migrate = subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, cwd=home, capture_output=True, text=True,
                             timeout=120)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    log_path = home / "api-server.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([str(AIRFLOW), "api-server", "-H", "127.0.0.1", "-p", str(port)], env=env, cwd=home,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"airflow api-server exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}")
            try:
                requests.get(f"{url}/api/v2/version", timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(f"airflow api-server not up after 60 s:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.2)
        yield AuditServer(url, home, bus_db, public_key, log_path)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def _dump(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


# --- registration and authentication ------------------------------------------------------------
def test_the_plugin_is_loaded_from_the_package_entry_point(server):
    response = requests.get(f"{server.url}/api/v2/plugins", timeout=T,
                            headers={"Authorization": f"Bearer {server.token('admin')}"})
    assert response.status_code == 200, response.text
    plugins = {p["name"]: p for p in response.json()["plugins"]}
    plugin = plugins["lienthong_audit"]
    assert "lienthong.airflow_plugin" in json.dumps(plugin)  # from the entry point, not a plugins folder
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == [PREFIX]
    assert [v["url_route"] for v in plugin["external_views"]] == ["lienthong_audit"]
    assert not list((server.home / "plugins").iterdir())


@pytest.mark.parametrize("path", ["/", f"/?key={TARGET}", "/exchanges/2", "/exchanges/2?reveal=1", "/verify",
                                  f"/bundle?key={TARGET}", "/api/search?peer=national_portal", "/api/verify",
                                  "/api/exchanges/2"])
def test_anonymous_and_forged_callers_get_nothing(server, path):
    anonymous = server.get(path)
    assert anonymous.status_code == 401, (path, anonymous.text)
    assert TARGET not in anonymous.text and TARGET_ID not in anonymous.text
    forged = server.get(path, headers={"Authorization": "Bearer eyJhbGciOiJIUzUxMiJ9.e30.forged"})
    assert forged.status_code in (401, 403), (path, forged.status_code)
    assert TARGET not in forged.text


def test_an_anonymous_browser_is_sent_to_the_airflow_log_in(server):
    page = server.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 401
    assert "/auth/login" in page.text


# --- search and record view ---------------------------------------------------------------------
@pytest.mark.parametrize("user", ["auditor", "admin"])
def test_a_viewer_searches_by_dossier_code_and_sees_masked_personal_data(server, user):
    page = server.get(f"/?key={TARGET}", user)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert TARGET in page.text
    assert TARGET_MASKED in page.text
    assert TARGET_ID not in page.text and PHONE not in page.text
    assert DOSSIERS[0] not in page.text and DOSSIERS[2] not in page.text  # only the matching exchange
    assert f"{PREFIX}/exchanges/2" in page.text


def test_search_filters_and_json(server):
    by_time = server.get("/api/search", "auditor", params={"peer": "national_portal", "outcome": "ok",
                                                           "from": "2026-11-27T08:02:00Z",
                                                           "to": "2026-11-27T08:03:00Z"}).json()
    assert [e["id"] for e in by_time["exchanges"]] == [2]
    assert by_time["exchanges"][0]["record_keys"] == [TARGET]
    everything = server.get("/api/search", "auditor", params={"operation": "DongBoHoSoMC"}).json()
    assert everything["count"] == 3
    assert server.get("/api/search", "auditor", params={"peer": "onestop"}).json()["count"] == 0
    bad = server.get("/api/search", "auditor", params={"from": "yesterday"})
    assert bad.status_code == 400 and "ISO 8601" in bad.text


def test_the_record_view_masks_and_reveal_is_explicit_and_logged(server):
    masked = server.get("/exchanges/2", "auditor")
    assert masked.status_code == 200
    assert TARGET in masked.text and TARGET_MASKED in masked.text
    assert TARGET_ID not in masked.text and PHONE not in masked.text
    assert "seal 1" in masked.text
    assert "revealed the personal data of exchange #2" not in server.log_text()

    revealed = server.get("/exchanges/2?reveal=1", "ops")
    assert revealed.status_code == 200
    assert TARGET_ID in revealed.text and PHONE in revealed.text
    assert "REVEALED" in revealed.text
    deadline = time.monotonic() + 10
    while "user ops revealed the personal data of exchange #2" not in server.log_text():
        assert time.monotonic() < deadline, server.log_text()[-3000:]
        time.sleep(0.1)
    assert server.get("/exchanges/99", "auditor").status_code == 404


@pytest.mark.parametrize("path", ["/exchanges/2?reveal=1", "/api/exchanges/2?reveal=1", f"/bundle?key={TARGET}"])
def test_a_viewer_may_not_reveal_or_export_personal_data(server, path):
    """Any viewer could reveal personal values (logged, but allowed) and download them in an evidence
    bundle. Those need the custom view Lienthong Audit Reveal now (with SimpleAuthManager, whose
    custom views every viewer has: role op or admin); a viewer gets 403 saying so, and nothing is
    revealed or logged as revealed."""
    for accept in ("text/html", "application/json"):
        refused = server.get(path, "auditor", headers={"Accept": accept})
        assert refused.status_code == 403, (path, refused.status_code, refused.text[:300])
        said = html.unescape(refused.text)
        assert "needs the permission to read the custom view 'Lienthong Audit Reveal'" in said
        assert "role op or admin" in said and "user auditor does not have it" in said
        assert TARGET_ID not in refused.text and PHONE not in refused.text
    assert "user auditor revealed" not in server.log_text()
    assert server.get(path, "admin").status_code == 200
    masked = server.get("/exchanges/2", "auditor")
    assert masked.status_code == 200 and "reveal=1" not in masked.text
    assert "Revealing them needs the permission" in masked.text
    assert "reveal=1" in server.get("/exchanges/2", "ops").text


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/", "/exchanges/2", "/verify", f"/bundle?key={TARGET}", "/api/search"])
def test_only_get_is_allowed_and_nothing_changes(server, method, path):
    before = _dump(server.bus_db)
    token = server.token("auditor")
    for headers in ({"Authorization": f"Bearer {token}"}, {}):
        response = requests.request(method, f"{server.url}{PREFIX}{path}", headers=headers, timeout=T,
                                    json={"outcome": "ok", "id": 2})
        assert response.status_code in (405, 401), (method, path, response.status_code)
        if headers:
            assert response.status_code == 405
        assert TARGET not in response.text
    assert _dump(server.bus_db) == before


@pytest.fixture(params=["sqlite", "postgresql"])
def bus_url(request, tmp_path):
    """A bus database with its schema: an SQLite file, or a throw-away database on the local
    PostgreSQL server (127.0.0.1:5432, trust auth, as the replica tests use)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'bus.db'}"
        Store(url).create_schema()
        yield url
        return
    from tests.conftest import postgres_database

    with postgres_database("lienthong_audit") as url:
        store = Store(url)
        store.create_schema()
        store.dispose()
        yield url


def test_the_page_opens_the_bus_database_read_only(bus_url, monkeypatch):
    from sqlalchemy import text

    from lienthong import airflow_plugin

    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB", json.dumps(
        {"conn_type": "sqlite", "host": "unused", "extra": {"sqlalchemy_url": bus_url}}))
    store = airflow_plugin.bus_store()
    try:
        with store.engine.connect() as conn:
            assert conn.execute(text("select count(*) from exchange_log")).scalar() == 0
        with pytest.raises(Exception, match="readonly|read-only|query_only"), store.engine.begin() as conn:
            conn.execute(text("delete from exchange_log"))
    finally:
        store.dispose()
        airflow_plugin._stores.pop(bus_url, None)


def test_a_missing_bus_database_is_reported_not_created(tmp_path, monkeypatch):
    from fastapi import HTTPException

    from lienthong import airflow_plugin

    missing = tmp_path / "nowhere" / "bus.db"
    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB", json.dumps({"conn_type": "sqlite", "host": str(missing)}))
    with pytest.raises(HTTPException) as caught:
        airflow_plugin.bus_store()
    assert caught.value.status_code == 503 and "no bus database yet" in caught.value.detail
    assert not missing.exists() and not missing.parent.exists()


def test_every_outcome_the_transports_record_can_be_searched(tmp_path, monkeypatch):
    """The transports record five outcomes; the page refused ``protocol_error`` (an unreadable or
    untrusted answer) with a 400 and left it out of its outcome list (found checking the README)."""
    from lienthong import airflow_plugin

    bus_db = tmp_path / "bus.db"
    store = Store(f"sqlite:///{bus_db}")
    store.create_schema()
    recorder = BusRecorder(store, "dossier_status", "manual__2026-11-29", "deliver")
    outcomes = ("ok", "peer_error", "http_error", "transport_error", "protocol_error")
    for n, outcome in enumerate(outcomes):
        recorder.record(Exchange(
            peer="national_portal", operation="DongBoHoSoMC", method="POST",
            url="http://127.0.0.1:18082/api/DongBoHoSoMC", started_at=STARTED[0], duration_ms=5.0, attempt=n + 1,
            outcome=outcome, record_keys=(TARGET,), request_headers={}, request_body=b"{}", response_status=200,
            response_body=b"<html>cut", peer_code=None))
    store.dispose()
    url = f"sqlite:///{bus_db}"
    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB", json.dumps({"conn_type": "sqlite", "host": str(bus_db)}))
    try:
        for outcome in outcomes:
            filters = {**dict.fromkeys(("key", "peer", "operation", "from", "to", "limit", "after"), ""),
                       "outcome": outcome}
            rows, next_after = airflow_plugin._search(filters)
            assert [row["outcome"] for row in rows] == [outcome] and next_after is None
        assert sorted(airflow_plugin.OUTCOMES) == sorted(outcomes)  # the search form's choices
    finally:
        store = airflow_plugin._stores.pop(url, None)
        if store is not None:
            store.dispose()


# --- verification and bundles -------------------------------------------------------------------
def test_verification_reports_ok_and_names_the_tampered_record(server):
    """Verifying is every auditor's task and shows nothing personal: a viewer may."""
    page = server.get("/verify", "auditor")
    assert page.status_code == 200
    assert "VERIFIED: 3 records in 1 seals" in page.text and "NOT VERIFIED" not in page.text

    conn = sqlite3.connect(server.bus_db)
    try:
        (original,) = conn.execute("select outcome from exchange_log where id = 2").fetchone()
        with conn:
            conn.execute("update exchange_log set outcome = 'http_error' where id = 2")
        try:
            page = server.get("/verify", "auditor")
            assert page.status_code == 200
            assert "NOT VERIFIED" in page.text
            assert "record #2" in page.text and f"{PREFIX}/exchanges/2" in page.text
            result = server.get("/api/verify", "auditor").json()
            assert result["ok"] is False
            assert result["failure"]["record_id"] == 2 and result["failure"]["kind"] == "record_altered"
        finally:
            with conn:
                conn.execute("update exchange_log set outcome = ? where id = 2", (original,))
    finally:
        conn.close()
    assert server.get("/api/verify", "auditor").json()["ok"] is True


def test_the_evidence_bundle_downloads_and_verifies(server, tmp_path):
    response = server.get("/bundle", "ops", params={"key": TARGET})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert "attachment" in response.headers["content-disposition"]
    path = tmp_path / "bundle.zip"
    path.write_bytes(response.content)
    result = verify_bundle(str(path), server.public_key.read_bytes())
    assert result.ok, result.failure
    assert result.records_checked == 1 and result.selection["key"] == TARGET

    by_time = server.get("/bundle", "ops", params={"from": "2026-11-27T08:00:00Z", "to": "2026-11-27T09:00:00Z"})
    assert by_time.status_code == 200, by_time.text
    (tmp_path / "range.zip").write_bytes(by_time.content)
    assert verify_bundle(str(tmp_path / "range.zip"), server.public_key.read_bytes()).records_checked == 3
    assert server.get("/bundle", "ops", params={"key": "no-such-dossier"}).status_code == 404


# --- a real browser through Airflow's log-in page -----------------------------------------------
def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        # `make browser` is best effort (apt-get needs root): skipped with the reason, which `make test`
        # prints (pytest -ra); in CI (``CI`` set) it fails instead, because CI's machine has both.
        missing = ("the browser test needs Debian's chromium and chromium-driver (/usr/bin/chromium, "
                   "/usr/bin/chromedriver): run `make browser` as root")
        if os.environ.get("CI"):
            pytest.fail(f"{missing} — CI is set, so the browser test must run")
        pytest.skip(missing)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is missing: `make install` (the `test` extra pins it)")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1440,900", "--no-first-run", "--lang=en-US"):
        options.add_argument(argument)
    drv = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield drv
    finally:
        drv.quit()


def test_a_viewer_logs_in_through_airflow_and_searches_in_a_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(f"{server.url}/auth/login?next={PREFIX}/")
    wait.until(ec.presence_of_element_located((By.NAME, "username"))).send_keys("auditor")
    browser.find_element(By.NAME, "password").send_keys(USERS["auditor"][1])
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(ec.presence_of_element_located((By.ID, "key")))  # the plugin's page, reached with the cookie
    assert browser.current_url.startswith(f"{server.url}{PREFIX}/")
    assert any(c["name"] == "_token" for c in browser.get_cookies())

    browser.find_element(By.ID, "key").send_keys(TARGET)
    browser.find_element(By.ID, "search").click()
    results = wait.until(ec.presence_of_element_located((By.ID, "results")))
    text = results.text
    assert TARGET in text and TARGET_MASKED in text
    assert TARGET_ID not in browser.page_source and PHONE not in browser.page_source

    shot = tmp_path / "auditor-search.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    width, height = _png_size(data)
    assert width >= 800 and height >= 500 and len(data) > 10_000
    if os.environ.get("LIENTHONG_SCREENSHOTS"):
        target = REPO_ROOT / "var" / "screenshots" / "auditor-search.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


@pytest.mark.parametrize(("path", "status"), [
    ("/exchanges/99999999999999999999", 404), ("/api/exchanges/99999999999999999999", 404),
    ("/?from=0001-01-01T00:00:00%2B01:00", 400), ("/bundle?to=9999-12-31T23:00:00-05:00", 400),
])
def test_out_of_range_parameters_are_client_errors_not_500(server, path, status):
    """An id beyond a database integer, a time that leaves the calendar once moved to UTC: a 400 or
    404 naming the parameter, not an internal error (found in review)."""
    response = server.get(path, "auditor", headers={"Accept": "text/html"})
    assert response.status_code == status, (response.status_code, response.text[:300])


# --- the pages in process (Airflow's log-in replaced by a signed-in viewer) ----------------------
class _Viewer:
    def get_name(self) -> str:
        return "auditor"


@dataclass
class PageClient:
    client: object
    store: Store

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.client.get(f"{PREFIX}{path}", **kwargs)


@pytest.fixture
def pages(tmp_path, monkeypatch) -> Iterator[PageClient]:
    """The plugin's app in process over an empty SQLite bus database; the auth dependency and the
    viewer's permissions are the things replaced (the real ones are covered against a real
    api-server above)."""
    from fastapi.testclient import TestClient

    from lienthong import airflow_plugin

    bus_db = tmp_path / "bus.db"
    store = Store(f"sqlite:///{bus_db}")
    store.create_schema()
    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB", json.dumps({"conn_type": "sqlite", "host": str(bus_db)}))
    airflow_plugin.app.dependency_overrides[airflow_plugin.auditor] = _Viewer
    monkeypatch.setattr(airflow_plugin, "_may", lambda user, resource: False)  # a viewer: no reveal, no verify
    try:
        with TestClient(airflow_plugin.app, root_path=PREFIX) as client:
            yield PageClient(client, store)
    finally:
        airflow_plugin.app.dependency_overrides.pop(airflow_plugin.auditor, None)
        for url in [u for u in airflow_plugin._stores if str(bus_db) in u]:
            airflow_plugin._stores.pop(url).dispose()
        store.dispose()


def _record(store: Store, n: int, **fields) -> None:
    values = {"peer": "national_portal", "operation": "DongBoHoSoMC", "method": "POST",
              "url": "http://127.0.0.1:18082/api/DongBoHoSoMC", "started_at": datetime(2026, 11, 27, 8, n % 60,
                                                                                       tzinfo=UTC),
              "duration_ms": 12.0, "attempt": 1, "outcome": "ok", "record_keys": (f"HS-{n:04d}",),
              "request_headers": {"Content-Type": "application/json"},
              "request_body": json.dumps({"MaHoSo": f"HS-{n:04d}"}).encode(), "response_status": 200,
              "response_body": b'{"error_code":0}', "peer_code": "0"}
    values.update(fields)
    BusRecorder(store, "dossier_status", "run-1", "deliver").record(Exchange(**values))


def test_every_outcome_the_connectors_record_can_be_searched_for(pages):
    """``protocol_error`` (an answer the connector could not read: the transport and the ledger
    client record it) was refused as a filter (400: 'one of ok, peer_error, http_error,
    transport_error') and missing from the page's list, so those exchanges could not be picked out."""
    _record(pages.store, 1)
    _record(pages.store, 2, outcome="protocol_error", response_body=b"<html>maintenance</html>", peer_code=None)
    found = pages.get("/api/search", params={"outcome": "protocol_error"})
    assert found.status_code == 200, found.text
    assert [e["id"] for e in found.json()["exchanges"]] == [2]
    page = pages.get("/", params={"outcome": "protocol_error"}, headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "<option value='protocol_error' selected>protocol_error</option>" in page.text
    assert f"{PREFIX}/exchanges/2'" in page.text and f"{PREFIX}/exchanges/1'" not in page.text
    bad = pages.get("/api/search", params={"outcome": "bogus"})
    assert bad.status_code == 400
    assert bad.json()["detail"] == "outcome: one of ok, peer_error, http_error, protocol_error, transport_error"


@pytest.mark.parametrize(("query", "detail"), [
    ({"dossier": "HS-0001"}, "unknown parameter 'dossier': the search takes key, peer, operation, outcome, from, to, "
                             "limit, after"),
    ({"key": "HS-0001", "flow": "payment_receipts"}, "unknown parameter 'flow': the search takes key, peer, "
                                                     "operation, outcome, from, to, limit, after"),
    ({"peer": "national_portal", "limit": "0"}, "limit: a whole number from 1 to 5000, got '0'"),
    ({"peer": "national_portal", "limit": "-5"}, "limit: a whole number from 1 to 5000, got '-5'"),
    ({"peer": "national_portal", "limit": "100000"}, "limit: a whole number from 1 to 5000, got '100000'"),
    ({"from": "2026-11-28", "to": "2026-11-27"}, "from (2026-11-28T00:00:00+00:00) must be before to "
                                                 "(2026-11-27T00:00:00+00:00)"),
])
def test_a_search_the_page_cannot_do_as_asked_is_refused_not_answered_otherwise(pages, query, detail):
    """A misspelt filter (`dossier=` for `key=`, a `flow=` it does not have) was ignored, so
    /api/search answered the first 200 exchanges of the whole log as if they matched; a limit of 0,
    -5 or 100000 became 1 or 5000, and a reversed range matched nothing, each without a word."""
    _record(pages.store, 1)
    response = pages.get("/api/search", params=query)
    assert response.status_code == 400, response.text
    assert response.json() == {"detail": detail}
    page = pages.get("/", params=query, headers={"Accept": "text/html"})
    assert page.status_code == 400 and "HS-0001'" not in page.text and "/exchanges/1'" not in page.text


def test_a_selection_longer_than_the_limit_is_read_page_after_page(pages):
    """The page listed the first `limit` (at most 5000) exchanges of a selection, oldest first, and
    said '(limit reached)': the later ones could not be listed at all. A page with more after it
    links to the next (`after=` the last id shown), in HTML and in JSON (`next_after`)."""
    import re

    for n in range(1, 6):
        _record(pages.store, n, peer="onestop" if n == 3 else "national_portal")
    seen, query = [], {"peer": "national_portal", "limit": "2"}
    while True:
        page = pages.get("/", params=query, headers={"Accept": "text/html"})
        assert page.status_code == 200, page.text
        seen.append(re.findall(r"/exchanges/(\d+)'>#", page.text))
        following = re.search(r"<a id='next' href='([^']+)'>", page.text)
        if not following:
            break
        url = following.group(1).replace("&amp;", "&")
        assert url.startswith(f"{PREFIX}/?")
        query = url.split("?", 1)[1]
    assert seen == [["1", "2"], ["4", "5"]]

    first = pages.get("/api/search", params={"peer": "national_portal", "limit": "2"}).json()
    assert [e["id"] for e in first["exchanges"]] == [1, 2] and first["next_after"] == 2
    second = pages.get("/api/search", params={"peer": "national_portal", "limit": "2", "after": "2"}).json()
    assert [e["id"] for e in second["exchanges"]] == [4, 5] and second["next_after"] is None
    bad = pages.get("/api/search", params={"peer": "national_portal", "after": "two"})
    assert bad.status_code == 400 and bad.json()["detail"] == "after: an exchange number, got 'two'"


def test_an_archived_exchange_is_named_with_its_bundle_on_the_page(pages, tmp_path):
    """After `audit archive` pruned a range, /exchanges/2 answered 404 'no exchange #2' and a search
    'No exchange matches.', as if it had never been; they now name the evidence bundle holding it."""
    from datetime import timedelta

    from sqlalchemy import select

    from lienthong.audit.archive import archive_exchanges
    from lienthong.audit.keys import load_public_key
    from lienthong.store import exchange_archive

    for n in range(1, 7):
        _record(pages.store, n)
    private, public, _ = generate_keypair(tmp_path / "keys" / "seal.key")
    seal_exchanges(pages.store, load_private_key(private), batch_size=2)
    result = archive_exchanges(pages.store, [load_public_key(public)], key=private, older_than_days=1,
                               out_dir=tmp_path / "archive", now=STARTED[0] + timedelta(days=3))
    assert result.records == 4  # seals 1 and 2; seal 3 holds the newest record (SQLite gives ids again)
    with pages.store.engine.connect() as conn:
        (bundle,) = conn.execute(select(exchange_archive.c.bundle_path)).scalars().all()
    archived = f"the evidence bundle {bundle} (seals 1..2, records #1..#4)"

    missing = pages.get("/api/exchanges/2")
    assert missing.status_code == 404
    assert missing.json() == {"detail": f"exchange #2 was archived (audit archive): it is in {archived}, no longer "
                                        f"in the database"}
    assert pages.get("/api/exchanges/9").json() == {"detail": "no exchange #9"}
    page = pages.get("/", params={"key": "HS-0002"}, headers={"Accept": "text/html"})
    assert page.status_code == 200 and "No exchange matches." in page.text
    assert (f"<p class='muted archived'>Records #1..#4 were archived (audit archive) and are not searched here: "
            f"they are in the evidence bundle {bundle} (seals 1..2).</p>") in page.text
    found = pages.get("/api/search", params={"key": "HS-0005"}).json()
    assert [e["id"] for e in found["exchanges"]] == [5]
    assert found["archived"] == [{"first_id": 1, "last_id": 4, "first_seq": 1, "last_seq": 2, "bundle_path": bundle}]


def test_the_search_page_formats_only_the_request_bodies_it_excerpts(pages, monkeypatch):
    """To show 220 characters of each listed exchange's request, the page formatted the whole
    exchange, answer included: a 2 MB procedure-catalogue answer takes about 0.6 s to decompress,
    parse, mask and indent, so a page of 200 of them took minutes (5000: most of an hour)."""
    import zlib

    from lienthong.audit import search

    catalogue = json.dumps({"result": [{"MaTTHC": f"1.00{n:04d}.000.00.00.H49"} for n in range(50)]}).encode()
    for n in (1, 2, 3):
        _record(pages.store, n, operation="LayThuTuc", response_body=catalogue)
    formatted = []
    real = search.format_body

    def spy(blob, *args, **kwargs):
        formatted.append(zlib.decompress(bytes(blob)))
        return real(blob, *args, **kwargs)

    monkeypatch.setattr(search, "format_body", spy)
    page = pages.get("/", params={"operation": "LayThuTuc"}, headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert formatted == [json.dumps({"MaHoSo": f"HS-{n:04d}"}).encode() for n in (1, 2, 3)]
    assert "<td class='body'>{ &quot;MaHoSo&quot;: &quot;HS-0001&quot; }</td>" in page.text
    formatted.clear()
    assert "MaTTHC" in pages.get("/exchanges/2").text and len(formatted) == 2  # the record view shows both


def test_one_verification_runs_at_a_time_and_a_second_is_told_who_runs_it(pages, monkeypatch):
    """Each verification recomputes the whole log: a second one asked for while one runs is 429 with
    Retry-After, naming who started the running one, instead of doubling the load; the next one after
    it, and one after a verification that failed, run."""
    import threading

    from sqlalchemy.exc import OperationalError

    from lienthong import airflow_plugin
    from lienthong.audit import verify as verify_module
    from lienthong.audit.verify import VerifyResult

    entered, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow_verify(store, keys):
        calls.append("verify")
        entered.set()
        assert release.wait(30)
        return VerifyResult(records_checked=7, seals_checked=1)

    monkeypatch.setattr(airflow_plugin, "public_keys", lambda: ["key"])
    monkeypatch.setattr(verify_module, "verify_exchanges", slow_verify)
    first: list[requests.Response] = []
    runner = threading.Thread(target=lambda: first.append(pages.get("/api/verify")))
    runner.start()
    try:
        assert entered.wait(30)
        second = pages.get("/api/verify")
        assert second.status_code == 429, second.text
        assert second.headers["Retry-After"] == str(airflow_plugin.VERIFY_RETRY_AFTER)
        assert "already running (started by auditor at " in second.json()["detail"]
        assert pages.get("/verify", headers={"Accept": "text/html"}).status_code == 429
    finally:
        release.set()
        runner.join(30)
    assert first[0].status_code == 200 and first[0].json()["records_checked"] == 7
    assert calls == ["verify"]  # the refused ones did not run

    def failing_verify(store, keys):
        raise OperationalError("select", {}, Exception("database is locked"))

    monkeypatch.setattr(verify_module, "verify_exchanges", failing_verify)
    assert pages.get("/api/verify").status_code >= 500
    monkeypatch.setattr(verify_module, "verify_exchanges", lambda store, keys: VerifyResult(records_checked=3))
    again = pages.get("/api/verify")
    assert again.status_code == 200 and again.json()["records_checked"] == 3
