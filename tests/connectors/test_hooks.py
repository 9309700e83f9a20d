"""The Airflow hooks are thin: a connection id (here from AIRFLOW_CONN_* variables, no Airflow DB)
in, a configured plain-Python client out."""

import json

from connectors.hooks import LienthongDbHook, NationalPortalHook, OneStopHook
from connectors.national_portal.client import NationalPortalClient
from connectors.one_stop.client import OneStopClient


def test_hooks_build_clients_from_connection_ids(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_CONN_ONESTOP_DEFAULT", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": 18081, "schema": "http", "password": "k-SECRET",
         "extra": {"page_size": 33, "read_timeout": 4}}))
    monkeypatch.setenv("AIRFLOW_CONN_NATIONAL_PORTAL_DEFAULT", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": 18082, "schema": "http", "login": "u",
         "password": "p-SECRET", "extra": {"madonvi": "000.00.01.H49", "dstcode": "DVCQG"}}))
    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "b.db")}))

    onestop = OneStopHook().get_conn()
    assert isinstance(onestop, OneStopClient)
    assert onestop.transport.base_url == "http://127.0.0.1:18081"
    assert onestop.page_size == 33 and onestop.transport.timeout == (3.05, 4.0)

    portal = NationalPortalHook().get_conn()
    assert isinstance(portal, NationalPortalClient)
    assert portal.unit_code == "000.00.01.H49" and portal.transport.base_url == "http://127.0.0.1:18082"

    spec = LienthongDbHook().get_conn()
    assert spec.conn_type == "sqlite" and spec.host.endswith("b.db")
    assert "SECRET" not in repr(spec) + repr(NationalPortalHook().connection_spec())
