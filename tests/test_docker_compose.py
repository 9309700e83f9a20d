"""docker-compose.yml cannot run here (no Docker), so it is checked against the topology that does
run: the same connection ids and values, env names, ports, commands and pools."""

import json
from pathlib import Path

import pytest
import yaml

from lienthong import localenv

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def topo(tmp_path_factory):
    return localenv.topology(tmp_path_factory.mktemp("home"))


AIRFLOW_COMPONENTS = {"airflow-apiserver": "api-server", "airflow-scheduler": "scheduler",
                      "airflow-dag-processor": "dag-processor", "airflow-triggerer": "triggerer"}


def test_services_of_the_production_shape(compose):
    assert set(compose["services"]) >= {"postgres", "airflow-init", "standins", *AIRFLOW_COMPONENTS}


def test_airflow_components_run_real_airflow_commands(compose):
    from airflow.cli.cli_config import core_commands

    known = {c.name for c in core_commands}
    for service, command in AIRFLOW_COMPONENTS.items():
        assert compose["services"][service]["command"] == command
        assert command in known


def test_connections_match_the_local_topology(compose, topo):
    env = compose["x-lienthong-env"]
    local = topo.connections()
    assert set(localenv.CONNECTION_IDS) == set(local)
    for conn_id in localenv.CONNECTION_IDS:
        assert f"AIRFLOW_CONN_{conn_id.upper()}" in env, conn_id
    for conn_id in ("onestop_default", "national_portal_default"):
        assert json.loads(env[f"AIRFLOW_CONN_{conn_id.upper()}"]) == local[conn_id], conn_id
    assert env["AIRFLOW_CONN_LIENTHONG_DB"].startswith("postgres://")
    ministry = json.loads(env["AIRFLOW_CONN_MINISTRY_DB_DEFAULT"])
    assert ministry["conn_type"] == "postgres" and ministry["extra"] == local["ministry_db_default"]["extra"]


def test_every_airflow_service_gets_the_shared_environment(compose):
    for service in [*AIRFLOW_COMPONENTS, "airflow-init"]:
        assert compose["services"][service]["environment"] == compose["x-lienthong-env"], service


def test_airflow_settings_agree_with_local_ones(compose, topo):
    env = compose["x-lienthong-env"]
    local = topo.environment()
    for key in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CORE__PARALLELISM", "AIRFLOW__CORE__LOAD_EXAMPLES",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"):
        assert env[key] == local[key], key
    assert env["AIRFLOW__CORE__DAGS_FOLDER"].endswith("/dags")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")


def test_standins_run_the_same_command_as_locally(compose, topo):
    service = compose["services"]["standins"]
    local = topo.mocks_command()
    assert service["entrypoint"] == ["python", "-m", "mocks"]
    ours, theirs = local[3:], service["command"]
    state_at = ours.index("--state-dir") + 1
    assert theirs[:state_at] == ours[:state_at] and theirs[state_at + 1:] == ours[state_at + 1:]
    assert service["network_mode"] == "service:airflow-scheduler"  # so 127.0.0.1 reaches them
    local_env = topo.environment()
    for key, value in service["environment"].items():
        assert local_env[key] == value, key


def test_standins_command_is_accepted_by_the_mocks_cli(compose):
    from mocks.cli import build_parser

    args = build_parser().parse_args(compose["services"]["standins"]["command"])
    assert args.onestop_port == 18081 and args.portal_port == 18082


def test_init_provisions_pools_and_bus_schema_from_repo_files(compose):
    script = " ".join(compose["services"]["airflow-init"]["command"])
    assert "airflow db migrate" in script
    assert "airflow pools import /opt/lienthong/config/pools.json" in script
    assert "lienthong db init" in script
    assert (REPO / "config" / "pools.json").exists()
    sql = (REPO / "config" / "postgres-init.sql").read_text()
    assert "CREATE DATABASE lienthong" in sql and "CREATE DATABASE ministry" in sql
    mounts = compose["services"]["postgres"]["volumes"]
    assert any(m.startswith("./config/postgres-init.sql:") for m in mounts)


def test_image_installs_with_our_constraints():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "FROM apache/airflow:3.3.2" in dockerfile
    assert "--constraint /opt/lienthong/constraints.txt" in dockerfile
    pins = (REPO / "constraints.txt").read_text().splitlines()
    assert "apache-airflow==3.3.2" in pins
