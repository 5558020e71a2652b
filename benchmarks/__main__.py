"""Run every benchmark script and print one table: ``python -m benchmarks [options]``.

A benchmark script is a module in this folder that defines ``run(quick: bool) -> list[dict]``
(see :mod:`benchmarks.common`); every such module is found and run, in name order. The rows of
all scripts are printed as one markdown table of ratios and written as JSON, each row tagged with
its ``script``. Options:

* ``--quick``: small sizes and few repeats, to prove in seconds that every script works (the
  numbers mean nothing, so the table shows no targets beside them); writes
  ``benchmarks/results/all-quick.json``, so a full run's ``all.json`` is kept;
* ``--only NAME`` (repeatable): run only these scripts;
* ``--json PATH``: write the JSON there instead;
* ``--threads N``: ``torch.set_num_threads(N)`` first. On a machine shared with other work, one
  thread gives steadier numbers than several threads competing for cores.

A script that fails is reported (traceback on stderr) and the others still run; the exit status
is then 1. A script that cannot run here (``gpu`` without CUDA) raises
:class:`benchmarks.common.Skipped`: it is reported as skipped, with its reason, in the output
and in the JSON's ``meta.skipped``, and does not fail the run.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks.common import Skipped, markdown_table, write_json

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Names of the modules in this folder that define ``run``, sorted."""
    names = []
    for info in pkgutil.iter_modules([str(HERE)]):
        if info.ispkg or info.name in ("common", "__main__"):
            continue
        if callable(getattr(importlib.import_module(f"benchmarks.{info.name}"), "run", None)):
            names.append(info.name)
    return sorted(names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the scripts run")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this script")
    parser.add_argument("--json", type=Path, metavar="PATH", help="where to write the rows")
    parser.add_argument("--threads", type=int, metavar="N", help="torch.set_num_threads(N)")
    args = parser.parse_args(argv)
    available = discover()
    unknown = sorted(set(args.only or ()) - set(available))
    if unknown:
        parser.error(f"no benchmark script {', '.join(unknown)}; available: {', '.join(available)}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    names = [name for name in available if not args.only or name in args.only]

    rows, failed, skipped = [], [], {}
    for name in names:
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            script_rows = importlib.import_module(f"benchmarks.{name}").run(quick=args.quick)
        except Skipped as why:
            print(f"[benchmarks] {name}: skipped ({why})", file=sys.stderr)
            skipped[name] = str(why)
            continue
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        if not script_rows:
            print(f"[benchmarks] {name} returned no rows", file=sys.stderr)
            failed.append(name)
        rows.extend({**r, "script": name} for r in script_rows)
        elapsed = time.perf_counter() - start
        print(f"[benchmarks] {name}: {len(script_rows)} rows in {elapsed:.1f} s", file=sys.stderr)

    print(markdown_table(rows, quick=args.quick))
    for name, why in skipped.items():
        print(f"\nskipped {name}: {why}")
    path = args.json or HERE / "results" / ("all-quick.json" if args.quick else "all.json")
    write_json(rows, path, skipped=skipped)
    print(f"\nwrote {path}", file=sys.stderr)
    if failed:
        print(f"[benchmarks] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
