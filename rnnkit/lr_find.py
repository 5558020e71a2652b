"""The learning-rate range test (Smith, 2017, "Cyclical learning rates for training neural
networks"): train a few steps with a learning rate growing exponentially and watch the loss."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from rnnkit.callbacks import Callback
from rnnkit.train import Trainer


@dataclass
class LRFinderResult:
    """Learning rates tried, the smoothed and raw losses at each, and the suggested rate."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    raw_losses: list[float] = field(default_factory=list)
    suggestion: float | None = None

    def plot(self, ax=None):
        """Smoothed loss against the learning rate (log axis), the suggestion marked."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(5, 3))[1]
        ax.plot(self.lrs, self.losses)
        ax.set(xscale="log", xlabel="learning rate", ylabel="loss (smoothed)")
        if self.suggestion is not None:
            ax.axvline(self.suggestion, color="tab:red", linestyle="--", label="suggestion")
            ax.legend()
        return ax


class _RangeRecorder(Callback):
    def __init__(self, result: LRFinderResult, smoothing: float, diverge: float) -> None:
        self.result, self.smoothing, self.diverge = result, smoothing, diverge
        self.average = 0.0
        self.best = math.inf

    def on_after_backward(self, trainer: Trainer, logs: dict) -> None:
        loss = logs["loss"]
        if not math.isfinite(loss):
            trainer.stop_training = True
            return
        count = len(self.result.raw_losses) + 1
        self.average = self.smoothing * self.average + (1 - self.smoothing) * loss
        smoothed = self.average / (1 - self.smoothing**count)  # bias-corrected running mean
        self.result.lrs.append(logs["lr"])
        self.result.raw_losses.append(loss)
        self.result.losses.append(smoothed)
        self.best = min(self.best, smoothed)
        if smoothed > self.diverge * self.best:
            trainer.stop_training = True


def lr_find(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn,
    train,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    smoothing: float = 0.98,
    diverge: float = 4.0,
    batch_size: int = 32,
    **trainer_kwargs,
) -> LRFinderResult:
    """Run the LR range test and put the model and optimizer back as they were.

    The learning rate grows from ``start_lr`` to ``end_lr`` as
    ``lr_k = start_lr * (end_lr / start_lr)^(k / (num_steps - 1))``, one batch per step, until
    ``num_steps`` or until the smoothed loss (bias-corrected exponential average with factor
    ``smoothing``) exceeds ``diverge`` times its minimum or turns non-finite. The suggestion is
    the rate where the smoothed loss falls fastest against ``log(lr)``. ``train`` is what
    ``Trainer.fit`` takes; other keyword arguments go to the :class:`rnnkit.Trainer`.
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an int >= 2, got {num_steps!r}")
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    for group in optimizer.param_groups:
        group["lr"] = start_lr
    ratio = end_lr / start_lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: ratio ** (min(k, num_steps - 1) / (num_steps - 1))
    )
    result = LRFinderResult()
    callbacks = [*trainer_kwargs.pop("callbacks", ()), _RangeRecorder(result, smoothing, diverge)]
    trainer = Trainer(
        model,
        optimizer,
        loss_fn,
        callbacks=callbacks,
        scheduler=scheduler,
        scheduler_interval="batch",
        nonfinite="skip",
        **trainer_kwargs,
    )
    try:  # every epoch has at least one step, so num_steps epochs are enough
        trainer.fit(train, epochs=num_steps, max_steps=num_steps, batch_size=batch_size)
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
    result.suggestion = _steepest(result)
    return result


def _steepest(result: LRFinderResult) -> float | None:
    if len(result.losses) < 3:
        return None
    logs = [math.log(lr) for lr in result.lrs]
    slopes = [
        (result.losses[i + 1] - result.losses[i - 1]) / (logs[i + 1] - logs[i - 1])
        for i in range(1, len(logs) - 1)
    ]
    best = min(range(len(slopes)), key=slopes.__getitem__)
    return result.lrs[best + 1]
