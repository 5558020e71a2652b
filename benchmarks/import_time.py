"""``import rnnkit`` beyond ``import torch``, in fresh interpreters; and what it pulls in.

Each repeat starts a new Python process that imports torch, then rnnkit, timing both; the row
reports the medians (target: rnnkit < 500 ms beyond torch). The same process lists which of the
Jupyter-layer packages (ipywidgets, IPython, matplotlib) ``import rnnkit`` brought into
``sys.modules``: the core must import none of them (it runs on headless cluster nodes).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.common import markdown_table, row, write_json

ROOT = Path(__file__).resolve().parent.parent
JUPYTER_MODULES = ("ipywidgets", "IPython", "matplotlib")

_PROBE = f"""
import json, sys, time
start = time.perf_counter()
import torch
after_torch = time.perf_counter()
import rnnkit
after_rnnkit = time.perf_counter()
print(json.dumps({{
    "torch_ms": (after_torch - start) * 1e3,
    "rnnkit_ms": (after_rnnkit - after_torch) * 1e3,
    "jupyter_modules": [m for m in {JUPYTER_MODULES!r} if m in sys.modules],
    "rnnkit_file": rnnkit.__file__,
}}))
"""


def measure_import() -> dict:
    """One fresh interpreter importing torch then rnnkit (this checkout's): times and modules."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    probes = [measure_import() for _ in range(1 if quick else 5)]
    pulled = sorted({m for p in probes for m in p["jupyter_modules"]})
    return [
        row(
            "import_time",
            "import rnnkit after import torch (fresh process); Jupyter modules pulled in: "
            + (", ".join(pulled) or "none"),
            statistics.median(p["rnnkit_ms"] for p in probes),
            "import torch",
            statistics.median(p["torch_ms"] for p in probes),
            "rnnkit < 500 ms; pulls in none",
            jupyter_modules=pulled,
        )
    ]


if __name__ == "__main__":
    results = run()
    print(markdown_table(results))
    write_json(results, "benchmarks/results/import_time.json")
