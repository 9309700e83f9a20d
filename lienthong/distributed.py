"""``make e2e-distributed``: lienthong on Airflow's CeleryExecutor, as separate processes on one machine.

What it does, in order (every step prints a line):

1. checks that PostgreSQL (127.0.0.1:5432, trust auth, user ``postgres``) and Redis
   (127.0.0.1:6379) answer, and claims an empty Redis database as the Celery broker (and its ports,
   so that a second run started meanwhile takes others);
2. creates fresh PostgreSQL databases for this run — Airflow's metadata (``airflow_e2e_<pid>``),
   the bus (``lienthong_e2e_<pid>``) and the ministry replica (``ministry_e2e_<pid>``);
3. runs the init steps docker-compose.yml's ``airflow-init`` runs (:data:`INIT_COMMANDS`):
   ``airflow db migrate`` and ``airflow pools import config/pools.json`` first; then starts
   Airflow's ``api-server``, ``scheduler``, ``dag-processor``, ``triggerer`` and two
   ``celery worker`` processes (``worker1@<host>``, ``worker2@<host>``), each in its own process
   group, sharing one generated JWT secret (64 bytes), API secret key and Fernet key;
4. while they start: ``lienthong db init`` (the bus schema on PostgreSQL) and a seal key;
5. starts the stand-ins (``python -m mocks up``) on ports of their own (28081–28084, or free ones),
   so a ``make demo`` on 18081–18084 is not disturbed, lets the world move a little (new
   dossiers, status changes, citizens paying fees with some callbacks lost), and waits until
   Airflow reports healthy, both workers answer ``celery inspect ping`` and the DAGs are parsed;
6. through Airflow's REST API (JWT from ``POST /auth/token``): unpauses and triggers
   ``sync_dossier_status``, ``sync_procedure_catalogue`` and ``sync_payment_receipts`` and waits
   for the three runs;
7. prints which worker ran which task (the task instances' ``hostname``) and checks the
   invariants against the stand-ins' own state: no loss, no duplicate, both workers used, and
   ``lienthong audit seal`` + ``verify`` pass on the PostgreSQL bus database;
8. stops everything it started by process id (SIGTERM to each process group, then SIGKILL to
   whatever is left of the recorded process trees), drops the databases and empties the Redis
   database — also on failure and on Ctrl-C. A passing run removes its run directory; a failed
   one keeps it (the logs) without the secrets it generated there (:meth:`Harness.secret_files`).
   ``--keep`` keeps databases and the run directory as they are.

Exit status 0 = PASS, 1 = an invariant or a run failed or cleanup left a process, a database or the
Redis database behind, 2 = PostgreSQL or Redis not reachable.

This module's top level imports the standard library only: Celery workers import
:func:`worker_hostname` (``[core] hostname_callable``) in every task process.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "AIRFLOW_COMPONENTS",
    "DAG_IDS",
    "INIT_COMMANDS",
    "POOLS_FILE",
    "HARNESS_ONLY_SETTINGS",
    "PER_WORKER_SETTINGS",
    "PRIVATE_KEY_SETTINGS",
    "SHARED_SETTINGS",
    "WORKER_COMMAND",
    "Harness",
    "HarnessConfig",
    "airflow_environment",
    "component_environment",
    "main",
    "probe_services",
    "worker_environment",
    "worker_hostname",
]

REPO_ROOT = Path(__file__).resolve().parents[1]

# The long-running Airflow components: name → the arguments of `airflow`. docker-compose.yml runs
# the same commands (tests/test_docker_compose.py holds the two to it).
AIRFLOW_COMPONENTS: dict[str, tuple[str, ...]] = {
    "api-server": ("api-server",),
    "scheduler": ("scheduler",),
    "dag-processor": ("dag-processor",),
    "triggerer": ("triggerer",),
}
WORKER_COMMAND: tuple[str, ...] = ("celery", "worker")
# The Celery app the workers run; `celery --app ... inspect ping` is the workers' health check.
CELERY_APP = "airflow.providers.celery.executors.celery_executor.app"

DAG_IDS = ("sync_dossier_status", "sync_procedure_catalogue", "sync_payment_receipts")

# What the init step runs before the components start (docker-compose.yml's airflow-init runs the
# same, with the repository at /opt/lienthong). Paths are relative to the repository.
POOLS_FILE = "config/pools.json"
INIT_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("airflow", "db", "migrate"),
    ("airflow", "pools", "import", POOLS_FILE),
    ("lienthong", "db", "init"),
)

# Settings of the distributed topology that a real deployment sets too (docker-compose.yml's
# x-lienthong-env has every one of these names; the values differ: hosts, secrets, ports).
SHARED_SETTINGS = (
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CELERY__WORKER_CONCURRENCY",
    "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API__BASE_URL",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CORE__DAGS_FOLDER",
    "AIRFLOW__CORE__LOAD_EXAMPLES",
    "AIRFLOW__CORE__PARALLELISM",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
    "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK",
    "LIENTHONG_HOME",
    "LIENTHONG_SEAL_PUBLIC_KEY",
)
# The private seal key (it signs the seals: whoever holds it can forge them): set for the workers,
# which seal, and the harness's own CLI steps; never for the api-server, scheduler, dag-processor
# or triggerer, which only verify (:func:`component_environment`). docker-compose.yml mounts it alike.
PRIVATE_KEY_SETTINGS = ("LIENTHONG_SEAL_KEY",)
# Settings only the one-machine harness needs: several components on one host need distinct
# ports and worker names, and its runs are the ones it triggers (no scheduled runs besides).
HARNESS_ONLY_SETTINGS = (
    "AIRFLOW_HOME",
    "AIRFLOW__API__HOST",
    "AIRFLOW__API__PORT",
    "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
    "AIRFLOW__LOGGING__LOGGING_LEVEL",
    "PATH",
)
# Set per worker process on top of the above.
PER_WORKER_SETTINGS = ("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", "AIRFLOW__CORE__HOSTNAME_CALLABLE",
                       "LIENTHONG_WORKER_HOSTNAME")

WORKER_HOSTNAME_ENV = "LIENTHONG_WORKER_HOSTNAME"

Printer = Callable[[str], None]


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the harness's workers: the Celery node name (``worker1@host``),
    so task instances say which of two workers on one machine ran them. Elsewhere the FQDN."""
    return os.environ.get(WORKER_HOSTNAME_ENV) or socket.getfqdn()


