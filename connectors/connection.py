"""Connection settings for a peer, resolved from a connection id, with secrets typed as secrets.

The same connection definitions serve Airflow and plain Python: Airflow reads
``AIRFLOW_CONN_<ID>`` environment variables (JSON or URI form), and so does
:func:`connection_from_env` when the CLI or a test runs a flow without a scheduler. Inside a task
the Airflow hooks (``connectors.hooks``) turn Airflow's own ``Connection`` into a
:class:`ConnectionSpec`, so clients never see where a setting came from.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from connectors.errors import ConfigurationError
from connectors.transport import transport_extra

__all__ = ["LIBPQ_EXTRAS", "ConnectionSpec", "Secret", "connection_from_env", "env_var_name"]

#: The extras of a ``postgres`` connection passed to libpq in its SQLAlchemy URL, as Airflow's
#: PostgresHook passes its extras to the driver (``sslmode``, ``sslrootcert``, ``connect_timeout``...).
#: Host, port, database, user and password come from the connection's own fields; ``sslpassword``
#: is a secret and extras are not (use a key file without a passphrase). Other extras (``batch_size``,
#: ``read_timeout``...) are the bus's own and never reach the driver.
LIBPQ_EXTRAS = frozenset({
    "application_name", "channel_binding", "client_encoding", "connect_timeout", "fallback_application_name",
    "gssdelegation", "gssencmode", "gsslib", "hostaddr", "keepalives", "keepalives_count", "keepalives_idle",
    "keepalives_interval", "krbsrvname", "load_balance_hosts", "options", "passfile", "require_auth",
    "requirepeer", "service", "ssl_max_protocol_version", "ssl_min_protocol_version", "sslcert", "sslcertmode",
    "sslcompression", "sslcrl", "sslcrldir", "sslkey", "sslmode", "sslnegotiation", "sslrootcert", "sslsni",
    "target_session_attrs", "tcp_user_timeout",
})


class Secret:
    """A string that never shows itself in ``repr``, ``str``, logs or exceptions.

    Call :meth:`reveal` at the one place the value must go on the wire.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str | None):
        self._value = value or ""

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ConnectionSpec:
    """What a client needs to reach one peer.

    Attributes:
        conn_id: the connection id it was resolved from (``national_portal_default``...).
        conn_type: ``http``, ``https``, ``sqlite``, ``postgres``...
        host, port, schema: for http connections ``schema`` is the URL scheme, as in Airflow; when it
            is empty, an ``https`` connection (the URI ``https://host:port``) uses https.
        login: user name, or ``""``.
        password: a :class:`Secret`.
        extra: the connection's JSON extras (never holds secrets; see ``secret_extra``).
    """

    conn_id: str
    conn_type: str
    host: str = ""
    port: int | None = None
    schema: str = ""
    login: str = ""
    password: Secret = field(default_factory=lambda: Secret(""))
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """``scheme://host:port`` for http connections (the host may already carry a scheme).

        The scheme is ``schema`` (Airflow's HTTP connections: ``{"conn_type": "http", "schema":
        "https"}``, or the URI ``http://host:443/https``); without one it is the connection type
        when that is ``http`` or ``https`` (the URI ``https://user:pw@host:8443``), else ``http``.
        """
        host = self.host.rstrip("/")
        if "://" in host:
            return host if self.port is None else f"{host}:{self.port}"
        scheme = self.schema or (self.conn_type if self.conn_type in ("http", "https") else "http")
        port = f":{self.port}" if self.port else ""
        return f"{scheme}://{host}{port}"

    def sqlalchemy_url(self) -> str:
        """The SQLAlchemy URL of a database connection.

        ``extra.sqlalchemy_url`` wins; otherwise ``sqlite`` (host = file path) and ``postgres``
        connections are translated as Airflow's own hooks do: a postgres connection's libpq extras
        (:data:`LIBPQ_EXTRAS`: ``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``,
        ``connect_timeout``, ``options``, ``application_name``...) and ``extra.sqlalchemy_query``
        (a JSON object, as in Airflow's PostgresHook) go into the URL's query. ``connect_timeout``
        is rounded up to whole seconds, as libpq takes it.

        Raises:
            ConfigurationError: another connection type, an sqlite one without a file path, or a
                libpq extra that is not text, a number or a boolean.
        """
        if self.extra.get("sqlalchemy_url"):
            return str(self.extra["sqlalchemy_url"])
        if self.conn_type == "sqlite":
            if not self.host:
                raise ConfigurationError(f"connection '{self.conn_id}': sqlite needs host = the database file path")
            return f"sqlite:///{self.host}"
        if self.conn_type in {"postgres", "postgresql"}:
            auth = self.login
            if self.password:
                auth += ":" + quote(self.password.reveal(), safe="")
            auth = f"{auth}@" if auth else ""
            port = f":{self.port}" if self.port else ""
            query = urlencode(self._libpq_query(), quote_via=quote)
            return f"postgresql+psycopg2://{auth}{self.host}{port}/{self.schema}" + (f"?{query}" if query else "")
        raise ConfigurationError(
            f"connection '{self.conn_id}': conn_type '{self.conn_type}' is not a supported database "
            "(use sqlite, postgres, or extra.sqlalchemy_url)"
        )

    def _libpq_query(self) -> dict[str, str]:
        """The libpq parameters among a postgres connection's extras, as URL query text."""
        given = self.extra.get("sqlalchemy_query") or {}
        if not isinstance(given, dict):
            raise ConfigurationError(f"connection '{self.conn_id}': extra.sqlalchemy_query must be a JSON object")
        query: dict[str, str] = {}
        for key, value in [*((k, v) for k, v in self.extra.items() if k in LIBPQ_EXTRAS), *given.items()]:
            if isinstance(value, bool):
                text = "1" if value else "0"
            elif isinstance(value, (int, float, str)):
                text = str(value)
            else:
                raise ConfigurationError(f"connection '{self.conn_id}': extra.{key} must be text or a number, "
                                         f"not a {type(value).__name__}")
            if key == "connect_timeout":  # checked as every peer's; libpq takes whole seconds ("3.05" is refused)
                text = str(math.ceil(transport_extra({key: value}, key, conn_id=self.conn_id)))
            query[str(key)] = text
        return query

    def require(self, *names: str) -> None:
        """Fail before any I/O when a needed setting is missing, naming it."""
        missing = []
        for name in names:
            value = getattr(self, name, None) if not name.startswith("extra.") else self.extra.get(name[6:])
            if not value:
                missing.append(name)
        if missing:
            raise ConfigurationError(
                f"connection '{self.conn_id}' lacks {', '.join(missing)} "
                f"(set it in the Airflow connection or {env_var_name(self.conn_id)})"
            )


