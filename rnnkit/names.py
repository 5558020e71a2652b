"""The names :func:`rnnkit.fit` and :class:`rnnkit.Trainer` accept for optimizers, losses, metrics.

Losses and metrics given by name (and ``torch.nn``'s loss modules) come with what they expect,
which the trainer checks on every batch before computing them — so a wrong shape is an error
naming both shapes, never a silently broadcast loss:

* element-wise losses (``mse``, ``mae``/``l1``, ``huber``, ``smooth_l1``, ``bce``): output and
  target of one shape;
* class losses (``cross_entropy``, ``focal``): logits ``(..., C)`` and integer labels ``(...)``
  (per step for sequence outputs: a language model's ``(B, T, V)`` against ``(B, T)``), labels in
  ``[0, C)`` or ``-100`` (padding, ignored); ``torch.nn.CrossEntropyLoss``/``NLLLoss`` take the
  classes on dimension 1, as in torch.

Custom loss callables are not checked: they get ``(output, target)`` as they come.

**Weights.** The epoch's loss and metrics are means over what the loss averages: the target
elements of an element-wise loss, the labels that are not ignored of a class loss (tokens, for a
language model) — so a batch of 4096 tokens counts 64 times one of 64, and variable windows or
padding do not tilt the mean. A custom loss callable's batch counts by its number of samples.
Each loss or metric is summed over an epoch as a small tensor of *statistics* (e.g. ``[sum,
count]``) that add across batches and ranks; its value is a function of those sums, which makes
``perplexity`` (``exp`` of the mean cross-entropy) and ``balanced_accuracy`` (from per-class counts)
exact over the epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.errors import InputError
from rnnkit.losses import balanced_accuracy, focal_loss

LossFn = Callable[[Tensor, Tensor], Tensor]
IGNORE = -100


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
    keep = target != IGNORE
    hits = (output.argmax(dim=-1) == target) & keep
    return hits.sum() / keep.sum().clamp(min=1)


# --------------------------------------------------------------------------------------------
# What a loss or metric expects, and how it is summed over an epoch.


@dataclass(frozen=True)
class Spec:
    """How a named loss or metric reads its inputs.

    ``layout``: ``"same"`` (output and target of one shape), ``"classes"`` (logits ``(..., C)``
    with labels ``(...)``), ``"classes_dim1"`` (torch's ``(N, C, ...)`` with ``(N, ...)``), or
    ``"any"`` (unchecked). ``ignore_index``: the label a class loss skips.
    """

    layout: str = "any"
    ignore_index: int | None = None
    class_weight: Tensor | None = None

    def check(self, name: str, output, target) -> None:
        """Raise an :class:`rnnkit.InputError` when ``output``/``target`` do not fit (host-side:
        shapes always; label values when the target is on the CPU)."""
        if self.layout == "any" or not isinstance(output, Tensor) or not isinstance(target, Tensor):
            return
        out, tgt = tuple(output.shape), tuple(target.shape)
        if self.layout == "same":
            if out != tgt:
                raise InputError(
                    f"{name} compares output and target element by element, so their shapes "
                    f"must be equal; got output {out} and target {tgt}. Reshape one of them "
                    f"(e.g. y.view({', '.join(map(str, out)) or ''})); a mismatch would be "
                    "broadcast into a wrong loss"
                )
            return
        if target.is_floating_point() and out == tgt and self.layout == "classes_dim1":
            return  # class probabilities as targets (torch's CrossEntropyLoss allows them)
        if self.layout == "classes":
            expected, classes = out[:-1], out[-1] if out else None
            layout = "logits (..., C) and integer labels (...)"
        else:
            expected = out[:1] + out[2:]
            classes = out[1] if len(out) > 1 else None
            layout = "logits (N, C, ...) and integer labels (N, ...)"
        if not out or tgt != expected:
            raise InputError(
                f"{name} takes {layout}: for output {out} the target must have shape "
                f"{expected}, got {tgt}"
            )
        if target.is_floating_point() or target.dtype == torch.bool:
            raise InputError(f"{name} needs integer class labels, got target dtype {target.dtype}")
        if target.device.type == "cpu" and target.numel():
            labels = target if self.ignore_index is None else target[target != self.ignore_index]
            if labels.numel() and (labels.min() < 0 or labels.max() >= classes):
                bad = labels[(labels < 0) | (labels >= classes)]
                ignore = "" if self.ignore_index is None else f" (or {self.ignore_index}: ignored)"
                raise InputError(
                    f"{name}: class labels must be in [0, {classes}){ignore} for {classes} "
                    f"output classes, got {sorted(set(bad.tolist()))[:5]}"
                )

    def weight(self, output, target, batch_size: int) -> Tensor | float:
        """How much this batch counts in the epoch's mean (see the module doc)."""
        if self.layout == "any" or not isinstance(target, Tensor):
            return float(batch_size)
        if self.layout == "same":
            return float(target.numel())
        if target.is_floating_point():
            return float(target.shape[0])
        keep = target != self.ignore_index if self.ignore_index is not None else None
        if self.class_weight is not None:
            w = self.class_weight.to(target.device)[target.clamp(min=0)]
            return (w * keep).sum() if keep is not None else w.sum()
        return keep.sum() if keep is not None else float(target.numel())


@dataclass(frozen=True)
class Loss:
    """A loss with its :class:`Spec`; ``name`` is used in messages."""

    fn: LossFn
    spec: Spec
    name: str
    target_dtype: str | None = None  # "float" or "int": what a named loss needs


@dataclass(frozen=True)
class Metric:
    """A per-batch measure and how the epoch sums it.

    ``stats(output, target, batch_size) -> 1-D tensor`` of quantities that add across batches and
    ranks; ``value(sums) -> tensor`` turns their sums into the metric.
    """

    stats: Callable[[Tensor, Tensor, int], Tensor]
    value: Callable[[Tensor], Tensor]


def mean_stats(spec: Spec, fn: LossFn) -> Callable[[Tensor, Tensor, int], Tensor]:
    """Statistics ``[value * weight, weight]`` of a mean-type measure."""

    def stats(output, target, batch_size: int) -> Tensor:
        value = fn(output, target).detach().float().reshape(())
        weight = torch.as_tensor(spec.weight(output, target, batch_size), device=value.device)
        return torch.stack([value * weight, weight.float()])

    return stats


def _mean(sums: Tensor) -> Tensor:
    return sums[0] / sums[1]


def _mean_metric(spec: Spec, fn: LossFn, then: Callable[[Tensor], Tensor] = lambda m: m) -> Metric:
    return Metric(mean_stats(spec, fn), lambda sums: then(_mean(sums)))


def _balanced_accuracy_stats(output: Tensor, target: Tensor, batch_size: int) -> Tensor:
    classes = output.shape[-1]
    keep = target != IGNORE
    label, pred = target[keep], output.argmax(dim=-1)[keep]
    support = torch.bincount(label, minlength=classes)
    hits = torch.bincount(label[pred == label], minlength=classes)
    return torch.cat([hits, support]).float()


def _balanced_accuracy_value(sums: Tensor) -> Tensor:
    hits, support = sums.chunk(2)
    present = support > 0
    return (hits[present] / support[present]).mean()


ELEMENTWISE = Spec("same")
CLASSES = Spec("classes", IGNORE)

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
    "perplexity": cross_entropy,
    "bits_per_token": cross_entropy,
    "bits_per_char": cross_entropy,
}