# --- preflight -----------------------------------------------------------------------------------
class ServiceUnavailable(RuntimeError):
    """PostgreSQL or Redis does not answer; the message says which, where, and why."""


def probe_services(pg_host: str = "127.0.0.1", pg_port: int = 5432, pg_user: str = "postgres",
                   redis_host: str = "127.0.0.1", redis_port: int = 6379, timeout: float = 3.0) -> None:
    """Raise :class:`ServiceUnavailable` unless PostgreSQL and Redis answer (used by the test to skip)."""
    try:
        import psycopg2

        psycopg2.connect(host=pg_host, port=pg_port, user=pg_user, dbname="postgres",
                         connect_timeout=int(max(timeout, 1))).close()
    except Exception as exc:  # noqa: BLE001 - the reason is what the caller prints
        reason = " ".join(str(exc).split()) or type(exc).__name__  # one line
        raise ServiceUnavailable(f"PostgreSQL at {pg_host}:{pg_port} not reachable: {reason}") from None
    try:
        with socket.create_connection((redis_host, redis_port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            answer = sock.recv(64)
        if not answer.startswith(b"+PONG"):
            raise OSError(f"unexpected answer to PING: {answer[:40]!r}")
    except OSError as exc:
        raise ServiceUnavailable(f"Redis at {redis_host}:{redis_port} not reachable: {exc}") from None


# --- configuration -------------------------------------------------------------------------------
def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is free
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# A run binds its ports only once Airflow is migrated and the stand-ins start, 10 s and more after it
# chose them; meanwhile it holds each chosen port as a socket bound to the abstract Unix name
# "lienthong-e2e-port-<port>", so that a second run started in that time chooses others. Abstract
# names leave no file behind, belong to the network namespace as the ports do, and the kernel drops
# them when the process ends, however it ends. (Linux only; elsewhere nothing is held.)
PORT_CLAIM_NAME = "lienthong-e2e-port-{}"


class PortClaims:
    """The ports one run has chosen and not yet given back."""

    def __init__(self) -> None:
        self._sockets: dict[int, socket.socket] = {}

    def claim(self, port: int) -> bool:
        """True if no other run holds ``port`` (it is ours from now on)."""
        if port in self._sockets:
            return False
        if not sys.platform.startswith("linux"):
            return True
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind("\0" + PORT_CLAIM_NAME.format(port))
        except OSError:
            sock.close()
            return False
        self._sockets[port] = sock
        return True

    def release(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()


def free_port(preferred: int | None = None, taken: set[int] | None = None,
              claims: PortClaims | None = None) -> int:
    """``preferred`` if nothing listens there (and it is neither ``taken`` nor held by another run),
    else any free port; with ``claims``, the port is held for this run until ``claims.release()``."""
    taken = taken if taken is not None else set()
    claims = claims or PortClaims()
    if preferred and preferred not in taken and _port_free(preferred) and claims.claim(preferred):
        taken.add(preferred)
        return preferred
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in taken and claims.claim(port):
            taken.add(port)
            return port


@dataclass
class HarnessConfig:
    """One run of the harness: where things are, which ports, which secrets."""

    run_dir: Path
    suffix: str
    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_user: str = "postgres"
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    redis_db: int = 1
    api_port: int = 28080
    standin_ports: tuple[int, int, int, int] = (28081, 28082, 28083, 28084)
    worker_log_ports: tuple[int, ...] = (28793, 28795)
    trigger_log_port: int = 28794
    scheduler_health_port: int = 28974
    workers: int = 2
    concurrency: int = 1
    catalogue_size: int = 600  # the national stand-in's generated catalogue (the demo's is 3000)
    jwt_secret: str = field(default_factory=lambda: secrets.token_hex(64), repr=False)  # 128 characters, 64 random bytes
    api_secret_key: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)
    fernet_key: str = field(default="", repr=False)
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(16), repr=False)
    port_claims: PortClaims = field(default_factory=PortClaims, repr=False, compare=False)

    @property
    def airflow_db(self) -> str:
        return f"airflow_e2e_{self.suffix}"

    @property
    def bus_db(self) -> str:
        return f"lienthong_e2e_{self.suffix}"

    @property
    def ministry_db(self) -> str:
        return f"ministry_e2e_{self.suffix}"

    @property
    def databases(self) -> tuple[str, str, str]:
        return (self.airflow_db, self.bus_db, self.ministry_db)

    @property
    def home(self) -> Path:
        return self.run_dir / "home"

    @property
    def airflow_home(self) -> Path:
        return self.run_dir / "airflow"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def broker_url(self) -> str:
        return f"redis://{self.redis_host}:{self.redis_port}/{self.redis_db}"

    def pg_url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{self.pg_user}@{self.pg_host}:{self.pg_port}/{database}"

    def worker_names(self) -> list[str]:
        host = socket.gethostname()
        return [f"worker{i + 1}@{host}" for i in range(self.workers)]

    def topology(self):
        """The local topology with this run's home and stand-in ports."""
        from lienthong import localenv

        onestop, portal, payment, ledger = self.standin_ports
        return replace(localenv.topology(self.home), onestop_port=onestop, portal_port=portal,
                       payment_port=payment, ledger_port=ledger)

    def connections(self) -> dict[str, dict[str, object]]:
        """localenv's connections, with the bus database and the ministry replica on PostgreSQL."""
        conns = self.topology().connections()
        conns["lienthong_db"] = {"conn_type": "postgres", "host": self.pg_host, "port": self.pg_port,
                                 "login": self.pg_user, "schema": self.bus_db}
        conns["ministry_db_default"] = {**conns["ministry_db_default"], "conn_type": "postgres",
                                        "host": self.pg_host, "port": self.pg_port, "login": self.pg_user,
                                        "schema": self.ministry_db}
        return conns


def new_config(args: argparse.Namespace | None = None, run_dir: Path | None = None) -> HarnessConfig:
    """A fresh configuration: unique names, free ports near the preferred ones, new secrets."""
    from cryptography.fernet import Fernet

    suffix = str(os.getpid())
    run_dir = run_dir or Path(tempfile.mkdtemp(prefix=f"lienthong-e2e-{suffix}-"))
    taken: set[int] = set()
    claims = PortClaims()  # held until the harness's cleanup (or the end of this process)
    base = getattr(args, "standin_base_port", None) or 28081
    standins = tuple(free_port(base + i, taken, claims) for i in range(4))
    workers = getattr(args, "workers", None) or 2
    return HarnessConfig(
        run_dir=run_dir, suffix=suffix,
        api_port=free_port(getattr(args, "api_port", None) or 28080, taken, claims),
        standin_ports=standins,  # type: ignore[arg-type]
        worker_log_ports=tuple(free_port(28793 + 2 * i, taken, claims) for i in range(workers)),
        trigger_log_port=free_port(28794, taken, claims),
        scheduler_health_port=free_port(28974, taken, claims),
        workers=workers,
        concurrency=getattr(args, "concurrency", None) or 1,
        fernet_key=Fernet.generate_key().decode(),
        port_claims=claims,
    )


def airflow_environment(cfg: HarnessConfig) -> dict[str, str]:
    """The environment every process of the run sees: localenv's, then the distributed settings."""
    topo = cfg.topology()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "LIENTHONG_"))}
    env.update(topo.environment())
    for key in [k for k in env if k.startswith("AIRFLOW_CONN_")]:
        del env[key]
    metadata = cfg.pg_url(cfg.airflow_db)
    env.update({
        "AIRFLOW_HOME": str(cfg.airflow_home),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": cfg.broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + cfg.pg_url(cfg.airflow_db, "postgresql"),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(cfg.concurrency),
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata,
        "AIRFLOW__API_AUTH__JWT_SECRET": cfg.jwt_secret,
        "AIRFLOW__API__SECRET_KEY": cfg.api_secret_key,
        "AIRFLOW__CORE__FERNET_KEY": cfg.fernet_key,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(cfg.api_port),
        "AIRFLOW__API__BASE_URL": cfg.api_url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": cfg.api_url + "/execution/",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(cfg.airflow_home / "passwords.json"),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(cfg.scheduler_health_port),
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(cfg.trigger_log_port),
        "LIENTHONG_HOME": str(cfg.home),
        "LIENTHONG_SEAL_KEY": str(topo.seal_key),
        "LIENTHONG_SEAL_PUBLIC_KEY": f"{topo.seal_key}.pub",
    })
    for conn_id, conn in cfg.connections().items():
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    return env


