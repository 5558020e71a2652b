"""TrainingPanel: start, pause and stop an rnnkit.Trainer run and steer it while it trains."""

from __future__ import annotations

import math
import threading
import time
import uuid

import ipywidgets as w
import torch
from torch import nn

import rnnkit
from rnnkit import names
from rnnkit.widgets.chart import TrainingChart
from rnnkit.widgets.fallback import LIVE_HINT, StaticFallback

SLIDER_DECADES = 1.5  # a slider spans its value / 10**1.5 to value * 10**1.5 by default
SLIDER_WIDTH = "380px"  # three decades over about 250 px of track: ~80 px per decade


def _log_slider(
    description: str, value: float, span: tuple[float, float] | None
) -> w.FloatLogSlider:
    """A log slider over ``span`` (default: 1.5 decades either side of ``value``), widened to
    include ``value``; steps of 1/100 decade."""
    low, high = span or (value / 10**SLIDER_DECADES, value * 10**SLIDER_DECADES)
    low, high = min(low, value), max(high, value)
    return w.FloatLogSlider(
        value=value,
        base=10,
        min=math.log10(low),
        max=math.log10(high),
        step=0.01,
        description=description,
        readout_format=".2e",
        continuous_update=False,
        style={"description_width": "initial"},
        layout={"width": SLIDER_WIDTH},
    )


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"