_METRIC_SPECS: dict[str, Metric] = {
    "accuracy": _mean_metric(Spec("classes", IGNORE), accuracy),
    "balanced_accuracy": Metric(_balanced_accuracy_stats, _balanced_accuracy_value),
    "mse": _mean_metric(ELEMENTWISE, F.mse_loss),
    "mae": _mean_metric(ELEMENTWISE, F.l1_loss),
    "perplexity": _mean_metric(CLASSES, cross_entropy, torch.exp),
    "bits_per_token": _mean_metric(CLASSES, cross_entropy, lambda m: m / math.log(2)),
    "bits_per_char": _mean_metric(CLASSES, cross_entropy, lambda m: m / math.log(2)),
}
_METRIC_CHECKS = {"mse": ELEMENTWISE, "mae": ELEMENTWISE}

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}

_ELEMENTWISE_MODULES = (
    nn.MSELoss,
    nn.L1Loss,
    nn.HuberLoss,
    nn.SmoothL1Loss,
    nn.BCEWithLogitsLoss,
    nn.BCELoss,
)


def _unknown(kind: str, name: object, known: Iterable[str]) -> ValueError:
    return ValueError(f"unknown {kind} {name!r}; expected one of {', '.join(sorted(known))}")


def _module_spec(module: nn.Module) -> Spec:
    if getattr(module, "reduction", "mean") != "mean":
        return Spec()
    if isinstance(module, _ELEMENTWISE_MODULES):
        return ELEMENTWISE
    if isinstance(module, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return Spec("classes_dim1", module.ignore_index, module.weight)
    return Spec()


def resolve_loss(loss: str | LossFn) -> LossFn:
    """The loss function for a name in :data:`LOSSES`, or ``loss`` itself if it is callable."""
    return loss_spec(loss).fn


def loss_spec(loss: str | LossFn) -> Loss:
    """A :class:`Loss` from a name in :data:`LOSSES`, a ``torch.nn`` loss module (checked as
    torch defines it) or any callable ``loss(output, target)`` (unchecked)."""
    if isinstance(loss, str):
        if loss.lower() not in LOSSES:
            raise _unknown("loss", loss, LOSSES)
        fn, dtype = LOSSES[loss.lower()]
        return Loss(fn, ELEMENTWISE if dtype == "float" else CLASSES, f"loss {loss!r}", dtype)
    if not callable(loss):
        raise _unknown("loss", loss, LOSSES)
    if isinstance(loss, nn.Module):
        return Loss(loss, _module_spec(loss), type(loss).__name__)
    return Loss(loss, Spec(), getattr(loss, "__name__", "the loss"))


def resolve_metrics(metrics) -> dict[str, LossFn]:
    """``{name: fn(output, target)}`` from None, a dict, or a list of names and callables."""
    return {name: fn for name, (fn, _) in _resolve(metrics).items()}


def metric_specs(metrics) -> dict[str, tuple[Metric, Spec]]:
    """``{name: (Metric, Spec)}``: how the trainer sums and checks each metric."""
    return {name: spec for name, (_, spec) in _resolve(metrics).items()}


def _resolve(metrics) -> dict[str, tuple[LossFn, tuple[Metric, Spec]]]:
    if metrics is None:
        return {}
    if isinstance(metrics, dict):
        items = list(metrics.items())
    elif isinstance(metrics, str) or callable(metrics):
        items = [(None, metrics)]
    else:
        items = [(None, m) for m in metrics]
    resolved = {}
    for name, metric in items:
        if isinstance(metric, str):
            key = metric.lower()
            if key not in METRICS:
                raise _unknown("metric", metric, METRICS)
            resolved[name or key] = (METRICS[key], (_METRIC_SPECS[key], _METRIC_CHECKS.get(key)))
        elif callable(metric):
            label = name or getattr(metric, "__name__", f"metric{len(resolved)}")
            resolved[label] = (metric, (_mean_metric(Spec(), metric), None))
        else:
            raise TypeError(f"a metric must be a name or a callable, got {type(metric).__name__}")
    return resolved


def check_lr(lr: object, owner: str = "lr", allow_zero: bool = False) -> float:
    """``lr`` as a float if it is a positive (or zero, when allowed) finite number, else a clear
    error."""
    if isinstance(lr, str):
        raise ValueError(
            f"{owner} must be a positive number, got the string {lr!r}; write it without "
            f"quotes (lr={lr})"
        )
    ok = isinstance(lr, (int, float)) and not isinstance(lr, bool)
    if not ok or not (0 <= lr if allow_zero else 0 < lr) or not lr < math.inf:
        what = "a finite number >= 0" if allow_zero else "a positive finite number"
        raise ValueError(f"{owner} must be {what}, got {lr!r}")
    return float(lr)


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
    lr = (1e-2 if cls is torch.optim.SGD else 1e-3) if lr is None else check_lr(lr, allow_zero=True)
    return cls(parameters, lr=lr)


def check_target_dtype(loss: Loss, y: Tensor) -> None:
    """For a named loss, raise a ``ValueError`` when ``y``'s dtype is not what it needs."""
    if loss.target_dtype is None or not isinstance(y, Tensor):
        return
    if loss.target_dtype == "float" and not y.is_floating_point():
        raise ValueError(
            f"{loss.name} needs floating-point targets, got y of dtype {y.dtype}; "
            "convert with y.float(), or use loss='cross_entropy' for class labels"
        )
    if loss.target_dtype == "int" and (
        y.is_floating_point() or y.is_complex() or y.dtype == torch.bool
    ):
        raise ValueError(
            f"{loss.name} needs integer class labels, got y of dtype {y.dtype}; "
            "convert with y.long(), or use a regression loss such as 'mse'"
        )
