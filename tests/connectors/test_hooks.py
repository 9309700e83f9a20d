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


def test_payment_and_ledger_hooks_build_clients_from_the_local_topology(monkeypatch, tmp_path):
    import yaml

    from connectors.hooks import PaymentPlatformHook, ReceiptLedgerHook
    from connectors.ministry_ledger.client import ReceiptLedgerClient
    from connectors.payment_platform.client import PaymentPlatformClient
    from lienthong import localenv

    topo = localenv.topology(tmp_path)
    env = topo.environment()
    for conn_id in ("payment_platform_default", "ministry_ledger_default"):
        name = f"AIRFLOW_CONN_{conn_id.upper()}"
        monkeypatch.setenv(name, env[name])
    assert env["LIENTHONG_MOCK_PAYMENT_SECRET"] == "demo-payment-secret"
    assert env["LIENTHONG_MOCK_LEDGER_PASSWORD"] == "demo-ledger-secret"

    payment = PaymentPlatformHook().get_conn()
    assert isinstance(payment, PaymentPlatformClient) and payment.partner_code == "DVC_H49"
    assert payment.transport.base_url == "http://127.0.0.1:18083" and payment.transport.timeout == (3.05, 10.0)

    ledger = ReceiptLedgerHook().get_conn()  # the WSDL is local: no network needed here
    assert isinstance(ledger, ReceiptLedgerClient) and ledger.username == "lienthong.h49"
    assert ledger.service._binding_options["address"] == "http://127.0.0.1:18084/"
    assert ledger.transport.operation_timeout == 10.0 and ledger.retry.max_attempts == 3
    specs = repr(PaymentPlatformHook().connection_spec()) + repr(ReceiptLedgerHook().connection_spec())
    assert "demo-payment-secret" not in specs and "demo-ledger-secret" not in specs

    compose = yaml.safe_load((localenv.REPO_ROOT / "docker-compose.yml").read_text())
    local = topo.connections()
    for conn_id in ("payment_platform_default", "ministry_ledger_default"):
        assert json.loads(compose["x-lienthong-env"][f"AIRFLOW_CONN_{conn_id.upper()}"]) == local[conn_id]


def test_a_connection_airflow_does_not_have_or_cannot_read_is_a_configuration_error(monkeypatch):
    """A connection id Airflow does not define was AirflowNotFoundException, and an extra that is not
    a JSON object a TypeError (a list) or silently no extras at all (not JSON: every default used,
    the portal's unit code and endpoints lost): the first two retried by the DAGs' retry rule like a
    transport error, the last not noticed. Each is now a ConfigurationError naming the connection
    (failed at once, dag_support.NO_RETRY), never the extra's text, which may hold a secret."""
    import pytest

    from connectors.errors import ConfigurationError
    from connectors.hooks import airflow_connection_spec

    with pytest.raises(ConfigurationError, match="'lienthong_missing_conn' is not defined") as missing:
        airflow_connection_spec("lienthong_missing_conn")
    assert "AIRFLOW_CONN_LIENTHONG_MISSING_CONN" in str(missing.value)

    monkeypatch.setenv("AIRFLOW_CONN_BROKEN_EXTRA", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "extra": '{"madonvi": "000.00.01.H49", "token": "tk-SECRET"'}))
    with pytest.raises(ConfigurationError, match="'broken_extra': extra is not valid JSON") as broken:
        airflow_connection_spec("broken_extra")
    assert "SECRET" not in str(broken.value)

    monkeypatch.setenv("AIRFLOW_CONN_LIST_EXTRA", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "extra": '["madonvi"]'}))
    with pytest.raises(ConfigurationError, match="'list_extra': extra must be a JSON object, not a list"):
        airflow_connection_spec("list_extra")

    monkeypatch.setenv("AIRFLOW_CONN_GOOD", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "extra": '{"madonvi": "000.00.01.H49"}'}))
    assert airflow_connection_spec("good").extra == {"madonvi": "000.00.01.H49"}
