"""No PASS without a measurement: --repeats and --audit-repeats below 1 are refused by name (with
none, every median is NaN, and 'all of no diff runs pushed exactly the changed' was true, so the
catalogue line printed PASS over 'n/a records'), and a judged line whose figure is NaN fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import Line

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--repeats", "-2"], ["--audit-repeats", "0"]])
def test_fewer_than_one_repeat_is_refused(tmp_path: Path, argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--scenario", "catalogue", *argv,
                           "--out", str(tmp_path / "out")], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2, done.stdout[-2000:]
    assert argv[0] in done.stderr and "at least 1" in done.stderr
    assert "PASS" not in done.stdout and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("value", "ratio"), [(float("nan"), float("nan")), (5.0, float("nan")),
                                              (float("nan"), 1.0)])
def test_a_judged_line_without_a_figure_fails(value: float, ratio: float) -> None:
    line = Line("catalogue", "records received", value, "records", 5.0, "5 changed", ratio, "= 1.00", True)
    assert line.passed is False
    assert line.as_dict()["verdict"] == "FAIL"


def test_an_unjudged_line_stays_unjudged() -> None:
    assert Line("x", "y", float("nan"), "s", None, "", None, "", None).passed is None
