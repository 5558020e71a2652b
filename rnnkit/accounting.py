"""What a training step reports, kept on the device until something reads it.

A step's loss, gradient norm and metrics are tensors on the training device; reading one on the
host (``float(loss)``) waits for the device to finish, which on a GPU costs most for the small
models RNN users train. So the trainer keeps them where they are:

* :class:`StepRecord` holds one step's values as device tensors; :meth:`StepRecord.resolve`
  reads them all in one transfer and returns the plain-float ``logs`` callbacks get;
* :class:`EpochSums` adds each step's statistics (see :mod:`rnnkit.names`: e.g. ``[sum, weight]``
  of the loss, per-class counts of balanced accuracy) into device tensors, so the epoch's loss and
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
) -> dict[str, Tensor]:
    """One batch's statistics: the loss's ``[value * weight, weight]`` and each metric's (see
    :mod:`rnnkit.names`), as device tensors; a metric's :class:`Spec` checks its inputs."""
    with torch.no_grad():
        weight = loss.spec.weight(output, target, batch_size)
        weight = torch.as_tensor(weight, device=value.device, dtype=torch.float32)
        stats = {"loss": torch.stack([value.detach().float() * weight, weight])}
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

    def resolve(self) -> dict:
        """The step's logs with every device value read as a Python float (one transfer)."""
        if self.values or self.ok is not None:
            parts = [v.detach().float().reshape(()) for v in self.values.values()]
            if self.ok is not None:
                parts.append(self.ok.float().reshape(()))
            read = torch.stack(parts).tolist()
            self.logs.update(zip(self.values, read, strict=False))
            if self.ok is not None and not read[-1]:
                self.logs["skipped"] = True
            self.values, self.ok = {}, None
        return self.logs


class EpochSums:
    """Running sums of the epoch's statistics on the device (see the module doc)."""

    def __init__(self, metrics: dict[str, Metric]) -> None:
        self.metrics = metrics
        self.sums: dict[str, Tensor] = {}
        self.skipped: Tensor | int = 0

    def add(self, stats: dict[str, Tensor], ok: Tensor | None) -> None:
        """Add one step's statistics (``{"loss": [sum, weight], metric: ...}``) unless ``ok``
        is False."""
        for name, value in stats.items():
            value = value.detach()
            if ok is not None:
                value = torch.where(ok, value, torch.zeros_like(value))
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        if ok is not None:
            self.skipped = self.skipped + (~ok).long()

    def read(self, device: torch.device, distributed: bool) -> dict:
        """``{"loss": mean, "metrics": {...}, "skipped": n}`` for the epoch so far (all ranks);
        one transfer, and one all-reduce when ``distributed``."""
        names = list(self.sums)
        sizes = [self.sums[n].numel() for n in names]
        parts = [self.sums[n].double().reshape(-1).to(device) for n in names]
        skipped = torch.as_tensor(self.skipped, device=device).double().reshape(1)
        flat = torch.cat([*parts, skipped])
        if distributed:
            flat = ddp.all_reduce_tensor(flat)
        flat = flat.cpu()
        out, start = {}, 0
        for name, size in zip(names, sizes, strict=True):
            out[name] = flat[start : start + size]
            start += size
        loss = out.pop("loss", None)
        return {
            "loss": float(loss[0] / loss[1]) if loss is not None else float("nan"),
            "metrics": {name: float(self.metrics[name].value(sums)) for name, sums in out.items()},
            "skipped": int(flat[-1]),
        }

    def state_dict(self) -> dict:
        return {
            "sums": {k: v.detach().cpu() for k, v in self.sums.items()},
            "skipped": int(torch.as_tensor(self.skipped)),
        }

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.skipped = state["skipped"]
