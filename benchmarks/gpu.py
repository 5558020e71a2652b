"""The engines on a GPU: cuDNN, rnnkit's fused path, the own loop, the Triton engine with and
without CUDA graphs; the variable-length epoch; MinGRU's scan against ``nn.GRU``.

Rows run in priority order (below), each with a fixed number of repeats (median of
``REPEAT`` timed calls after ``WARMUP`` untimed ones, which include any graph capture). Every
row's ratio is against cuDNN in the same run: ``torch.nn.LSTM`` (for the LSTM, layer-norm LSTM
and IndRNN rows) or ``torch.nn.GRU`` (GRU rows) of the same sizes and mode, on the padded batch
without lengths. ``fwd`` is a forward under ``torch.no_grad()``; ``fwd+bwd`` a forward and the
gradients of ``output.sum()`` with respect to the input and every weight.

Priority (the rows that answer the targets first, so that a budget cut keeps them):

1. T=100 B=64 I=H=512 (fastrnns), fwd+bwd: layer-norm LSTM and LSTM on Triton with graphs
   (targets <= 2x and <= 1.5x cuDNN's LSTM);
2. MinGRU scan vs ``nn.GRU`` at T=4096 (target >= 10x faster), error vs float64 sequential;
3. the rest of that configuration: every cell and engine, fwd+bwd then fwd;
4. the same with lengths (uniform in [T/2, T]): fused (segments) and Triton;
5. B=16 T=1024 H=768 (FlashRNN's), the same rows;
6. the variable-length epoch, bucketed vs packed (``benchmarks/varlen.py``);
7. MinGRU at T=512 and T=16384.

``python -m benchmarks.gpu [--quick] [--budget SECONDS] [--out DIR]`` writes ``gpu.json`` and
``gpu.md`` (device, date, table) to ``DIR`` (default ``benchmarks/results``); rows past the
budget are listed as not run. Without CUDA the script is skipped; with ``TRITON_INTERPRET=1``
and ``--quick`` it runs the Triton rows at tiny sizes in Triton's CPU interpreter (numbers
meaningless: it proves the script and the engine run).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import rnnkit
from benchmarks.common import Skipped, markdown_table, row, time_ms, write_json
from rnnkit.engines.triton import set_graphs, support

REPEAT, WARMUP = 10, 3
BUDGET_S = 240.0


@dataclass(frozen=True)
class Shape:
    name: str
    steps: int
    batch: int
    size: int


FASTRNNS = Shape("T=100 B=64 I=H=512", 100, 64, 512)
FLASHRNN = Shape("T=1024 B=16 I=H=768", 1024, 16, 768)
TINY = Shape("T=6 B=2 I=H=4", 6, 2, 4)

CELLS = ("LSTM", "GRU", "LayerNorm LSTM", "IndRNN")
# engine variants: (label, rnnkit engine, CUDA graphs)
VARIANTS = {
    "Triton + graphs": ("triton", True),
    "Triton, no graphs": ("triton", False),
    "fused": ("fused", False),
    "own loop": ("loop", False),
}


def _layer(cell: str, size: int, engine: str) -> nn.Module:
    if cell == "LSTM":
        return rnnkit.LSTM(size, size, engine=engine)
    if cell == "GRU":
        return rnnkit.GRU(size, size, engine=engine)
    kind = rnnkit.LayerNormLSTMCell if cell == "LayerNorm LSTM" else rnnkit.IndRNNCell
    return rnnkit.Recurrent(kind(size, size), engine=engine)


def _call(layer: nn.Module, x, lengths, backward: bool) -> Callable[[], None]:
    params = list(layer.parameters())
    kwargs = {} if lengths is None else {"lengths": lengths}

    def run() -> None:
        if backward:
            output = layer(x, **kwargs)[0]
            torch.autograd.grad(output.sum(), [x, *params])
        else:
            with torch.no_grad():
                layer(x, **kwargs)

    return run


class Bench:
    """Rows in priority order within a time budget, with cuDNN baselines measured once each."""

    def __init__(self, device: str, quick: bool, budget: float) -> None:
        self.device, self.quick, self.budget = device, quick, budget
        self.cuda = device == "cuda"
        self.repeat, self.warmup = (2, 1) if quick else (REPEAT, WARMUP)
        self.start = time.perf_counter()
        self.rows: list[dict] = []
        self.not_run: list[str] = []
        self.baselines: dict[tuple, float] = {}

    def over_budget(self, what: str) -> bool:
        if time.perf_counter() - self.start > self.budget:
            self.not_run.append(what)
            return True
        return False

    def _input(self, shape: Shape) -> torch.Tensor:
        torch.manual_seed(0)
        x = torch.randn(shape.steps, shape.batch, shape.size, device=self.device)
        return x.requires_grad_()

    def baseline(self, shape: Shape, family: str, backward: bool) -> float:
        key = (shape, family, backward)
        if key not in self.baselines:
            torch.manual_seed(0)
            module = (nn.GRU if family == "GRU" else nn.LSTM)(shape.size, shape.size)
            module = module.to(self.device)
            run = _call(module, self._input(shape), None, backward)
            self.baselines[key] = time_ms(run, repeat=self.repeat, warmup=self.warmup)
        return self.baselines[key]

    def engine_row(
        self, shape: Shape, cell: str, variant: str, backward: bool, lengths: bool = False
    ) -> None:
        mode = "fwd+bwd" if backward else "fwd"
        case = f"{cell}, {variant}, {mode}, {shape.name}" + (", lengths" if lengths else "")
        engine, graphs = VARIANTS[variant]
        if (engine == "fused" and cell not in ("LSTM", "GRU")) or self.over_budget(case):
            return
        if not self.cuda and (engine != "triton" or graphs):
            return  # the CPU (interpreter) run is for the uncaptured Triton rows only
        torch.manual_seed(0)
        layer = _layer(cell, shape.size, engine).to(self.device)
        x = self._input(shape)
        steps = None
        if lengths:
            generator = torch.Generator().manual_seed(0)
            bounds = (shape.steps // 2, shape.steps + 1)
            steps = torch.randint(*bounds, (shape.batch,), generator=generator)
        family = "GRU" if cell == "GRU" else "LSTM"
        base = self.baseline(shape, family, backward)
        set_graphs(graphs)
        try:
            ms = time_ms(_call(layer, x, steps, backward), repeat=self.repeat, warmup=self.warmup)
            (report,) = rnnkit.explain_fast_path(layer)
        finally:
            set_graphs(True)
        self.rows.append(
            row(
                "gpu",
                case,
                ms,
                f"cuDNN nn.{family}" if self.cuda else f"nn.{family} (CPU)",
                base,
                _target(cell, variant, backward, shape, lengths),
                cell=cell,
                variant=variant,
                mode=mode,
                shape=shape.name,
                lengths=lengths,
                kernel=report.kernel,
            )
        )

    def scan_row(self, steps: int) -> None:
        case = f"MinGRU scan vs nn.GRU, fwd+bwd, T={steps} B=64 I=H=256"
        if not self.cuda or self.over_budget(case):
            return
        from benchmarks.scan import scan_error

        torch.manual_seed(0)
        ours = rnnkit.MinGRU(256, 256).to(self.device)
        gru = nn.GRU(256, 256).to(self.device)
        x = torch.randn(steps, 64, 256, device=self.device, requires_grad=True)
        ours_ms = time_ms(_call(ours, x, None, True), repeat=self.repeat, warmup=self.warmup)
        gru_ms = time_ms(_call(gru, x, None, True), repeat=self.repeat, warmup=self.warmup)
        error = scan_error(ours, x.detach())
        target = ">= 10x faster (<= 0.1x), error <= 1e-5" if steps == 4096 else "error <= 1e-5"
        self.rows.append(
            row(
                "gpu",
                f"{case}; error {error:.1e}",
                ours_ms,
                "cuDNN nn.GRU",
                gru_ms,
                target,
                error=error,
            )
        )

    def varlen_rows(self) -> None:
        if not self.cuda or self.over_budget("variable-length epoch"):
            return
        from benchmarks import varlen

        self.rows.extend(
            {**r, "benchmark": "gpu", "case": "variable-length epoch: " + r["case"]}
            for r in varlen.run(size="quick" if self.quick else "gpu")
        )


def _target(cell: str, variant: str, backward: bool, shape: Shape, lengths: bool) -> str:
    if shape is FASTRNNS and backward and not lengths and variant == "Triton + graphs":
        return {"LSTM": "<= 1.5x", "LayerNorm LSTM": "<= 2x"}.get(cell, "-")
    return "-"


def _configuration_rows(bench: Bench, shape: Shape, *, skip_first: bool) -> None:
    for backward in (True, False):
        for cell in CELLS:
            for variant in VARIANTS:
                first = variant == "Triton + graphs" and cell in ("LSTM", "LayerNorm LSTM")
                if skip_first and backward and first:
                    continue  # already measured in priority 1
                bench.engine_row(shape, cell, variant, backward)
    for cell in ("LSTM", "GRU", "LayerNorm LSTM"):
        for variant in ("Triton + graphs", "Triton, no graphs", "fused"):
            if variant != "Triton, no graphs" or not bench.cuda:
                bench.engine_row(shape, cell, variant, True, lengths=True)


def measure(quick: bool = False, budget: float = BUDGET_S) -> Bench:
    """Every row that fits the budget, in priority order (module docstring)."""
    cuda = torch.cuda.is_available()
    if not cuda and not (quick and support.interpreter_on() and support.triton_installed()):
        raise Skipped(
            "no CUDA device (with TRITON_INTERPRET=1 and --quick the Triton rows run on the CPU)"
        )
    bench = Bench("cuda" if cuda else "cpu", quick, budget)
    main, flash = (TINY, TINY) if quick else (FASTRNNS, FLASHRNN)
    for cell in ("LayerNorm LSTM", "LSTM"):
        bench.engine_row(main, cell, "Triton + graphs", True)
    bench.scan_row(64 if quick else 4096)
    _configuration_rows(bench, main, skip_first=True)
    if not quick:
        _configuration_rows(bench, flash, skip_first=False)
    bench.varlen_rows()
    for steps in (16, 128) if quick else (512, 16384):
        bench.scan_row(steps)
    return bench


def run(quick: bool = False) -> list[dict]:
    """The rows, for ``python -m benchmarks`` (rows past the budget are named on stderr)."""
    bench = measure(quick)
    if bench.not_run:
        print(f"[benchmarks] gpu: not run (budget): {'; '.join(bench.not_run)}", file=sys.stderr)
    return bench.rows


def _device() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "CPU (Triton interpreter)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all rows")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    try:
        bench = measure(quick=args.quick, budget=args.budget)
    except Skipped as why:
        print(f"benchmarks/gpu.py skipped: {why}")
        return 0
    name = "gpu-quick" if args.quick else "gpu"
    write_json(bench.rows, args.out / f"{name}.json", not_run=bench.not_run)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"# benchmarks/gpu.py on {_device()}, torch {torch.__version__}, {stamp}\n\n"
    text += markdown_table(bench.rows) + "\n"
    if bench.not_run:
        text += f"\nNot run (past the {args.budget:.0f} s budget): {'; '.join(bench.not_run)}\n"
    (args.out / f"{name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
