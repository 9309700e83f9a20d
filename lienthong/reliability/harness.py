"""The reliability harness (issue #7): the three flows, many rounds, seeded random faults and
SIGKILLs, then the invariants of design §4 checked against the stand-ins' own state.

A run:

1. starts the stand-ins on free ports in their own home (``var/reliability`` by default, wiped
   first) with a one-stop world of ``dossiers`` dossiers and a national catalogue of
   ``catalogue_size`` procedures; the connections get short client timeouts so that "a reply slower
   than the client's limit" costs seconds, not minutes;
2. runs rounds. Each round moves the world (new dossiers and status changes, a catalogue
   publication, fees opened and paid with callbacks lost or sent twice), draws a fault plan per
   stand-in from the run's seed (5xx answers, dropped connections, slow replies, replies past the
   client's timeout, malformed bodies, expired portal sessions, answers applied but reported as
   failed, SOAP Faults) and sometimes takes the ministry database away, then runs every step of
   every flow as its own process (:mod:`lienthong.reliability.worker`), the three flows side by side
   as Airflow would, plus sealing. A step that fails is retried (up to ``attempts``) as the DAGs'
   retry rule says; some attempts are killed with SIGKILL at a random moment and rerun;
3. switches every fault off and runs each flow until it has nothing left to do (what the next
   scheduled runs do), seals the exchange log;
4. checks: every source record present at each destination with identical content, no effect held
   twice, every record not delivered accounted for by a dead letter or a reconciliation item with
   its reason, and the exchange log verifies.

It prints one table and writes the whole result as JSON; the exit status is non-zero on any loss,
duplicate or verification failure.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from connectors.connection import ConnectionSpec, connection_from_env
from connectors.errors import ConfigurationError
from lienthong.demo import StandIns
from lienthong.localenv import REPO_ROOT, LocalTopology
from lienthong.reliability import checks
from lienthong.reliability.settings import FAULT_KINDS, Settings, build_parser
from lienthong.reliability.worker import EXIT_FATAL, EXIT_RETRY, STEP_BEGAN_ENV

__all__ = ["FAULT_KINDS", "FLOWS", "Settings", "build_parser", "run_reliability"]

Printer = Callable[[str], None]

#: The steps of each flow in the order its DAG runs them; the flows run side by side.
FLOWS: dict[str, tuple[str, ...]] = {
    "dossier_status": ("dossier.stage", "dossier.deliver", "dossier.progress"),
    "procedure_catalogue": ("catalogue.pull", "catalogue.onestop", "catalogue.ministry"),
    "payment_receipts": ("payments.collect", "payments.fees", "payments.receipts", "payments.reconcile"),
}
SEAL_STEP = "audit.seal"
CLIENT_TIMEOUT_S = 2.0  # every connection's read timeout during the run
TIMEOUT_FAULT_MS = 2600  # a reply later than the client waits
ADMIN_TIMEOUT = 60
MARKER = ".lienthong-reliability"  #: the file that lets a run wipe its home
#: The table's names of the stand-ins' fault counters (``slow`` depends on the plan: see ``_plan``).
COUNTER_LABELS = {"drop": "dropped connection", "malformed": "malformed body", "ambiguous": "applied, answered 500",
                  "session_expired": "expired session", "soap_fault": "SOAP Fault", "slow": "slow reply",
                  "callback_lost": "payment callback lost", "callback_duplicate": "payment callback sent twice"}
@dataclass
class StepStats:
    attempts: int = 0
    ok: int = 0
    retried: int = 0
    fatal: int = 0
    killed: int = 0
    hung: int = 0


@dataclass
class RunState:
    rounds: int = 0
    faults: Counter = field(default_factory=Counter)
    kills: Counter = field(default_factory=Counter)  # by step
    steps: dict[str, StepStats] = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)  # error class names of failed attempts
    world: Counter = field(default_factory=Counter)

    def stats(self, step: str) -> StepStats:
        return self.steps.setdefault(step, StepStats())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Peers(StandIns):
    """The stand-ins of one run as a child process (the demo's), and their test doors."""

    def __init__(self, topo: LocalTopology, env: dict[str, str], settings: Settings):
        super().__init__(topo, env, topo.log_dir / "stand-ins.log", extra_args=(
            "--seed", str(settings.seed), "--seed-dossiers", str(settings.dossiers),
            "--catalogue-size", str(settings.catalogue_size)))

    def url(self, name: str) -> str:
        return {"onestop": self.onestop_url, "portal": self.portal_url, "platform": self.payment_url,
                "ledger": self.ledger_url}[name]

    def get(self, name: str, path: str) -> Any:
        response = requests.get(self.url(name) + path, timeout=ADMIN_TIMEOUT)
        response.raise_for_status()
        return response.json()

    def post(self, name: str, path: str, body: dict[str, Any]) -> Any:
        response = requests.post(self.url(name) + path, json=body, timeout=ADMIN_TIMEOUT)
        if not response.ok:
            raise RuntimeError(f"{name} {path} answered {response.status_code}: {response.text[:300]}")
        return response.json()


def _error_name(step: str, stderr: bytes) -> str | None:
    """The error class a failed worker named: its own line is ``<step>: <ErrorClass>: <message>``,
    and a message may run on over more lines (SQLAlchemy's do)."""
    for line in stderr.decode("utf-8", "replace").splitlines():
        if line.startswith(f"{step}: ") and line.count(": ") >= 2:
            return line.split(": ", 2)[1]
    return None


class _MinistryOutage:
    """Takes the ministry database (an SQLite file) away between steps: its path becomes a
    directory, so every new connection is refused ("unable to open database file") until
    :meth:`end` puts the file back. Only done while no step runs."""

    def __init__(self, path: Path):
        self.path = path
        self.aside = path.with_name(path.name + ".offline")
        self.down = False

    def begin(self) -> None:
        if self.down:
            return
        for suffix in ("", "-wal", "-shm", "-journal"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.rename(Path(str(self.aside) + suffix))
        self.path.mkdir()
        self.down = True

    def end(self) -> None:
        if not self.down:
            return
        shutil.rmtree(self.path)
        for suffix in ("", "-wal", "-shm", "-journal"):
            src = Path(str(self.aside) + suffix)
            if src.exists():
                src.rename(Path(str(self.path) + suffix))
        self.down = False


class Harness:
    def __init__(self, settings: Settings, out: Printer = print):
        self.settings = settings
        self.out = out
        self.rng = random.Random(settings.seed)
        home = settings.home.resolve()
        self.topo = LocalTopology(home=home, onestop_port=_free_port(), portal_port=_free_port(),
                                  payment_port=_free_port(), ledger_port=_free_port())
        self.env = self._environment()
        self.peers = _Peers(self.topo, self.env, settings)
        self.outage = _MinistryOutage(home / "ministry.db")
        self.state = RunState()
        self._lock = threading.Lock()

    # -- setup ----------------------------------------------------------------------------------
    def _connections(self) -> dict[str, dict[str, Any]]:
        conns = self.topo.connections()
        for conn_id in ("onestop_default", "national_portal_default", "payment_platform_default"):
            conns[conn_id]["extra"] = {**conns[conn_id].get("extra", {}), "read_timeout": CLIENT_TIMEOUT_S,
                                       "connect_timeout": 2}
        conns["ministry_ledger_default"]["extra"] = {
            **conns["ministry_ledger_default"].get("extra", {}), "operation_timeout": CLIENT_TIMEOUT_S,
            "connect_timeout": 2}
        return conns

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "LIENTHONG_"))}
        env.update(self.topo.environment())
        for conn_id, conn in self._connections().items():
            env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env["LIENTHONG_LEASE_SECONDS"] = "30"
        return env

    def spec(self, conn_id: str) -> ConnectionSpec:
        """A connection as the run's step processes see it (from :attr:`env`)."""
        return connection_from_env(conn_id, environ=self.env)

    def setup(self) -> None:
        """Wipe the run's home (only one this harness made: it holds :data:`MARKER`), write a seal
        key, start the stand-ins."""
        home = self.topo.home
        if home.exists() and any(home.iterdir()):
            if not (home / MARKER).exists():
                raise ConfigurationError(f"{home} holds files this harness did not make; it wipes its home "
                                         "first, so give it an empty or new directory (--home)")
            shutil.rmtree(home)
        (home / "keys").mkdir(parents=True)
        (home / MARKER).write_text("made by lienthong reliability; wiped at its next run\n")
        from lienthong.audit.keys import generate_keypair

        generate_keypair(self.topo.seal_key)
        self.peers.start(timeout=90)
        self.peers.post("platform", "/_admin/callbacks", {"lost_share": 0.3, "duplicates": False})

    # -- one step, as a process -----------------------------------------------------------------
    def _run_step(self, step: str, run_id: str, *, kill: bool) -> None:
        stats = self.state.stats(step)
        log_path = self.topo.log_dir / "steps.log"
        for attempt in range(1, self.settings.attempts + 1):
            with self._lock:
                stats.attempts += 1
            kill_after = self._kill_after(step, run_id, attempt) if kill else None
            began = self.topo.home / "run" / f"{run_id}.{step}.{attempt}.began"
            began.parent.mkdir(exist_ok=True)
            began.unlink(missing_ok=True)
            started = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", "lienthong.reliability.worker", step, run_id],
                                    env={**self.env, STEP_BEGAN_ENV: str(began)}, cwd=self.topo.home,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            killed = False
            limit = self.settings.step_timeout
            if kill_after is not None:
                # the timer runs from the moment the worker begins its step: a kill while Python
                # starts and imports (a second or more) would hit no step, yet count as a kill
                while not began.exists() and proc.poll() is None and time.monotonic() - started < limit:
                    time.sleep(0.02)
                limit = max(0.0, min(kill_after, limit - (time.monotonic() - started)))
            try:
                stdout, stderr = proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    killed = True
                stdout, stderr = proc.communicate()
            code = proc.returncode
            with self._lock, log_path.open("a", encoding="utf-8") as log:
                log.write(f"{datetime.now(UTC).isoformat()} {run_id} {step} attempt {attempt} exit {code} "
                          f"{time.monotonic() - started:.2f}s{' SIGKILL' if killed else ''}\n")
                if stderr:
                    log.write(stderr.decode("utf-8", "replace")[-2000:] + "\n")
                if killed and code == -signal.SIGKILL:
                    if kill_after is None:
                        stats.hung += 1
                    else:
                        stats.killed += 1
                        self.state.kills[step] += 1
                    continue  # Airflow sees a dead task and runs it again
                if code == 0:
                    stats.ok += 1
                    return
                name = _error_name(step, stderr) or f"exit {code}"
                self.state.errors[f"{step}: {name}"] += 1
                if code == EXIT_FATAL:
                    stats.fatal += 1
                    return  # the DAG fails the task at once; the next scheduled run tries again
                stats.retried += 1
                if code != EXIT_RETRY:
                    self.state.errors[f"{step}: crashed with exit {code}"] += 1

    def _kill_after(self, step: str, run_id: str, attempt: int) -> float | None:
        """This attempt's SIGKILL timer (seconds), or None: drawn from the seed and the attempt alone,
        not from :attr:`rng`, which the flows' threads would draw from in an order of their timing
        and as often as their steps failed, moving every later world change and fault plan."""
        rng = random.Random(f"{self.settings.seed}:{run_id}:{step}:{attempt}")
        return rng.uniform(0.5, 3.0) if rng.random() < self.settings.kill_share else None

    def _run_flows(self, tag: str, *, kill: bool) -> None:
        def chain(flow: str, steps: tuple[str, ...]) -> None:
            for step in steps:
                self._run_step(step, f"{tag}-{flow}", kill=kill)

        threads = [threading.Thread(target=chain, args=(flow, steps), name=flow) for flow, steps in FLOWS.items()]
        threads.append(threading.Thread(target=chain, args=("seal", (SEAL_STEP,)), name="seal"))
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    # -- faults ---------------------------------------------------------------------------------
    def _plan(self, peer: str) -> tuple[dict[str, Any], dict[str, str]]:
        """A random fault plan for one stand-in, and how its counters map to the table's kinds."""
        rng, lo_hi = self.rng, self.settings.fault_rate
        kinds = list(FAULT_KINDS[peer])
        if self.settings.fault_kinds is not None:
            kinds = [k for k in kinds if k in self.settings.fault_kinds]
        chosen = rng.sample(kinds, k=rng.randint(min(2, len(kinds)), min(4, len(kinds))))
        if "slow" in chosen and "timeout" in chosen:
            chosen.remove("slow")
        plan: dict[str, Any] = {"seed": rng.randrange(1 << 30)}
        labels: dict[str, str] = {}
        for kind in chosen:
            rate = round(rng.uniform(*lo_hi), 3)
            if kind == "http_5xx":
                plan["error_rate"], plan["http_status"] = rate, rng.choice([500, 502, 503, 504])
            elif kind == "drop":
                plan["drop_rate"] = rate
                labels["drop"] = "dropped connection"
            elif kind == "slow":
                plan["slow_rate"], plan["slow_ms"] = rate, rng.randint(100, 700)
                labels["slow"] = "slow reply"
            elif kind == "timeout":
                plan["slow_rate"], plan["slow_ms"] = round(rate / 3, 3), TIMEOUT_FAULT_MS
                labels["slow"] = "reply past client timeout"
            elif kind == "malformed":
                plan["malformed_rate"] = rate
                labels["malformed"] = "malformed body"
            elif kind == "ambiguous":
                plan["ambiguous_rate"] = rate
                labels["ambiguous"] = "applied, answered 500"
            elif kind == "session":
                plan["session_expire_every"] = rng.randint(3, 12)
                labels["session_expired"] = "expired session"
            elif kind == "soap_fault":
                plan["soap_fault_rate"] = rate
                labels["soap_fault"] = "SOAP Fault"
        return plan, labels

    def _configure_faults(self) -> dict[str, dict[str, str]]:
        labels: dict[str, dict[str, str]] = {}
        for peer in ("onestop", "portal", "platform", "ledger"):
            plan, labels[peer] = self._plan(peer)
            self.peers.post(peer, "/_admin/faults", plan)
        return labels

    def _collect_faults(self, labels: dict[str, dict[str, str]]) -> Counter:
        """What the stand-ins injected under the round's plans, by the table's kinds."""
        got: Counter = Counter()
        for peer, names in labels.items():
            injected = self.peers.get(peer, "/_admin/faults")["faults"].get("injected", {})
            for key, n in injected.items():
                if key.startswith("http_"):
                    kind = f"HTTP {key[5:]}"
                else:
                    kind = names.get(key) or COUNTER_LABELS.get(key, key.replace("_", " "))
                got[kind] += n
        return got

    def _clear_faults(self) -> None:
        for peer in ("onestop", "portal", "platform", "ledger"):
            self.peers.post(peer, "/_admin/faults", {})

    # -- the world moves ------------------------------------------------------------------------
    def _move_world(self) -> None:
        rng, peers = self.rng, self.peers
        moved = peers.post("onestop", "/_admin/advance", {"new": rng.randint(2, 6), "changes": rng.randint(6, 16)})
        self.state.world["dossiers created"] += len(moved.get("created", []))
        self.state.world["status changes"] += len(moved.get("changed", []))
        published = peers.post("portal", "/_admin/catalogue/publish",
                               {"add": rng.randint(0, 3), "amend": rng.randint(0, 5), "withdraw": rng.randint(0, 2)})
        for key in ("added", "amended", "withdrawn"):
            value = published.get(key, [])
            self.state.world[f"procedures {key}"] += len(value) if isinstance(value, list) else int(value or 0)
        peers.post("platform", "/_admin/callbacks", {"lost_share": round(rng.uniform(0.1, 0.5), 2),
                                                     "duplicates": rng.random() < 0.5})
        opened = peers.post("onestop", "/_admin/payments/open", {"n": rng.randint(2, 5)})
        settled = peers.post("platform", "/_admin/payments/settle", {"n": rng.randint(2, 5)})
        self.state.world["payments opened"] += len(opened.get("opened", []))
        self.state.world["payments settled"] += len(settled.get("settled", []))

    # -- the run --------------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if not self.settings.quiet:
            self.out(text)

    def _enough(self) -> bool:
        s, st = self.settings, self.state
        if st.rounds < s.min_rounds:
            return False
        return (sum(st.faults.values()) >= s.min_faults and sum(st.kills.values()) >= s.min_kills) \
            or st.rounds >= s.max_rounds

    def run_rounds(self) -> None:
        while not self._enough():
            self.state.rounds += 1
            n = self.state.rounds
            started = time.monotonic()
            labels = self._configure_faults()  # first: the callbacks the world sends meet them too
            self._move_world()
            world_s = time.monotonic() - started
            outage = self.rng.random() < 0.25
            if outage:
                self.outage.begin()
            ministry_before = self.state.stats("catalogue.ministry").attempts
            self._run_flows(f"r{n:03d}", kill=True)
            if outage:
                self.state.faults["ministry DB refused"] += \
                    self.state.stats("catalogue.ministry").attempts - ministry_before
                self.outage.end()
            self.state.faults.update(self._collect_faults(labels))
            self._say(f"round {n:3d}: {sum(self.state.faults.values()):5d} faults, "
                      f"{sum(self.state.kills.values()):3d} kills so far"
                      f"{', ministry DB down' if outage else ''} (world {world_s:.1f}s, round "
                      f"{time.monotonic() - started:.1f}s)")

    def settle(self) -> tuple[int, bool]:
        """Faults off; run every flow until a pass changes nothing at the destinations. Returns the
        passes run and whether the last one changed nothing: with no fault and the world still, a
        pass that still changes what the destinations hold re-sent or re-applied something."""
        self._clear_faults()
        self.outage.end()
        previous = None
        passes = 0
        for passes in range(1, self.settings.settle_passes + 1):
            self._run_flows(f"settle{passes}", kill=False)
            fingerprint = self._destinations_fingerprint()
            if fingerprint == previous:
                return passes, True
            previous = fingerprint
        return passes, False

    def _destinations_fingerprint(self) -> str:
        """What the destinations hold (not their call counters): equal after two passes = settled."""
        portal = self.peers.get("portal", "/_state")["counts"]
        held = {
            "portal": {k: portal[k] for k in ("dossiers", "history", "progress")},
            "receipts": self.peers.get("ledger", "/_state/receipts")["receipts"],
            "procedures": self.peers.get("onestop", "/_state/procedures")["procedures"],
            "payments": self.peers.get("onestop", "/_state/payments")["payments"],
        }
        return json.dumps(held, sort_keys=True, default=str)

    def check(self) -> dict[str, Any]:
        from lienthong.audit.keys import load_public_key
        from lienthong.audit.verify import verify_exchanges
        from lienthong.store import Store

        store = Store.from_connection(self.spec("lienthong_db"))
        try:
            flows = [
                checks.check_dossiers(store, self.peers.url("onestop"), self.peers.url("portal")),
                checks.check_catalogue(store, self.spec("national_portal_default"), self.peers.url("onestop"),
                                       self.spec("ministry_db_default")),
                checks.check_payments(store, self.peers.url("onestop"), self.peers.url("platform"),
                                      self.peers.url("ledger")),
            ]
            verified = verify_exchanges(store, [load_public_key(str(self.topo.seal_key) + ".pub")])
        finally:
            store.dispose()
        return {"flows": flows, "verify": verified}


