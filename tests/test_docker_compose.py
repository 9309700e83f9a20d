"""docker-compose.yml cannot run here (no Docker), so it is checked against what does run: the
local multi-process harness (`make e2e-distributed`, lienthong/distributed.py) and the local
topology (lienthong/localenv.py). Same commands, environment names, connection ids and values,
pools and init steps; the expected values come from those two modules, never from copies here."""

import json
import re
from pathlib import Path

import pytest
import yaml

from lienthong import distributed, localenv

REPO = Path(__file__).resolve().parents[1]
IMAGE_REPO = "/opt/lienthong"  # where the Dockerfile puts the repository

# compose service ↔ the harness's component name (api-server is "airflow-apiserver", as upstream)
SERVICES = {"api-server": "airflow-apiserver", "scheduler": "airflow-scheduler",
            "dag-processor": "airflow-dag-processor", "triggerer": "airflow-triggerer"}
WORKER = "airflow-worker"
PEERS = ("onestop_default", "national_portal_default", "payment_platform_default", "ministry_ledger_default")


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def shared(compose):
    return compose["x-lienthong-env"]


@pytest.fixture(scope="module")
def topo(tmp_path_factory):
    return localenv.topology(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """The harness's configuration and environment, built exactly as `make e2e-distributed` builds them."""
    cfg = distributed.new_config(run_dir=tmp_path_factory.mktemp("e2e"))
    return cfg, distributed.airflow_environment(cfg)


def _command(service: dict) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else list(command)


# --- services and commands ------------------------------------------------------------------------
def test_services_of_the_production_shape(compose):
    assert set(compose["services"]) >= {"postgres", "redis", "airflow-init", WORKER, "standins", "standins-gateway",
                                        *SERVICES.values()}


def test_components_run_the_harness_commands(compose):
    from airflow.cli.cli_config import core_commands

    known = {c.name for c in core_commands}
    assert set(SERVICES) == set(distributed.AIRFLOW_COMPONENTS)
    for name, args in distributed.AIRFLOW_COMPONENTS.items():
        assert _command(compose["services"][SERVICES[name]]) == list(args), name
        assert args[0] in known


def test_worker_runs_the_harness_celery_command_and_scales(compose):
    from airflow.providers.celery.cli.definition import CELERY_COMMANDS

    worker = compose["services"][WORKER]
    assert _command(worker) == list(distributed.WORKER_COMMAND)
    group, sub = distributed.WORKER_COMMAND
    assert group == "celery" and sub in {c.name for c in CELERY_COMMANDS}
    # `docker compose up --scale airflow-worker=N`: nothing that would clash between replicas
    assert "container_name" not in worker and "ports" not in worker and "hostname" not in worker
    # the health check is the harness's readiness check: celery inspect ping on the same Celery app
    assert f"--app {distributed.CELERY_APP} inspect ping" in " ".join(worker["healthcheck"]["test"])


def test_image_entrypoint_runs_airflow_commands_and_pins_dependencies():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "FROM apache/airflow:3.3.2" in dockerfile
    # the official image's entrypoint turns `command: scheduler` into `airflow scheduler`: keep it
    assert not re.search(r"^\s*(ENTRYPOINT|CMD)\b", dockerfile, re.M)
    assert f"--constraint {IMAGE_REPO}/constraints.txt" in dockerfile
    assert f'"{IMAGE_REPO}[airflow,distributed]"' in dockerfile
    pins = (REPO / "constraints.txt").read_text().splitlines()
    assert "apache-airflow==3.3.2" in pins
    assert any(p.startswith("apache-airflow-providers-celery==") for p in pins)
    assert any(p.startswith("redis==") for p in pins) and any(p.startswith("asyncpg==") for p in pins)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r"^distributed = \[[^\]]*apache-airflow-providers-celery", pyproject, re.M | re.S)


def test_every_long_running_service_has_a_health_check(compose):
    for name, service in compose["services"].items():
        if name == "airflow-init":
            continue
        assert service.get("healthcheck", {}).get("test"), name


# --- environment ---------------------------------------------------------------------------------
def test_every_airflow_service_gets_the_shared_environment(compose, shared):
    for service in [*SERVICES.values(), "airflow-init", WORKER]:
        env = compose["services"][service]["environment"]
        for key, value in shared.items():
            if service == WORKER and key in {f"AIRFLOW_CONN_{c.upper()}" for c in PEERS}:
                continue  # the worker reaches the stand-ins through the gateway (below)
            assert env.get(key) == value, (service, key)


def test_compose_sets_the_settings_the_harness_sets(shared, harness):
    cfg, env = harness
    assert set(distributed.SHARED_SETTINGS) <= set(shared)
    # nothing the harness sets is missing in compose, apart from what only one machine needs
    ours = {k for k in env if k.startswith(("AIRFLOW__", "LIENTHONG_")) and not k.startswith("LIENTHONG_MOCK_")}
    assert ours - set(distributed.HARNESS_ONLY_SETTINGS) - set(distributed.PRIVATE_KEY_SETTINGS) == \
        set(distributed.SHARED_SETTINGS)
    theirs = {k for k in shared if k.startswith(("AIRFLOW__", "LIENTHONG_"))}
    assert theirs == set(distributed.SHARED_SETTINGS)


