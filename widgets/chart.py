"""The training chart: loss, gradient norm and learning rate of a run, rendered to PNG bytes.

A figure made without pyplot (so it never shows up as a stray inline plot) and drawn by Agg:
the lines are created once and given new data at each redraw, which costs a few tens of
milliseconds however long the run. :class:`TrainingChart` reads a :class:`rnnkit.History`
incrementally (only the records added since the last redraw) and thins long runs to at most
``max_points`` points per line for drawing.
"""

from __future__ import annotations

import bisect
import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator, NullLocator


def _finite(value) -> float:
    return value if value is not None and math.isfinite(value) else math.nan


class TrainingChart:
    """Three panels: training loss per step (and validation loss per epoch), gradient norm
    before clipping per step, learning rate per step."""

    def __init__(self, *, width: float = 9.0, height: float = 2.6, dpi: int = 80) -> None:
        self.figure = Figure(figsize=(width, height), dpi=dpi)
        self.figure.subplots_adjust(left=0.06, right=0.99, bottom=0.17, top=0.89, wspace=0.25)
        FigureCanvasAgg(self.figure)
        self.loss_ax, self.grad_ax, self.lr_ax = self.figure.subplots(1, 3)
        (self.loss_line,) = self.loss_ax.plot([], [], lw=1, label="train")
        (self.val_line,) = self.loss_ax.plot([], [], "o-", ms=3, lw=1.5, label="val")
        (self.grad_line,) = self.grad_ax.plot([], [], lw=1, color="tab:red")
        (self.lr_line,) = self.lr_ax.plot([], [], lw=1.5, color="tab:green")
        self.loss_ax.set(title="loss", xlabel="step")
        self.grad_ax.set(title="gradient norm (before clipping)", xlabel="step", yscale="log")
        self.lr_ax.set(title="learning rate", xlabel="step", yscale="log")
        for ax in (self.loss_ax, self.grad_ax, self.lr_ax):  # few ticks: text is most of a draw
            ax.xaxis.set_major_locator(MaxNLocator(4, integer=True))
            ax.yaxis.set_minor_locator(NullLocator())
        self.loss_ax.yaxis.set_major_locator(MaxNLocator(4))
        for ax in (self.grad_ax, self.lr_ax):
            ax.yaxis.set_major_locator(LogLocator(numticks=4))
        self.steps: list[int] = []
        self.step_epochs: list[int] = []
        self.loss: list[float] = []
        self.grad_norm: list[float] = []
        self.lr: list[float] = []
        self.val_steps: list[int] = []
        self.val_loss: list[float] = []
        self._seen_steps = 0
        self._seen_epochs = 0

    def read(self, history) -> bool:
        """Take the records added to ``history`` since the last call; True if there were any."""
        steps, epochs = history.steps, history.epochs
        new_steps, new_epochs = steps[self._seen_steps :], epochs[self._seen_epochs :]
        for record in new_steps:
            self.steps.append(record["step"] + 1)
            self.step_epochs.append(record["epoch"])
            self.loss.append(_finite(record["loss"]))
            self.grad_norm.append(_finite(record["grad_norm"]))
            self.lr.append(record["lr"])
        for record in new_epochs:
            if "val_loss" in record:  # drawn at the epoch's last step
                last = bisect.bisect_right(self.step_epochs, record["epoch"]) - 1
                self.val_steps.append(self.steps[last] if last >= 0 else 0)
                self.val_loss.append(_finite(record["val_loss"]))
        self._seen_steps += len(new_steps)
        self._seen_epochs += len(new_epochs)
        return bool(new_steps or new_epochs)

    def render(self, max_points: int = 2000) -> bytes:
        """Draw the current data and return the figure as PNG bytes."""
        stride = max(1, math.ceil(len(self.steps) / max_points))
        x = self.steps[::stride]
        self.loss_line.set_data(x, self.loss[::stride])
        self.grad_line.set_data(x, self.grad_norm[::stride])
        self.lr_line.set_data(x, self.lr[::stride])
        self.val_line.set_data(self.val_steps, self.val_loss)
        if self.val_steps and self.loss_ax.get_legend() is None:
            self.loss_ax.legend(loc="upper right", fontsize="small")
        for ax in (self.loss_ax, self.grad_ax, self.lr_ax):
            ax.relim()
            ax.autoscale_view()
        if self.lr and min(self.lr) == max(self.lr):  # a flat line: give log axes a span
            self.lr_ax.set_ylim(self.lr[0] / 2, self.lr[0] * 2)
        self.lr_ax.set_title(
            f"learning rate (now {self.lr[-1]:.3g})" if self.lr else "learning rate"
        )
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", pil_kwargs={"compress_level": 1})
        return buffer.getvalue()