def component_environment(env: dict[str, str]) -> dict[str, str]:
    """``env`` for the api-server, scheduler, dag-processor and triggerer: without the private seal key."""
    return {k: v for k, v in env.items() if k not in PRIVATE_KEY_SETTINGS}


def worker_environment(cfg: HarnessConfig, env: dict[str, str], index: int) -> dict[str, str]:
    return {**env,
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(cfg.worker_log_ports[index]),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "lienthong.distributed.worker_hostname",
            WORKER_HOSTNAME_ENV: cfg.worker_names()[index]}


# --- processes -----------------------------------------------------------------------------------
@dataclass
class Started:
    name: str
    process: subprocess.Popen[bytes]
    log_file: Path
    tree: dict[int, float] = field(default_factory=dict)  # pid → create time


class Processes:
    """Child processes, each the leader of its own process group; stopped by process id."""

    def __init__(self, log_dir: Path, out: Printer):
        self.log_dir = log_dir
        self.out = out
        self.started: list[Started] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> Started:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.log_dir / f"{name}.log"
        with log_file.open("ab") as log:
            process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        started = Started(name, process, log_file)
        self.started.append(started)
        return started

    def check_alive(self) -> None:
        for s in self.started:
            if s.process.poll() is not None:
                raise RuntimeError(f"{s.name} (pid {s.process.pid}) exited with code {s.process.returncode}; "
                                   f"see {s.log_file}\n{tail(s.log_file)}")

    def _record_trees(self) -> None:
        import psutil

        for s in self.started:
            try:
                for child in psutil.Process(s.process.pid).children(recursive=True):
                    s.tree.setdefault(child.pid, child.create_time())
            except psutil.Error:
                pass

    def stop_all(self, timeout: float = 20.0) -> list[str]:
        """SIGTERM to every process group, wait, then SIGKILL what is left of the recorded trees."""
        import psutil

        self._record_trees()
        for s in reversed(self.started):
            if s.process.poll() is None:
                try:
                    os.killpg(s.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for s in reversed(self.started):
            try:
                s.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        killed: list[str] = []
        for s in reversed(self.started):
            for pid, created in sorted(s.tree.items()):
                try:
                    proc = psutil.Process(pid)
                    # the very process recorded (a reused pid has another create time), still running
                    if proc.create_time() != created or proc.status() == psutil.STATUS_ZOMBIE:
                        continue
                    proc.kill()
                    killed.append(f"{s.name}:{pid}")
                except psutil.Error:
                    pass
            if s.process.poll() is None:
                killed.append(f"{s.name}:{s.process.pid}")
            try:
                os.killpg(s.process.pid, signal.SIGKILL)  # whatever is left in its process group
            except (ProcessLookupError, PermissionError):
                pass
            try:
                s.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                killed.append(f"{s.name}:{s.process.pid} (did not exit)")
        return killed


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    | " + line for line in text[-lines:])


# --- databases and broker ------------------------------------------------------------------------
def _pg_admin(cfg: HarnessConfig):
    import psycopg2

    conn = psycopg2.connect(host=cfg.pg_host, port=cfg.pg_port, user=cfg.pg_user, dbname="postgres",
                            connect_timeout=5)
    conn.autocommit = True
    return conn


def create_databases(cfg: HarnessConfig) -> None:
    conn = _pg_admin(cfg)
    try:
        with conn.cursor() as cur:
            for name in cfg.databases:
                cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def drop_databases(cfg: HarnessConfig) -> list[str]:
    dropped = []
    conn = _pg_admin(cfg)
    try:
        with conn.cursor() as cur:
            for name in cfg.databases:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                dropped.append(name)
    finally:
        conn.close()
    return dropped


def _redis(cfg: HarnessConfig, db: int):
    import redis

    return redis.Redis(host=cfg.redis_host, port=cfg.redis_port, db=db, socket_timeout=5)


REDIS_CLAIM_KEY = "lienthong-e2e-claim"


def pick_redis_db(cfg: HarnessConfig) -> int:
    """An empty Redis database, starting from one derived from the process id (1–15), claimed for
    this run by writing :data:`REDIS_CLAIM_KEY` into it (``SET NX``): the broker stays empty until the
    workers start, and a second run looking meanwhile must not take the same database. The cleanup's
    ``FLUSHDB`` removes the claim with the rest."""
    start = int(cfg.suffix) % 15 + 1 if cfg.suffix.isdigit() else 1
    for i in range(15):
        db = (start - 1 + i) % 15 + 1
        client = _redis(cfg, db)
        if client.dbsize() == 0 and client.set(REDIS_CLAIM_KEY, cfg.suffix, nx=True):
            return db
    raise RuntimeError(f"no empty Redis database among 1–15 at {cfg.redis_host}:{cfg.redis_port}")


# --- REST ----------------------------------------------------------------------------------------
class AirflowApi:
    """The few calls of Airflow's REST API the harness needs (JWT from ``POST /auth/token``)."""

    def __init__(self, base_url: str):
        import requests

        self.base_url = base_url
        self.session = requests.Session()

    def login(self, username: str, password: str) -> None:
        response = self.session.post(self.base_url + "/auth/token",
                                     json={"username": username, "password": password}, timeout=30)
        response.raise_for_status()
        self.session.headers["Authorization"] = "Bearer " + response.json()["access_token"]

    def get(self, path: str, **params: Any) -> Any:
        response = self.session.get(self.base_url + path, params=params or None, timeout=30)
        response.raise_for_status()
        return response.json()

    def health(self) -> dict[str, Any]:
        return self.get("/api/v2/monitor/health")

    def unpause(self, dag_id: str) -> None:
        response = self.session.patch(self.base_url + f"/api/v2/dags/{dag_id}", json={"is_paused": False},
                                      timeout=30)
        response.raise_for_status()

    def trigger(self, dag_id: str, run_id: str) -> dict[str, Any]:
        response = self.session.post(self.base_url + f"/api/v2/dags/{dag_id}/dagRuns",
                                     json={"dag_run_id": run_id, "logical_date": None}, timeout=30)
        response.raise_for_status()
        return response.json()

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]