def env_var_name(conn_id: str) -> str:
    """The environment variable Airflow reads for ``conn_id``."""
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def _from_json(conn_id: str, raw: str) -> ConnectionSpec:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{env_var_name(conn_id)} is not valid JSON: {exc.msg} at {exc.pos}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{env_var_name(conn_id)} must be a JSON object")
    extra = data.get("extra") or {}
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError:
            raise ConfigurationError(f"{env_var_name(conn_id)}: 'extra' is not valid JSON") from None
    if not isinstance(extra, dict):
        raise ConfigurationError(f"{env_var_name(conn_id)}: 'extra' must be a JSON object")
    port = data.get("port")
    if port not in (None, ""):
        text = str(port).strip() if isinstance(port, (int, str)) and not isinstance(port, bool) else ""
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
            raise ConfigurationError(f"{env_var_name(conn_id)}: 'port' must be a whole number from 1 to 65535")
        port = int(text)
    return ConnectionSpec(
        conn_id=conn_id,
        conn_type=str(data.get("conn_type") or ""),
        host=str(data.get("host") or ""),
        port=port if port not in (None, "") else None,
        schema=str(data.get("schema") or ""),
        login=str(data.get("login") or ""),
        password=Secret(data.get("password")),
        extra=dict(extra),
    )


def _from_uri(conn_id: str, raw: str) -> ConnectionSpec:
    """Parse a URI-form connection as Airflow's ``Connection`` does: the query holds the extras
    (blank values kept: ``?dstcode=`` is an empty ``dstcode``) unless it is a single
    ``__extra__`` holding them as JSON; ``http://https://host`` keeps ``https://`` in the host."""
    name = env_var_name(conn_id)
    invalid = (f"{name} is not a valid connection URI (percent-encode reserved characters such as "
               "'/', '@', ':' or '#' in the login and password)")
    if raw.count("://") > 2:
        raise ConfigurationError(invalid)
    conn_type, _, rest = raw.partition("://")
    conn_type = conn_type.lower()  # a scheme is case-insensitive (RFC 3986; urlsplit and Airflow lower it)
    protocol = ""
    head = rest.partition("://")[0]
    # Airflow's form for a host that carries its own scheme ('http://https://host'); a '://' after
    # the query begins or inside the user-info belongs to a value (an extra holding a URL)
    if "://" in rest and not any(c in head for c in "?#"):
        protocol, _, rest = rest.partition("://")
        if "@" in protocol or ":" in protocol:
            raise ConfigurationError(invalid)
        protocol = protocol.lower()
    try:
        parts = urlsplit(f"{conn_type}://{rest}")
        port = parts.port
    except ValueError:  # a port that is not a number: often a password with a bare '/' or '#'
        raise ConfigurationError(invalid) from None
    conn_type = conn_type.replace("-", "_")
    extra: dict[str, Any] = dict(parse_qsl(parts.query, keep_blank_values=True))
    if "__extra__" in extra:
        try:
            extra = json.loads(extra["__extra__"])
        except json.JSONDecodeError:
            raise ConfigurationError(f"{name}: '__extra__' is not valid JSON") from None
        if not isinstance(extra, dict):
            raise ConfigurationError(f"{name}: '__extra__' must be a JSON object")
    host = unquote(parts.hostname or "")
    if protocol and host:
        host = f"{protocol}://{host}"
    path = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
    if conn_type == "sqlite":
        # sqlite:////abs/path.db (SQLAlchemy's form) → host holds the file path /abs/path.db.
        host = unquote(parts.path[1:] if parts.path.startswith("//") else parts.path)
        path = ""
    return ConnectionSpec(
        conn_id=conn_id,
        conn_type=conn_type,
        host=host,
        port=port,
        schema=path,
        login=unquote(parts.username or ""),
        password=Secret(unquote(parts.password or "")),
        extra=extra,
    )


def connection_from_env(conn_id: str, environ: dict[str, str] | None = None) -> ConnectionSpec:
    """Resolve ``conn_id`` from ``AIRFLOW_CONN_<ID>`` (JSON or URI), as Airflow does.

    Raises:
        ConfigurationError: the variable is missing or malformed.
    """
    env = os.environ if environ is None else environ
    name = env_var_name(conn_id)
    raw = env.get(name)
    if not raw:
        raise ConfigurationError(f"connection '{conn_id}' is not defined: set {name} (JSON or URI form)")
    raw = raw.strip()
    return _from_json(conn_id, raw) if raw.startswith("{") else _from_uri(conn_id, raw)