def test_settings_agree_in_kind(shared, harness, topo):
    _, env = harness
    for key in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CORE__LOAD_EXAMPLES", "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"):
        assert shared[key] == env[key], key
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert shared["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == topo.environment()["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]
    prefixes = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://",
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+postgresql://", "AIRFLOW__CELERY__BROKER_URL": "redis://"}
    for key, prefix in prefixes.items():
        assert shared[key].startswith(prefix) and env[key].startswith(prefix), key
    assert shared["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == env["AIRFLOW__API__BASE_URL"] + "/execution/"
    for e in (shared, env):
        assert e["AIRFLOW__CORE__DAGS_FOLDER"].endswith("/dags")


def test_secrets_come_from_env_file_and_are_long_enough(compose, shared, harness):
    cfg, env = harness
    text = (REPO / "docker-compose.yml").read_text()
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))  # $${X} is the container's own
    example = dict(line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert referenced <= set(example), referenced - set(example)
    for name, value in example.items():  # placeholders only, never real secrets
        assert value.startswith(("change-me", "http://")), name
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY"):
        assert shared[key].startswith("${") and shared[key].split(":")[0][2:] in example, key
    assert "${POSTGRES_PASSWORD" in shared["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert "${REDIS_PASSWORD" in shared["AIRFLOW__CELERY__BROKER_URL"]
    assert len(env["AIRFLOW__API_AUTH__JWT_SECRET"].encode()) >= 64  # HS512 wants 64+ bytes
    from cryptography.fernet import Fernet

    Fernet(env["AIRFLOW__CORE__FERNET_KEY"].encode())  # a valid key
    assert ".env" in (REPO / ".dockerignore").read_text().split()
    assert ".env" in (REPO / ".gitignore").read_text().split()


# --- connections ---------------------------------------------------------------------------------
def test_connection_ids_match_the_local_topology_and_the_harness(shared, topo, harness):
    cfg, env = harness
    ids = set(localenv.CONNECTION_IDS)
    assert ids == set(topo.connections()) == set(cfg.connections())
    assert {k for k in shared if k.startswith("AIRFLOW_CONN_")} == {f"AIRFLOW_CONN_{c.upper()}" for c in ids}
    assert {k for k in env if k.startswith("AIRFLOW_CONN_")} == {f"AIRFLOW_CONN_{c.upper()}" for c in ids}


def test_peer_connections_are_the_local_ones(shared, topo, compose):
    local = topo.connections()
    for conn_id in PEERS:
        assert json.loads(shared[f"AIRFLOW_CONN_{conn_id.upper()}"]) == local[conn_id], conn_id
    # seen from a worker container, the same connections through the stand-ins' gateway
    worker_env = compose["services"][WORKER]["environment"]
    for conn_id in PEERS:
        assert json.loads(worker_env[f"AIRFLOW_CONN_{conn_id.upper()}"]) == {**local[conn_id],
                                                                              "host": "standins-gateway"}, conn_id


def test_databases_are_postgresql_in_compose_and_in_the_harness(shared, harness, topo):
    cfg, env = harness
    assert shared["AIRFLOW_CONN_LIENTHONG_DB"].startswith("postgres://")
    ministry = json.loads(shared["AIRFLOW_CONN_MINISTRY_DB_DEFAULT"])
    assert ministry["conn_type"] == "postgres"
    assert ministry["extra"] == topo.connections()["ministry_db_default"]["extra"]
    for conn_id in ("lienthong_db", "ministry_db_default"):
        assert json.loads(env[f"AIRFLOW_CONN_{conn_id.upper()}"])["conn_type"] == "postgres"
    script = (REPO / "config" / "postgres-init.sh").read_text()
    assert "CREATE DATABASE lienthong" in script and "CREATE DATABASE ministry" in script
    assert ministry["schema"] == "ministry" and shared["AIRFLOW_CONN_LIENTHONG_DB"].endswith("/lienthong")


# --- init: migrations, pools, bus schema ----------------------------------------------------------
def test_init_runs_the_harness_init_commands(compose):
    script = " ".join(_command(compose["services"]["airflow-init"]))
    for command in distributed.INIT_COMMANDS:
        expected = " ".join(f"{IMAGE_REPO}/{a}" if a == distributed.POOLS_FILE else a for a in command)
        assert expected in script, expected
    assert (REPO / distributed.POOLS_FILE).resolve() == localenv.POOLS_FILE
    mounts = compose["services"]["postgres"]["volumes"]
    assert any(m.startswith("./config/postgres-init.sh:/docker-entrypoint-initdb.d/") for m in mounts)


def test_pools_cover_every_pool_the_dags_use():
    used = set()
    for dag_file in (REPO / "dags").glob("*.py"):
        used |= set(re.findall(r"pool=\"([a-z_]+)\"", dag_file.read_text()))
    assert used and used <= set(localenv.POOLS), used - set(localenv.POOLS)


# --- the stand-ins ---------------------------------------------------------------------------------
def test_standins_run_the_same_command_as_locally(compose, topo):
    service = compose["services"]["standins"]
    local = topo.mocks_command()
    assert service["entrypoint"] == ["python", "-m", "mocks"] == ["python", *local[1:3]]
    ours, theirs = local[3:], service["command"]
    state_at = ours.index("--state-dir") + 1
    assert theirs[:state_at] == ours[:state_at] and theirs[state_at + 1:] == ours[state_at + 1:]
    assert service["network_mode"] == "service:standins-gateway"  # they bind 127.0.0.1 only
    gateway = compose["services"]["standins-gateway"]
    assert gateway["entrypoint"] == ["python", "-m", "lienthong.distributed", "gateway"]
    assert [int(p) for p in gateway["command"]] == [topo.onestop_port, topo.portal_port, topo.payment_port,
                                                    topo.ledger_port]
    local_env = topo.environment()
    for key, value in service["environment"].items():
        assert local_env[key] == value, key


def test_standins_command_is_accepted_by_the_mocks_cli(compose, topo):
    from mocks.cli import build_parser

    args = build_parser().parse_args(compose["services"]["standins"]["command"])
    assert (args.onestop_port, args.portal_port, args.payment_port, args.ledger_port) == (
        topo.onestop_port, topo.portal_port, topo.payment_port, topo.ledger_port)


def test_harness_workers_differ_only_in_name_and_log_port(harness):
    cfg, env = harness
    workers = [distributed.worker_environment(cfg, env, i) for i in range(cfg.workers)]
    for worker in workers:
        assert {k for k in worker if worker.get(k) != env.get(k)} == set(distributed.PER_WORKER_SETTINGS)
    assert len({w["LIENTHONG_WORKER_HOSTNAME"] for w in workers}) == cfg.workers


def test_harness_keeps_clear_of_the_demo_ports(harness, topo):
    cfg, _ = harness
    demo = {topo.onestop_port, topo.portal_port, topo.payment_port, topo.ledger_port, 8080, 8793, 8794, 8974}
    ours = {*cfg.standin_ports, cfg.api_port, *cfg.worker_log_ports, cfg.trigger_log_port, cfg.scheduler_health_port}
    assert not ours & demo
    assert len(ours) == 4 + 1 + cfg.workers + 2  # all distinct


# --- the seal key -------------------------------------------------------------------------------
def _mounts(service: dict) -> dict[str, str]:
    """volume name → "target[:mode]" of a service's named-volume mounts."""
    return dict(v.split(":", 1) for v in service.get("volumes", []) if not v.startswith("."))


def test_only_the_workers_and_init_hold_the_private_seal_key(compose, shared, harness):
    """The private seal key signs the log's seals: whoever holds it can forge them. The api-server
    (the UI facing users), the scheduler, the dag-processor and the triggerer only ever verify, so
    they get the public key alone, read-only; the workers seal (`docker compose run airflow-worker
    lienthong audit seal`) and init makes the key. The harness starts its components alike."""
    private_dir = "/opt/lienthong/keys"
    public = shared["LIENTHONG_SEAL_PUBLIC_KEY"]
    assert "LIENTHONG_SEAL_KEY" not in shared
    for name in SERVICES.values():
        service = compose["services"][name]
        assert "LIENTHONG_SEAL_KEY" not in service["environment"], name
        mounts = _mounts(service)
        assert "lienthong-keys" not in mounts and not any(t.startswith(private_dir) for t in mounts.values()), name
        assert mounts["lienthong-seal-public"] == f"{public.rsplit('/', 1)[0]}:ro", name
    for name in ("airflow-init", WORKER):
        service = compose["services"][name]
        key = service["environment"]["LIENTHONG_SEAL_KEY"]
        assert key.startswith(private_dir + "/") and _mounts(service)["lienthong-keys"] == private_dir, name
    init = compose["services"]["airflow-init"]
    assert _mounts(init)["lienthong-seal-public"] == public.rsplit("/", 1)[0]  # init writes the public key there
    assert 'cp "$$LIENTHONG_SEAL_KEY.pub" "$$LIENTHONG_SEAL_PUBLIC_KEY"' in init["command"][-1]

    cfg, env = harness
    assert env["LIENTHONG_SEAL_PUBLIC_KEY"] == env["LIENTHONG_SEAL_KEY"] + ".pub"
    assert "LIENTHONG_SEAL_KEY" not in distributed.component_environment(env)
    assert distributed.component_environment(env)["LIENTHONG_SEAL_PUBLIC_KEY"] == env["LIENTHONG_SEAL_PUBLIC_KEY"]
    assert distributed.worker_environment(cfg, env, 0)["LIENTHONG_SEAL_KEY"] == env["LIENTHONG_SEAL_KEY"]
