"""What a training step reports, kept on the device until something reads it.

A step's loss, gradient norm and metrics are tensors on the training device; reading one on the
host (``float(loss)``) waits for the device to finish, which on a GPU costs most for the small
models RNN users train. So the trainer keeps them where they are:

* :class:`StepRecord` holds one step's values as device tensors; :meth:`StepRecord.resolve`
  reads them all in one transfer and returns the plain-float ``logs`` callbacks get;
* :class:`EpochSums` adds each step's statistics (see :mod:`rnnkit.names`: the loss's value and
  weight, per-class counts of balanced accuracy) into device tensors, so the epoch's loss and
  metrics are read once, at the epoch's end, and summed across ranks in one all-reduce. A step
  whose update was skipped (non-finite) adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from rnnkit import distributed as ddp
from rnnkit.names import Loss, Metric, Spec


def batch_stats(
    loss: Loss,
    metrics: dict[str, tuple[Metric, Spec | None]],
    output,
    target,
    batch_size: int,
    value: Tensor,
) -> dict[str, Tensor | tuple]:
    """One batch's statistics: ``"loss"`` as ``(value, weight)`` (the weight a Python number
    when the host knows it, e.g. an element count, else a device tensor, e.g. a count of labels
    that are not ignored) and each metric's statistics tensor (see :mod:`rnnkit.names`); a
    metric's :class:`Spec` checks its inputs."""
    with torch.no_grad():
        stats: dict[str, Tensor | tuple] = {
            "loss": (value.detach(), loss.spec.weight(output, target, batch_size))
        }
        if metrics:
            out = output.detach() if isinstance(output, Tensor) else output
            for name, (metric, check) in metrics.items():
                if check is not None:
                    check.check(f"metric {name!r}", out, target)
                stats[name] = metric.stats(out, target, batch_size)
    return stats


@dataclass
class StepRecord:
    """One step: host values known at once (``logs``) and device values read later."""

    logs: dict
    values: dict[str, Tensor] = field(default_factory=dict)
    ok: Tensor | None = None  # the update was applied: loss, gradients, parameters finite
    stats: dict[str, Tensor] | None = None  # to add to the epoch's sums once read

    def resolve(self) -> dict:
        """The step's logs with every device value read as a Python float (one transfer)."""
        if self.values or self.ok is not None:
            values = list(self.values.values())
            dtype = torch.float64 if any(v.dtype == torch.float64 for v in values) else None
            parts = [_scalar(v, dtype or torch.float32) for v in values]
            if self.ok is not None:
                parts.append(self.ok.to(dtype or torch.float32))
            read = torch.stack(parts).tolist()
            self.logs.update(zip(self.values, read, strict=False))
            if self.ok is not None and not read[-1]:
                self.logs["skipped"] = True
            self.values, self.ok = {}, None
        return self.logs


def _scalar(value: Tensor, dtype: torch.dtype) -> Tensor:
    """``value`` as a 0-d tensor of ``dtype`` (float32, or float64 for a float64 model), with as
    few operations as possible (each one costs)."""
    if value.requires_grad:
        value = value.detach()
    if value.dtype != dtype:
        value = value.to(dtype)
    return value if value.dim() == 0 else value.reshape(())


class EpochSums:
    """Running sums of the epoch's statistics on the device (see the module doc).

    The loss is summed as ``sum(value * weight)`` in float64 and ``sum(weight)`` (a Python
    number while every weight is one, else an int64/float device tensor); the metrics as the sums
    of their statistics tensors.
    """

    def __init__(self, metrics: dict[str, Metric]) -> None:
        self.metrics = metrics
        self.loss_sum: Tensor | None = None
        self.weight: Tensor | float = 0.0
        self.sums: dict[str, Tensor] = {}
        self.skipped: Tensor | int = 0

    def add(self, stats: dict, ok: Tensor | None) -> None:
        """Add one step's statistics unless ``ok`` (a device flag) is False."""
        value, weight = stats["loss"]
        if self.loss_sum is None:
            self.loss_sum = torch.zeros((), dtype=torch.float64, device=value.device)
        if ok is not None:
            value = torch.where(ok, value, torch.zeros_like(value))
            weight = torch.where(ok, torch.as_tensor(weight, device=value.device), 0)
        if isinstance(weight, Tensor):
            self.loss_sum.add_(value * weight)
        else:
            self.loss_sum.add_(value, alpha=weight)
        self.weight = self.weight + weight
        for name, stat in stats.items():
            if name == "loss":
                continue
            stat = stat.detach()
            if ok is not None:
                stat = torch.where(ok, stat, torch.zeros_like(stat))
            self.sums[name] = self.sums[name] + stat if name in self.sums else stat
        if ok is not None:
            self.skipped = self.skipped + (~ok).long()

    def read(self, device: torch.device, distributed: bool) -> dict:
        """``{"loss": mean, "metrics": {...}, "skipped": n}`` for the epoch so far (all ranks);
        one transfer, and one all-reduce when ``distributed``."""
        names = list(self.sums)
        sizes = [self.sums[n].numel() for n in names]
        head = [
            self.loss_sum if self.loss_sum is not None else torch.zeros((), dtype=torch.float64),
            torch.as_tensor(self.weight),
            torch.as_tensor(self.skipped),
        ]
        parts = [t.to(device).double().reshape(-1) for t in head]
        parts += [self.sums[n].to(device).double().reshape(-1) for n in names]
        flat = torch.cat(parts)
        if distributed:
            flat = ddp.all_reduce_tensor(flat)
        flat = flat.cpu()
        out, start = {}, 3
        for name, size in zip(names, sizes, strict=True):
            out[name] = flat[start : start + size]
            start += size
        return {
            "loss": float(flat[0] / flat[1]),
            "metrics": {name: float(self.metrics[name].value(sums)) for name, sums in out.items()},
            "skipped": int(flat[2]),
        }

    def state_dict(self) -> dict:
        cpu = lambda v: v.detach().cpu() if isinstance(v, Tensor) else v
        return {
            "loss_sum": cpu(self.loss_sum),
            "weight": cpu(self.weight),
            "sums": {k: cpu(v) for k, v in self.sums.items()},
            "skipped": int(torch.as_tensor(self.skipped)),
        }

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        to = lambda v: v.to(device) if isinstance(v, Tensor) else v
        self.loss_sum, self.weight = to(state["loss_sum"]), to(state["weight"])
        self.sums = {k: to(v) for k, v in state["sums"].items()}
        self.skipped = state["skipped"]
