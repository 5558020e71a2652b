import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import discover
from benchmarks.import_time import JUPYTER_MODULES, measure_import

ROOT = Path(__file__).resolve().parent.parent


def _benchmarks(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_quick_suite_runs_every_script_and_prints_one_table(tmp_path):
    scripts = discover()
    assert {"layers", "scan", "import_time"} <= set(scripts)
    result = _benchmarks("--quick", "--threads", "1", "--json", str(tmp_path / "all.json"))
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "all.json").read_text())["rows"]
    assert {r["script"] for r in rows} == set(scripts)
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| benchmark | case |")
    assert len(table) == 2 + len(rows)  # header, rule, one line per row
    for r in rows:
        assert f"| {r['benchmark']} | {r['case']} |" in result.stdout
        assert r["ratio"] == pytest.approx(r["rnnkit_ms"] / r["baseline_ms"], rel=0.01, abs=2e-3)


def test_suite_rejects_an_unknown_script():
    result = _benchmarks("--quick", "--only", "no_such_script")
    assert result.returncode == 2
    assert "no benchmark script no_such_script; available:" in result.stderr


def test_import_rnnkit_pulls_in_no_jupyter_module():
    probe = measure_import()
    assert probe["rnnkit_file"] == str(ROOT / "rnnkit" / "__init__.py")
    assert probe["jupyter_modules"] == [], f"import rnnkit imported {probe['jupyter_modules']}"
    assert JUPYTER_MODULES == ("ipywidgets", "IPython", "matplotlib")
