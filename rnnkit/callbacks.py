"""Callbacks: the one way to extend a :class:`rnnkit.Trainer` run.

The trainer calls, in order, for every callback in its list::

    on_fit_begin(trainer)
      on_epoch_begin(trainer, epoch)
        on_batch_begin(trainer, batch_index)
        on_after_backward(trainer, logs)    # gradients ready, update not yet applied
        on_batch_end(trainer, logs)
      on_epoch_end(trainer, logs)
    on_interrupt(trainer)                   # stop() or Ctrl+C, at a step boundary
    on_exception(trainer, exc)              # the run failed; exc is re-raised afterwards
    on_fit_end(trainer)                     # always last, whatever the ending (see trainer.status)

``logs`` are plain dicts of floats. Per batch: ``step`` (0-based, over the whole run), ``epoch``,
``batch`` (0-based within the epoch), ``loss``, ``grad_norm`` (before clipping), ``lr`` (the rate
the update used), ``batch_size``, ``time`` (seconds for the step), ``skipped`` when the update was
skipped or undone, and each metric. Per epoch: ``epoch``, ``loss``, ``val_loss`` (with validation
data), ``metrics`` (a dict; validation values are prefixed ``val_``), ``lr``, ``time``, ``steps``,
``skipped``. A callback that keeps state across a resume defines ``state_dict()`` /
``load_state_dict()``.

``on_after_backward`` runs only for callbacks that define it, with the step's values read from
the device; setting ``logs["skipped"] = True`` there skips the update. On a GPU the trainer may
call ``on_batch_end`` one step late (while the next step is in flight) when every callback has
``deferrable = True``, as rnnkit's own do; a callback without it that defines ``on_batch_end``
gets every step at once.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rnnkit.clipping import NonFiniteError

if TYPE_CHECKING:
    from rnnkit.train import Trainer


class Callback:
    """Base class: every event is a no-op; override the ones you need."""

    deferrable = False  # on_batch_end may run one step late (see the module doc)

    def on_fit_begin(self, trainer: Trainer) -> None: ...
    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None: ...
    def on_batch_begin(self, trainer: Trainer, batch_index: int) -> None: ...
    def on_after_backward(self, trainer: Trainer, logs: dict) -> None: ...
    def on_batch_end(self, trainer: Trainer, logs: dict) -> None: ...
    def on_epoch_end(self, trainer: Trainer, logs: dict) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...
    def on_interrupt(self, trainer: Trainer) -> None: ...
    def on_exception(self, trainer: Trainer, exc: BaseException) -> None: ...


def _lookup(record: dict, key: str):
    if key in record:
        return record[key]
    return record.get("metrics", {}).get(key)


def _is_better(value, best, mode: str, min_delta: float = 0.0) -> bool:
    """``value`` improves on ``best``; a NaN or infinite value never does."""
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _check_mode(mode: str) -> str:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    return mode


class History(Callback):
    """The record of a run: ``steps`` (one dict per batch), ``epochs`` (one per epoch) and
    ``events`` (e.g. ``set_lr``). Every trainer has one, first in its callbacks.

    ``history["val_loss"]`` is the per-epoch list of a key (metrics included);
    :meth:`step_values` gives a per-step list. :meth:`to_dict` / :meth:`to_json` give plain types.
    """

    deferrable = True

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.epochs: list[dict] = []
        self.events: list[dict] = []

    def on_batch_end(self, trainer: Trainer, logs: dict) -> None:
        self.steps.append(dict(logs))

    def on_epoch_end(self, trainer: Trainer, logs: dict) -> None:
        self.epochs.append(copy.deepcopy(logs))

    def __getitem__(self, key: str) -> list:
        values = [_lookup(e, key) for e in self.epochs]
        if any(v is not None for v in values):
            return values
        if any(key in s for s in self.steps):
            return self.step_values(key)
        raise KeyError(f"{key!r} is in no epoch or step record of this history")

    def __contains__(self, key: str) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    def __len__(self) -> int:
        return len(self.epochs)

    def __repr__(self) -> str:
        last = self.epochs[-1] if self.epochs else (self.steps[-1] if self.steps else {})
        shown = {k: last[k] for k in ("loss", "val_loss") if k in last}
        return f"History({len(self.epochs)} epochs, {len(self.steps)} steps, last {shown})"

    def step_values(self, key: str) -> list:
        """Per-step values of ``key`` (None where a step lacks it)."""
        return [s.get(key) for s in self.steps]

    def best(self, key: str = "val_loss", mode: str = "min") -> tuple[int, float] | None:
        """``(epoch index, value)`` of the best finite per-epoch value, or None."""
        best = None
        for index, value in enumerate(self[key]):
            if _is_better(value, None if best is None else best[1], _check_mode(mode)):
                best = (index, value)
        return best

    def to_dict(self) -> dict:
        """Plain lists and dicts, JSON-serialisable."""
        return {"steps": list(self.steps), "epochs": list(self.epochs), "events": self.events}

    state_dict = to_dict

    def load_state_dict(self, state: dict) -> None:
        self.steps = [dict(s) for s in state["steps"]]
        self.epochs = [copy.deepcopy(e) for e in state["epochs"]]
        self.events = [dict(e) for e in state.get("events", [])]

    @classmethod
    def from_dict(cls, state: dict) -> History:
        history = cls()
        history.load_state_dict(state)
        return history

    def to_json(self, path: str | Path | None = None) -> str:
        """The history as JSON text (NaN written as ``NaN``); also written to ``path`` if given."""
        text = json.dumps(self.to_dict())
        if path is not None:
            Path(path).write_text(text)
        return text


class NonFiniteGuard(Callback):
    """What a non-finite step does: ``policy="stop"`` (raise) or ``"skip"`` (go on).

    A step is non-finite when its loss, its gradient norm, or a parameter after its update is NaN
    or infinite. Either way the update is undone bit-exactly (:class:`rnnkit.update_guard.
    UpdateGuard`: the parameters and optimizer state are those before the step, the LR schedule
    does not advance, the step is recorded with ``skipped``), so the parameters are never left
    non-finite. ``"stop"`` then raises :class:`NonFiniteError` naming the step, the batch and the
    first parameter whose gradient is not finite; ``"skip"`` counts it in ``self.skipped`` (and
    ``trainer.skipped_steps``, ``logs["skipped"]``). With a mixed-precision ``GradScaler`` an
    overflow in the gradients alone is the scaler's to handle (it skips that update and lowers
    its scale); a non-finite loss or parameter still counts. On a GPU the step may be reported
    one step late (the trainer reads it before the next update): the error names the step.
    """

    deferrable = True

    def __init__(self, policy: str = "stop") -> None:
        if policy not in ("stop", "skip"):
            raise ValueError(f"nonfinite policy must be 'stop' or 'skip', got {policy!r}")
        self.policy = policy
        self.skipped = 0

    def on_skipped(self, trainer: Trainer, logs: dict, culprit: str | None) -> None:
        """Called by the trainer for a step found non-finite (its update already undone)."""
        if self.policy == "skip":
            self.skipped += 1
            return
        trainer.optimizer.zero_grad(set_to_none=True)
        finite_inputs = math.isfinite(logs["loss"]) and math.isfinite(logs["grad_norm"])
        if finite_inputs:
            where = (
                "the loss and gradients were finite, but the update made "
                f"{culprit or 'a parameter'} non-finite (the learning rate is too large?)"
            )
        else:
            where = (
                f"first non-finite gradient: {culprit}"
                if culprit
                else ("all parameter gradients are finite")
            )
        raise NonFiniteError(
            f"non-finite training step {logs['step']} (epoch {logs['epoch']}, batch "
            f"{logs['batch']}): loss={logs['loss']}, grad_norm={logs['grad_norm']}; {where}. "
            "The update was undone: the parameters are those before that step. Lower the "
            "learning rate, clip gradients (grad_clip=...), or pass nonfinite='skip' to skip "
            "such steps."
        )

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = state["skipped"]


class GradientClipping(Callback):
    """Clip the global gradient norm to ``max_norm`` (Pascanu, Mikolov & Bengio, 2013, "On the
    difficulty of training recurrent neural networks"): ``g <- g * min(1, max_norm / ||g||)``.

    Sets ``trainer.grad_clip`` before each step, which the loop applies; ``max_norm`` may be a
    function of the step (e.g. a clipping warm-up). ``Trainer(grad_clip=c)`` is the constant case.
    """

    def __init__(self, max_norm: float | Callable[[int], float | None]) -> None:
        if not callable(max_norm) and not (isinstance(max_norm, (int, float)) and max_norm > 0):
            raise ValueError(f"max_norm must be a positive number or a callable, got {max_norm!r}")
        self.max_norm = max_norm

    def on_batch_begin(self, trainer: Trainer, batch_index: int) -> None:
        trainer.grad_clip = (
            self.max_norm(trainer.step) if callable(self.max_norm) else self.max_norm
        )


class LRSchedule(Callback):
    """Step a ``torch.optim.lr_scheduler`` scheduler after every batch or every epoch.

    ``interval="batch"`` suits per-step schedules such as one-cycle (Smith & Topin, 2019,
    "Super-convergence"; ``torch.optim.lr_scheduler.OneCycleLR``); ``"epoch"`` suits StepLR,
    cosine annealing, and ``ReduceLROnPlateau``, which is stepped with ``monitor`` (``val_loss``,
    else ``loss``). Once ``trainer.set_lr`` is used, the schedule stops (manual control wins).
    """

    def __init__(self, scheduler, interval: str = "batch", monitor: str | None = None) -> None:
        if interval not in ("batch", "epoch"):
            raise ValueError(f"scheduler_interval must be 'batch' or 'epoch', got {interval!r}")
        if not hasattr(scheduler, "step") or not hasattr(scheduler, "state_dict"):
            raise TypeError(
                "scheduler must be a torch.optim.lr_scheduler object, got "
                f"{type(scheduler).__name__}"
            )
        self.scheduler, self.interval, self.monitor = scheduler, interval, monitor

    deferrable = True

    def on_batch_end(self, trainer: Trainer, logs: dict) -> None:
        if self.interval == "batch" and trainer.scheduler_active and not logs.get("skipped"):
            self.scheduler.step()

    def on_epoch_end(self, trainer: Trainer, logs: dict) -> None:
        if self.interval != "epoch" or not trainer.scheduler_active:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            key = self.monitor or ("val_loss" if "val_loss" in logs else "loss")
            self.scheduler.step(_lookup(logs, key))
        else:
            self.scheduler.step()


class EarlyStopping(Callback):
    """End the run when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    A NaN or infinite value never counts as an improvement. With ``restore_best_weights`` the
    model gets the weights of the best epoch back when it stops early. The run then ends as
    ``"finished"``.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str = "min",
        restore_best_weights: bool = True,
    ) -> None:
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be an int >= 0, got {patience!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.mode, self.restore_best_weights = _check_mode(mode), restore_best_weights
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None
        self._best_weights: dict | None = None

    def on_epoch_end(self, trainer: Trainer, logs: dict) -> None:
        value = _lookup(logs, self.monitor)
        if value is None:
            raise ValueError(
                f"EarlyStopping monitors {self.monitor!r}, which the epoch logs do not have "
                f"(keys: {sorted(logs) + sorted(logs.get('metrics', {}))})"
            )
        if _is_better(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.wait = value, logs["epoch"], 0
            if self.restore_best_weights:
                self._best_weights = {
                    k: v.detach().clone() for k, v in trainer.model.state_dict().items()
                }
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = logs["epoch"]
            trainer.stop_training = True

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.stopped_epoch is not None and self._best_weights is not None:
            trainer.model.load_state_dict(self._best_weights)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]


class ModelCheckpoint(Callback):
    """Write training checkpoints into ``directory`` (see :mod:`rnnkit.checkpoint`).

    ``last.pt`` after every epoch (and every ``every_steps`` steps if set), ``best.pt`` when
    ``monitor`` improves (a NaN never does), ``interrupted.pt`` when the run is stopped or
    interrupted at a step boundary. Each one is a full checkpoint that ``trainer.fit(...,
    resume=path)`` continues exactly. In a distributed run only rank 0 writes. A checkpoint is
    never written with a non-finite parameter (:func:`rnnkit.save_checkpoint` refuses it and the
    previous file stays).
    """

    deferrable = True

    def __init__(
        self,
        directory: str | Path,
        monitor: str = "val_loss",
        mode: str = "min",
        save_best: bool = True,
        every_steps: int | None = None,
    ) -> None:
        if every_steps is not None and (not isinstance(every_steps, int) or every_steps < 1):
            raise ValueError(f"every_steps must be an int >= 1 or None, got {every_steps!r}")
        self.directory = Path(directory)
        self.monitor, self.mode, self.save_best = monitor, _check_mode(mode), save_best
        self.every_steps = every_steps
        self.best: float | None = None

    def on_batch_end(self, trainer: Trainer, logs: dict) -> None:
        if self.every_steps and trainer.step % self.every_steps == 0:
            trainer.save_checkpoint(self.directory / "last.pt")

    def on_epoch_end(self, trainer: Trainer, logs: dict) -> None:
        # The trainer counts the epoch as done before this event, so "last" resumes after it.
        if self.save_best:
            value = _lookup(logs, self.monitor)
            if value is None and self.monitor == "val_loss":
                value = logs.get("loss")
            if _is_better(value, self.best, self.mode):
                self.best = value
                trainer.save_checkpoint(self.directory / "best.pt")
        trainer.save_checkpoint(self.directory / "last.pt")

    def on_interrupt(self, trainer: Trainer) -> None:
        if trainer.clean_stop:
            trainer.save_checkpoint(self.directory / "interrupted.pt")

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]


