import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import benchmarks.__main__ as suite
from benchmarks.__main__ import discover
from benchmarks.common import Skipped
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
    written = json.loads((tmp_path / "all.json").read_text())
    rows, skipped = written["rows"], written["meta"]["skipped"]
    assert {r["script"] for r in rows} | set(skipped) == set(scripts)
    assert set(skipped) <= {"gpu"}  # only the GPU script may skip, and only without CUDA
    if not torch.cuda.is_available():
        assert "no CUDA device" in skipped["gpu"]
        assert "skipped gpu: no CUDA device" in result.stdout
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| benchmark | case |")
    assert len(table) == 2 + len(rows)  # header, rule, one line per row
    for line in table[2:]:  # tiny sizes measure nothing: no target beside their numbers
        assert line.endswith("| not measured at this size (--quick) |"), line
    for r in rows:
        assert f"| {r['benchmark']} | {r['case']} |" in result.stdout
        assert r["ratio"] == pytest.approx(r["rnnkit_ms"] / r["baseline_ms"], rel=0.01, abs=2e-3)


def test_suite_rejects_an_unknown_script(capsys):
    with pytest.raises(SystemExit) as exit_info:
        suite.main(["--quick", "--only", "no_such_script"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no benchmark script no_such_script; available:" in err
    assert all(name in err for name in ("import_time", "layers", "scan"))


def test_suite_rejects_bad_threads(capsys):
    with pytest.raises(SystemExit) as exit_info:
        suite.main(["--threads", "0"])
    assert exit_info.value.code == 2
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err


def test_suite_reports_failing_scripts_and_still_runs_the_others(monkeypatch, tmp_path, capsys):
    def fails(quick):
        raise RuntimeError("broken script")

    scripts = {
        "fake_fails": fails,
        "fake_empty": lambda quick: [],
        "fake_works": lambda quick: [
            {"benchmark": "fake", "case": "c", "rnnkit_ms": 1.0, "baseline": "b"}
            | {"baseline_ms": 2.0, "ratio": 0.5, "target": "t"}
        ],
    }
    for name, run in scripts.items():
        monkeypatch.setitem(sys.modules, f"benchmarks.{name}", type(sys)(name))
        sys.modules[f"benchmarks.{name}"].run = run
    monkeypatch.setattr(suite, "discover", lambda: sorted(scripts))
    assert suite.main(["--quick", "--json", str(tmp_path / "out.json")]) == 1
    out, err = capsys.readouterr()
    assert "RuntimeError: broken script" in err
    assert "fake_empty returned no rows" in err
    assert "failed: fake_empty, fake_fails" in err
    assert "| fake | c | 1.00 | b | 2.00 | 0.50x | not measured at this size (--quick) |" in out
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert [r["script"] for r in rows] == ["fake_works"]


def test_a_skipped_script_is_reported_and_does_not_fail_the_run(monkeypatch, tmp_path, capsys):
    def skips(quick):
        raise Skipped("no such device here")

    works = [{"benchmark": "fake", "case": "c", "rnnkit_ms": 1.0, "baseline": "b"}]
    works[0] |= {"baseline_ms": 2.0, "ratio": 0.5, "target": "t"}
    for name, run in {"fake_skips": skips, "fake_works": lambda quick: works}.items():
        monkeypatch.setitem(sys.modules, f"benchmarks.{name}", type(sys)(name))
        sys.modules[f"benchmarks.{name}"].run = run
    monkeypatch.setattr(suite, "discover", lambda: ["fake_skips", "fake_works"])
    assert suite.main(["--quick", "--json", str(tmp_path / "out.json")]) == 0
    out, err = capsys.readouterr()
    assert "fake_skips: skipped (no such device here)" in err
    assert "skipped fake_skips: no such device here" in out
    meta = json.loads((tmp_path / "out.json").read_text())["meta"]
    assert meta["skipped"] == {"fake_skips": "no such device here"}


@pytest.mark.slow  # a fresh interpreter imports torch
def test_import_rnnkit_pulls_in_no_jupyter_module():
    probe = measure_import()
    assert probe["rnnkit_file"] == str(ROOT / "rnnkit" / "__init__.py")
    assert probe["jupyter_modules"] == [], f"import rnnkit imported {probe['jupyter_modules']}"
    assert JUPYTER_MODULES == ("ipywidgets", "IPython", "matplotlib")
