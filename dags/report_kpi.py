"""report_kpi — online-service KPIs per agency and for the province: ministry tables, HTML and CSV.

Thin by design: each task calls one function of ``lienthong.reports.tasks``. The dossier facts are
first brought level with what the dossier flow staged (the bus database only, no peer is called);
the KPIs are then computed once and written three ways: upserted into the ministry database
(``tk_dvc_truc_tuyen``, keyed by period and agency, so a rerun replaces its rows), an HTML report
with inline SVG charts and CSV files under ``$LIENTHONG_HOME/reports`` (``out_dir`` to change).

Params: ``date_from``/``date_to`` (local dates, both included; default: the month of yesterday up
to yesterday, whole days only, so the run on the 1st writes the whole previous month — never the
logical date, which manual runs do not have; each defaults on its own: ``date_to`` alone covers
its month up to it, ``date_from`` alone runs up to yesterday; a period that ends before it starts
fails the task at once) and ``thresholds`` (fractions the toàn trình share of an agency is flagged
below; an empty list flags nobody).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from lienthong.dag_support import default_args, run_ids

DEFAULT_ARGS = default_args(retries=2, retry_delay=timedelta(minutes=1), max_retry_delay=timedelta(minutes=15),
                            execution_timeout=timedelta(minutes=30),
                            also_fatal=("builtins.ValueError",))  # a bad period or threshold


@dag(
    dag_id="report_kpi",
    description="Online-service KPIs (levels, online dossiers, on-time rate, flagged agencies) → ministry DB, HTML, CSV",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={
        "date_from": Param(None, type=["null", "string"], description="first day, YYYY-MM-DD (default: 1st of date_to's month)"),
        "date_to": Param(None, type=["null", "string"], description="last day, included, YYYY-MM-DD (default: yesterday)"),
        "thresholds": Param([0.5, 0.3], type="array", items={"type": "number", "minimum": 0, "maximum": 1},
                            description="flag agencies whose toàn trình share is below each of these ([] flags nobody)"),
        "out_dir": Param(None, type=["null", "string"], description="directory for HTML and CSV (default $LIENTHONG_HOME/reports)"),
    },
    tags=["lienthong", "report", "ministry"],
    doc_md=__doc__,
)
def report_kpi():
    @task()
    def refresh_dossier_facts() -> dict:
        from connectors.hooks import airflow_connection_spec
        from lienthong.reports import tasks

        return tasks.refresh_facts(airflow_connection_spec, run_id=get_current_context()["run_id"])

    @task(pool="ministry_db")
    def write_kpi_report(facts: dict) -> dict:
        from connectors.hooks import airflow_connection_spec
        from lienthong.reports import tasks

        run_id, task_id = run_ids()
        params = get_current_context()["params"]
        return tasks.kpi_report(airflow_connection_spec, date_from=params["date_from"], date_to=params["date_to"],
                                thresholds=params["thresholds"], out_dir=params["out_dir"], refresh=False,
                                whole_days=True, run_id=run_id, task_id=task_id)

    write_kpi_report(refresh_dossier_facts())


report_kpi()
