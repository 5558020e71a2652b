"""``python -m rnnkit``: headless jobs.

``compare``: train one small model per cell type on a task and print a table (final held-out
loss, accuracy where the task has one, parameters, time); ``--plot FILE`` saves the loss curves.
``info``: versions, device and threads (:func:`rnnkit.info.format_environment`).

Example: ``python -m rnnkit compare --task adding --seq-len 100 --cells rnn,lstm,gru --steps 300``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rnnkit import names, tasks
from rnnkit.info import format_environment
from rnnkit.models import LAYERS, SequenceModel
from rnnkit.seeding import seed_everything
from rnnkit.train import Trainer


@dataclass
class TaskSpec:
    """How ``compare`` builds data, model head and loss for one task."""

    make: Callable[[int, int, int], tuple]  # (n, seq_len, seed) -> data tuple
    input_size: int
    output_size: int
    output: str
    loss: str
    accuracy: Callable | None


def _copy_accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Only the recalled symbols count: the blanks before them are trivially right.
    return names.accuracy(output[:, -10:], target[:, -10:])


TASKS = {
    "adding": TaskSpec(
        lambda n, t, s: tasks.adding_problem(n, t, seed=s),
        2,
        1,
        "last",
        "mse",
        tasks.adding_accuracy,
    ),
    "copy": TaskSpec(
        lambda n, t, s: tasks.copy_task(n, delay=t, copy_len=10, num_symbols=8, seed=s),
        10,
        9,
        "sequence",
        "cross_entropy",
        _copy_accuracy,
    ),
    "sine": TaskSpec(lambda n, t, s: tasks.multi_sine(n, t, seed=s), 1, 1, "last", "mse", None),
    "varlen": TaskSpec(
        lambda n, t, s: tasks.variable_length(n, min_len=max(2, t // 10), max_len=t, seed=s),
        1,
        3,
        "last",
        "cross_entropy",
        names.accuracy,
    ),
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


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m rnnkit", description=__doc__.splitlines()[0])
    sub = main.add_subparsers(dest="command", required=True)
    compare = sub.add_parser("compare", help="train each cell type on a task; print a table")
    compare.add_argument("--task", choices=sorted(TASKS), default="adding")
    compare.add_argument("--seq-len", type=_positive, default=100)
    compare.add_argument("--cells", type=_cells, default=["rnn", "lstm", "gru"])
    compare.add_argument("--steps", type=_positive, default=200)
    compare.add_argument("--hidden", type=_positive, default=32)
    compare.add_argument("--batch-size", type=_positive, default=32)
    compare.add_argument("--lr", type=_positive_float, default=1e-2)
    compare.add_argument("--grad-clip", type=_positive_float, default=1.0)
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--plot", metavar="FILE", help="save the training-loss curves here")
    sub.add_parser("info", help="versions, device and threads")
    return main


def compare(args: argparse.Namespace) -> list[dict]:
    """Train each cell on the task with the same data and seed; return one row per cell."""
    spec = TASKS[args.task]
    n_train = min(max(args.steps * args.batch_size, 256), 8192)
    train = spec.make(n_train, args.seq_len, args.seed)
    test = spec.make(512, args.seq_len, args.seed + 1)
    rows = []
    for cell in args.cells:
        seed_everything(args.seed)
        model = SequenceModel(
            spec.input_size, args.hidden, spec.output_size, cell=cell, output=spec.output
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        metrics = {"accuracy": spec.accuracy} if spec.accuracy else None
        trainer = Trainer(model, optimizer, spec.loss, metrics=metrics, grad_clip=args.grad_clip)
        started = time.perf_counter()
        epochs = -(-args.steps * args.batch_size // n_train)
        trainer.fit(train, epochs=epochs, batch_size=args.batch_size, max_steps=args.steps)
        seconds = time.perf_counter() - started
        result = trainer.evaluate(test, batch_size=256)
        rows.append(
            {
                "cell": cell,
                "params": sum(p.numel() for p in model.parameters()),
                "loss": result["loss"],
                "accuracy": result["metrics"].get("accuracy"),
                "time": seconds,
                "curve": trainer.history.step_values("loss"),
            }
        )
    return rows


def format_table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"task {args.task}, seq_len {args.seq_len}, {args.steps} steps of batch "
        f"{args.batch_size}, hidden {args.hidden}, held-out loss on 512 samples",
        "| cell | params | final loss | accuracy | time (s) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        lines.append(f"| {r['cell']} | {r['params']} | {r['loss']:.4f} | {acc} | {r['time']:.1f} |")
    return "\n".join(lines)


def save_plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in rows:
        ax.plot(r["curve"], label=r["cell"])
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "info":
        print(format_environment())
        return 0
    rows = compare(args)
    print(format_table(rows, args))
    if args.plot:
        save_plot(rows, args.plot, f"{args.task}, seq_len {args.seq_len}")
        print(f"plot saved to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
