"""python -m rnnkit: headless jobs.

compare: train one small model per cell type on a task and print a table (held-out loss, the
task's metric where it has one, parameters, time) beside the baseline that ignores the input;
--plot FILE saves the training-loss curves. It calls rnnkit.compare_cells.
info: versions, device and threads (rnnkit.info.format_environment).

Example: python -m rnnkit compare --task adding --seq-len 40 --cells rnn,lstm,gru --steps 800
"""

from __future__ import annotations

import argparse
import inspect
import sys

from rnnkit.compare import TASKS, compare_cells
from rnnkit.info import format_environment
from rnnkit.models import LAYERS

DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(compare_cells).parameters.items()
    if p.default is not inspect.Parameter.empty
}


def _cells(text: str) -> list[str]:
    cells = [c.strip().lower() for c in text.split(",") if c.strip()]
    unknown = [c for c in cells if c not in LAYERS]
    if not cells or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(LAYERS)}, got {text!r}"
        )
    return cells


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _clip(text: str) -> float | None:
    return None if text.strip().lower() in ("none", "off") else _positive_float(text)


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m rnnkit`` (``%rnnkit compare`` parses with it too)."""
    description, _, epilog = __doc__.partition("\n\n")
    main = argparse.ArgumentParser(
        prog="python -m rnnkit",
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = main.add_subparsers(dest="command", required=True)
    compare = sub.add_parser(
        "compare",
        help="train each cell type on a task; print a table beside the baseline",
        description="Train one small model per cell type on a task with the same data, seed "
        "and budget, and print its held-out loss beside the baseline (the best prediction "
        "that ignores the input). Python: rnnkit.compare_cells(...).",
    )
    d = DEFAULTS
    cells = ",".join(d["cells"])
    compare.add_argument(
        "--task",
        choices=list(TASKS),
        default=d["task"],
        help="adding (sum two marked values), copy (recall 10 symbols after a delay), sine "
        "(forecast the next value) or varlen (classify sequences of varied lengths) "
        "(default: %(default)s)",
    )
    compare.add_argument(
        "--seq-len",
        type=_positive,
        default=d["seq_len"],
        metavar="T",
        help="sequence length; for copy, the delay (default: %(default)s)",
    )
    compare.add_argument(
        "--cells",
        type=_cells,
        default=list(d["cells"]),
        metavar="LIST",
        help=f"comma-separated cell types of {', '.join(LAYERS)} (default: {cells})",
    )
    compare.add_argument(
        "--steps",
        type=_positive,
        default=d["steps"],
        metavar="N",
        help="training steps per cell (default: %(default)s)",
    )
    compare.add_argument(
        "--hidden",
        type=_positive,
        default=d["hidden"],
        metavar="H",
        help="hidden units (default: %(default)s)",
    )
    compare.add_argument(
        "--batch-size",
        type=_positive,
        default=d["batch_size"],
        metavar="B",
        help="batch size (default: %(default)s)",
    )
    compare.add_argument(
        "--lr",
        type=_positive_float,
        default=d["lr"],
        help="Adam's learning rate (default: %(default)s)",
    )
    compare.add_argument(
        "--grad-clip",
        type=_clip,
        default=d["grad_clip"],
        metavar="NORM",
        help="clip gradients to this norm, or 'off' (default: %(default)s)",
    )
    compare.add_argument(
        "--seed",
        type=int,
        default=d["seed"],
        help="seed of the data and the initial weights (default: %(default)s)",
    )
    compare.add_argument(
        "--plot", metavar="FILE", help="save the training-loss curves to FILE (default: none)"
    )
    sub.add_parser(
        "info", help="versions, device and threads", description="Versions, device and threads."
    )
    return main


def compare_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``rnnkit.compare_cells`` among parsed ``compare`` options."""
    return {name: value for name, value in vars(args).items() if name in DEFAULTS}


def save_plot(comparison, path: str) -> None:
    """The training-loss curves of a :class:`rnnkit.compare.Comparison` as an image file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    comparison.plot(figure.subplots())
    figure.savefig(path)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "info":
        print(format_environment())
        return 0
    comparison = compare_cells(**compare_options(args))
    print(comparison)
    if args.plot:
        save_plot(comparison, args.plot)
        print(f"plot saved to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
