"""Thin Airflow hooks: a connection id in, a plain-Python client out.

This is the only module of ``connectors`` that imports Airflow. Each hook resolves its
connection through Airflow (environment variables, secrets backends, or the metadata DB via the
task's Execution API) and hands a :class:`~connectors.connection.ConnectionSpec` to the
client's ``from_connection``; everything else lives in the clients.
"""

from __future__ import annotations

import json
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from connectors.connection import ConnectionSpec, Secret, env_var_name
from connectors.errors import ConfigurationError
from connectors.ministry_ledger.client import ReceiptLedgerClient
from connectors.national_portal.client import NationalPortalClient
from connectors.one_stop.client import OneStopClient
from connectors.payment_platform.client import PaymentPlatformClient
from connectors.transport import ExchangeRecorder

__all__ = [
    "LienthongDbHook",
    "NationalPortalHook",
    "OneStopHook",
    "PaymentPlatformHook",
    "ReceiptLedgerHook",
    "airflow_connection_spec",
]


def airflow_connection_spec(conn_id: str) -> ConnectionSpec:
    """Resolve ``conn_id`` through Airflow and convert it; secrets stay wrapped.

    Raises:
        ConfigurationError: Airflow does not define the connection, or its extra is not a JSON
            object (Airflow itself would log the error and read no extras at all); the message
            names the connection, never the extra's text.
    """
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise ConfigurationError(
            f"connection '{conn_id}' is not defined: add it in Airflow (UI, `airflow connections add` or a "
            f"secrets backend) or set {env_var_name(conn_id)} (JSON or URI form)") from None
    if conn.extra:
        try:
            parsed = json.loads(conn.extra)
        except ValueError as exc:
            raise ConfigurationError(f"connection '{conn_id}': extra is not valid JSON "
                                     f"({getattr(exc, 'msg', 'unreadable')} at {getattr(exc, 'pos', '?')})") from None
        if not isinstance(parsed, dict):
            raise ConfigurationError(f"connection '{conn_id}': extra must be a JSON object, "
                                     f"not a {type(parsed).__name__}")
    extra: dict[str, Any] = conn.extra_dejson or {}  # parsed again by Airflow, which masks its secrets
    return ConnectionSpec(
        conn_id=conn_id,
        conn_type=conn.conn_type or "",
        host=conn.host or "",
        port=conn.port,
        schema=conn.schema or "",
        login=conn.login or "",
        password=Secret(conn.password),
        extra=dict(extra),
    )


class _SpecHook(BaseHook):
    conn_name_attr = "conn_id"

    def __init__(self, conn_id: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.conn_id = conn_id or self.default_conn_name

    def connection_spec(self) -> ConnectionSpec:
        return airflow_connection_spec(self.conn_id)


class OneStopHook(_SpecHook):
    """The provincial one-stop system (REST/JSON, ``X-Api-Key`` = the connection's password)."""

    default_conn_name = "onestop_default"
    conn_type = "http"
    hook_name = "Provincial one-stop system"

    def get_conn(self, recorder: ExchangeRecorder | None = None) -> OneStopClient:
        return OneStopClient.from_connection(self.connection_spec(), recorder=recorder)


class NationalPortalHook(_SpecHook):
    """The national portal's adapter (log-in, session; ``extra.madonvi`` = our unit code)."""

    default_conn_name = "national_portal_default"
    conn_type = "http"
    hook_name = "National Public Service Portal (DVCQG) adapter"

    def get_conn(self, recorder: ExchangeRecorder | None = None) -> NationalPortalClient:
        return NationalPortalClient.from_connection(self.connection_spec(), recorder=recorder)


class PaymentPlatformHook(_SpecHook):
    """The national payment platform (login = MaDoiTac, password = the checksum secret)."""

    default_conn_name = "payment_platform_default"
    conn_type = "http"
    hook_name = "National payment platform (DVCQG, protocol 1.0.6)"

    def get_conn(self, recorder: ExchangeRecorder | None = None) -> PaymentPlatformClient:
        return PaymentPlatformClient.from_connection(self.connection_spec(), recorder=recorder)


class ReceiptLedgerHook(_SpecHook):
    """A ministry's receipt ledger over SOAP (WS-Security UsernameToken = login/password)."""

    default_conn_name = "ministry_ledger_default"
    conn_type = "http"
    hook_name = "Ministry receipt ledger (SOAP)"

    def get_conn(self, recorder: ExchangeRecorder | None = None) -> ReceiptLedgerClient:
        return ReceiptLedgerClient.from_connection(self.connection_spec(), recorder=recorder)


class LienthongDbHook(_SpecHook):
    """The bus database (sqlite file path in host, postgres, or ``extra.sqlalchemy_url``)."""

    default_conn_name = "lienthong_db"
    conn_type = "sqlite"
    hook_name = "lienthong bus database"

    def get_conn(self) -> ConnectionSpec:
        return self.connection_spec()
