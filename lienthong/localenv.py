"""The local topology: where state lives, which ports the stand-ins use, and the environment
that Airflow, the DAGs and the CLI see on one machine.

One source of truth for ``make demo``, ``make airflow``, ``lienthong mocks up`` and the tests
that keep ``docker-compose.yml`` honest (it must name the same connection ids, environment
variables and services).

The credentials below are the stand-ins' demo credentials, not real ones: real deployments set
their own ``AIRFLOW_CONN_*`` values (or Airflow connections), and the same code reads them.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CONNECTION_IDS",
    "LocalTopology",
    "POOLS",
    "POOLS_FILE",
    "REPO_ROOT",
    "topology",
]

REPO_ROOT = Path(__file__).resolve().parents[1]

# Pools per peer (design §5): a slot is one task talking to that peer at a time. The file is
# shared with docker-compose.yml's airflow-init.
POOLS_FILE = REPO_ROOT / "config" / "pools.json"
POOLS: dict[str, dict[str, object]] = json.loads(POOLS_FILE.read_text())

CONNECTION_IDS = ("onestop_default", "national_portal_default", "lienthong_db", "ministry_db_default",
                  "payment_platform_default", "ministry_ledger_default")

DEMO_ONESTOP_API_KEY = "demo-onestop-key"
DEMO_PORTAL_USERNAME = "lienthong.h49"
DEMO_PORTAL_PASSWORD = "demo-portal-secret"
DEMO_UNIT_CODE = "000.00.01.H49"
DEMO_PAYMENT_PARTNER = "DVC_H49"
DEMO_PAYMENT_SECRET = "demo-payment-secret"
DEMO_LEDGER_USERNAME = "lienthong.h49"
DEMO_LEDGER_PASSWORD = "demo-ledger-secret"


@dataclass(frozen=True)
class LocalTopology:
    """Everything one local installation needs to know about itself.

    Attributes:
        home: local state (bus DB, stand-ins' state, Airflow home, logs); ``var/`` by default,
            ``LIENTHONG_HOME`` to move it.
        onestop_port, portal_port, payment_port, ledger_port: the stand-ins' ports on 127.0.0.1.
    """

    home: Path
    onestop_port: int = 18081
    portal_port: int = 18082
    payment_port: int = 18083
    ledger_port: int = 18084
    host: str = "127.0.0.1"

    @property
    def bus_db(self) -> Path:
        return self.home / "lienthong.db"

    @property
    def mocks_dir(self) -> Path:
        return self.home / "mocks"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def seal_key(self) -> Path:
        """The Ed25519 key that signs exchange-log seals: a file outside the database."""
        return self.home / "keys" / "seal.key"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    def connections(self) -> dict[str, dict[str, object]]:
        """Connection id → Airflow JSON connection for the stand-ins and the bus database."""
        return {
            "onestop_default": {
                "conn_type": "http", "host": self.host, "port": self.onestop_port, "schema": "http",
                "password": DEMO_ONESTOP_API_KEY,
                "extra": {"page_size": 200, "read_timeout": 10},
            },
            "national_portal_default": {
                "conn_type": "http", "host": self.host, "port": self.portal_port, "schema": "http",
                "login": DEMO_PORTAL_USERNAME, "password": DEMO_PORTAL_PASSWORD,
                "extra": {"madonvi": DEMO_UNIT_CODE, "dstcode": "DVCQG", "auth_endpoint": "/auth",
                          "integration_endpoint": "/integration", "share_endpoint": "/share",
                          "read_timeout": 10},
            },
            "lienthong_db": {"conn_type": "sqlite", "host": str(self.bus_db)},
            "ministry_db_default": {"conn_type": "sqlite", "host": str(self.home / "ministry.db"),
                                    "extra": {"batch_size": 200}},
            "payment_platform_default": {
                "conn_type": "http", "host": self.host, "port": self.payment_port, "schema": "http",
                "login": DEMO_PAYMENT_PARTNER, "password": DEMO_PAYMENT_SECRET,
                "extra": {"path": "/api/payment", "read_timeout": 10},
            },
            "ministry_ledger_default": {
                "conn_type": "http", "host": self.host, "port": self.ledger_port, "schema": "http",
                "login": DEMO_LEDGER_USERNAME, "password": DEMO_LEDGER_PASSWORD,
                "extra": {"operation_timeout": 10, "connect_timeout": 3.05, "max_attempts": 3},
            },
        }

    def environment(self) -> dict[str, str]:
        """Environment variables for Airflow, the DAGs and the CLI on this machine."""
        venv_bin = str(Path(sys.executable).parent)
        env = {
            "LIENTHONG_HOME": str(self.home),
            "LIENTHONG_SEAL_KEY": str(self.seal_key),
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.airflow_home / 'airflow.db'}",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,auditor:viewer",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.airflow_home / "passwords.json"),
            # [api] host defaults to 0.0.0.0: admin/admin would be open to the whole network
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": "8080",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            # standalone starts its components as `airflow ...` found on PATH (airflow3-notes §4.1).
            "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
            "LIENTHONG_MOCK_ONESTOP_API_KEY": DEMO_ONESTOP_API_KEY,
            "LIENTHONG_MOCK_PORTAL_USERNAME": DEMO_PORTAL_USERNAME,
            "LIENTHONG_MOCK_PORTAL_PASSWORD": DEMO_PORTAL_PASSWORD,
            "LIENTHONG_MOCK_PORTAL_UNIT": DEMO_UNIT_CODE,
            "LIENTHONG_MOCK_PAYMENT_PARTNER": DEMO_PAYMENT_PARTNER,
            "LIENTHONG_MOCK_PAYMENT_SECRET": DEMO_PAYMENT_SECRET,
            "LIENTHONG_MOCK_LEDGER_USERNAME": DEMO_LEDGER_USERNAME,
            "LIENTHONG_MOCK_LEDGER_PASSWORD": DEMO_LEDGER_PASSWORD,
        }
        for conn_id, conn in self.connections().items():
            env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
        return env

    def write_passwords_file(self) -> Path:
        """Local UI users for SimpleAuthManager: admin/admin and a read-only auditor/auditor."""
        path = self.airflow_home / "passwords.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(json.dumps({"admin": "admin", "auditor": "auditor"}))
        return path

    @property
    def airflow_bin(self) -> Path:
        """Put first on ``PATH`` by ``lienthong airflow ...``: its ``airflow`` is :meth:`write_airflow_wrapper`'s."""
        return self.airflow_home / "bin"

    def write_airflow_wrapper(self, airflow: str | Path | None = None) -> Path:
        """Write ``airflow_bin/airflow``: the venv's ``airflow`` (or ``airflow``), except that
        ``scheduler`` and ``triggerer`` get ``--skip-serve-logs``.

        Their log servers (``[logging] worker_log_server_port`` 8793, ``trigger_log_server_port``
        8794) bind every interface and Airflow has no setting for their host; ``airflow
        standalone`` starts them through ``airflow`` on ``PATH``, which this script is. On one
        machine the api-server reads task logs from the log folder under ``AIRFLOW_HOME``, so
        nothing needs them, and nothing of ``make airflow`` listens beyond 127.0.0.1.
        """
        target = shlex.quote(str(airflow or Path(sys.executable).parent / "airflow"))
        path = self.airflow_bin / "airflow"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "#!/bin/sh\n"
            "# written by `lienthong airflow` (lienthong/localenv.py): the scheduler's and the triggerer's log\n"
            "# servers would listen on every interface; the api-server reads the log folder instead.\n"
            'case "$1" in\n'
            f'  scheduler|triggerer) exec {target} "$@" --skip-serve-logs ;;\n'
            "esac\n"
            f'exec {target} "$@"\n')
        path.chmod(0o755)
        return path

    def mocks_command(self) -> list[str]:
        return [
            sys.executable, "-m", "mocks", "up", "--state-dir", str(self.mocks_dir), "--host", self.host,
            "--onestop-port", str(self.onestop_port), "--portal-port", str(self.portal_port),
            "--payment-port", str(self.payment_port), "--ledger-port", str(self.ledger_port),
        ]


def topology(home: str | Path | None = None) -> LocalTopology:
    """The local topology, with ``LIENTHONG_HOME`` (or ``var/`` in the repository) as its home."""
    chosen = home or os.environ.get("LIENTHONG_HOME") or (REPO_ROOT / "var")
    return LocalTopology(home=Path(chosen).resolve())