class TrainingPanel(StaticFallback):
    """Controls, a live chart and a summary for one :class:`rnnkit.Trainer`.

    Controls: Start, Pause/Resume and Stop buttons; learning-rate and clip-norm sliders (log
    scale, acting when released) that change a running job at its next step through
    ``trainer.set_lr(lr)`` and ``trainer.grad_clip = value`` (the "clip" box off means
    ``grad_clip=None``); the number of epochs of the next run; a progress bar over its steps; a
    status line (idle / running / paused / stopped / finished / failed with the error); a chart
    of the training loss per step with the validation loss per epoch, the gradient norm before
    clipping and the learning rate (:class:`rnnkit.widgets.chart.TrainingChart`).

    Where the run happens. **Start** (or ``fit(block=False)``) runs ``trainer.fit`` in a
    background thread. Chosen over a blocking loop that polls UI events because the kernel's
    main thread then stays free: it receives button clicks and slider changes with no event-loop
    tricks (polling means pumping the kernel's message stream by hand, which depends on the
    ipykernel version and works only while one cell executes), and other cells run during
    training. Torch releases the interpreter lock inside its kernels, so training loses little.
    The training thread first takes the caller's ``torch.get_num_threads()``: OpenMP keeps the
    thread count per thread, and a new thread would otherwise run oneDNN's kernels (the fused
    LSTM/GRU on a CPU) on every core, whatever ``torch.set_num_threads`` said (measured: a small
    LSTM 2.9x slower on a busy two-core machine).
    Kernel Interrupt reaches only the main thread: use Stop for a background run.
    ``fit(block=True)`` runs in the calling thread instead, for Run All and nbval (Ctrl+C and
    Kernel Interrupt stop it at a step boundary, as with ``trainer.fit``).

    Who touches what. Widget callbacks only set flags and call the trainer's thread-safe
    controls (``stop``, ``pause``, ``unpause``, ``set_lr``, ``grad_clip``). One thread owns
    the widgets during a run: a watcher that wakes every ``tick`` seconds, reads
    ``trainer.status``, ``trainer.step`` and ``trainer.history`` (the training thread runs no
    panel code at all), updates status and progress, and redraws the chart at most once per
    ``redraw_interval`` seconds, and only while all drawing of the run, the final chart's
    included, stays within ``render_budget`` of the wall time. A redraw costs tens of
    milliseconds of Python that holds the interpreter lock (matplotlib's text layout), time the
    training thread's own Python waits for: the budget is the panel's cost to the run. So the
    first live chart comes after about four seconds (2 x 37 ms at 2%), a run shorter than that
    shows only its final chart, and a long one is redrawn every two seconds or so; status and
    progress change five times a second meanwhile (each update also takes the lock, briefly).

    When a run ends the watcher draws the chart a last time and writes a static image of it and
    a text summary into the notebook output below the panel (display-id updates; the live chart
    is then hidden), so a saved notebook shows the result without a kernel; ``summary`` and
    ``chart_png`` hold the same. Start after a run continues for ``epochs`` more epochs.
    ``redraws`` counts the chart's draws and ``watcher_cpu`` is the CPU time, in seconds, that
    the watcher used in the last run: the panel's whole cost to the run.

    Args:
        trainer: the trainer to drive.
        train, val: training and validation data, as ``trainer.fit`` takes them.
        epochs: epochs per run (the epochs box).
        batch_size: batch size when ``train``/``val`` are tensors.
        max_steps: passed to ``trainer.fit``: at most this many steps per run.
        lr_range, clip_range: ranges of the sliders (widened to include the current values);
            default: 1.5 decades either side of the trainer's lr / clip norm (1.0 when off),
            so that a few pixels of drag change the value by a few percent, not by 10x.
        redraw_interval: shortest time between two live redraws of the chart, in seconds.
        render_budget: largest fraction of the wall time spent drawing the chart (live and
            final).
        tick: how often the watcher updates status and progress, in seconds.
    """

    def __init__(
        self,
        trainer: rnnkit.Trainer,
        train,
        val=None,
        *,
        epochs: int = 1,
        batch_size: int = 32,
        max_steps: int | None = None,
        lr_range: tuple[float, float] | None = None,
        clip_range: tuple[float, float] | None = None,
        redraw_interval: float = 0.25,
        render_budget: float = 0.02,
        tick: float = 0.2,
    ) -> None:
        if not isinstance(trainer, rnnkit.Trainer):
            raise TypeError(f"trainer must be an rnnkit.Trainer, got {type(trainer).__name__}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
        for name, value in (("redraw_interval", redraw_interval), ("tick", tick)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        if not 0 < render_budget <= 1:
            raise ValueError(f"render_budget must be in (0, 1], got {render_budget!r}")
        self.trainer = trainer
        self.train, self.val = train, val
        self.batch_size, self.max_steps = batch_size, max_steps
        self.redraw_interval, self.render_budget, self.tick = redraw_interval, render_budget, tick
        self.summary = "idle: no run yet"
        self.chart_png: bytes | None = None
        self.error: Exception | None = None  # what ended the last run, if it failed
        self.redraws = 0
        self.watcher_cpu = 0.0  # CPU seconds the watcher thread used in the last run
        self._chart = TrainingChart()
        self._run_thread: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._pause_requested = False
        self._stop_requested = False
        self._run_epochs = (0, epochs)  # (first epoch, end epoch) of the current run
        self._run_first_step = 0
        self._started = 0.0
        self._ids = {"summary": uuid.uuid4().hex, "chart": uuid.uuid4().hex}
        self._shown = False
        self._live = False  # the watcher is between its first and last update of a run
        self._draw_cost = 0.04  # seconds of the last draw (a first guess before any)
        trainer.callbacks.append(_RequestsBeforeBegin(self))

        self.start_button = w.Button(description="Start", icon="play", button_style="success")
        self.pause_button = w.Button(description="Pause", icon="pause", disabled=True)
        self.stop_button = w.Button(
            description="Stop", icon="stop", button_style="danger", disabled=True
        )
        self.epochs_box = w.BoundedIntText(
            value=epochs, min=1, max=10**6, description="epochs", layout={"width": "150px"}
        )
        self.lr_slider = _log_slider("learning rate", trainer.lr, lr_range)
        clip = trainer.grad_clip
        self.clip_checkbox = w.Checkbox(
            value=clip is not None,
            description="clip",
            indent=False,
            layout={"width": "auto", "margin": "0 10px 0 16px"},  # its own width, not 300 px
        )
        self.clip_slider = _log_slider("max grad norm", clip or 1.0, clip_range)
        self.clip_slider.disabled = clip is None
        self.progress = w.IntProgress(value=0, min=0, max=1, layout={"width": "240px"})
        self.status_label = w.HTML(value=self._status_html())
        width, height = self._chart.size  # pixels, as the final chart's output (same size)
        self.chart_image = w.Image(
            format="png", layout={"display": "none", "width": f"{width}px", "height": f"{height}px"}
        )  # shown with data
        self.widget = w.VBox(
            [
                w.HBox([self.start_button, self.pause_button, self.stop_button, self.epochs_box]),
                w.HBox([self.lr_slider, self.clip_checkbox, self.clip_slider]),
                w.HBox([self.progress, self.status_label]),
                self.chart_image,
            ]
        )
        self.start_button.on_click(lambda _: self.start())
        self.pause_button.on_click(
            lambda _: self.resume() if self._pause_requested else self.pause()
        )
        self.stop_button.on_click(lambda _: self.stop())
        self.lr_slider.observe(lambda change: self.trainer.set_lr(change["new"]), "value")
        self.clip_slider.observe(lambda _: self._apply_clip(), "value")
        self.clip_checkbox.observe(lambda _: self._apply_clip(), "value")

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        train,
        val=None,
        *,
        optimizer="adam",
        lr: float | None = None,
        loss="mse",
        metrics=None,
        grad_clip: float | None = None,
        epochs: int = 1,
        batch_size: int = 32,
        **trainer_kwargs,
    ) -> TrainingPanel:
        """A panel over ``rnnkit.Trainer(model, optimizer, loss, ...)``; ``optimizer`` and
        ``loss`` are names (see :mod:`rnnkit.names`) or objects."""
        opt = names.make_optimizer(optimizer, model.parameters(), lr)
        trainer = rnnkit.Trainer(
            model, opt, loss, metrics=metrics, grad_clip=grad_clip, **trainer_kwargs
        )
        return cls(trainer, train, val, epochs=epochs, batch_size=batch_size)

    # ---- what the controls call -------------------------------------------------------------

    @property
    def running(self) -> bool:
        """A run started by this panel has not ended yet."""
        watcher = self._watcher
        return watcher is not None and watcher.is_alive()

    @property
    def history(self) -> rnnkit.History:
        return self.trainer.history

    def start(self) -> None:
        """Start a run of ``epochs`` more epochs in a background thread (no-op while running)."""
        if self.running:
            return
        done = self._begin()
        self._run_thread = threading.Thread(
            target=self._run_in_background,
            args=(done, torch.get_num_threads()),
            name="rnnkit-train",
            daemon=True,
        )
        self._run_thread.start()

    def pause(self) -> None:
        """Hold the run at its next step boundary."""
        self._pause_requested = True
        self.trainer.pause()

    def resume(self) -> None:
        """Continue a paused run."""
        self._pause_requested = False
        self.trainer.unpause()

    def stop(self) -> None:
        """End the run at its next step boundary (keeps model and history)."""
        self._pause_requested = False
        self._stop_requested = True
        self.trainer.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the current run and its final drawing are over; False on timeout."""
        watcher = self._watcher
        if watcher is not None:
            watcher.join(timeout)
        return not self.running

    def fit(self, block: bool = True) -> rnnkit.History:
        """Run ``epochs`` more epochs. ``block=True``: here, returning when the run ends (an
        exception of the run is raised after the panel shows it); ``block=False``: like Start.
        In IPython a panel not yet displayed is displayed first. Returns the history."""
        if not self._shown and _in_ipython():
            self._ipython_display_()
        if not block:
            self.start()
            return self.history
        if self.running:
            raise RuntimeError("this panel is already running; wait() for it or stop() it")
        done = self._begin()
        try:
            self._fit()
        except Exception as exc:
            self.error = exc
            raise
        finally:
            done.set()
            self.wait()
        return self.history

    def _apply_clip(self) -> None:
        self.trainer.grad_clip = self.clip_slider.value if self.clip_checkbox.value else None
        self.clip_slider.disabled = not self.clip_checkbox.value

    # ---- the run ----------------------------------------------------------------------------

    def _begin(self) -> threading.Event:
        first = self.trainer.epoch
        self._run_epochs = (first, first + self.epochs_box.value)
        self._run_first_step = self.trainer.step
        self._pause_requested = self._stop_requested = False
        self.error = None
        self._started = time.perf_counter()
        done = threading.Event()
        self._watcher = threading.Thread(
            target=self._watch, args=(done,), name="rnnkit-panel", daemon=True
        )
        self._watcher.start()
        return done

    def _fit(self) -> None:
        self.trainer.fit(
            self.train,
            self.val,
            epochs=self._run_epochs[1] - self._run_epochs[0],
            batch_size=self.batch_size,
            max_steps=self.max_steps,
        )

    def _run_in_background(self, done: threading.Event, threads: int) -> None:
        torch.set_num_threads(threads)  # the caller's, for OpenMP in this thread too
        try:
            self._fit()
        except Exception as exc:  # shown in the panel and kept in self.error
            self.error = exc
        finally:
            done.set()

    def _watch(self, done: threading.Event) -> None:
        """The one thread that updates the widgets during a run."""
        began = time.thread_time()
        self._live = True
        published = self._live_state()
        self._publish()
        self._set(self.start_button, "disabled", True)
        self._set(self.epochs_box, "disabled", True)
        self._set(self.pause_button, "disabled", False)
        self._set(self.stop_button, "disabled", False)
        drawn, last_draw = 0.0, self._started  # seconds spent drawing; when last drawn
        while not done.wait(self.tick):
            self._show_state()
            if self._live_state() != published:  # paused: say so below the panel too
                published = self._live_state()
                self._publish()
            now = time.perf_counter()
            affordable = drawn + 2 * self._draw_cost <= self.render_budget * (now - self._started)
            if (
                affordable  # this draw and the final one within the budget
                and now - last_draw >= self.redraw_interval
                and self._chart.read(self.trainer.history)
            ):
                drawn += self._draw()
                last_draw = time.perf_counter()
        self._chart.read(self.trainer.history)
        self._draw(live=False)  # the static copy below the panel takes over
        self._set(self.chart_image.layout, "display", "none")
        self._show_state()
        self._set(self.start_button, "disabled", False)
        self._set(self.epochs_box, "disabled", False)
        self._set(self.pause_button, "disabled", True)
        self._set(self.stop_button, "disabled", True)
        self.summary = self._summary()
        self._live = False
        self._publish()
        self.watcher_cpu = time.thread_time() - began

    def _draw(self, live: bool = True) -> float:
        """Render the chart (into the live image when ``live``); returns the seconds it took.
        Wall time, not this thread's CPU time: the watcher holds the interpreter lock for most
        of a draw, also while a busy machine has it descheduled, and all that time the training
        thread's Python waits."""
        began = time.perf_counter()
        self.chart_png = self._chart.render()
        if live:
            self.chart_image.value = self.chart_png
            self._set(self.chart_image.layout, "display", None)
        self.redraws += 1
        self._draw_cost = time.perf_counter() - began
        return self._draw_cost

    @staticmethod
    def _set(widget: w.Widget, name: str, value) -> None:
        if getattr(widget, name) != value:  # no message for an unchanged value
            setattr(widget, name, value)

    def _show_state(self) -> None:
        trainer = self.trainer
        per_epoch = trainer.steps_per_epoch
        first, end = self._run_epochs
        total = per_epoch * (end - first) if per_epoch else None
        if self.max_steps is not None:
            total = self.max_steps if total is None else min(total, self.max_steps)
        self._set(self.progress, "max", max(total or 1, 1))
        self._set(self.progress, "value", min(trainer.step - self._run_first_step, total or 0))
        paused = trainer.status == "paused" or self._pause_requested
        self._set(self.pause_button, "description", "Resume" if paused else "Pause")
        self._set(self.pause_button, "icon", "play" if paused else "pause")
        self._set(self.status_label, "value", self._status_html())

    @property
    def status(self) -> str:
        """The trainer's status, or "failed" when the last run raised before the trainer began
        (e.g. in its data checks)."""
        status = self.trainer.status
        if self.error is not None and status not in ("running", "paused"):
            return "failed"
        return status

    def _status_html(self) -> str:
        trainer = self.trainer
        status = self.status
        colour = {"failed": "#c62828", "finished": "#2e7d32", "stopped": "#ef6c00"}.get(status)
        head = f"<b style='color:{colour}'>{status}</b>" if colour else f"<b>{status}</b>"
        first, end = self._run_epochs
        epoch = min(trainer.epoch + 1, end) if status in ("running", "paused") else trainer.epoch
        parts = [head, f"epoch {epoch}/{end}", f"step {trainer.step}"]
        steps = trainer.history.steps
        if steps:
            parts.append(f"loss {_fmt(steps[-1]['loss'])}")
        if status == "failed":
            parts.append(_escape(f"{type(self.error).__name__}: {self.error}"))
        return " · ".join(parts)

    def _summary(self) -> str:
        trainer = self.trainer
        history = trainer.history
        first, end = self._run_epochs
        seconds = time.perf_counter() - self._started
        steps = trainer.step - self._run_first_step
        lines = [
            f"rnnkit training run: {self.status} at epoch {trainer.epoch}/{end}, "
            f"{steps} steps in {seconds:.1f} s (step {trainer.step} in total)"
        ]
        if self.error is not None:
            lines.append(f"error: {type(self.error).__name__}: {self.error}")
        if history.epochs:
            last = history.epochs[-1]
            val = f", val_loss {_fmt(last['val_loss'])}" if "val_loss" in last else ""
            lines.append(f"last epoch: loss {_fmt(last['loss'])}{val}")
            best = history.best("val_loss") if "val_loss" in last else None
            if best is not None:
                lines.append(f"best val_loss {_fmt(best[1])} at epoch {best[0] + 1}")
        elif history.steps:
            lines.append(f"last step: loss {_fmt(history.steps[-1]['loss'])}")
        clip = trainer.grad_clip
        lines.append(f"lr {trainer.lr:.3g}, grad clip {'off' if clip is None else f'{clip:.3g}'}")
        changes = [e for e in history.events if e.get("event") == "set_lr"]
        if changes:
            lines.append(
                "lr set during training: "
                + ", ".join(f"{e['lr']:.3g} at step {e['step']}" for e in changes[-5:])
            )
        return "\n".join(lines)

    # ---- display ----------------------------------------------------------------------------

    def fallback_text(self) -> str:
        """What front-ends without a kernel show in place of the controls (GitHub, nbconvert):
        what the panel drives; its run's summary and final chart are outputs of their own."""
        trainer = self.trainer
        params = sum(p.numel() for p in trainer.model.parameters())
        loss = trainer.loss_name or getattr(trainer.loss_fn, "__name__", "custom loss")
        clip = "off" if trainer.grad_clip is None else f"{trainer.grad_clip:.3g}"
        return (
            f"TrainingPanel: {type(trainer.model).__name__} ({params:,} parameters), "
            f"{type(trainer.optimizer).__name__} at lr {trainer.lr:.3g}, loss {loss}, "
            f"grad clip {clip}, {self.epochs_box.value} epoch(s) per run\n"
            f"Start / Pause / Stop, lr and clip sliders and a live chart: {LIVE_HINT}; "
            "the run's summary and chart are the outputs below."
        )

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)
        display(self._summary_bundle(), raw=True, display_id=self._ids["summary"])
        bundle, metadata = self._chart_bundle()
        display(bundle, raw=True, metadata=metadata, display_id=self._ids["chart"])
        self._shown = True

    def _live_state(self) -> str:
        paused = self.trainer.status == "paused" or self._pause_requested
        return "paused" if paused else "running"

    def _summary_bundle(self) -> dict:
        if self._live:  # the live chart and status are in the panel
            text = (
                f"{self._live_state()} at step {self.trainer.step}; the live chart is in the panel"
            )
        else:
            text = self.summary
        return {"text/plain": text}

    def _chart_bundle(self) -> tuple[dict, dict]:
        """The final chart's display data and metadata: shown at the size of the live chart."""
        import base64

        if self._live or self.chart_png is None or not self._chart.steps:
            return {"text/plain": ""}, {}
        width, height = self._chart.size
        bundle = {
            "image/png": base64.b64encode(self.chart_png).decode("ascii"),
            "text/plain": "<the chart of the run: loss, gradient norm, learning rate>",
        }
        return bundle, {"image/png": {"width": width, "height": height}}

    def _publish(self) -> None:
        """Write the summary and the final chart into the displayed outputs (while running: the
        status in the summary, no chart: the live chart is in the panel)."""
        if not self._shown:
            return
        from IPython.display import update_display

        update_display(self._summary_bundle(), raw=True, display_id=self._ids["summary"])
        bundle, metadata = self._chart_bundle()
        update_display(bundle, raw=True, metadata=metadata, display_id=self._ids["chart"])

    def __repr__(self) -> str:
        return f"TrainingPanel({self.status}, step {self.trainer.step})"


class _RequestsBeforeBegin(rnnkit.Callback):
    """Re-issues a Stop or Pause that came between Start and the trainer's start:
    ``trainer.fit`` clears earlier requests when it begins."""

    def __init__(self, panel: TrainingPanel) -> None:
        self.panel = panel

    def on_fit_begin(self, trainer: rnnkit.Trainer) -> None:
        if self.panel._stop_requested:
            trainer.stop()
        elif self.panel._pause_requested:
            trainer.pause()


def _escape(text: str) -> str:
    import html

    return html.escape(text)


def _in_ipython() -> bool:
    from IPython import get_ipython

    return get_ipython() is not None
