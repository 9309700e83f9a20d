"""The architecture's import rules (design §3), checked on the source."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _py(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


#: The only modules that adapt our code to Airflow: the hooks (connections), the auditor page plugin
#: (the api-server's FastAPI app), the DAGs' shared settings and the demo's `dags test` that keeps
#: task logs (run as its own process). Everything else runs without Airflow.
AIRFLOW_ADAPTERS = {REPO / "connectors" / "hooks.py", REPO / "lienthong" / "airflow_plugin.py",
                    REPO / "lienthong" / "dag_support.py", REPO / "lienthong" / "airflow_dag_test.py"}


def test_engine_and_connectors_do_not_import_airflow_except_the_adapters():
    offenders = [
        str(p.relative_to(REPO)) for p in _py("lienthong") + _py("connectors")
        if "airflow" in _imports(p) and p not in AIRFLOW_ADAPTERS
    ]
    assert offenders == []


def test_nothing_imports_the_airflow_adapters_but_airflow():
    offenders = [str(p.relative_to(REPO)) for p in _py("lienthong") + _py("connectors")
                 if ("lienthong.airflow_plugin" in p.read_text() or "lienthong.dag_support" in p.read_text())
                 and p not in AIRFLOW_ADAPTERS]
    assert offenders == []


def test_connectors_do_not_import_the_engine():
    offenders = [str(p.relative_to(REPO)) for p in _py("connectors") if {"lienthong", "dags"} & _imports(p)]
    assert offenders == []


def test_mocks_import_nothing_of_ours():
    offenders = [str(p.relative_to(REPO)) for p in _py("mocks")
                 if {"lienthong", "connectors", "dags"} & _imports(p)]
    assert offenders == []


def test_layout_of_the_design_card_exists():
    for name in ["dags", "lienthong", "connectors", "mappings", "mocks", "fixtures", "tests",
                 "pyproject.toml", "docker-compose.yml", "Makefile", ".ci/run", "constraints.txt"]:
        assert (REPO / name).exists(), name


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme
    assert (REPO / ".ci" / "run").read_text().strip().endswith("make test")


def test_make_browser_is_best_effort_without_root_or_apt(tmp_path):
    """README: 'make test — install what is needed and run the whole test suite'; 'Needs Python 3.11
    and network access to PyPI for the first install; nothing else.' `test` depends on `browser`,
    which runs `apt-get install -y chromium chromium-driver` (root, Debian, a Debian mirror) and
    stopped `make test` before a single test ran when that failed — as it does for a normal user."""
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apt = bin_dir / "apt-get"  # what a non-root user gets from the real one
    apt.write_text("#!/bin/sh\necho 'E: Could not open lock file /var/lib/dpkg/lock-frontend - open "
                   "(13: Permission denied)' >&2\necho 'E: are you root?' >&2\nexit 100\n")
    apt.chmod(0o755)
    for path in (str(bin_dir), str(tmp_path / "no-apt-at-all")):
        result = subprocess.run(["/usr/bin/make", "--no-print-directory", "-C", str(REPO), "browser"],
                                env={"PATH": path, "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "could not install chromium and chromium-driver" in result.stderr
