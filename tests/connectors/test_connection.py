import json
from urllib.parse import quote

import pytest

from connectors.connection import ConnectionSpec, Secret, connection_from_env
from connectors.errors import ConfigurationError


def test_json_form_is_read_like_airflow():
    env = {"AIRFLOW_CONN_NATIONAL_PORTAL_DEFAULT": json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": 18082, "schema": "http",
        "login": "u", "password": "p@ss", "extra": {"madonvi": "000.00.01.H49"}})}
    spec = connection_from_env("national_portal_default", env)
    assert spec.base_url == "http://127.0.0.1:18082"
    assert spec.login == "u"
    assert spec.password.reveal() == "p@ss"
    assert spec.extra == {"madonvi": "000.00.01.H49"}


def test_uri_form_percent_decodes_credentials():
    env = {"AIRFLOW_CONN_LIENTHONG_DB": "postgres://bus:p%40ss@127.0.0.1:5432/lienthong"}
    spec = connection_from_env("lienthong_db", env)
    assert (spec.conn_type, spec.host, spec.port, spec.schema, spec.login) == (
        "postgres", "127.0.0.1", 5432, "lienthong", "bus")
    assert spec.password.reveal() == "p@ss"


def test_sqlite_uri_keeps_the_file_path():
    spec = connection_from_env("lienthong_db", {"AIRFLOW_CONN_LIENTHONG_DB": "sqlite:////tmp/x/bus.db"})
    assert spec.host == "/tmp/x/bus.db"


def test_missing_connection_names_the_variable():
    with pytest.raises(ConfigurationError, match="AIRFLOW_CONN_ONESTOP_DEFAULT"):
        connection_from_env("onestop_default", {})


def test_malformed_json_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        connection_from_env("onestop_default", {"AIRFLOW_CONN_ONESTOP_DEFAULT": "{nope"})


def test_require_names_every_missing_setting():
    spec = ConnectionSpec(conn_id="national_portal_default", conn_type="http", host="h")
    with pytest.raises(ConfigurationError) as info:
        spec.require("host", "login", "password", "extra.madonvi")
    assert "login, password, extra.madonvi" in str(info.value)


def test_secret_never_shows_itself():
    secret = Secret("hunter2")
    spec = ConnectionSpec(conn_id="x", conn_type="http", password=secret)
    for text in (repr(secret), str(secret), repr(spec), f"{spec}"):
        assert "hunter2" not in text
    assert secret.reveal() == "hunter2"


def test_database_urls_from_connections():
    pg = ConnectionSpec(conn_id="ministry_db_default", conn_type="postgres", host="db", port=5432, schema="ministry",
                        login="u", password=Secret("p@ss"))
    assert pg.sqlalchemy_url() == "postgresql+psycopg2://u:p%40ss@db:5432/ministry"
    assert ConnectionSpec(conn_id="x", conn_type="sqlite", host="/tmp/b.db").sqlalchemy_url() == "sqlite:////tmp/b.db"
    assert ConnectionSpec(conn_id="x", conn_type="http", extra={"sqlalchemy_url": "sqlite://"}).sqlalchemy_url() \
        == "sqlite://"
    with pytest.raises(ConfigurationError, match="not a supported database"):
        ConnectionSpec(conn_id="x", conn_type="http").sqlalchemy_url()


def test_an_https_connection_uri_keeps_https():
    """'https://user:pw@portal:8443?madonvi=...' once gave base_url 'http://portal:8443': the
    log-in (password) went out in clear text. Airflow's other spellings keep working."""
    env = {"AIRFLOW_CONN_NATIONAL_PORTAL_DEFAULT":
           "https://lienthong.h49:portal-secret@portal.example:8443?madonvi=000.00.01.H49"}
    spec = connection_from_env("national_portal_default", env)
    assert (spec.conn_type, spec.schema, spec.base_url) == ("https", "", "https://portal.example:8443")
    for uri, base_url in [
        ("http://u:p@portal.example:8080?madonvi=x", "http://portal.example:8080"),
        ("http://u:p@portal.example:443/https?madonvi=x", "https://portal.example:443"),  # schema = scheme
        ("http://https://portal.example:8443?madonvi=x", "https://portal.example:8443"),  # host with scheme
    ]:
        assert connection_from_env("x", {"AIRFLOW_CONN_X": uri}).base_url == base_url, uri
    # the JSON form: schema is the scheme, as in Airflow's HTTP connections
    for data, base_url in [({"conn_type": "http", "host": "h", "schema": "https"}, "https://h"),
                           ({"conn_type": "https", "host": "h"}, "https://h"),
                           ({"conn_type": "http", "host": "h"}, "http://h")]:
        assert connection_from_env("x", {"AIRFLOW_CONN_X": json.dumps(data)}).base_url == base_url


