"""The task functions' run summary: what a step did is counted once, also when it failed half-way."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import requests
from sqlalchemy import select

from lienthong.store import payment_txn

T = 10


def test_run_summary_counts_what_a_failed_attempt_delivered_before_airflow_retried_it(bus_env, monkeypatch):
    """Each task function 'adds its counts to the run summary', which summarize_run logs and the demo
    prints. The counts were added only when the step returned, so what an attempt delivered before a
    transport error (then retried by Airflow, dag_support's rule) was never counted."""
    from connectors.connection import connection_from_env
    from connectors.errors import PeerUnavailable
    from connectors.national_portal.client import NationalPortalClient
    from lienthong import tasks

    tasks.stage_dossier_changes(connection_from_env, run_id="run-1", task_id="stage")
    real = NationalPortalClient.sync_dossiers
    calls = {"n": 0}

    def flaky(self, records, *, is_updating):
        calls["n"] += 1
        if calls["n"] == 3:  # the portal goes away after two batches
            raise PeerUnavailable("national_portal DongBoHoSoMC: HTTP 503")
        return real(self, records, is_updating=is_updating)

    monkeypatch.setattr(NationalPortalClient, "sync_dossiers", flaky)
    with pytest.raises(PeerUnavailable):  # attempt 1
        tasks.deliver_dossier_statuses(connection_from_env, run_id="run-1", task_id="deliver", batch_size=5)
    partial = tasks.open_store(connection_from_env).run_summary("dossier_status", "run-1")["counts"]
    assert partial["delivered_new"] == 10 and partial["portal_calls"] >= 2  # two batches of 5
    retry = tasks.deliver_dossier_statuses(connection_from_env, run_id="run-1", task_id="deliver", batch_size=5)
    summary = tasks.dossier_run_summary(connection_from_env, run_id="run-1")

    held = requests.get(bus_env.portal.url + "/_state/dossiers", timeout=T).json()["dossiers"]
    assert summary["counts"]["delivered_new"] == len(held), (summary["counts"]["delivered_new"], len(held))
    assert summary["counts"]["delivered_new"] == partial["delivered_new"] + retry["delivered_new"]


def test_a_step_is_counted_once_whether_it_returns_or_fails(store):
    from dataclasses import dataclass

    from lienthong.tasks import _counted

    @dataclass
    class Report:
        sent: int = 0

        def counts(self):
            return {"sent": self.sent, "rejections": [f"r{self.sent}"]}

    def step(fail_after: int | None, report: Report | None = None):
        report = report if report is not None else Report()
        for _ in range(3):
            if report.sent == fail_after:
                raise OSError("the peer went away")
            report.sent += 1
        return report

    assert _counted(store, "f", "run", Report(), lambda r: step(None, r)) == {"sent": 3, "rejections": ["r3"]}
    with pytest.raises(OSError):
        _counted(store, "f", "run", Report(), lambda r: step(2, r))
    with pytest.raises(OSError):  # a step counted only when it finishes (the catalogue pull, a reconciliation)
        _counted(store, "f", "run", None, lambda r: step(1, r))
    assert store.run_summary("f", "run")["counts"] == {"sent": 5, "rejections": ["r3", "r2"]}


# --- a failed attempt counts only what its retry does not do again (review of the partial counts)
class _FlakyOneStop:
    """The fee step's one-stop: one dossier it does not hold (the payment is held), and a result
    recording that fails once with a transport error (Airflow then retries the task)."""

    def __init__(self) -> None:
        self.failed_once = False

    def get_dossier(self, code):
        return None if code == "000.00.01.H49-261101-9999" else {"dossierNo": code, "applicantName": "Trần Thị Bình"}

    def record_payment_result(self, reference, **_kwargs):
        from connectors.errors import PeerUnavailable

        if not self.failed_once:
            self.failed_once = True
            raise PeerUnavailable("onestop POST /payments/result: HTTP 503")
        return {"applied": True, "payment": {"status": "paid"}}

    def close(self) -> None:
        pass


def test_a_payment_held_by_a_failed_attempt_is_not_counted_twice_in_the_run_summary(tmp_path, monkeypatch):
    """9a0222e: 'a retry counts only its own work, so nothing is counted twice; the run summary adds
    up to what the run did'. Held payments are asked again at every run (WAITING), so the retry
    holds the same payment again: fees_held counts it twice, while fees_held_by_reason (a dict,
    which add_run_counts replaces instead of adding) says once."""
    from connectors.connection import connection_from_env
    from connectors.errors import PeerUnavailable
    from lienthong import tasks
    from lienthong.flows import payment_receipts

    db = tmp_path / "bus.db"
    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    store = tasks.open_store(connection_from_env)
    now = datetime(2026, 12, 1, 8, tzinfo=UTC)
    with store.begin() as conn:
        for reference, dossier in (("R1", "000.00.01.H49-261101-9999"), ("R2", "000.00.01.H49-261101-0001")):
            conn.execute(payment_txn.insert().values(
                reference=reference, dossier_code=dossier, request_amount=1000, onestop_status="pending",
                platform_status="paid", platform_amount=1000, transaction_id="GD-" + reference, bank="VCB",
                paid_at="2026-12-01T09:00:00+07:00", onestop_state="todo", ledger_state="todo", updated_at=now))
    onestop = _FlakyOneStop()
    monkeypatch.setattr(tasks, "_payment_clients", lambda *args, **kwargs: {"onestop": onestop})

    with pytest.raises(PeerUnavailable):  # attempt 1: R1 held, then R2's recording fails
        tasks.update_onestop_fees(connection_from_env, run_id="run-1", task_id="fees")
    tasks.update_onestop_fees(connection_from_env, run_id="run-1", task_id="fees")  # Airflow's retry
    counts = store.run_summary(payment_receipts.FLOW, "run-1")["counts"]
    with store.engine.connect() as conn:
        held = conn.execute(select(payment_txn.c.reference).where(payment_txn.c.onestop_state == "held")).scalars().all()
    assert held == ["R1"] and counts["fees_updated"] == 1
    assert counts["fees_held"] == sum(counts["fees_held_by_reason"].values()), counts
    assert counts["fees_held"] == len(held), counts


class _OneStopCatalogue:
    """The one-stop's catalogue door: refuses procedure A (a 422, the record breaks its rule) and
    answers 503 once for procedure B (Airflow then retries the push task)."""

    def __init__(self) -> None:
        self.failed_once = False

    def upsert_procedure(self, record):
        from connectors.errors import FieldError, PeerUnavailable, RecordRejected

        if record["serviceCode"] == "A":
            raise RecordRejected("A", [FieldError("channels[0].fees[0].amount", "validation_failed",
                                                  "channels[0].fees[0].amount must be an integer")])
        if record["serviceCode"] == "B" and not self.failed_once:
            self.failed_once = True
            raise PeerUnavailable("onestop PUT /api/v1/procedures/B: HTTP 503")
        return record

    def withdraw_procedure(self, code):
        return None

    def close(self) -> None:
        pass


def test_a_procedure_refused_by_a_failed_push_attempt_is_not_counted_twice(tmp_path, monkeypatch):
    """The same class for the catalogue push: every attempt pushes again what the one-stop has
    not acknowledged, a refused procedure included (its dead letter is not repeated), and the
    report appends it again: one refusal, one dead letter, counted twice in the run summary."""
    from connectors.connection import connection_from_env
    from connectors.errors import PeerUnavailable
    from lienthong import tasks
    from lienthong.flows import catalogue
    from lienthong.store import catalogue_current, content_hash, utcnow

    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB",
                       json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "bus.db")}))
    monkeypatch.setenv("AIRFLOW_CONN_ONESTOP_DEFAULT",
                       json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": 9, "password": "k"}))
    store = tasks.open_store(connection_from_env)
    with open("fixtures/samples/canonical/procedure.full-three-channels.json", encoding="utf-8") as fh:
        sample = json.load(fh)
    with store.begin() as conn:
        for code in ("A", "B"):
            record = {**sample, "procedure_code": code}
            conn.execute(catalogue_current.insert().values(procedure_code=code, record=record,
                                                           record_hash=content_hash(record), published=True,
                                                           updated_run_id="pull", updated_at=utcnow()))
    fake = _OneStopCatalogue()
    monkeypatch.setattr(tasks.OneStopClient, "from_connection", staticmethod(lambda spec, recorder=None: fake))

    with pytest.raises(PeerUnavailable):  # attempt 1: A refused, then B meets a 503
        tasks.push_procedure_catalogue(connection_from_env, run_id="run-1", task_id="push", destination="onestop")
    tasks.push_procedure_catalogue(connection_from_env, run_id="run-1", task_id="push", destination="onestop")
    counts = store.run_summary(catalogue.FLOW, "run-1")["counts"]
    letters = store.dead_letters(catalogue.FLOW)
    assert [d["record_key"] for d in letters] == ["A"] and counts["onestop_upserted"] == 1
    assert counts["onestop_rejected"] == len(letters), counts


@pytest.mark.parametrize(("window_from", "window_to", "message"), [
    ("yesterday", None, r"window_from: 'yesterday' is not an ISO 8601 date-time with offset"),
    ("2026-11-02T08:00:00", None, r"window_from: '2026-11-02T08:00:00' is not an ISO 8601 date-time with offset"),
    (None, "2026-11-02", r"window_to: '2026-11-02' is not an ISO 8601 date-time with offset"),
    ("2026-02-30T00:00:00+07:00", None, r"window_from: '2026-02-30T00:00:00\+07:00' is not an ISO 8601"),
    ("2026-11-05T00:00:00+07:00", "2026-11-04T00:00:00Z", r"window_from .* is later than window_to"),
])
def test_a_bad_backfill_window_fails_before_anything_is_read_naming_the_param(window_from, window_to, message):
    """The DAG's window_from/window_to (and the CLI's --window-from/--window-to) went to the one-stop
    as given, after the whole change feed was staged: a bad one ended in the one-stop's 400 about
    'modifiedFrom' (or, for a date that does not exist, whatever the peer made of it). They are
    checked first: a ConfigurationError naming the param and the rule, before any connection is
    opened (failed at once by the DAGs' retry rule)."""
    from connectors.errors import ConfigurationError
    from lienthong import tasks

    def resolve(conn_id):
        raise AssertionError(f"{conn_id} opened before the window was checked")

    with pytest.raises(ConfigurationError, match=message):
        tasks.stage_dossier_changes(resolve, run_id="r", window_from=window_from, window_to=window_to)


def test_a_good_backfill_window_is_taken_as_given():
    from lienthong.tasks import _window_bound

    assert _window_bound("window_from", "2026-11-02T08:00:00+07:00") == "2026-11-02T08:00:00+07:00"
    assert _window_bound("window_to", "2026-11-02T01:00:00.5Z") == "2026-11-02T01:00:00.5Z"
    assert _window_bound("window_to", None) is None


@pytest.mark.parametrize(("step", "conn_id", "extra", "message"), [
    ("deliver", "national_portal_default", {"batch_size": 0},
     r"connection national_portal_default: extra.batch_size must be a whole number from 1 to 10,000, not 0"),
    ("deliver", "national_portal_default", {"batch_size": -1}, r"extra.batch_size .* not -1"),
    ("deliver", "national_portal_default", {"batch_size": "fifty"}, r"extra.batch_size .* not 'fifty'"),
    ("progress", "national_portal_default", {"progress_chunk_size": 0}, r"extra.progress_chunk_size .* not 0"),
    ("progress", "national_portal_default", {"progress_chunk_size": 2.5}, r"extra.progress_chunk_size .* not 2.5"),
    ("ledger", "ministry_ledger_default", {"batch_size": True}, r"ministry_ledger_default: extra.batch_size .* not True"),
])
def test_a_batch_size_out_of_range_in_a_connection_fails_naming_the_connection(tmp_path, step, conn_id, extra, message):
    """extra.batch_size 0 made every delivery run read a batch of none and end 'successfully' having
    sent nothing, run after run; a negative one was SQLite's LIMIT -1 (the whole outbox in one
    DongBoHoSoMC call) and PostgreSQL's error; text was a ValueError the DAGs retried three times.
    Each is now a ConfigurationError naming the connection, the extra and the range, as the
    transport's own extras are, before any peer is called."""
    import dataclasses

    from connectors.connection import connection_from_env
    from connectors.errors import ConfigurationError
    from lienthong import localenv, tasks

    env = localenv.topology(tmp_path).environment()  # no stand-in runs: nothing may be called

    def resolve(cid):
        spec = connection_from_env(cid, env)
        return dataclasses.replace(spec, extra={**spec.extra, **extra}) if cid == conn_id else spec

    call = {"deliver": tasks.deliver_dossier_statuses, "progress": tasks.deliver_dossier_progress,
            "ledger": tasks.submit_payment_receipts}[step]
    with pytest.raises(ConfigurationError, match=message):
        call(resolve, run_id="r", task_id="t")


def test_a_batch_size_given_as_text_by_airflows_form_is_taken():
    from lienthong.tasks import _batch_size

    assert _batch_size({"batch_size": "20"}, "batch_size", 50, conn_id="c") == 20
    assert _batch_size({}, "batch_size", 50, conn_id="c") == 50
    assert _batch_size({"batch_size": 0}, "batch_size", 50, conn_id="c", given=7) == 7