def _table(state: RunState, flows: list[checks.FlowResult], verify: Any, seconds: float, settle_passes: int
           ) -> list[str]:
    lines = ["", "Faults injected", "", "| Kind | Count |", "|---|---:|"]
    for kind, n in sorted(state.faults.items(), key=lambda kv: (-kv[1], kv[0])):
        if n:
            lines.append(f"| {kind} | {n:,} |")
    lines.append(f"| **total** | **{sum(state.faults.values()):,}** |")
    lines += ["", "Processes killed with SIGKILL (then rerun)", "", "| Step | Kills |", "|---|---:|"]
    for step, n in sorted(state.kills.items()):
        lines.append(f"| {step} | {n} |")
    lines.append(f"| **total** | **{sum(state.kills.values())}** |")
    log_ok = "yes" if verify.ok else f"NO: {verify.failure}"
    lines += ["", f"Records per flow after {state.rounds} rounds and {settle_passes} clean passes "
                  f"({seconds / 60:.1f} min)", "",
              "| Flow | Records | Delivered | Dead-lettered | Lost | Duplicated |", "|---|---:|---:|---:|---:|---:|"]
    for f in flows:
        lines.append(f"| {f.flow} | {f.records:,} | {f.delivered:,} | {f.dead_lettered:,} | {f.lost} | {f.duplicated} |")
    lines.append(f"| exchange log | {verify.records_checked:,} records, {verify.seals_checked} seals | verified: "
                 f"{log_ok} | | | |")
    return lines


