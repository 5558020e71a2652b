"""Compare cell types on one task: the same data, seed, budget and optimizer for each cell.

:func:`compare_cells` trains one :class:`rnnkit.SequenceModel` per cell type (``rnn``, ``lstm``,
``gru``) on a synthetic task for a fixed number of steps and measures each on held-out samples.
It answers the course's first question, "does the cell type matter for long memory?", in one
call: on the adding problem (Hochreiter & Schmidhuber 1997) with the defaults (40 steps to
remember across, 800 steps of training) the tanh RNN stays at the level of predicting the mean
while the LSTM and the GRU solve the task.

Every row is set beside the **baseline**: the held-out loss of the best prediction that ignores
the input, fitted on the training targets (their mean for a regression loss, the class
frequencies for cross-entropy; per time step for sequence outputs). A model that does not beat
it has learned nothing. ``python -m rnnkit compare`` and ``%rnnkit compare`` both call
:func:`compare_cells`; the returned :class:`Comparison` prints as a table (text, Markdown and
HTML for notebooks).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rnnkit import names, tasks
from rnnkit.models import LAYERS, SequenceModel
from rnnkit.seeding import seed_everything
from rnnkit.tables import Table
from rnnkit.train import Trainer


@dataclass(frozen=True)
class TaskSpec:
    """How :func:`compare_cells` builds data, model head, loss and metric for one task.

    ``metric`` is the task's own measure of success, shown as a column named ``metric_name``
    (defined in ``metric_help``); a task without one (pure forecasting) has no such column.
    """

    make: Callable[[int, int, int], tuple]  # (n, seq_len, seed) -> data tuple
    input_size: int
    output_size: int
    output: str  # "last" or "sequence"
    loss: str
    metric: Callable[[Tensor, Tensor], Tensor] | None = None
    metric_name: str | None = None
    metric_help: str = ""


def _recalled(output: Tensor, target: Tensor) -> Tensor:
    # Only the recalled symbols count: the blanks before them are trivially right.
    return names.accuracy(output[:, -10:], target[:, -10:])


TASKS: dict[str, TaskSpec] = {
    "adding": TaskSpec(
        lambda n, t, s: tasks.adding_problem(n, t, seed=s),
        2,
        1,
        "last",
        "mse",
        tasks.adding_accuracy,
        "within 0.04",
        "share of predictions within 0.04 of the target (Hochreiter & Schmidhuber 1997)",
    ),
    "copy": TaskSpec(
        lambda n, t, s: tasks.copy_task(n, delay=t, copy_len=10, num_symbols=8, seed=s),
        10,
        9,
        "sequence",
        "cross_entropy",
        _recalled,
        "recalled",
        "share of the 10 recalled symbols that are right (chance 1/8)",
    ),
    "sine": TaskSpec(lambda n, t, s: tasks.multi_sine(n, t, seed=s), 1, 1, "last", "mse"),
    "varlen": TaskSpec(
        lambda n, t, s: tasks.variable_length(n, min_len=max(2, t // 10), max_len=t, seed=s),
        1,
        3,
        "last",
        "cross_entropy",
        names.accuracy,
        "accuracy",
        "share of sequences whose class is right (chance 1/3)",
    ),
}


def baseline_loss(spec: TaskSpec, train_y: Tensor, test_y: Tensor) -> float:
    """Held-out loss of the best input-free prediction fitted on ``train_y``: the mean target
    (MSE) or the class frequencies (cross-entropy), per time step when ``spec.output`` is
    ``"sequence"``."""
    if spec.loss == "mse":
        return float(((test_y - train_y.float().mean(0)) ** 2).mean())
    if spec.loss != "cross_entropy":
        raise ValueError(f"no baseline for loss {spec.loss!r}; expected 'mse' or 'cross_entropy'")
    classes = spec.output_size
    counts = torch.nn.functional.one_hot(train_y, classes).sum(0).double()  # (..., C)
    log_p = (counts + 0.5).log() - (counts.sum(-1, keepdim=True) + 0.5 * classes).log()
    picked = torch.gather(log_p.expand(*test_y.shape, classes), -1, test_y.unsqueeze(-1))
    return float(-picked.mean())


@dataclass
class CellResult:
    """One trained cell: parameters, held-out loss and metric, training time and curve."""

    cell: str
    params: int
    loss: float
    metric: float | None
    seconds: float
    curve: list[float] = field(repr=False)


@dataclass
class Comparison:
    """What :func:`compare_cells` measured. ``print()`` gives a text table; a notebook shows
    an HTML table (:meth:`table` is the :class:`rnnkit.tables.Table`)."""

    task: str
    seq_len: int
    steps: int
    batch_size: int
    hidden: int
    test_size: int
    loss_name: str
    baseline: float
    metric_name: str | None
    metric_help: str
    results: list[CellResult]

    @property
    def title(self) -> str:
        return (
            f"task {self.task}, seq_len {self.seq_len}, {self.steps} steps of batch "
            f"{self.batch_size}, hidden {self.hidden}; held-out {self.loss_name} on "
            f"{self.test_size} samples"
        )

    @property
    def note(self) -> str:
        note = f"baseline: the best prediction that ignores the input, {self.baseline:.4f}"
        if self.metric_name:
            note += f"; {self.metric_name}: {self.metric_help}"
        return note

    def table(self) -> Table:
        """The results as a :class:`rnnkit.tables.Table`, the baseline as the last row."""
        header = ["cell", "params", "held-out loss"]
        header += [self.metric_name] if self.metric_name else []
        header += ["time (s)"]
        rows = []
        for r in self.results:
            row = [r.cell, f"{r.params:,}", f"{r.loss:.4f}"]
            if self.metric_name:
                row.append("-" if r.metric is None else f"{r.metric:.3f}")
            rows.append([*row, f"{r.seconds:.1f}"])
        baseline = ["baseline", "-", f"{self.baseline:.4f}"]
        rows.append(baseline + ["-"] * (len(header) - len(baseline)))
        return Table(header, rows, title=self.title, note=self.note)

    def __str__(self) -> str:
        return str(self.table())

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_markdown_(self) -> str:
        return self.table().to_markdown()

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()

    def plot(self, ax) -> None:
        """Draw each cell's training-loss curve and the baseline on a matplotlib ``ax``."""
        for r in self.results:
            ax.plot(range(1, len(r.curve) + 1), r.curve, label=r.cell)
        ax.axhline(self.baseline, color="gray", ls="--", label="baseline")
        ax.set(xlabel="step", ylabel=f"training {self.loss_name}", yscale="log")
        ax.set_title(f"{self.task}, seq_len {self.seq_len}")
        ax.legend()


