"""What one reliability run does (:class:`Settings`) and the options of ``lienthong reliability``.

Kept apart from :mod:`lienthong.reliability.harness` so that building the CLI's parser does not
load the flows (a fifth of a second on every ``lienthong`` command).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lienthong.localenv import REPO_ROOT

__all__ = ["FAULT_KINDS", "Settings", "build_parser"]

#: The fault kinds a round draws from, and which stand-ins have them.
FAULT_KINDS: dict[str, tuple[str, ...]] = {
    "onestop": ("http_5xx", "drop", "slow", "timeout", "malformed"),
    "portal": ("http_5xx", "drop", "slow", "timeout", "malformed", "ambiguous", "session"),
    "platform": ("http_5xx", "drop", "slow", "timeout", "malformed"),
    "ledger": ("soap_fault", "http_5xx", "drop", "slow", "timeout", "malformed"),
}


@dataclass
class Settings:
    """What one reliability run does. The defaults are ``make reliability``'s."""

    home: Path = REPO_ROOT / "var" / "reliability"
    seed: int = 7
    min_faults: int = 1000  #: keep adding rounds until at least this many faults were injected...
    min_kills: int = 20  #: ...and at least this many step processes were killed with SIGKILL
    max_rounds: int = 120  #: but never more rounds than this
    min_rounds: int = 3
    dossiers: int = 120  #: one-stop world at the start
    catalogue_size: int = 200  #: national catalogue at the start
    fault_rate: tuple[float, float] = (0.03, 0.12)  #: per-kind probability per request, drawn per round
    kill_share: float = 0.22  #: share of step attempts that get a SIGKILL timer
    attempts: int = 3  #: tries of a step per round, kills included (the sync DAGs allow 4: retries=3)
    step_timeout: float = 300.0  #: a step running longer is killed and counted as hung
    settle_passes: int = 4  #: at most this many clean passes at the end
    fault_kinds: tuple[str, ...] | None = None  #: only these kinds (see FAULT_KINDS); default all
    quiet: bool = False


def build_parser(parser: Any) -> Any:
    """The options of ``lienthong reliability`` (added to the given argparse parser)."""
    d = Settings()
    parser.add_argument("--seed", type=int, default=d.seed, help=f"seed of the world's changes, the fault plans and the "
                                                                  f"kill timers (default {d.seed}); which requests and "
                                                                  "processes they hit still depends on timing")
    parser.add_argument("--min-faults", type=int, default=d.min_faults,
                        help=f"add rounds until at least this many faults were injected (default {d.min_faults})")
    parser.add_argument("--min-kills", type=int, default=d.min_kills,
                        help=f"... and at least this many step processes were SIGKILLed (default {d.min_kills})")
    parser.add_argument("--max-rounds", type=int, default=d.max_rounds,
                        help=f"never more rounds than this (default {d.max_rounds})")
    parser.add_argument("--dossiers", type=int, default=d.dossiers,
                        help=f"dossiers in the one-stop world at the start (default {d.dossiers})")
    parser.add_argument("--catalogue-size", type=int, default=d.catalogue_size,
                        help=f"procedures in the national catalogue at the start (default {d.catalogue_size})")
    parser.add_argument("--kill-share", type=float, default=d.kill_share,
                        help=f"share of step attempts killed with SIGKILL at a random moment (default {d.kill_share})")
    parser.add_argument("--faults", help="only these fault kinds, comma-separated: " + ", ".join(
        sorted({k for kinds in FAULT_KINDS.values() for k in kinds})) + " (default: all)")
    parser.add_argument("--home", default=str(d.home), help="where the run keeps its state; wiped first "
                                                             "(default var/reliability)")
    parser.add_argument("--quiet", action="store_true", help="print only the table")
    return parser
