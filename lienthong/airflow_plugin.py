"""The auditor page inside Airflow: search, read, verify and export the sealed exchange log.

An Airflow plugin (:class:`LienthongAuditPlugin`, registered through the ``airflow.plugins``
entry point of this package) mounts a small FastAPI app under the api-server at
``/lienthong-audit/`` and adds a "Browse → Exchange log audit" entry to Airflow's menu (the
page opens inside Airflow's UI in an iframe).

Pages (server-rendered HTML; ``/api/...`` gives the same as JSON):

* ``/`` — search by record key (dossier code, receipt number, procedure code), peer, operation,
  outcome and a ``started_at`` range (:func:`lienthong.audit.search.search_exchanges`), ``limit``
  at a time, a page with more after it linking to the next (``after=`` its last id); any other
  parameter, a limit outside 1–5000 or a reversed range is a 400;
* ranges that ``lienthong audit archive`` pruned from the database are named with their evidence
  bundle, under a search and for an exchange of theirs (404 naming the bundle);
* ``/exchanges/{id}`` — one exchange with personal data masked
  (:func:`lienthong.audit.search.format_exchange`); ``?reveal=1`` shows it as stored and is
  logged with the user's name (logger ``lienthong.auditor``), for users allowed to reveal;
* ``/verify`` — recompute every seal now (:func:`lienthong.audit.verify.verify_exchanges`) and
  name the first record or seal that does not match; one at a time (another asked for meanwhile is
  429 naming who started the running one), as each reads the whole log;
* ``/bundle?key=…&from=…&to=…`` — the evidence bundle (:func:`lienthong.audit.bundle.export_bundle`),
  checked with :func:`lienthong.audit.bundle_verify.verify_bundle` before it is sent; it holds the
  personal values as stored, so only users allowed to reveal download it.

Security (Airflow does not authenticate plugin apps, airflow3-notes §5): every route depends on
Airflow's own :func:`~airflow.api_fastapi.core_api.security.get_user` (the ``_token`` cookie of a
UI log-in or an ``Authorization: Bearer`` JWT from ``POST /auth/token``) — anonymous is 401 — and
on the auth manager's ``is_authorized_custom_view`` for resource ``Lienthong Audit`` (any
SimpleAuthManager role from ``viewer`` up; with FAB, ``can_read`` on that resource). Revealing
personal data (``?reveal=1`` and the evidence bundle) needs more: the custom view ``Lienthong Audit
Reveal`` (with FAB, ``can_read`` on it, granted to an auditor role with ``airflow roles add-perms``);
SimpleAuthManager grants every custom view to every viewer (airflow3-notes §6.1), so there it needs
the role ``op`` or ``admin``. Anyone else gets 403 saying what is needed. Verifying the seals is every
auditor's task and shows nothing personal: any user of the page may, one verification at a time. The app is
read-only: any method but GET/HEAD is 405 before routing, and the bus database is opened with
``PRAGMA query_only`` (SQLite) or read-only transactions (PostgreSQL).

The bus database is the ``lienthong_db`` connection, resolved as the DAGs resolve it (Airflow's
connection chain: ``AIRFLOW_CONN_LIENTHONG_DB``, secrets backends, the metastore), falling back to
the local topology like the CLI. The seal public key is ``$LIENTHONG_SEAL_PUBLIC_KEY``, else
``$LIENTHONG_SEAL_KEY.pub``, else the local topology's ``var/keys/seal.key.pub``.
"""

from __future__ import annotations

import html
import logging
import os
import shutil
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.background import BackgroundTask

from connectors.transport import OUTCOMES  # every outcome an exchange is recorded with: the search's choices

__all__ = ["RESOURCE_NAME", "REVEAL_RESOURCE", "URL_PREFIX", "LienthongAuditPlugin", "app"]

log = logging.getLogger("lienthong.auditor")

URL_PREFIX = "/lienthong-audit"
RESOURCE_NAME = "Lienthong Audit"  # the custom view the auth manager is asked about
REVEAL_RESOURCE = "Lienthong Audit Reveal"  # personal data as stored: ?reveal=1, evidence bundles
#: SimpleAuthManager grants every custom view to every viewer: there, revealing needs this
#: role or above (its roles are ordered viewer < user < op < admin)
SIMPLE_PRIVILEGED_ROLE = "op"
BUS_DB_CONN_ID = "lienthong_db"
DEFAULT_LIMIT = 200
MAX_LIMIT = 5000
EXCERPT_CHARS = 220
READ_METHODS = frozenset({"GET", "HEAD"})