def test_a_blank_uri_extra_is_kept_as_airflow_keeps_it():
    """Airflow parses the query with keep_blank_values=True; '?dstcode=' (send no dstcode header:
    contract §1.3, 'sent only when configured') once vanished and the client sent 'DVCQG'."""
    env = {"AIRFLOW_CONN_NATIONAL_PORTAL_DEFAULT": "http://u:p@portal.example:8080?madonvi=000.00.01.H49&dstcode="}
    spec = connection_from_env("national_portal_default", env)
    assert spec.extra == {"madonvi": "000.00.01.H49", "dstcode": ""}


@pytest.mark.parametrize("uri", [
    "http://:key@onestop.example:8080?__extra__=%7Bnope",  # not JSON
    "http://:key@onestop.example:8080?__extra__=%5B1%5D",  # JSON, not an object
])
def test_a_malformed_uri_extra_is_a_configuration_error_naming_the_variable(uri):
    """A bad '__extra__' once raised json.JSONDecodeError, outside the error tree."""
    with pytest.raises(ConfigurationError, match="AIRFLOW_CONN_ONESTOP_DEFAULT: '__extra__'") as info:
        connection_from_env("onestop_default", {"AIRFLOW_CONN_ONESTOP_DEFAULT": uri})
    assert "nope" not in str(info.value)


def test_a_uri_extra_given_as_json_is_read():
    uri = "http://:key@onestop.example:8080?__extra__=" + quote(json.dumps({"page_size": 50, "dstcode": ""}))
    assert connection_from_env("x", {"AIRFLOW_CONN_X": uri}).extra == {"page_size": 50, "dstcode": ""}


def test_a_uri_that_does_not_parse_never_quotes_the_password():
    """A password with a bare '/' splits the authority: urlsplit's error quotes what it took for
    the port, part of the password."""
    with pytest.raises(ConfigurationError, match="percent-encode") as info:
        connection_from_env("x", {"AIRFLOW_CONN_X": "http://u:pw/SECRET-P1@host:80"})
    assert "SECRET" not in str(info.value)


def test_postgres_libpq_extras_go_into_the_url_as_airflow_passes_them_to_the_driver():
    """sslmode, sslrootcert, connect_timeout, options... were dropped: psycopg2 fell back to
    sslmode=prefer. The bus's own extras never reach the driver, and connect_timeout is whole
    seconds (libpq refuses '3.05')."""
    pg = ConnectionSpec(conn_id="ministry_db_default", conn_type="postgres", host="db", port=5432, schema="ministry",
                        login="u", password=Secret("p@ss"),
                        extra={"sslmode": "verify-full", "sslrootcert": "/etc/ssl/ca.pem", "connect_timeout": 3.05,
                               "options": "-c search_path=ministry", "keepalives": True, "batch_size": 50,
                               "read_timeout": 10, "sqlalchemy_query": {"application_name": "lienthong"}})
    assert pg.sqlalchemy_url() == (
        "postgresql+psycopg2://u:p%40ss@db:5432/ministry?sslmode=verify-full&sslrootcert=%2Fetc%2Fssl%2Fca.pem"
        "&connect_timeout=4&options=-c%20search_path%3Dministry&keepalives=1&application_name=lienthong")
    uri = connection_from_env("ministry_db_default", {
        "AIRFLOW_CONN_MINISTRY_DB_DEFAULT": "postgres://u:pw@db:5432/ministry?sslmode=require&connect_timeout=7"})
    assert uri.sqlalchemy_url().endswith("/ministry?sslmode=require&connect_timeout=7")