def run_reliability(settings: Settings, out: Printer = print) -> int:
    """Run the harness; print the table; write ``<home>/result.json``; 0 if nothing was lost or
    duplicated, the destinations settled (a clean pass changed nothing), the log verifies and the
    faults and kills asked for were reached, else 1."""
    harness = Harness(settings, out)
    started = time.monotonic()
    out(f"reliability: seed {settings.seed}, home {harness.topo.home}; at least {settings.min_faults} faults and "
        f"{settings.min_kills} kills (at most {settings.max_rounds} rounds)")
    try:
        harness.setup()
        harness.run_rounds()
        passes, settled = harness.settle()
        result = harness.check()
    finally:
        harness.outage.end()
        harness.peers.stop()
    seconds = time.monotonic() - started
    flows, verify = result["flows"], result["verify"]
    for line in _table(harness.state, flows, verify, seconds, passes):
        out(line)
    for f in flows:
        for problem in f.problems:
            out(f"  {f.flow}: {problem}")
    if harness.state.errors:
        out("")
        out("Failed step attempts by error (retried or left to the next round):")
        for name, n in harness.state.errors.most_common(25):
            out(f"  {n:5d}  {name}")
    faults, kills = sum(harness.state.faults.values()), sum(harness.state.kills.values())
    enough = faults >= settings.min_faults and kills >= settings.min_kills
    ok = all(f.ok for f in flows) and verify.ok and settled and enough
    summary = {
        "seed": settings.seed, "rounds": harness.state.rounds, "settle_passes": passes, "seconds": round(seconds, 1),
        "faults": dict(harness.state.faults), "kills": dict(harness.state.kills),
        "steps": {k: vars(v) for k, v in harness.state.steps.items()}, "errors": dict(harness.state.errors),
        "world": dict(harness.state.world), "flows": [f.as_dict() for f in flows],
        "log": {"verified": verify.ok, "records": verify.records_checked, "seals": verify.seals_checked,
                "failure": str(verify.failure) if verify.failure else None},
        "settled": settled, "targets_met": enough, "ok": ok,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(settings).items()},
    }
    path = harness.topo.home / "result.json"
    short = "" if enough else (f" ({faults} faults and {kills} kills, fewer than the {settings.min_faults} faults "
                               f"and {settings.min_kills} kills asked: raise --max-rounds)")
    path.write_text(json.dumps(summary, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    out("")
    out(f"{'PASS' if ok else 'FAIL'}: {sum(f.lost for f in flows)} lost, {sum(f.duplicated for f in flows)} duplicated, "
        f"log {'verified' if verify.ok else 'NOT verified'}"
        f"{'' if settled else f'; the destinations still changed in the last of {passes} clean passes'}"
        f"{short}; result in {path}")
    return 0 if ok else 1


def run_from_args(args: Any) -> int:
    kinds = None
    if args.faults:
        kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip())
        known = {k for ks in FAULT_KINDS.values() for k in ks}
        unknown = sorted(set(kinds) - known)
        if unknown:
            print(f"lienthong reliability: unknown fault kind(s) {', '.join(unknown)}; known: "
                  f"{', '.join(sorted(known))}", file=sys.stderr)
            return 2
    settings = Settings(home=Path(args.home), seed=args.seed, min_faults=args.min_faults, min_kills=args.min_kills,
                        max_rounds=args.max_rounds, dossiers=args.dossiers, catalogue_size=args.catalogue_size,
                        kill_share=args.kill_share, fault_kinds=kinds, quiet=args.quiet)
    return run_reliability(settings)
