"""Loggers: a run's numbers written where other tools read them, as :class:`rnnkit.Callback`\\ s.

* :class:`CSVLogger` writes one row per step or per epoch to a CSV file (pandas, a spreadsheet,
  ``tail -f``), flushed row by row;
* :class:`TensorBoardLogger` writes TensorBoard event files through
  ``torch.utils.tensorboard.SummaryWriter``: per step the training loss, the gradient norm
  before clipping, the learning rate and every metric; per epoch the mean loss, the validation
  loss and the metrics; optionally, every ``flow_every`` steps, the gradient flow through time
  of a fixed probe batch (:func:`rnnkit.gradient_flow`: :math:`\\lVert \\partial L / \\partial h_t
  \\rVert` for every step ``t``, as a histogram per layer and the first/last ratio as a scalar).
  The flow costs an extra forward and backward through rnnkit's own loop, so it is off by
  default. ``tensorboard`` is an optional extra (``pip install "rnnkit[tensorboard]"``),
  imported when a TensorBoardLogger is made, never by ``import rnnkit``.

Both write on the main process only under torchrun, and both read ``logs`` as a mapping
(``logs["loss"]``, ``logs.get(...)``), so lazily read values are read once, when written. A
logger that sees several ``fit`` calls (Start again in a panel, ``fit`` to continue) keeps
writing to the same place: files are started afresh at the logger's first run only (unless
``append=True``, e.g. to continue a run resumed from a checkpoint).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rnnkit.callbacks import Callback
from rnnkit.diagnostics import gradient_flow

if TYPE_CHECKING:
    from rnnkit.train import Trainer

# per-step keys that are counters or bookkeeping, not measurements
_STEP_COUNTERS = ("step", "epoch", "batch", "batch_size", "time", "skipped")


def _number(value: Any) -> float | None:
    """A loggable number, or None (text, dicts, missing)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    return None


def flatten(logs: Mapping) -> dict[str, Any]:
    """A record's values with the nested ``metrics`` dict of epoch logs spread out."""
    record = {}
    for key in logs:
        value = logs[key]
        if key == "metrics" and isinstance(value, Mapping):
            record.update({name: value[name] for name in value})
        else:
            record[key] = value
    return record


class CSVLogger(Callback):
    """One CSV row per step (``per="step"``) or per epoch (``per="epoch"``, the default).

    Columns: the keys of the first record (epoch rows: ``epoch, loss, val_loss`` and each
    metric, ``lr, time, steps, skipped``; step rows: ``step, epoch, batch, loss, grad_norm, lr,
    batch_size, time``, each metric and ``skipped``), in that order; a key that first appears
    later widens the file (it is rewritten once with the new column, earlier rows empty there).
    Numbers are written in full precision (``repr``), so a file read back gives the logged
    floats exactly.

    Args:
        path: the CSV file (its folder is created).
        per: "epoch" or "step".
        append: add to an existing file instead of starting it afresh at the first run.
    """

    deferrable = True  # a row written one step late (on a GPU) holds the same numbers

    def __init__(self, path: str | Path, per: str = "epoch", *, append: bool = False) -> None:
        if per not in ("epoch", "step"):
            raise ValueError(f"per must be 'epoch' or 'step', got {per!r}")
        self.path = Path(path)
        self.per = per
        self.append = append
        self.columns: list[str] = []
        self._file = None
        self._writer: csv.DictWriter | None = None
        self._runs = 0

    def on_fit_begin(self, trainer: Trainer) -> None:
        if not trainer.is_main_process:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = self._runs == 0 and not self.append
        if not fresh and self.path.exists() and not self.columns:
            with self.path.open(newline="") as f:
                self.columns = next(csv.reader(f), [])
        self._file = self.path.open("w" if fresh else "a", newline="")
        if fresh:
            self.columns = []
        self._writer = None
        self._runs += 1

    def on_batch_end(self, trainer: Trainer, logs: Mapping) -> None:
        if self.per == "step" and self._file is not None:
            self._write({**flatten(logs), "skipped": int(bool(logs.get("skipped", False)))})

    def on_epoch_end(self, trainer: Trainer, logs: Mapping) -> None:
        if self.per == "epoch" and self._file is not None:
            self._write(flatten(logs))

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._file is not None:
            self._file.close()
            self._file, self._writer = None, None

    def _write(self, record: dict[str, Any]) -> None:
        cells = {key: self._cell(value) for key, value in record.items()}
        new = [key for key in cells if key not in self.columns]
        if new:
            self._widen(new)
        if self._writer is None:
            self._writer = csv.DictWriter(self._file, fieldnames=self.columns, restval="")
            if self._file.tell() == 0:
                self._writer.writeheader()
        self._writer.writerow(cells)
        self._file.flush()

    def _widen(self, new: list[str]) -> None:
        """Add columns: rewrite the rows written so far under the wider header."""
        self._file.flush()
        rows = []
        if self._file.tell() > 0:
            with self.path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        self.columns = self.columns + new
        self._file.close()
        self._file = self.path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, restval="")
        self._writer.writeheader()
        self._writer.writerows(rows)

    @staticmethod
    def _cell(value: Any) -> str:
        if isinstance(value, (bool, int)):
            return str(int(value))
        number = _number(value)
        if number is None:
            return "" if value is None else str(value)
        return repr(number)