# --- auth --------------------------------------------------------------------------------------
_bearer = HTTPBearer(auto_error=False)


async def auditor(request: Request, bearer: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Any:
    """Airflow's authenticated user (cookie ``_token`` or bearer JWT), allowed to see this view."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.core_api.security import get_user

    user = await get_user(request, None, bearer)
    if not get_auth_manager().is_authorized_custom_view(method="GET", resource_name=RESOURCE_NAME, user=user):
        raise HTTPException(status_code=403, detail=f"not allowed to see {RESOURCE_NAME}")
    return user


def _may(user: Any, resource: str) -> bool:
    """May ``user`` use ``resource`` (:data:`REVEAL_RESOURCE`)? The auth
    manager's answer for that custom view, and with SimpleAuthManager (which grants every custom view
    to every viewer) also a role of at least :data:`SIMPLE_PRIVILEGED_ROLE`."""
    from airflow.api_fastapi.app import get_auth_manager

    manager = get_auth_manager()
    if not manager.is_authorized_custom_view(method="GET", resource_name=resource, user=user):
        return False
    try:
        from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import (
            SimpleAuthManager,
            SimpleAuthManagerRole,
        )
    except ImportError:  # pragma: no cover - Airflow without the simple auth manager
        return True
    if not isinstance(manager, SimpleAuthManager):
        return True
    role = str(getattr(user, "role", None) or "").upper()
    return role in SimpleAuthManagerRole.__members__ and \
        SimpleAuthManagerRole[role].order >= SimpleAuthManagerRole[SIMPLE_PRIVILEGED_ROLE.upper()].order


def _requirement(resource: str) -> str:
    return (f"the permission to read the custom view {resource!r} (FAB: can_read on {resource}; "
            f"SimpleAuthManager: role {SIMPLE_PRIVILEGED_ROLE} or admin)")


def _require(user: Any, resource: str, action: str) -> None:
    """403 unless ``user`` may use ``resource``; the message says what ``action`` needs."""
    if not _may(user, resource):
        log.info("auditor page: user %s was refused: %s", _user_name(user), action)
        raise HTTPException(status_code=403, detail=f"{action} needs {_requirement(resource)}; "
                                                    f"user {_user_name(user)} does not have it")


def _user_name(user: Any) -> str:
    try:
        return str(user.get_name())
    except Exception:  # noqa: BLE001 - a name is only for the log line
        return repr(user)


# --- the bus database (read-only) and the seal public key --------------------------------------
_stores: dict[str, Any] = {}
_stores_lock = threading.Lock()


def _connection_spec(conn_id: str):
    """The connection as the DAGs see it (Airflow's chain), else as the CLI sees it (local topology)."""
    from connectors.connection import connection_from_env

    try:
        from connectors.hooks import airflow_connection_spec

        return airflow_connection_spec(conn_id)
    except Exception as exc:  # noqa: BLE001 - not defined in Airflow: the local topology's
        from lienthong import localenv

        log.debug("connection %s not found through Airflow (%s); using the local topology", conn_id,
                  type(exc).__name__)
        return connection_from_env(conn_id, {**localenv.topology().environment(), **os.environ})


def _read_only(dbapi_connection: Any, _record: Any) -> None:
    """Every connection of the auditor page refuses writes, enforced by the database itself."""
    module = type(dbapi_connection).__module__
    if module.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA query_only = ON")
        cursor.close()
        return
    autocommit = getattr(dbapi_connection, "autocommit", None)
    if autocommit is not None:
        dbapi_connection.autocommit = True
    cursor = dbapi_connection.cursor()
    cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    cursor.close()
    if autocommit is not None:
        dbapi_connection.autocommit = autocommit


def bus_store():
    """The bus database, opened read-only (one engine per URL for the life of the api-server)."""
    from sqlalchemy import event

    from connectors.errors import ConfigurationError
    from lienthong.store import Store

    try:
        url = _connection_spec(BUS_DB_CONN_ID).sqlalchemy_url()
    except ConfigurationError as exc:
        raise HTTPException(503, f"the bus database connection `{BUS_DB_CONN_ID}`: {exc}") from None
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        # never create it: a read-only page must not leave an empty database behind
        raise HTTPException(503, f"no bus database yet at {url.removeprefix('sqlite:///')}: run a flow "
                                 f"(`make demo`) or `lienthong db init`")
    with _stores_lock:
        store = _stores.get(url)
        if store is None:
            store = Store(url)
            event.listen(store.engine, "connect", _read_only)
            _stores[url] = store
    return store


def public_keys() -> list[Any]:
    from lienthong import localenv
    from lienthong.audit.keys import PRIVATE_KEY_ENV, PUBLIC_KEY_ENV, load_public_key, public_key_path

    if os.environ.get(PUBLIC_KEY_ENV) or os.environ.get(PRIVATE_KEY_ENV):
        return [load_public_key()]
    return [load_public_key(public_key_path(localenv.topology().seal_key))]


# --- the app -----------------------------------------------------------------------------------
app = FastAPI(
    title="lienthong exchange-log audit",
    dependencies=[Depends(auditor)],
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


@app.middleware("http")
async def read_only_methods(request: Request, call_next):
    """GET and HEAD only, answered before routing and before anything else runs."""
    if request.method not in READ_METHODS:
        return PlainTextResponse(f"{request.method} not allowed: the auditor page is read-only\n", status_code=405,
                                 headers={"Allow": "GET, HEAD"})
    return await call_next(request)


def _wants_html(request: Request) -> bool:
    return "/api/" not in request.url.path and "text/html" in request.headers.get("accept", "")


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if not _wants_html(request):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
    body = f"<p class='error'>{html.escape(str(exc.detail))}</p>"
    if exc.status_code == 401:
        login = "/auth/login"
        try:
            from airflow.api_fastapi.app import get_auth_manager

            login = get_auth_manager().get_url_login(next_url=str(request.url))
        except Exception:  # noqa: BLE001 - the plain log-in page will do
            pass
        body += f"<p><a href='{html.escape(login)}'>Log in to Airflow</a> to read the exchange log.</p>"
    return HTMLResponse(_page(request, f"{exc.status_code}", body), status_code=exc.status_code,
                        headers=exc.headers)


@app.exception_handler(RequestValidationError)
async def _bad_request(request: Request, exc: RequestValidationError) -> Response:
    return await _http_error(request, HTTPException(400, "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())))


# --- helpers -----------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.2rem 2rem;color:#1d2433}
h1{font-size:1.35rem;margin:.2rem 0 1rem} h2{font-size:1.1rem;margin-top:1.5rem}
nav a{margin-right:1.2rem} nav{margin-bottom:1rem;padding-bottom:.5rem;border-bottom:1px solid #d0d7e2}
form.search{display:flex;flex-wrap:wrap;gap:.6rem 1rem;align-items:end;background:#f4f6fa;padding:.8rem;
border-radius:6px} form.search label{display:flex;flex-direction:column;font-size:.8rem;color:#4a5568}
input,select{padding:.3rem .4rem;font-size:.9rem;border:1px solid #b8c2d3;border-radius:4px}
button{padding:.35rem .9rem;font-size:.9rem;background:#017cee;color:#fff;border:0;border-radius:4px;cursor:pointer}
table{border-collapse:collapse;margin-top:1rem;font-size:.85rem;width:100%}
th,td{border-bottom:1px solid #e2e8f0;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#eef2f7} td.keys{font-family:ui-monospace,monospace;font-size:.8rem}
td.time{white-space:nowrap}
td.body{font-family:ui-monospace,monospace;font-size:.75rem;color:#374151;max-width:34rem;word-break:break-all}
pre{background:#f7f9fc;border:1px solid #e2e8f0;padding:.8rem;overflow-x:auto;font-size:.82rem}
.ok{color:#137333;font-weight:600} .bad{color:#b3261e;font-weight:600} .error{color:#b3261e}
.banner{background:#fff4e5;border:1px solid #f0b45b;padding:.5rem .8rem;border-radius:4px}
.muted{color:#6b7280;font-size:.85rem}
"""


def _base(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/") or URL_PREFIX


def _page(request: Request, title: str, body: str) -> str:
    base = html.escape(_base(request))
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)} · lienthong audit</title><style>{_CSS}</style></head><body>"
            f"<nav><a href='{base}/'>Search</a><a href='{base}/verify'>Verify the seals</a>"
            f"<a href='{base}/bundle'>Evidence bundle</a></nav>"
            f"<h1>{html.escape(title)}</h1>{body}"
            f"<p class='muted'>Exchange log of the lienthong bus; personal data are masked unless revealed. "
            f"Read-only.</p></body></html>")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _time_param(value: str | None, name: str) -> datetime | None:
    from lienthong.audit.search import parse_time

    if not value:
        return None
    try:
        return parse_time(value)
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 moved out of range to UTC
        raise HTTPException(400, f"{name}: expected an ISO 8601 date or time (UTC unless it says otherwise), "
                                 f"got {value!r}") from None


def _limit(value: str | None) -> int:
    if not value:
        return DEFAULT_LIMIT
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_LIMIT:  # never silently another number than asked
        raise HTTPException(400, f"limit: a whole number from 1 to {MAX_LIMIT}, got {value!r}")
    return n


def _db_error(exc: Exception) -> HTTPException:
    log.warning("auditor page: the bus database cannot be read: %s", exc)
    return HTTPException(503, f"the bus database cannot be read ({type(exc).__name__}); is `lienthong_db` "
                              f"configured and the schema created?")


SEARCH_PARAMETERS = ("key", "peer", "operation", "outcome", "from", "to", "limit", "after")


def _filters(request: Request) -> dict[str, str]:
    """The search's parameters; any other is refused (a misspelt filter is not ignored)."""
    q = request.query_params
    unknown = sorted(set(q) - set(SEARCH_PARAMETERS))
    if unknown:
        raise HTTPException(400, f"unknown parameter {', '.join(map(repr, unknown))}: the search takes "
                                 f"{', '.join(SEARCH_PARAMETERS)}")
    return {name: (q.get(name) or "").strip() for name in SEARCH_PARAMETERS}


def _after(value: str) -> int:
    if not value:
        return 0
    if not value.isdigit() or int(value) >= 2 ** 63:
        raise HTTPException(400, f"after: an exchange number, got {value!r}")
    return int(value)


def _search(filters: dict[str, str]) -> tuple[list[dict[str, Any]], int | None]:
    """The page of exchanges asked for (``limit`` of them after exchange ``after``), and the last id
    of it when more follow (``None`` at the end of the selection)."""
    from sqlalchemy.exc import SQLAlchemyError

    from lienthong.audit.search import search_exchanges

    since, until = _time_param(filters["from"], "from"), _time_param(filters["to"], "to")
    if since is not None and until is not None and since >= until:
        raise HTTPException(400, f"from ({since.isoformat()}) must be before to ({until.isoformat()})")
    if filters["outcome"] and filters["outcome"] not in OUTCOMES:
        raise HTTPException(400, f"outcome: one of {', '.join(OUTCOMES)}")
    limit, after = _limit(filters["limit"]), _after(filters["after"])
    try:
        rows = search_exchanges(bus_store(), key=filters["key"] or None, peer=filters["peer"] or None,
                                operation=filters["operation"] or None, outcome=filters["outcome"] or None,
                                since=since, until=until, limit=limit + 1, after=after)
    except SQLAlchemyError as exc:
        raise _db_error(exc) from None
    return rows[:limit], (rows[limit - 1]["id"] if len(rows) > limit else None)


def _masked_row(row: dict[str, Any]) -> dict[str, Any]:
    """A search result with the free-text fields masked like ``format_exchange`` masks them."""
    from lienthong.audit.search import mask_text

    out = dict(row)
    out["record_keys"] = [mask_text(k) for k in row.get("record_keys") or []]
    out["error"] = mask_text(row["error"]) if row.get("error") else row.get("error")
    return out


def _excerpts(ids: list[int]) -> dict[int, str]:
    """A short, masked excerpt of each exchange's request body: the body section of
    :func:`~lienthong.audit.search.format_exchange` (so masking stays the audit module's), on one line."""
    from lienthong.audit.search import format_exchange, get_exchange

    store = bus_store()
    out: dict[int, str] = {}
    for exchange_id in ids:
        record = get_exchange(store, exchange_id)
        if record is None:
            continue
        lines, inside = [], False
        for line in format_exchange(record, reveal=False, sides=("request",)).splitlines():  # not the answer
            if line.startswith("--- request body"):
                inside = True
                continue
            if inside and line.startswith("--- "):
                break
            if inside:
                lines.append(line.strip())
        text = " ".join(lines)
        out[exchange_id] = text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS - 1] + "…"
    return out


# --- pages -------------------------------------------------------------------------------------
@app.get("/", response_class=HTMLResponse)
def search_page(request: Request) -> HTMLResponse:
    from sqlalchemy.exc import SQLAlchemyError

    filters = _filters(request)
    searched = any(v for k, v in filters.items() if k not in ("limit", "after"))
    found, next_after = _search(filters) if searched else ([], None)
    rows = [_masked_row(r) for r in found]
    base = _base(request)
    outcome_options = "".join(
        f"<option value='{o}'{' selected' if filters['outcome'] == o else ''}>{o}</option>" for o in ("", *OUTCOMES))
    form = (
        f"<form class='search' method='get' action='{_e(base)}/'>"
        f"<label>Record key (dossier / receipt / procedure code)<input name='key' id='key' size='32' "
        f"value='{_e(filters['key'])}'></label>"
        f"<label>Peer<input name='peer' value='{_e(filters['peer'])}' placeholder='national_portal'></label>"
        f"<label>Operation<input name='operation' value='{_e(filters['operation'])}'></label>"
        f"<label>Outcome<select name='outcome'>{outcome_options}</select></label>"
        f"<label>From (UTC)<input name='from' value='{_e(filters['from'])}' placeholder='2026-11-01'></label>"
        f"<label>To (UTC, excl.)<input name='to' value='{_e(filters['to'])}' placeholder='2026-12-01'></label>"
        f"<label>Limit<input name='limit' size='5' value='{_e(filters['limit'] or DEFAULT_LIMIT)}'></label>"
        f"<button type='submit' id='search'>Search</button></form>")
    if not searched:
        body = form + "<p class='muted'>Give a record key, a peer, an operation, an outcome or a time range.</p>"
        return HTMLResponse(_page(request, "Exchange log: search", body))
    try:
        excerpts = _excerpts([r["id"] for r in rows])
    except SQLAlchemyError as exc:
        raise _db_error(exc) from None
    lines = []
    for r in rows:
        status = r["http_status"] if r["http_status"] is not None else "–"
        css = "ok" if r["outcome"] == "ok" else "bad"
        started = r["started_at"].isoformat(timespec="milliseconds") if r["started_at"] else ""
        lines.append(
            f"<tr><td><a href='{_e(base)}/exchanges/{r['id']}'>#{r['id']}</a></td>"
            f"<td class='time'>{_e(started)}</td>"
            f"<td>{_e(r['flow'])}</td><td>{_e(r['peer'])}</td><td>{_e(r['operation'])}</td>"
            f"<td>{_e(r['method'])}</td><td class='{css}'>{_e(r['outcome'])}</td><td>{_e(status)}</td>"
            f"<td>{_e(r['peer_code'])}</td><td>{_e(r['attempt'])}</td>"
            f"<td>{_e(round(r['duration_ms'] or 0))} ms</td>"
            f"<td class='keys'>{'<br>'.join(_e(k) for k in r['record_keys'])}</td>"
            f"<td class='body'>{_e(excerpts.get(r['id'], ''))}</td></tr>")
    table = ("<table id='results'><thead><tr><th>#</th><th>started (UTC)</th><th>flow</th><th>peer</th>"
             "<th>operation</th><th>method</th><th>outcome</th><th>HTTP</th><th>peer code</th><th>try</th>"
             "<th>duration</th><th>record keys</th><th>request (masked)</th></tr></thead><tbody>"
             + "".join(lines) + "</tbody></table>")
    export = {k: filters[k] for k in ("key", "from", "to") if filters[k]}
    export_link = (f" · <a href='{_e(base)}/bundle?{_e(urlencode(export))}'>download the evidence bundle of this "
                   f"selection</a> (key and time range)" if export else "")
    json_link = f"{base}/api/search?{urlencode({k: v for k, v in filters.items() if v})}"
    shown = f"#{rows[0]['id']}–#{rows[-1]['id']}, " if rows and filters["after"] else ""
    following = ""
    if next_after is not None:
        next_query = urlencode({**{k: v for k, v in filters.items() if v}, "after": next_after})
        following = f" · <a id='next' href='{_e(base)}/?{_e(next_query)}'>next {len(rows)} →</a>"
    archived = "".join(
        f"<p class='muted archived'>Records #{a['first_id']}..#{a['last_id']} were archived (audit archive) and "
        f"are not searched here: they are in the evidence bundle {_e(a['bundle_path'])} "
        f"(seals {a['first_seq']}..{a['last_seq']}).</p>" for a in _archived())
    body = (form + f"<p>{len(rows)} exchange(s) ({shown}{'more follow' if next_after is not None else 'the last'})"
            f"{following} · <a href='{_e(json_link)}'>JSON</a>{export_link}</p>"
            + (table if rows else "<p>No exchange matches.</p>") + archived)
    return HTMLResponse(_page(request, "Exchange log: search", body))


@app.get("/api/search")
def search_json(request: Request) -> dict[str, Any]:
    found, next_after = _search(_filters(request))
    rows = [_masked_row(r) for r in found]
    return {"count": len(rows), "exchanges": rows, "next_after": next_after, "archived": _archived()}


def _exchange(exchange_id: int) -> dict[str, Any]:
    from sqlalchemy.exc import SQLAlchemyError

    from lienthong.audit.search import archive_of, get_exchange

    if not 0 < exchange_id < 2 ** 63:  # a database integer; beyond it, no such exchange (not a 500)
        raise HTTPException(404, f"no exchange #{exchange_id}")
    try:
        record = get_exchange(bus_store(), exchange_id)
        archive = archive_of(bus_store(), exchange_id) if record is None else None
    except SQLAlchemyError as exc:
        raise _db_error(exc) from None
    if archive:  # pruned from the database by `audit archive`: its bundle holds it
        raise HTTPException(404, f"exchange #{exchange_id} was archived (audit archive): it is in the evidence bundle "
                                 f"{archive['bundle_path']} (seals {archive['first_seq']}..{archive['last_seq']}, "
                                 f"records #{archive['first_id']}..#{archive['last_id']}), no longer in the database")
    if record is None:
        raise HTTPException(404, f"no exchange #{exchange_id}")
    return record


def _archived() -> list[dict[str, Any]]:
    """The ranges ``audit archive`` pruned from the database, which a search does not see."""
    from sqlalchemy.exc import SQLAlchemyError

    from lienthong.audit.search import archived_ranges

    try:
        return archived_ranges(bus_store())
    except SQLAlchemyError as exc:
        raise _db_error(exc) from None


def _reveal(request: Request, user: Any, exchange_id: int) -> bool:
    reveal = request.query_params.get("reveal", "") in ("1", "true", "yes")
    if reveal:
        _require(user, REVEAL_RESOURCE, "revealing personal data")
        client = request.client.host if request.client else "-"
        log.warning("auditor page: user %s revealed the personal data of exchange #%d (from %s)",
                    _user_name(user), exchange_id, client)
    return reveal


@app.get("/exchanges/{exchange_id}", response_class=HTMLResponse)
def exchange_page(exchange_id: int, request: Request, user: Any = Depends(auditor)) -> HTMLResponse:
    from lienthong.audit.search import format_exchange

    record = _exchange(exchange_id)
    reveal = _reveal(request, user, exchange_id)
    base = _base(request)
    if reveal:
        top = (f"<p class='banner' id='revealed'>Personal data REVEALED. This view was logged with your user name "
               f"({_e(_user_name(user))}). <a href='{_e(base)}/exchanges/{exchange_id}'>Mask again</a></p>")
    elif _may(user, REVEAL_RESOURCE):
        top = (f"<p class='muted'>ID numbers, phone numbers and e-mail addresses are masked. "
               f"<a href='{_e(base)}/exchanges/{exchange_id}?reveal=1'>Reveal them</a> (logged with your user "
               f"name).</p>")
    else:
        top = (f"<p class='muted'>ID numbers, phone numbers and e-mail addresses are masked. Revealing them needs "
               f"{_e(_requirement(REVEAL_RESOURCE))}.</p>")
    altered = record.get("personal_altered") or []
    if altered:  # read-time check of the personal values (lienthong.audit.search.get_exchange)
        top = (f"<p class='error' id='altered'>{len(altered)} stored personal value(s) of this exchange do not match "
               f"their sealed commitment: the database was altered; they are shown as [altered]. Run "
               f"<code>lienthong audit verify --deep</code>.</p>") + top
    keys = record.get("record_keys") or []
    links = []
    if keys and record.get("seal_seq") is not None:
        links.append(f"<a href='{_e(base)}/bundle?{_e(urlencode({'key': keys[0]}))}'>evidence bundle of "
                     f"{_e(keys[0])}</a>")
    links.append(f"<a href='{_e(base)}/api/exchanges/{exchange_id}{'?reveal=1' if reveal else ''}'>JSON</a>")
    body = (top + f"<p>{' · '.join(links)}</p><pre id='exchange'>{_e(format_exchange(record, reveal=reveal))}</pre>")
    return HTMLResponse(_page(request, f"Exchange #{exchange_id}", body))


@app.get("/api/exchanges/{exchange_id}")
def exchange_json(exchange_id: int, request: Request, user: Any = Depends(auditor)) -> dict[str, Any]:
    from lienthong.audit.search import format_exchange

    record = _exchange(exchange_id)
    reveal = _reveal(request, user, exchange_id)
    return {"id": exchange_id, "revealed": reveal, "seal_seq": record.get("seal_seq"),
            "personal_altered": [f"{f.side} {f.path}" for f in record.get("personal_altered") or []],
            "text": format_exchange(record, reveal=reveal)}


#: one full verification at a time in this api-server: each reads the whole log, so a second one asked for
#: meanwhile is told who started the running one and when, and to ask again (429), instead of doubling the load
_verifying = threading.Lock()
_verifying_since: dict[str, str] = {}
VERIFY_RETRY_AFTER = 10  # seconds, the Retry-After of that 429


def _verify(user: Any) -> Any:
    from sqlalchemy.exc import SQLAlchemyError

    from connectors.errors import ConfigurationError
    from lienthong.audit.verify import verify_exchanges

    try:
        keys = public_keys()
    except ConfigurationError as exc:
        raise HTTPException(503, f"no seal public key: {exc}") from None
    if not _verifying.acquire(blocking=False):
        running = dict(_verifying_since)
        log.info("auditor page: user %s asked for a verification while one is running", _user_name(user))
        raise HTTPException(status_code=429, headers={"Retry-After": str(VERIFY_RETRY_AFTER)},
                            detail=f"a verification of the whole exchange log is already running (started by "
                                   f"{running.get('user', '?')} at {running.get('at', '?')} UTC); only one runs "
                                   f"at a time: ask again when it has finished")
    try:
        _verifying_since.update(user=_user_name(user), at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"))
        return verify_exchanges(bus_store(), keys)
    except SQLAlchemyError as exc:
        raise _db_error(exc) from None
    finally:
        _verifying_since.clear()
        _verifying.release()


@app.get("/verify", response_class=HTMLResponse)
def verify_page(request: Request, user: Any = Depends(auditor)) -> HTMLResponse:
    result = _verify(user)
    log.info("auditor page: user %s verified the exchange log: %s", _user_name(user),
             "ok" if result.ok else result.failure)
    base = _base(request)
    if result.ok:
        head = f"; head seal {result.head_seq}: <code>{_e(result.head_hash)}</code>" if result.head_seq else ""
        status = (f"<p class='ok' id='status'>VERIFIED: {result.records_checked} records in "
                  f"{result.seals_checked} seals{head}.</p>")
    else:
        failure = result.failure
        where = ""
        if failure.record_id is not None:
            where = (f"<p>First failing record: <a id='failing-record' href='{_e(base)}/exchanges/"
                     f"{failure.record_id}'>record #{failure.record_id}</a>"
                     f"{f' (seal {failure.seal_seq})' if failure.seal_seq is not None else ''}</p>")
        status = (f"<p class='bad' id='status'>NOT VERIFIED after {result.records_checked} records in "
                  f"{result.seals_checked} seals: {_e(failure.kind)}</p><p>{_e(failure.explanation)}</p>{where}")
    body = (status + f"<p>{result.unsealed_records} record(s) not sealed yet (not an error: the next seal covers "
                     f"them).</p>"
            + "".join(f"<p class='muted'>warning: {_e(w)}</p>" for w in result.warnings)
            + f"<p class='muted'>Recomputed now from the database with the seal public key · "
              f"<a href='{_e(base)}/api/verify'>JSON</a></p>")
    return HTMLResponse(_page(request, "Exchange log: verification", body))


@app.get("/api/verify")
def verify_json(user: Any = Depends(auditor)) -> dict[str, Any]:
    result = _verify(user)
    log.info("auditor page: user %s verified the exchange log: %s", _user_name(user),
             "ok" if result.ok else result.failure)
    return result.to_dict()


@app.get("/bundle", response_model=None)
def bundle_download(request: Request, user: Any = Depends(auditor)) -> Response:
    """The evidence bundle of the sealed exchanges carrying ``key`` and/or started in [from, to)."""
    from sqlalchemy.exc import SQLAlchemyError

    from connectors.errors import ConfigurationError
    from lienthong.audit.bundle import ExportError, export_bundle
    from lienthong.audit.bundle_verify import verify_bundle

    q = request.query_params
    key = (q.get("key") or "").strip() or None
    since, until = _time_param(q.get("from"), "from"), _time_param(q.get("to"), "to")
    base = _base(request)
    if not (key or since or until):
        body = (f"<form class='search' method='get' action='{_e(base)}/bundle'>"
                f"<label>Record key<input name='key' size='32'></label>"
                f"<label>From (UTC)<input name='from' placeholder='2026-11-01'></label>"
                f"<label>To (UTC, excl.)<input name='to' placeholder='2026-12-01'></label>"
                f"<button type='submit'>Download</button></form>"
                f"<p class='muted'>A zip with the sealed records, their seals and inclusion proofs, the public key and "
                f"a standalone <code>verify.py</code>. Records not sealed yet are left out.</p>")
        if _wants_html(request):
            return HTMLResponse(_page(request, "Evidence bundle", body))
        raise HTTPException(400, "choose what to export: key and/or from/to")
    _require(user, REVEAL_RESOURCE, "an evidence bundle (it holds the personal data as stored)")
    try:
        keys = public_keys()
    except ConfigurationError as exc:
        raise HTTPException(503, f"no seal public key: {exc}") from None
    workdir = Path(tempfile.mkdtemp(prefix="lienthong-bundle-"))
    cleanup = BackgroundTask(shutil.rmtree, workdir, ignore_errors=True)
    try:
        out = workdir / "bundle.zip"
        try:
            result = export_bundle(bus_store(), out, keys, key=key, since=since, until=until)
        except ExportError as exc:
            raise HTTPException(409, str(exc)) from None
        except SQLAlchemyError as exc:
            raise _db_error(exc) from None
        if not result.records:
            left = f"; {result.unsealed_left_out} match but are not sealed yet" if result.unsealed_left_out else ""
            raise HTTPException(404, f"no sealed exchange matches{left}")
        check = verify_bundle(str(out))
        if not check.ok:
            raise HTTPException(409, f"the bundle does not verify: {check.failure}")
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    log.info("auditor page: user %s exported an evidence bundle (key=%s, from=%s, to=%s): %d records",
             _user_name(user), key, since, until, result.records)
    label = "".join(c if c.isalnum() or c in "-." else "_" for c in (key or "range"))[:80]
    return FileResponse(out, media_type="application/zip", filename=f"lienthong-audit-{label}.zip",
                        background=cleanup, headers={
                            "X-Lienthong-Records": str(result.records),
                            "X-Lienthong-Unsealed-Left-Out": str(result.unsealed_left_out)})


# --- the plugin --------------------------------------------------------------------------------
class LienthongAuditPlugin(AirflowPlugin):
    """Mounts the auditor page under the api-server and links it from Airflow's "Browse" menu."""

    name = "lienthong_audit"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "lienthong exchange-log audit"}]
    external_views = [{
        "name": "Exchange log audit",
        "href": f"{URL_PREFIX}/",
        "url_route": "lienthong_audit",
        "destination": "nav",
        "category": "browse",
    }]