def compare_cells(
    cells: Sequence[str] = ("rnn", "lstm", "gru"),
    task: str = "adding",
    *,
    seq_len: int = 40,
    steps: int = 800,
    hidden: int = 32,
    batch_size: int = 32,
    lr: float = 1e-2,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    test_size: int = 512,
) -> Comparison:
    """Train one ``SequenceModel(cell=c)`` per cell on ``task`` and measure it held out.

    Every cell sees the same training samples (``min(max(steps * batch_size, 256), 8192)``,
    drawn with ``seed``, reshuffled each epoch with the same seed) and ``test_size`` held-out
    samples (``seed + 1``), and trains for ``steps`` steps of Adam at ``lr`` with gradients
    clipped to norm ``grad_clip`` (None: off), from weights drawn after
    ``seed_everything(seed)``. Tasks: ``adding`` (``seq_len`` steps; Hochreiter & Schmidhuber
    1997), ``copy`` (recall 10 symbols after a delay of ``seq_len``; Arjovsky et al. 2016),
    ``sine`` (forecast the next value of a noisy sum of sines) and ``varlen`` (classify a sine's
    frequency from sequences of ``seq_len // 10`` to ``seq_len`` steps).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    cells = list(cells)
    unknown = [c for c in cells if c not in LAYERS]
    if not cells or unknown:
        raise ValueError(f"cells must be a non-empty list of {', '.join(LAYERS)}, got {cells!r}")
    for name, value in (("seq_len", seq_len), ("steps", steps), ("hidden", hidden)) + (
        ("batch_size", batch_size),
        ("test_size", test_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not lr > 0 or (grad_clip is not None and not grad_clip > 0):
        raise ValueError(f"lr and grad_clip must be > 0, got lr={lr!r}, grad_clip={grad_clip!r}")
    spec = TASKS[task]
    n_train = min(max(steps * batch_size, 256), 8192)
    train = spec.make(n_train, seq_len, seed)
    test = spec.make(test_size, seq_len, seed + 1)
    results = []
    for cell in cells:
        seed_everything(seed)
        model = SequenceModel(
            spec.input_size, hidden, spec.output_size, cell=cell, output=spec.output
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        metrics = {"metric": spec.metric} if spec.metric else None
        trainer = Trainer(model, optimizer, spec.loss, metrics=metrics, grad_clip=grad_clip)
        started = time.perf_counter()
        epochs = math.ceil(steps * batch_size / n_train)
        trainer.fit(train, epochs=epochs, batch_size=batch_size, max_steps=steps)
        seconds = time.perf_counter() - started
        result = trainer.evaluate(test, batch_size=256)
        results.append(
            CellResult(
                cell=cell,
                params=sum(p.numel() for p in model.parameters()),
                loss=result["loss"],
                metric=result["metrics"].get("metric"),
                seconds=seconds,
                curve=[float(v) for v in trainer.history.step_values("loss")],
            )
        )
    return Comparison(
        task=task,
        seq_len=seq_len,
        steps=steps,
        batch_size=batch_size,
        hidden=hidden,
        test_size=test_size,
        loss_name=spec.loss,
        baseline=baseline_loss(spec, train[1], test[1]),
        metric_name=spec.metric_name,
        metric_help=spec.metric_help,
        results=results,
    )
