"""The result file names the code that was measured: the commit, and whether the work tree had
changes beyond it (a run over uncommitted changes did not measure that commit), with the machine's
core count; ``--report`` says when a line comes from such a run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from bench import harness


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org"}
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    (root / ".gitignore").write_text("var/\n", encoding="utf-8")
    (root / "engine.py").write_text("FAST = True\n", encoding="utf-8")
    _git(root, "add", ".gitignore", "engine.py")
    _git(root, "commit", "-q", "-m", "first")
    monkeypatch.setattr(harness, "ROOT", root)
    monkeypatch.setattr(harness, "scenario_engine", lambda ws, args, result: None)  # nothing to measure here
    return root


def _run(repo: Path, tmp_path: Path) -> dict:
    out = repo / "var" / "bench"  # ignored: the results never make the tree dirty themselves
    assert harness.main(["--scenario", "engine", "--out", str(out), "--workdir", str(tmp_path / "ws")]) == 0
    return json.loads((out / "latest.json").read_text(encoding="utf-8"))


def test_a_clean_tree_is_recorded_as_its_commit(repo: Path, tmp_path: Path) -> None:
    doc = _run(repo, tmp_path)
    assert doc["commit"] == _git(repo, "rev-parse", "HEAD")
    assert doc["dirty"] is False and doc["changed_files"] == []
    assert doc["machine"]["cores"] == os.cpu_count()


def test_a_dirty_tree_is_recorded_as_such_with_the_changed_files(repo: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "engine.py").write_text("FAST = False\n", encoding="utf-8")
    (repo / "new_module.py").write_text("X = 1\n", encoding="utf-8")
    doc = _run(repo, tmp_path)
    assert doc["commit"] == _git(repo, "rev-parse", "HEAD")
    assert doc["dirty"] is True
    assert doc["changed_files"] == ["engine.py", "new_module.py"]
    capsys.readouterr()
    assert harness.main(["--report", str(repo / "var" / "bench" / "latest.json")]) == 0
    assert f"at {doc['commit'][:7]} with uncommitted changes" in capsys.readouterr().out
