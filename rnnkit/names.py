"""The names :func:`rnnkit.fit` and :class:`rnnkit.Trainer` accept for optimizers, losses, metrics.

Losses and metrics work on a model output of shape ``(..., C)`` or ``(...)`` and a target of the
matching shape; ``cross_entropy`` and ``accuracy`` take class logits ``(..., C)`` with integer
labels ``(...)`` (per step for sequence outputs ``(B, T, C)``) and ignore label ``-100`` (padding);
so do ``focal`` (:func:`rnnkit.focal_loss`, gamma 2) and ``balanced_accuracy``
(:func:`rnnkit.balanced_accuracy`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.losses import balanced_accuracy, focal_loss

LossFn = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy of logits ``(..., C)`` against labels ``(...)``; label -100 is ignored."""
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


def binary_cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """Mean binary cross-entropy of logits against 0/1 float targets of the same shape."""
    return F.binary_cross_entropy_with_logits(output, target)


def accuracy(output: Tensor, target: Tensor) -> Tensor:
    """Fraction of labels equal to ``argmax`` of the logits over the last axis (-100 ignored);
    for a single logit per sample (binary), the prediction is ``logit > 0``."""
    if output.shape == target.shape and target.is_floating_point():
        return ((output > 0) == (target > 0.5)).float().mean()
    keep = target != -100
    hits = (output.argmax(dim=-1) == target) & keep
    return hits.sum() / keep.sum().clamp(min=1)


LOSSES: dict[str, tuple[LossFn, str]] = {
    # name: (function, the target dtype it needs)
    "mse": (F.mse_loss, "float"),
    "mae": (F.l1_loss, "float"),
    "l1": (F.l1_loss, "float"),
    "huber": (F.huber_loss, "float"),
    "smooth_l1": (F.smooth_l1_loss, "float"),
    "cross_entropy": (cross_entropy, "int"),
    "bce": (binary_cross_entropy, "float"),
    "focal": (focal_loss, "int"),
}

METRICS: dict[str, LossFn] = {
    "accuracy": accuracy,
    "balanced_accuracy": balanced_accuracy,
    "mse": F.mse_loss,
    "mae": F.l1_loss,
}

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}


def _unknown(kind: str, name: object, known: Iterable[str]) -> ValueError:
    return ValueError(f"unknown {kind} {name!r}; expected one of {', '.join(sorted(known))}")


def resolve_loss(loss: str | LossFn) -> LossFn:
    """A loss function from a name in :data:`LOSSES` or a callable ``loss(output, target)``."""
    if callable(loss):
        return loss
    if not isinstance(loss, str) or loss.lower() not in LOSSES:
        raise _unknown("loss", loss, LOSSES)
    return LOSSES[loss.lower()][0]


def resolve_metrics(metrics) -> dict[str, LossFn]:
    """``{name: fn(output, target)}`` from None, a dict, or a list of names and callables."""
    if metrics is None:
        return {}
    if isinstance(metrics, dict):
        items = list(metrics.items())
    elif isinstance(metrics, (str,)) or callable(metrics):
        items = [(None, metrics)]
    else:
        items = [(None, m) for m in metrics]
    resolved = {}
    for name, metric in items:
        if isinstance(metric, str):
            if metric.lower() not in METRICS:
                raise _unknown("metric", metric, METRICS)
            resolved[name or metric.lower()] = METRICS[metric.lower()]
        elif callable(metric):
            resolved[name or getattr(metric, "__name__", f"metric{len(resolved)}")] = metric
        else:
            raise TypeError(f"a metric must be a name or a callable, got {type(metric).__name__}")
    return resolved


def make_optimizer(optimizer, parameters, lr: float | None = None) -> torch.optim.Optimizer:
    """An optimizer from a name in :data:`OPTIMIZERS` (with ``lr``, default 1e-3, SGD 1e-2), an
    optimizer class, or an instance (returned as is)."""
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if isinstance(optimizer, str):
        if optimizer.lower() not in OPTIMIZERS:
            raise _unknown("optimizer", optimizer, OPTIMIZERS)
        cls = OPTIMIZERS[optimizer.lower()]
    elif isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        cls = optimizer
    else:
        raise TypeError(
            f"optimizer must be a name, an Optimizer class or instance, got {optimizer!r}"
        )
    if lr is None:
        lr = 1e-2 if cls is torch.optim.SGD else 1e-3
    return cls(parameters, lr=lr)


def check_target_dtype(loss: str | LossFn, y: Tensor) -> None:
    """For a named loss, raise a ``ValueError`` when ``y``'s dtype is not what it needs."""
    if not isinstance(loss, str) or not isinstance(y, Tensor):
        return
    needs = LOSSES[loss.lower()][1]
    if needs == "float" and not y.is_floating_point():
        raise ValueError(
            f"loss {loss!r} needs floating-point targets, got y of dtype {y.dtype}; "
            "convert with y.float(), or use loss='cross_entropy' for class labels"
        )
    if needs == "int" and (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool):
        raise ValueError(
            f"loss {loss!r} needs integer class labels, got y of dtype {y.dtype}; "
            "convert with y.long(), or use a regression loss such as 'mse'"
        )