# --- the harness ---------------------------------------------------------------------------------
class Failure(RuntimeError):
    pass


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


class Harness:
    def __init__(self, cfg: HarnessConfig, *, keep: bool = False, timeout: float = 300.0, activity: bool = True,
                 out: Printer = print):
        self.cfg = cfg
        self.keep = keep
        self.timeout = timeout
        self.activity = activity
        self.out = out
        self.env: dict[str, str] = {}
        self.processes = Processes(cfg.log_dir, out)
        self.databases_created = False
        self.redis_db_claimed = False
        self.checks: list[Check] = []
        self.left_behind: list[str] = []  # what cleanup could not stop, drop or empty: the run fails
        self.ti_rows: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}
        self.bin = Path(sys.executable).parent
        # what `--run-dir` held before the run: a passing run removes only what it made there
        self.preexisting = {p.name for p in cfg.run_dir.iterdir()} if cfg.run_dir.is_dir() else set()

    # -- helpers --------------------------------------------------------------------------------
    def step(self, text: str) -> None:
        self.out(f"· {text}")

    def _run(self, name: str, argv: list[str], timeout: float = 300) -> None:
        self.cfg.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.cfg.log_dir / f"{name}.log"
        with log_file.open("ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            code = subprocess.run(argv, env=self.env, cwd=self.cfg.run_dir, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout, check=False,
                                  start_new_session=True).returncode
        if code != 0:
            raise Failure(f"`{' '.join(Path(a).name if i == 0 else a for i, a in enumerate(argv))}` exited "
                          f"with {code}; see {log_file}\n{tail(log_file)}")

    def airflow(self, *args: str, name: str | None = None) -> None:
        self._run(name or "airflow-" + args[0], [str(self.bin / "airflow"), *args])

    def lienthong(self, *args: str, name: str) -> list[str]:
        """Run the lienthong CLI; its output lines (without the command line written first)."""
        self._run(name, [str(self.bin / "lienthong"), *args])
        return (self.cfg.log_dir / f"{name}.log").read_text(errors="replace").strip().splitlines()[1:] or [""]

    def _wait(self, what: str, probe: Callable[[], bool], timeout: float, interval: float = 1.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.processes.check_alive()
            try:
                if probe():
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise Failure(f"{what}: not ready within {timeout:.0f}s")
            time.sleep(interval)

    # -- phases ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        cfg = self.cfg
        self.step(f"PostgreSQL {cfg.pg_host}:{cfg.pg_port} and Redis {cfg.redis_host}:{cfg.redis_port} answer")
        probe_services(cfg.pg_host, cfg.pg_port, cfg.pg_user, cfg.redis_host, cfg.redis_port)
        cfg.redis_db = pick_redis_db(cfg)
        self.redis_db_claimed = True
        self.databases_created = True  # dropped at the end even if only some were created
        create_databases(cfg)
        self.step(f"created databases {', '.join(cfg.databases)}; Celery broker {cfg.broker_url}")
        self.env = airflow_environment(cfg)
        cfg.airflow_home.mkdir(parents=True, exist_ok=True)
        cfg.home.mkdir(parents=True, exist_ok=True)
        # a password for every UI user, as docker-compose.yml's airflow-init writes: SimpleAuthManager
        # generates one for a user missing here and prints it, into the api-server's log
        users = [u.split(":")[0] for u in self.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")]
        passwords = {user: cfg.admin_password if user == "admin" else secrets.token_urlsafe(16) for user in users}
        fd = os.open(cfg.airflow_home / "passwords.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:  # the owner's only, whatever the umask
            os.fchmod(fh.fileno(), 0o600)
            fh.write(json.dumps(passwords))
        t0 = time.monotonic()
        for command in INIT_COMMANDS:
            if command[0] == "airflow":
                self.airflow(*self._repo_paths(command[1:]))
        self.timings["airflow init"] = time.monotonic() - t0
        self.step(" + ".join(" ".join(c) for c in INIT_COMMANDS if c[0] == "airflow")
                  + f": {self.timings['airflow init']:.1f}s")

    @staticmethod
    def _repo_paths(args: tuple[str, ...]) -> list[str]:
        return [str(REPO_ROOT / a) if a == POOLS_FILE else a for a in args]

    def prepare_bus(self) -> None:
        """While Airflow's components start: the bus schema (the same `lienthong db init` the compose init
        service runs) and the seal key."""
        t0 = time.monotonic()
        for command in INIT_COMMANDS:
            if command[0] == "lienthong":
                self.lienthong(*self._repo_paths(command[1:]), name="-".join(command))
        self.lienthong("audit", "keygen", self.env["LIENTHONG_SEAL_KEY"], name="lienthong-audit-keygen")
        self.timings["bus init"] = time.monotonic() - t0
        self.step(f"lienthong db init (bus schema on PostgreSQL) + seal key: {self.timings['bus init']:.1f}s")

    def start_standins(self) -> None:
        from lienthong.demo import StandIns

        topo = self.cfg.topology()
        topo.mocks_dir.mkdir(parents=True, exist_ok=True)
        self.processes.start("standins", topo.mocks_command() + ["--catalogue-size", str(self.cfg.catalogue_size)],
                             self.env, topo.home)
        self.standins = StandIns(topo, self.env, self.cfg.log_dir / "standins.log")
        import requests

        for url in (self.standins.onestop_url, self.standins.portal_url, self.standins.payment_url,
                    self.standins.ledger_url):
            self._wait(f"stand-in {url}", lambda u=url: requests.get(u + "/health", timeout=2).ok, 30, 0.3)
        self.step(f"stand-ins up: one-stop {self.standins.onestop_url}, portal {self.standins.portal_url}, "
                  f"payments {self.standins.payment_url}, ledger {self.standins.ledger_url}")
        if self.activity:
            world = self.standins.advance(3, 5)
            paying = self.standins.pay_fees(opened=3, settled=4)
            lost = sum(1 for s in paying["settled"] if s.get("callback") == "lost")
            time.sleep(1.0)  # the platform sends its callbacks from background threads
            self.step(f"the world moved: {len(world.get('created', []))} new dossiers, "
                      f"{len(world.get('changed', []))} status changes, {len(paying['opened'])} payments started, "
                      f"{len(paying['settled'])} completed ({lost} callbacks lost)")

    def start_airflow(self) -> None:
        cfg = self.cfg
        airflow = str(self.bin / "airflow")
        self._airflow_started_at = time.monotonic()
        for name, args in AIRFLOW_COMPONENTS.items():
            self.processes.start(name, [airflow, *args], component_environment(self.env), cfg.run_dir)
        names = cfg.worker_names()
        for i, node in enumerate(names):
            self.processes.start(f"worker{i + 1}", [airflow, *WORKER_COMMAND, "-H", node],
                                 worker_environment(cfg, self.env, i), cfg.run_dir)
        pids = ", ".join(f"{s.name} {s.process.pid}" for s in self.processes.started)
        self.step(f"started, each in its own process group (pid): {pids}")

    def wait_airflow(self) -> None:
        cfg = self.cfg
        names = cfg.worker_names()
        self.api = AirflowApi(cfg.api_url)

        def healthy() -> bool:
            health = self.api.health()
            return all(health.get(k, {}).get("status") == "healthy"
                       for k in ("metadatabase", "scheduler", "triggerer", "dag_processor"))

        self._wait("Airflow health (metadatabase, scheduler, triggerer, dag_processor)", healthy, 120)
        self._wait("Celery workers", lambda: self._workers_answer(names), 120, 2.0)
        self.api.login("admin", cfg.admin_password)
        self._wait("DAGs parsed", lambda: all(self._dag_known(d) for d in DAG_IDS), 120)
        self.timings["airflow start"] = time.monotonic() - self._airflow_started_at
        self.step(f"Airflow healthy, {len(names)} workers answer ping ({', '.join(names)}), DAGs parsed: "
                  f"{self.timings['airflow start']:.1f}s after the start")

    def _dag_known(self, dag_id: str) -> bool:
        try:
            self.api.get(f"/api/v2/dags/{dag_id}")
            return True
        except Exception:  # noqa: BLE001
            return False

    def _workers_answer(self, names: list[str]) -> bool:
        result = subprocess.run([str(self.bin / "celery"), "--app", CELERY_APP, "inspect", "ping", "--timeout", "3"],
                                env=self.env, capture_output=True, text=True, timeout=60, check=False)
        return all(f"{n}: OK" in result.stdout for n in names)

    def run_flows(self) -> dict[str, dict[str, Any]]:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        runs: dict[str, str] = {}
        for dag_id in DAG_IDS:
            self.api.unpause(dag_id)
        for dag_id in DAG_IDS:
            run_id = f"e2e_distributed__{stamp}_{self.cfg.suffix}"
            self.api.trigger(dag_id, run_id)
            runs[dag_id] = run_id
        self.step(f"unpaused and triggered through the REST API: {', '.join(DAG_IDS)} (run id {run_id})")
        t0 = time.monotonic()
        finished: dict[str, dict[str, Any]] = {}
        deadline = t0 + self.timeout
        while len(finished) < len(runs):
            self.processes.check_alive()
            for dag_id, run_id in runs.items():
                if dag_id in finished:
                    continue
                run = self.api.dag_run(dag_id, run_id)
                if run["state"] in ("success", "failed"):
                    finished[dag_id] = run
                    self.step(f"{dag_id}: {run['state']} after {time.monotonic() - t0:.1f}s")
            if time.monotonic() > deadline:
                break
            time.sleep(2)
        self.timings["runs"] = time.monotonic() - t0
        for dag_id, run_id in runs.items():
            for ti in self.api.task_instances(dag_id, run_id):
                self.ti_rows.append({**ti, "dag_id": dag_id})
        self.print_task_table()
        missing = [d for d in runs if d not in finished]
        if missing:
            self._show_failed_logs()
            raise Failure(f"runs not finished within {self.timeout:.0f}s: {', '.join(missing)}")
        failed = [d for d, r in finished.items() if r["state"] != "success"]
        if failed:
            self._show_failed_logs()
            raise Failure(f"runs failed: {', '.join(failed)}")
        return finished

    def print_task_table(self) -> None:
        rows = sorted(self.ti_rows, key=lambda r: (r.get("start_date") or "", r["dag_id"]))
        self.out("")
        self.out("Which worker ran which task (REST API task instances, field hostname):")
        head = ("dag", "task", "state", "try", "worker (hostname)", "seconds")
        table = [(r["dag_id"], r["task_id"], r.get("state") or "-", str(r.get("try_number") or ""),
                  r.get("hostname") or "-", f"{r['duration']:.1f}" if r.get("duration") is not None else "-")
                 for r in rows]
        widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(head)]
        self.out("  " + "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
        for t in table:
            self.out("  " + "  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)))
        per_worker = Counter(r.get("hostname") or "-" for r in rows)
        self.out("  tasks per worker: " + ", ".join(f"{h} {n}" for h, n in sorted(per_worker.items())))
        self.out("")

    def _show_failed_logs(self) -> None:
        """For each task that failed or waits for a retry: the error of its last attempt."""
        for r in self.ti_rows:
            if r.get("state") not in ("failed", "upstream_failed", "up_for_retry"):
                continue
            pattern = f"dag_id={r['dag_id']}/run_id={r['run_id']}/task_id={r['task_id']}/attempt=*.log"
            logs = sorted((self.cfg.airflow_home / "logs").glob(pattern), key=lambda p: p.stat().st_mtime)
            if not logs:
                continue
            errors = []
            for line in logs[-1].read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                for detail in record.get("error_detail") or []:
                    errors.append(f"{detail.get('exc_type')}: {' '.join(str(detail.get('exc_value')).split())[:400]}")
            shown = "\n".join(f"    | {e}" for e in errors[:3]) or tail(logs[-1], 15)
            self.out(f"  {r['dag_id']}.{r['task_id']} ({r.get('state')}), {logs[-1]}:\n{shown}")

    # -- invariants -----------------------------------------------------------------------------
    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, bool(ok), detail))
        self.out(f"  {'✓' if ok else '✗'} {name}: {detail}")

    def _state(self, base: str, path: str) -> Any:
        import requests

        response = requests.get(base + path, timeout=30)
        response.raise_for_status()
        return response.json()

    def check_invariants(self) -> None:
        self.out("Invariants (against the stand-ins' own state):")
        self._check_spread()
        self._check_dossiers()
        self._check_catalogue()
        self._check_payments()
        self._check_exchange_log()

    def _check_spread(self) -> None:
        hosts = Counter(r.get("hostname") for r in self.ti_rows if r.get("state") == "success")
        names = self.cfg.worker_names()
        used = [n for n in names if hosts.get(n)]
        self.check("work spread over the Celery workers", len(used) == len(names),
                   ", ".join(f"{n} ran {hosts.get(n, 0)} tasks" for n in names))

    def _check_dossiers(self) -> None:
        from lienthong.flows import dossier_status
        from lienthong.mapping import load_mapping

        onestop_url, portal_url = self.standins.onestop_url, self.standins.portal_url
        defective = {d["dossierNo"] for d in self._state(onestop_url, "/_state")["defective"]}
        snapshots = self._state(onestop_url, "/_state/dossiers")["dossiers"]
        mapping = load_mapping(dossier_status.MAPPING)
        progress_mapping = load_mapping(dossier_status.PROGRESS_MAPPING)
        expected = {d["dossierNo"]: mapping.apply(d) for d in snapshots if d["dossierNo"] not in defective}
        held_list = self._state(portal_url, "/_state/dossiers")["dossiers"]
        held = {d["MaHoSo"]: d for d in held_list}
        lost = sorted(set(expected) - set(held))
        extra = sorted(set(held) - set(expected))
        differ = sorted(c for c in set(expected) & set(held) if held[c] != expected[c])
        self.check("dossiers: the portal holds exactly the one-stop's deliverable dossiers, field by field",
                   not lost and not extra and not differ and len(held_list) == len(held),
                   f"{len(held)} held = {len(expected)} expected ({len(defective)} defective ones dead-lettered)"
                   + (f"; missing {lost[:5]}" if lost else "") + (f"; unexpected {extra[:5]}" if extra else "")
                   + (f"; different {differ[:5]}" if differ else ""))
        progress: dict[str, list[Any]] = {}
        for p in sorted(self._state(portal_url, "/_state/progress")["progress"], key=lambda p: p["seq"]):
            progress.setdefault(p["MaHoSo"], []).append(p["record"])
        wrong = []
        total = 0
        for d in snapshots:
            if d["dossierNo"] in defective:
                continue
            entries = sorted((progress_mapping.apply({**e, "dossierNo": d["dossierNo"]})
                              for e in d["progress"] if e["finishedAt"]), key=lambda r: r["ThoiDiemXuLy"])
            total += len(entries)
            if progress.get(d["dossierNo"], []) != entries:
                wrong.append(d["dossierNo"])
        wrong += sorted(set(progress) - set(expected))
        self.check("dossier progress: every finished step held exactly once, in order", not wrong,
                   f"{sum(len(v) for v in progress.values())} entries held = {total} expected"
                   + (f"; wrong for {wrong[:5]}" if wrong else ""))
        repeated = []
        for code in held:
            history = self._state(portal_url, f"/_state/dossiers/{code}")["history"]
            records = [h["record"] for h in history]
            if any(a == b for a, b in zip(records, records[1:])):
                repeated.append(code)
        self.check("dossiers: no payload applied twice at the portal", not repeated,
                   f"{len(held)} histories checked" + (f"; repeated for {repeated[:5]}" if repeated else ""))

    def _check_catalogue(self) -> None:
        """Pushed once, and held alike: make reliability's check (a clean pull from the portal into a
        scratch database is the truth; the one-stop and the ministry replica are compared with it
        procedure by procedure, through the mappings; what cannot be normalised is dead-lettered)."""
        from connectors.connection import connection_from_env
        from lienthong.reliability import checks
        from lienthong.store import Store

        onestop = self._state(self.standins.onestop_url, "/_state/procedures")
        active = {p["serviceCode"] for p in onestop["procedures"] if p.get("status") != "withdrawn"}
        upserts = onestop["upserts"]
        twice = sorted(code for code, n in upserts.items() if n != 1)
        self.check("catalogue: each procedure pushed to the one-stop once", not twice and set(upserts) == active,
                   f"{len(upserts)} procedures upserted, {len(active)} held; upserts per code: "
                   f"{sorted(set(upserts.values()))}" + (f"; pushed more than once: {twice[:5]}" if twice else ""))
        store = Store(self.cfg.pg_url(self.cfg.bus_db))
        try:
            result = checks.check_catalogue(store, connection_from_env("national_portal_default", self.env),
                                            self.standins.onestop_url,
                                            connection_from_env("ministry_db_default", self.env))
        finally:
            store.dispose()
        published = result.details.get("published", 0)
        self.check("catalogue: the one-stop and the ministry replica (PostgreSQL) hold each published procedure "
                   "of the portal, field by field", result.ok and result.delivered == published,
                   f"{result.delivered} of {published} published procedures held alike, "
                   f"{result.dead_lettered} that cannot be normalised dead-lettered"
                   + (f"; {'; '.join(result.problems[:3])}" if result.problems else ""))

    def _check_payments(self) -> None:
        platform = {p["MaThamChieu"]: p for p in self._state(self.standins.payment_url, "/_state/payments")["payments"]}
        onestop = {p["reference"]: p for p in self._state(self.standins.onestop_url, "/_state/payments")["payments"]}
        receipts = self._state(self.standins.ledger_url, "/_state/receipts")["receipts"]
        paid = {ref: p for ref, p in platform.items() if p["status"] == "paid"}
        per_reference = Counter(r["PaymentReference"] for r in receipts)
        per_number = Counter(r["ReceiptNumber"] for r in receipts)
        missing = sorted(set(paid) - set(per_reference))
        unexpected = sorted(set(per_reference) - set(paid))
        twice = sorted([ref for ref, n in per_reference.items() if n > 1]
                       + [num for num, n in per_number.items() if n > 1])
        wrong = sorted(r["PaymentReference"] for r in receipts if r["PaymentReference"] in paid and (
            int(r["AmountVND"]) != paid[r["PaymentReference"]]["SoTien"]
            or r["ReceiptNumber"] != paid[r["PaymentReference"]]["SoBienLai"]))
        self.check("payments: the ledger holds exactly one receipt per paid transaction",
                   not (missing or unexpected or twice or wrong),
                   f"{len(receipts)} receipts for {len(paid)} paid transactions"
                   + (f"; missing {missing[:5]}" if missing else "") + (f"; unexpected {unexpected[:5]}" if unexpected else "")
                   + (f"; duplicated {twice[:5]}" if twice else "") + (f"; different {wrong[:5]}" if wrong else ""))
        not_paid = sorted(ref for ref, p in paid.items()
                          if ref not in onestop or onestop[ref]["status"] != "paid"
                          or onestop[ref]["transactionId"] != p["MaGiaoDich"])
        self.check("payments: the one-stop records every paid fee with its transaction", not not_paid,
                   f"{len(paid) - len(not_paid)} of {len(paid)}" + (f"; not recorded {not_paid[:5]}" if not_paid else ""))
        # field by field: make reliability's check (each receipt's amount, number, dossier, agency, time,
        # payer and PDF hash, each fee's time and bank, failed ones recorded failed, nothing booked twice)
        from lienthong.reliability import checks
        from lienthong.store import Store

        store = Store(self.cfg.pg_url(self.cfg.bus_db))
        try:
            result = checks.check_payments(store, self.standins.onestop_url, self.standins.payment_url,
                                           self.standins.ledger_url)
        finally:
            store.dispose()
        self.check("payments: each settled payment's receipt and fee hold the platform's values, field by field",
                   result.ok, f"{result.delivered} of {result.records} settled payments held alike, "
                   f"{result.dead_lettered} accounted for by a dead letter or an open mismatch"
                   + (f"; {'; '.join(result.problems[:3])}" if result.problems else ""))

    def _check_exchange_log(self) -> None:
        try:
            sealed = self.lienthong("audit", "seal", "--key", self.env["LIENTHONG_SEAL_KEY"], name="lienthong-audit-seal")
            verified = self.lienthong("audit", "verify", "--public-key", self.env["LIENTHONG_SEAL_KEY"] + ".pub",
                                      name="lienthong-audit-verify")
            self.check("exchange log: lienthong audit seal + verify on the PostgreSQL bus database", True,
                       f"{sealed[0]}; {verified[0]}")
        except Failure as exc:
            self.check("exchange log: lienthong audit seal + verify on the PostgreSQL bus database", False, str(exc))

    # -- teardown -------------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Stop, drop, empty. A second Ctrl-C or SIGTERM does not cut it short."""
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                previous[sig] = signal.signal(sig, signal.SIG_IGN)
            except ValueError:  # not the main thread
                pass
        try:
            self._cleanup()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _cleanup(self) -> None:
        t0 = time.monotonic()
        killed = self.processes.stop_all()
        self.left_behind += [f"process {k}" for k in killed if k.endswith("(did not exit)")]
        names = ", ".join(f"{s.name} {s.process.pid}" for s in self.processes.started)
        self.step(f"stopped by process id: {names or 'nothing was started'}"
                  + (f" (SIGKILL needed for {', '.join(killed)})" if killed else "")
                  + f" in {time.monotonic() - t0:.1f}s")
        self.cfg.port_claims.release()  # whatever still listens has been stopped
        if self.keep:
            self.step(f"kept (--keep): databases {', '.join(self.cfg.databases)}, Redis db {self.cfg.redis_db}, "
                      f"run directory {self.cfg.run_dir}")
            return
        if self.databases_created:
            try:
                self.step(f"dropped databases {', '.join(drop_databases(self.cfg))}")
            except Exception as exc:  # noqa: BLE001
                self.left_behind.append(f"databases {', '.join(self.cfg.databases)}")
                self.out(f"✗ could not drop the databases {', '.join(self.cfg.databases)}: {exc}")
        if self.redis_db_claimed:
            try:
                _redis(self.cfg, self.cfg.redis_db).flushdb()
                self.step(f"emptied Redis database {self.cfg.redis_db}")
            except Exception as exc:  # noqa: BLE001
                self.left_behind.append(f"Redis database {self.cfg.redis_db}")
                self.out(f"✗ could not empty Redis database {self.cfg.redis_db}: {exc}")

    def secret_files(self) -> list[Path]:
        """The throw-away secrets this run wrote in its directory: the UI users' passwords, the private
        seal key and the ``airflow.cfg`` Airflow writes on first start (with a JWT secret and an API
        secret key of its own). The rest (logs, the public key, the stand-ins' state) is no secret."""
        cfg = self.cfg
        return [cfg.airflow_home / "passwords.json", cfg.airflow_home / "airflow.cfg",
                Path(self.env.get("LIENTHONG_SEAL_KEY") or cfg.topology().seal_key)]

    def _remove_secrets(self) -> None:
        """A failed run keeps its directory for diagnosis, without the secrets it generated."""
        removed = []
        for path in self.secret_files():
            try:
                path.unlink()
                removed.append(path.name)
            except FileNotFoundError:
                pass
            except OSError as exc:
                self.left_behind.append(f"secret file {path}")
                self.out(f"✗ could not remove {path}: {exc}")
        if removed:
            self.step(f"removed the run's secrets from its directory: {', '.join(removed)}")

    def _remove_run_files(self) -> None:
        """What the run made in its directory, then the directory if nothing else is left in it."""
        import shutil

        if not self.cfg.run_dir.is_dir():
            return
        for entry in self.cfg.run_dir.iterdir():
            if entry.name in self.preexisting:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        try:
            self.cfg.run_dir.rmdir()
        except OSError:  # it holds what was there before the run
            pass

    def run(self) -> int:
        started = time.monotonic()
        ok = False
        try:
            with _signals_raise():
                self.prepare()
                self.start_airflow()
                self.prepare_bus()
                self.start_standins()
                self.wait_airflow()
                self.run_flows()
                self.check_invariants()
                ok = all(c.ok for c in self.checks)
        except ServiceUnavailable as exc:
            self.out(f"✗ {exc}")
            self.cleanup()
            if not self.keep:
                self._remove_secrets()
            self.out("FAIL")
            return 2
        except KeyboardInterrupt:
            self.out("✗ interrupted")
        except Exception as exc:  # noqa: BLE001 - reported, then everything is stopped
            self.out(f"✗ {type(exc).__name__}: {exc}")
        self.timings["total_before_cleanup"] = time.monotonic() - started
        self.cleanup()
        if self.left_behind:  # a run that leaves things behind is no PASS, whatever its invariants
            ok = False
            self.out(f"✗ left behind: {'; '.join(self.left_behind)}")
        total = time.monotonic() - started
        if ok and not self.keep:
            self._remove_run_files()
        elif not self.keep:
            self._remove_secrets()
            self.out(f"  logs kept for inspection in {self.cfg.log_dir} (Airflow task logs in "
                     f"{self.cfg.airflow_home / 'logs'})")
        timing = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items() if k != "total_before_cleanup")
        self.out(f"timing: {timing}; total {total:.1f}s")
        passed = sum(1 for c in self.checks if c.ok)
        if self.checks:
            self.out(f"{'PASS' if ok else 'FAIL'}: {passed} of {len(self.checks)} invariants hold"
                     + (", but cleanup left things behind" if self.left_behind else ""))
        else:
            self.out("FAIL: the run stopped before the invariants could be checked")
        return 0 if ok else 1


@contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGINT (also when a shell started us in the background, ignoring it), SIGTERM and SIGHUP end
    the run as Ctrl-C does, so everything started is stopped."""
    def handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --- the stand-ins' gateway (docker-compose.yml) ------------------------------------------------
def gateway(ports: list[int], listen_host: str | None = None, target_host: str = "127.0.0.1") -> None:
    """Forward ``listen_host:port`` → ``target_host:port`` for each port, until killed.

    The stand-ins only ever bind a loopback address. In docker-compose.yml they share the network
    namespace of the ``standins-gateway`` service, which runs this on the container's own address
    (not 0.0.0.0, so the same ports stay free on 127.0.0.1 for the stand-ins); Celery workers in
    other containers reach them at ``standins-gateway:<port>``.
    """
    import asyncio
    import functools

    host = listen_host or socket.gethostbyname(socket.gethostname())

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(target_host, port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, target_writer), pipe(target_reader, writer))

    async def serve() -> None:
        servers = [await asyncio.start_server(functools.partial(handle, port), host, port) for port in ports]
        print(f"gateway: {', '.join(f'{host}:{p} → {target_host}:{p}' for p in ports)}", flush=True)
        await asyncio.gather(*(server.serve_forever() for server in servers))

    asyncio.run(serve())


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="python -m lienthong.distributed",
        description="lienthong on Airflow's CeleryExecutor: api-server, scheduler, dag-processor, triggerer and "
                    "two Celery workers as separate processes, PostgreSQL for both databases, Redis as broker; "
                    "triggers the three flows over the REST API and checks the invariants.")
    parser.add_argument("--keep", action="store_true",
                        help="keep the databases, the Redis database and the run directory afterwards")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds to wait for the three runs (default 300)")
    parser.add_argument("--workers", type=int, default=2, help="Celery workers to start (default 2)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="task processes per worker (default 1: with 2 cores, 2 workers x 1)")
    parser.add_argument("--standin-base-port", type=int, default=28081,
                        help="first of the four stand-in ports (default 28081; a free one is taken if busy)")
    parser.add_argument("--api-port", type=int, default=28080, help="api-server port (default 28080, or a free one)")
    parser.add_argument("--no-activity", action="store_true",
                        help="run against the stand-ins' seeded state only (no new dossiers, no new payments)")
    parser.add_argument("--run-dir", help="directory for AIRFLOW_HOME, state and logs (default: a new temp dir); a passing run "
                             "removes what it made there, and the directory if nothing else is in it")
    return parser


def run_from_args(args: argparse.Namespace, out: Printer | None = None) -> int:
    out = out or (lambda line: print(line, flush=True))
    run_dir = Path(args.run_dir).resolve() if args.run_dir else None
    if run_dir:
        run_dir.mkdir(parents=True, exist_ok=True)
    cfg = new_config(args, run_dir)
    out(f"lienthong e2e-distributed — run {cfg.suffix}, directory {cfg.run_dir}")
    return Harness(cfg, keep=args.keep, timeout=args.timeout, activity=not args.no_activity, out=out).run()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gateway"]:
        parser = argparse.ArgumentParser(prog="python -m lienthong.distributed gateway",
                                         description="forward this host's address to the stand-ins on 127.0.0.1")
        parser.add_argument("ports", nargs="+", type=int)
        parser.add_argument("--listen", help="address to listen on (default: this host's own address)")
        args = parser.parse_args(argv[1:])
        try:
            gateway(args.ports, args.listen)
        except KeyboardInterrupt:
            pass
        return 0
    return run_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