class EpochPrinter(Callback):
    """One line per epoch (``rnnkit.fit(verbose=2)``, as in Keras): the epoch, its loss, the
    validation loss and metrics, and its time. Only rank 0 prints in a distributed run."""

    deferrable = True

    def on_epoch_end(self, trainer: Trainer, logs: dict) -> None:
        if not trainer.is_main_process:
            return
        parts = [f"epoch {logs['epoch'] + 1}/{trainer.epochs}", f"loss {logs['loss']:.4g}"]
        if "val_loss" in logs:
            parts.append(f"val_loss {logs['val_loss']:.4g}")
        parts += [f"{k} {v:.4g}" for k, v in logs.get("metrics", {}).items()]
        print(" - ".join(parts) + f" - {logs['time']:.1f}s", flush=True)


class ProgressBar(Callback):
    """A ``tqdm.auto`` bar over the run's steps: a notebook widget in Jupyter, text elsewhere.

    Shows the epoch and, refreshed at most every ``refresh`` seconds, the loss, learning rate and
    the last validation loss. Only rank 0 shows it in a distributed run.
    """

    deferrable = True

    def __init__(self, refresh: float = 0.25) -> None:
        self.refresh = refresh
        self._bar: Any = None
        self._shown = 0.0
        self._last_val: float | None = None

    def on_fit_begin(self, trainer: Trainer) -> None:
        if not trainer.is_main_process:
            return
        from tqdm.auto import tqdm

        per_epoch, total = trainer.steps_per_epoch, None
        if per_epoch is not None:
            total = per_epoch * (trainer.epochs - trainer.epoch) - trainer.batch_in_epoch
        if trainer.max_steps is not None:
            left = trainer.max_steps - trainer.step
            total = left if total is None else min(total, left)
        self._bar = tqdm(total=total, unit="step", dynamic_ncols=True)

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        if self._bar is not None:
            self._bar.set_description(f"epoch {epoch + 1}/{trainer.epochs}", refresh=False)

    def on_batch_end(self, trainer: Trainer, logs: dict) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        now = time.perf_counter()
        if now - self._shown >= self.refresh:
            self._shown = now
            self._bar.set_postfix(self._postfix(logs), refresh=False)

    def on_epoch_end(self, trainer: Trainer, logs: dict) -> None:
        if self._bar is not None:
            self._last_val = logs.get("val_loss")
            self._bar.set_postfix(self._postfix(logs), refresh=True)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _postfix(self, logs: dict) -> dict:
        shown = {"loss": f"{logs['loss']:.4g}", "lr": f"{logs['lr']:.3g}"}
        if self._last_val is not None:
            shown["val_loss"] = f"{self._last_val:.4g}"
        return shown
