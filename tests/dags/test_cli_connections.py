"""The CLI resolves a connection the DAGs find in Airflow (one made in the UI: Airflow's metadata
database) the way the DAG tasks do, instead of creating a fresh local bus database."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.airflow


def test_cli_reads_a_connection_kept_in_the_airflow_metadata_database(airflow_db, tmp_path, monkeypatch, capsys):
    from airflow.models import Connection
    from airflow.utils.session import create_session

    from lienthong.cli import main

    home, bus_db = tmp_path / "home", tmp_path / "bus-from-airflow.db"
    monkeypatch.setenv("LIENTHONG_HOME", str(home))
    monkeypatch.delenv("AIRFLOW_CONN_LIENTHONG_DB", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_ONESTOP_DEFAULT", json.dumps(
        {"conn_type": "http", "host": "onestop.example.gov.vn", "password": "k"}))
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == "lienthong_db").delete()
        session.add(Connection(conn_id="lienthong_db", conn_type="sqlite", host=str(bus_db)))
    try:
        assert main(["db", "init"]) == 0
        assert str(bus_db) in capsys.readouterr().out
        assert bus_db.exists() and not (home / "lienthong.db").exists()
    finally:
        with create_session() as session:
            session.query(Connection).filter(Connection.conn_id == "lienthong_db").delete()
