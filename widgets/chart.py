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
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

WIDTH, HEIGHT, DPI = 9.0, 2.6, 80  # inches, dots per inch: 720 x 208 pixels


def _finite(value) -> float:
    return value if value is not None and math.isfinite(value) else math.nan


def log_limits(values: list[float]) -> tuple[float, float] | None:
    """Limits of a log axis that show every finite positive value with a margin of 1.5x either
    way (a flat line gets a span of 2.25x around its value); None without such values."""
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if not positive:
        return None
    return min(positive) / 1.5, max(positive) * 1.5


def log_ticks(low: float, high: float, most: int = 5) -> list[float]:
    """Labelled ticks for a log axis from ``low`` to ``high``: powers of ten when the range
    holds at least two, else the 1-2-5 values within it (at most ``most``); a narrow range also
    gets its geometric middle (a flat line's own value)."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    decades = [10.0**k for k in range(first, last + 1) if low <= 10.0**k <= high]
    if len(decades) >= 2:
        step = math.ceil(len(decades) / most)
        return decades[::step]
    nice = [m * 10.0**k for k in range(first, last + 1) for m in (1, 2, 5)]
    inside = [v for v in nice if low <= v <= high]
    if len(inside) >= 2:
        return inside[:: math.ceil(len(inside) / most)]
    middle = float(f"{math.sqrt(low * high):.2g}")
    return sorted({middle, *(v for v in inside if not 0.8 < v / middle < 1.25)})


def _short(value: float, _position=None) -> str:
    """3e-3, 2.8e-4, 0.5, 12: short labels for log ticks."""
    if 1e-2 <= abs(value) < 1e3:
        return f"{value:.2g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


class TrainingChart:
    """Three panels: training loss per step (and validation loss per epoch), gradient norm
    before clipping per step, learning rate per step."""

    def __init__(self, *, width: float = WIDTH, height: float = HEIGHT, dpi: int = DPI) -> None:
        self.figure = Figure(figsize=(width, height), dpi=dpi)
        self.size = (round(width * dpi), round(height * dpi))  # pixels of every render
        # room on the right for the last step label, on the left for the log-tick labels
        self.figure.subplots_adjust(left=0.065, right=0.965, bottom=0.17, top=0.89, wspace=0.3)
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
            ax.yaxis.set_major_formatter(FuncFormatter(_short))
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
        self.loss_ax.relim()
        self.loss_ax.autoscale_view()
        for ax, values in ((self.grad_ax, self.grad_norm), (self.lr_ax, self.lr)):
            ax.relim()
            ax.autoscale_view(scaley=False)
            limits = log_limits(values)  # every redraw: the data's range, however it moved
            if limits is not None:
                ax.set_ylim(*limits)
                ax.yaxis.set_major_locator(FixedLocator(log_ticks(*limits)))
        self.lr_ax.set_title(
            f"learning rate (now {self.lr[-1]:.3g})" if self.lr else "learning rate"
        )
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", pil_kwargs={"compress_level": 1})
        return buffer.getvalue()