@pytest.mark.parametrize("extra, says", [
    ({"connect_timeout": "soon"}, "extra.connect_timeout must be a number from 0.001 to 600"),
    ({"connect_timeout": 0}, "extra.connect_timeout must be a number from 0.001 to 600"),
    ({"sslmode": ["require"]}, "extra.sslmode must be text or a number"),
    ({"sqlalchemy_query": "sslmode=require"}, "extra.sqlalchemy_query must be a JSON object"),
])
def test_a_bad_libpq_extra_names_the_connection_and_the_extra(extra, says):
    pg = ConnectionSpec(conn_id="ministry_db_default", conn_type="postgres", host="db", schema="m", extra=extra)
    with pytest.raises(ConfigurationError, match=f"connection '?ministry_db_default'?: {says}"):
        pg.sqlalchemy_url()


@pytest.mark.parametrize("uri, expected", [
    ("POSTGRES://ministry:pw@db.example:5432/ministry", "postgresql+psycopg2://ministry:pw@db.example:5432/ministry"),
    ("Postgres://ministry:pw@db.example:5432/ministry", "postgresql+psycopg2://ministry:pw@db.example:5432/ministry"),
    ("SQLITE:////var/lib/lienthong/ministry.db", "sqlite:////var/lib/lienthong/ministry.db"),
])
def test_an_upper_case_uri_scheme_is_still_a_database_connection(uri, expected):
    """urlsplit lower-cases the scheme (RFC 3986: case-insensitive) and Airflow's Connection does
    the same; the new parser takes the text before '://' as it is, so 'POSTGRES://...' became
    conn_type 'POSTGRES' and sqlalchemy_url() refuses it ('not a supported database'). It worked
    before the change."""
    spec = connection_from_env("ministry_db_default", {"AIRFLOW_CONN_MINISTRY_DB_DEFAULT": uri})
    assert spec.sqlalchemy_url() == expected


def test_an_upper_case_https_uri_is_still_https():
    """'HTTPS://user:pw@portal:8443' is conn_type 'HTTPS', not in ('http', 'https'), so base_url falls
    back to http: the portal log-in (password) in clear text, the very defect commit 9145376 fixed
    for the lower-case spelling. Airflow reads the scheme as 'https'."""
    env = {"AIRFLOW_CONN_NATIONAL_PORTAL_DEFAULT": "HTTPS://lienthong.h49:secret@portal.example:8443?madonvi=x"}
    assert connection_from_env("national_portal_default", env).base_url == "https://portal.example:8443"


@pytest.mark.parametrize("uri, url", [
    ("postgres://?sqlalchemy_url=postgresql://ministry:pw@db.example:5432/ministry",
     "postgresql://ministry:pw@db.example:5432/ministry"),
    ("sqlite://?sqlalchemy_url=postgresql://ministry:pw@db.example/ministry",
     "postgresql://ministry:pw@db.example/ministry"),
])
def test_an_extra_holding_a_url_in_a_uri_connection_is_kept(uri, url):
    """README: ministry_db_default may be given as extra.sqlalchemy_url. In URI form, before the
    change (urlsplit) and in Airflow (Connection(uri=...).extra) the query's sqlalchemy_url is kept.
    The new parser sees a second '://' and takes '?sqlalchemy_url=postgresql' as the host's
    protocol: the extra vanishes, host becomes '?sqlalchemy_url=postgresql://db.example' (or
    '/ministry'), and the bus connects somewhere else or fails."""
    spec = connection_from_env("ministry_db_default", {"AIRFLOW_CONN_MINISTRY_DB_DEFAULT": uri})
    assert spec.extra.get("sqlalchemy_url") == url
    assert spec.sqlalchemy_url() == url


@pytest.mark.parametrize("fields, says", [
    ({"port": "80a"}, "'port' must be a whole number from 1 to 65535"),
    ({"port": 0}, "'port' must be a whole number from 1 to 65535"),
    ({"port": True}, "'port' must be a whole number from 1 to 65535"),
    ({"extra": [1]}, "'extra' must be a JSON object"),
    ({"extra": "[1]"}, "'extra' must be a JSON object"),
])
def test_a_json_connection_with_a_bad_port_or_extra_is_a_configuration_error(fields, says):
    """A port that is not a number was a bare ValueError, an extra that is not an object a
    TypeError, from int() and dict() (outside the error tree, naming nothing)."""
    raw = json.dumps({"conn_type": "http", "host": "h", "password": "pw", **fields})
    with pytest.raises(ConfigurationError) as caught:
        connection_from_env("x", {"AIRFLOW_CONN_X": raw})
    assert str(caught.value) == f"AIRFLOW_CONN_X: {says}"