class TensorBoardLogger(Callback):
    """TensorBoard scalars (and, optionally, gradient flow) of a run.

    Tags: ``train/loss``, ``train/grad_norm`` (before clipping), ``train/lr`` and
    ``train/<metric>`` at every step (x: the global step); ``epoch/loss``, ``epoch/val_loss``,
    ``epoch/lr`` and ``epoch/<metric>`` (validation metrics are ``val_<metric>``) at every
    epoch end (x: the global step there, so both kinds share an axis). With
    ``gradient_flow=(inputs, targets)``, every ``flow_every`` steps and at step 0:
    ``gradient_flow/<layer>`` (histogram of :math:`\\lVert \\partial L / \\partial h_t \\rVert`
    over the steps ``t`` of the probe batch) and ``gradient_flow/<layer>/first_over_last``
    (the vanishing/exploding ratio; Pascanu, Mikolov & Bengio 2013), computed by
    :func:`rnnkit.gradient_flow` with the trainer's loss after the update (the parameters'
    gradients are left untouched).

    Args:
        log_dir: the run's folder (``tensorboard --logdir`` its parent); None: ``runs/<date>``
            as ``SummaryWriter`` chooses.
        gradient_flow: a fixed probe batch ``(inputs, targets)``, or None (off).
        flow_every: steps between two gradient-flow measurements.
        flush_secs: how often the writer flushes to disk.
    """

    def __init__(
        self,
        log_dir: str | Path | None = None,
        *,
        gradient_flow: tuple[Any, Any] | None = None,
        flow_every: int = 100,
        flush_secs: int = 10,
    ) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # torch raises ImportError when tensorboard is missing
            raise ImportError(
                "TensorBoardLogger needs the tensorboard package: "
                'pip install "rnnkit[tensorboard]" (or pip install tensorboard)'
            ) from err
        if gradient_flow is not None and (
            not isinstance(gradient_flow, (tuple, list)) or len(gradient_flow) != 2
        ):
            raise ValueError(
                f"gradient_flow must be a probe batch (inputs, targets), got {gradient_flow!r}"
            )
        if isinstance(flow_every, bool) or not isinstance(flow_every, int) or flow_every < 1:
            raise ValueError(f"flow_every must be an int >= 1, got {flow_every!r}")
        # with gradient flow, on_batch_end must see the weights of the step it logs
        self.deferrable = gradient_flow is None
        self._writer_class = SummaryWriter
        self.log_dir = None if log_dir is None else str(log_dir)
        self.probe = gradient_flow
        self.flow_every = flow_every
        self.flush_secs = flush_secs
        self.writer = None

    def on_fit_begin(self, trainer: Trainer) -> None:
        if trainer.is_main_process and self.writer is None:
            self.writer = self._writer_class(self.log_dir, flush_secs=self.flush_secs)
            self.log_dir = self.writer.log_dir

    def on_batch_end(self, trainer: Trainer, logs: Mapping) -> None:
        if self.writer is None:
            return
        step = int(logs["step"])
        for key in logs:
            if key in _STEP_COUNTERS:
                continue
            value = _number(logs[key])
            if value is not None:
                self.writer.add_scalar(f"train/{key}", value, step)
        if self.probe is not None and step % self.flow_every == 0:
            self._gradient_flow(trainer, step)

    def on_epoch_end(self, trainer: Trainer, logs: Mapping) -> None:
        if self.writer is None:
            return
        record = flatten(logs)
        for key, value in record.items():
            if key in ("epoch", "steps", "skipped", "time"):
                continue
            number = _number(value)
            if number is not None:
                self.writer.add_scalar(f"epoch/{key}", number, trainer.step)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Close the event file (a later run opens a new one in the same folder)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _gradient_flow(self, trainer: Trainer, step: int) -> None:
        inputs, targets = (_to(part, trainer.device) for part in self.probe)
        flow = gradient_flow(trainer.model, inputs, targets, trainer.loss_fn)
        for layer, norms in flow.per_step.items():
            norms = norms.detach().double().cpu()
            self.writer.add_histogram(f"gradient_flow/{layer}", norms, step)
            last = float(norms[-1])
            ratio = float(norms[0]) / last if last > 0 else math.inf
            self.writer.add_scalar(f"gradient_flow/{layer}/first_over_last", ratio, step)


def _to(value: Any, device: torch.device | None) -> Any:
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value
