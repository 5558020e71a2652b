"""Timing and reporting shared by the benchmark scripts.

Every script in this folder defines ``run(quick: bool = False) -> list[dict]``; each row has
``benchmark``, ``case``, ``rnnkit_ms``, ``baseline``, ``baseline_ms``, ``ratio`` (rnnkit_ms /
baseline_ms, so below 1 means rnnkit is faster) and ``target``, plus any extra fields. ``quick``
shrinks sizes and repeats so that CI can prove the script works in seconds; quick numbers mean
nothing.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

QUICK_TARGET = "not measured at this size (--quick)"


class Skipped(Exception):
    """Raised by a script's ``run`` that cannot run here (e.g. no GPU); the message says why.
    ``python -m benchmarks`` reports the script as skipped, not failed."""


def time_ms(fn: Callable[[], object], *, repeat: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA synchronised when in use)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_pair(
    fn_a: Callable[[], object],
    fn_b: Callable[[], object],
    *,
    repeat: int = 10,
    warmup: int = 2,
) -> tuple[float, float]:
    """Median wall times of ``fn_a()`` and ``fn_b()`` in ms, measured alternately.

    Alternating makes a change of machine load (other processes on a shared machine) hit both
    alike, which keeps their ratio meaningful when the absolute times are noisy.
    """
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn_a()
        fn_b()
    sync()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, store in zip((fn_a, fn_b), times, strict=True):
            start = time.perf_counter()
            fn()
            sync()
            store.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[0]), statistics.median(times[1])


def row(
    benchmark: str,
    case: str,
    rnnkit_ms: float,
    baseline: str,
    baseline_ms: float,
    target: str,
    **extra,
) -> dict:
    """One result row (see the module docstring)."""
    return {
        "benchmark": benchmark,
        "case": case,
        "rnnkit_ms": round(rnnkit_ms, 3),
        "baseline": baseline,
        "baseline_ms": round(baseline_ms, 3),
        "ratio": round(rnnkit_ms / baseline_ms, 3) if baseline_ms else float("nan"),
        "target": target,
        **extra,
    }


def markdown_table(rows: list[dict], quick: bool = False) -> str:
    """Rows as a markdown table of the standard columns. ``quick``: the sizes were the tiny ones
    of ``--quick``, which measure nothing; the target column says so instead of setting targets
    beside numbers that cannot be compared with them."""
    head = "| benchmark | case | rnnkit (ms) | baseline | baseline (ms) | ratio | target |"
    lines = [head, "| --- | --- | ---: | --- | ---: | ---: | --- |"]
    for r in rows:
        target = QUICK_TARGET if quick else r["target"]
        lines.append(
            f"| {r['benchmark']} | {r['case']} | {r['rnnkit_ms']:.2f} | {r['baseline']} | "
            f"{r['baseline_ms']:.2f} | {r['ratio']:.2f}x | {target} |"
        )
    return "\n".join(lines)


def write_json(rows: list[dict], path: str | Path, **meta_extra) -> None:
    """Rows, with the device and versions (and ``meta_extra``), as JSON."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    meta = {"torch": torch.__version__, "device": device, "threads": torch.get_num_threads()}
    meta.update(meta_extra)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
