"""What the DAG tests share: one migrated Airflow metadata DB for the session (``dag.test`` needs
one; the session's ``AIRFLOW_HOME`` is a temporary folder, see ``tests/conftest.py``)."""

import pytest


@pytest.fixture(scope="session")
def airflow_db():
    from airflow.utils import db

    db.resetdb()
