"""Losses for imbalanced classes and for weighting several tasks, and per-class recall metrics.

Class logits are ``(..., C)`` with integer labels ``(...)``, as in :mod:`rnnkit.names`: ``(N, C)``
against ``(N,)``, or per step ``(B, T, C)`` against ``(B, T)``; label ``-100`` marks padding and is
ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def class_balanced_weights(counts: Tensor | Sequence[int], beta: float = 0.999) -> Tensor:
    r"""Per-class loss weights from the effective number of samples (Cui et al., 2019).

    Cui, Jia, Lin, Song & Belongie, "Class-Balanced Loss Based on Effective Number of Samples",
    CVPR 2019. A class seen :math:`n` times covers the effective number of samples

    .. math::
        E_n = \frac{1 - \beta^n}{1 - \beta} = \sum_{j=1}^{n} \beta^{j-1},

    and class :math:`c` with :math:`n_c` samples gets the weight

    .. math::
        w_c = \frac{K}{\sum_{c'} 1 / E_{n_{c'}}} \cdot \frac{1}{E_{n_c}},

    normalised so that the :math:`K` weights sum to :math:`K`. :math:`\beta = 0` gives
    :math:`E_n = 1` (all weights 1); :math:`\beta \to 1` gives :math:`E_n \to n` (weights
    proportional to the inverse class frequency). The paper suggests
    :math:`\beta \in \{0.9, 0.99, 0.999, 0.9999\}`.

    A class with **zero** samples gets weight 0: it contributed nothing to the counts, and a weight
    :math:`1/E_0 = \infty` would poison any loss it touches. :math:`K` is then the number of
    classes that have samples, so those weights still average 1.

    Args:
        counts: samples per class, shape ``(C,)`` (e.g. ``torch.bincount(y, minlength=C)``).
        beta: in ``[0, 1)``.

    Returns:
        weights of shape ``(C,)`` in the default floating dtype, on ``counts``' device; pass them
        as ``weight=`` to :func:`torch.nn.functional.cross_entropy` or :func:`focal_loss`.
    """
    counts = torch.as_tensor(counts)
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(
            f"counts must be a non-empty 1-D tensor of samples per class, got shape "
            f"{tuple(counts.shape)}"
        )
    if counts.dtype == torch.bool or counts.is_complex():
        raise TypeError(f"counts must be integer or real numbers, got dtype {counts.dtype}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
        raise ValueError(f"beta must be a number in [0, 1), got {beta!r}")
    n = counts.double()
    if not torch.isfinite(n).all() or (n < 0).any():
        raise ValueError(f"counts must be finite and >= 0, got {counts.tolist()}")
    present = n > 0
    if not present.any():
        raise ValueError("counts are all zero; at least one class needs samples")
    # E_n = -expm1(n log(beta)) / (1 - beta): exact where 1 - beta^n would cancel for beta near 1
    one_minus_beta = 1.0 - beta
    log_beta = math.log1p(-one_minus_beta) if beta > 0 else -math.inf
    effective = -torch.expm1(torch.where(present, n, 1.0) * log_beta) / one_minus_beta
    inverse = torch.where(present, 1.0 / effective, 0.0)
    weights = inverse / inverse.sum() * present.sum()
    return weights.to(torch.get_default_dtype())


def focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
) -> Tensor:
    r"""Focal loss of class logits ``(..., C)`` against integer labels ``(...)`` (Lin et al., 2017).

    Lin, Goyal, Girshick, He & Dollár, "Focal Loss for Dense Object Detection", ICCV 2017. With
    :math:`p_t = \mathrm{softmax}(z)_y` the probability of the true class,

    .. math::
        \ell = -w_y\, (1 - p_t)^{\gamma} \log p_t,

    which down-weights well-classified samples (:math:`p_t \to 1`) so that the hard ones dominate.
    :math:`\gamma = 0` is the cross-entropy.

    ``reduction="mean"`` divides by the summed weights of the kept labels,
    :math:`\sum_i \ell_i / \sum_i w_{y_i}`, exactly like :func:`torch.nn.functional.cross_entropy`
    (so with ``gamma=0`` the two agree, with and without ``weight``); without ``weight`` that is
    the plain mean over the kept labels. ``"sum"`` sums; ``"none"`` returns :math:`\ell` of shape
    ``target.shape``, 0 at ignored labels. When every label is ignored the mean is NaN, as in
    torch.

    Args:
        logits: ``(N, C)`` or per step ``(B, T, C)``; any ``(..., C)`` with ``target`` ``(...)``.
        target: integer labels in ``[0, C)``, or ``ignore_index``.
        gamma: focusing parameter, ``>= 0`` (the paper uses 2).
        weight: optional per-class weights ``(C,)``, e.g. from :func:`class_balanced_weights`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        ignore_index: label that contributes nothing (padding).
    """
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() < 1:
        got = f"{logits.dtype} {tuple(logits.shape)}" if isinstance(logits, Tensor) else logits
        raise TypeError(f"logits must be a floating-point tensor (..., C), got {got}")
    if not isinstance(target, Tensor) or target.is_floating_point() or target.dtype == torch.bool:
        got = target.dtype if isinstance(target, Tensor) else type(target).__name__
        raise TypeError(f"target must be integer class labels, got {got}")
    if logits.shape[:-1] != target.shape:
        raise ValueError(
            f"logits (..., C) must match target (...): expected logits of shape "
            f"{(*target.shape, 'C')}, got {tuple(logits.shape)} for target {tuple(target.shape)}"
        )
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0:
        raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    num_classes = logits.shape[-1]
    if weight is not None and (not isinstance(weight, Tensor) or weight.shape != (num_classes,)):
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a tensor of shape ({num_classes},), got {got}")
    flat = target.reshape(-1)
    keep = flat != ignore_index
    if ((flat < 0) | (flat >= num_classes))[keep].any():
        bad = flat[keep & ((flat < 0) | (flat >= num_classes))]
        raise ValueError(
            f"target labels must be in [0, {num_classes}) or ignore_index={ignore_index}, "
            f"got {sorted(set(bad.tolist()))[:5]}"
        )
    label = torch.where(keep, flat, 0)
    log_pt = F.log_softmax(logits.reshape(-1, num_classes), dim=-1)
    log_pt = log_pt.gather(1, label[:, None]).squeeze(1)
    # 1 - p as -expm1(log p), exact near p = 1; the floor keeps the gradient of (1 - p)^gamma
    # finite at p = 1 for gamma < 1 (the loss there is 0 either way)
    one_minus_pt = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
    loss = -(one_minus_pt**gamma) * log_pt
    w = keep.to(loss.dtype) if weight is None else weight.to(loss.dtype)[label] * keep
    loss = loss * w
    if reduction == "none":
        return loss.reshape(target.shape)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / w.sum()


class UncertaintyWeighting(nn.Module):
    r"""Weights task losses by learned homoscedastic uncertainty (Kendall, Gal & Cipolla, 2018).

    Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
    Geometry and Semantics", CVPR 2018. Each task :math:`k` has a learned log-variance
    :math:`s_k = \log \sigma_k^2`, and the total loss is

    .. math::
        L = \sum_k c_k\, e^{-s_k} L_k + \tfrac12 s_k,

    the negative log-likelihood of a Gaussian (regression, :math:`c_k = \tfrac12`, :math:`L_k` a
    mean squared error) or of a softmax with temperature :math:`\sigma_k^2` (classification,
    :math:`c_k = 1`, :math:`L_k` a cross-entropy), up to constants. Minimising over :math:`s_k`
    gives :math:`e^{s_k} = 2 c_k L_k`: for a regression :math:`\sigma_k^2` settles at the mean
    squared error, so noisy tasks get small weights :math:`c_k e^{-s_k}`. Each :math:`s_k` starts
    at :math:`\log c_k`, so every task starts with weight 1.

    Put :meth:`parameters` in the optimizer next to the model's. The weights follow the current
    losses: a task not learned yet looks noisy and is down-weighted, so a few epochs with the
    weights frozen first (learning rate 0 for this module's group) can help.

    Args:
        kinds: ``{task name: "regression" | "classification"}``.

    Example::

        >>> weighting = rnnkit.UncertaintyWeighting({"label": "classification", "y": "regression"})
        >>> total = weighting({"label": F.cross_entropy(a, y1), "y": F.mse_loss(b, y2)})
    """

    SCALES = {"regression": 0.5, "classification": 1.0}

    def __init__(self, kinds: Mapping[str, str]) -> None:
        super().__init__()
        if not isinstance(kinds, Mapping) or not kinds:
            raise ValueError(
                "kinds must be a non-empty dict {task: 'regression' | 'classification'}, "
                f"got {kinds!r}"
            )
        unknown = {k: v for k, v in kinds.items() if v not in self.SCALES}
        if unknown:
            raise ValueError(
                f"unknown task kind(s) {unknown}; expected 'regression' or 'classification'"
            )
        self.kinds = dict(kinds)
        self.scale = {k: self.SCALES[kind] for k, kind in self.kinds.items()}
        self.log_var = nn.ParameterDict(
            {k: nn.Parameter(torch.tensor(math.log(c))) for k, c in self.scale.items()}
        )

    def forward(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The weighted total of ``{task: scalar loss}``; the keys must be the configured tasks."""
        if not isinstance(losses, Mapping):
            raise TypeError(f"losses must be a dict {{task: scalar loss}}, got {type(losses)}")
        missing = [k for k in self.kinds if k not in losses]
        extra = [k for k in losses if k not in self.kinds]
        if missing or extra:
            raise ValueError(
                f"losses must have the tasks {list(self.kinds)}; missing {missing}, extra {extra}"
            )
        for k, loss in losses.items():
            if not isinstance(loss, Tensor) or loss.dim() != 0:
                got = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
                raise ValueError(f"loss {k!r} must be a scalar tensor, got {got}")
        return sum(
            self.scale[k] * torch.exp(-self.log_var[k]) * loss + 0.5 * self.log_var[k]
            for k, loss in losses.items()
        )

    def weights(self) -> dict[str, float]:
        """The current weight :math:`c_k e^{-s_k}` of each task."""
        return {k: self.scale[k] * math.exp(-s.item()) for k, s in self.log_var.items()}

    def sigmas(self) -> dict[str, float]:
        """The current :math:`\\sigma_k = e^{s_k / 2}` of each task."""
        return {k: math.exp(s.item() / 2) for k, s in self.log_var.items()}

    def extra_repr(self) -> str:
        return f"kinds={self.kinds}"


def _predictions(output: Tensor, target: Tensor, num_classes: int | None) -> tuple[Tensor, int]:
    """Integer predictions of ``target``'s shape from logits ``(..., C)`` or from predictions."""
    if not isinstance(output, Tensor) or not isinstance(target, Tensor):
        raise TypeError(
            f"output and target must be tensors, got {type(output).__name__} and "
            f"{type(target).__name__}"
        )
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"target must be integer class labels, got {target.dtype}")
    if output.is_floating_point() and output.shape[:-1] == target.shape and output.dim() >= 1:
        if num_classes is not None and num_classes != output.shape[-1]:
            raise ValueError(
                f"num_classes={num_classes} but the logits have {output.shape[-1]} classes"
            )
        return output.argmax(dim=-1), output.shape[-1]
    integer = not (output.is_floating_point() or output.is_complex() or output.dtype == torch.bool)
    if integer and output.shape == target.shape:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                f"integer predictions need num_classes, an int >= 1, got {num_classes!r}"
            )
        return output, num_classes
    raise ValueError(
        f"expected logits of shape {(*target.shape, 'C')} or integer predictions of shape "
        f"{tuple(target.shape)} for target {tuple(target.shape)}, got {output.dtype} "
        f"{tuple(output.shape)}"
    )


def recall_per_class(
    output: Tensor, target: Tensor, num_classes: int | None = None, ignore_index: int = -100
) -> Tensor:
    r"""Recall of each class: :math:`r_c = |\{i : \hat y_i = c,\ y_i = c\}| / |\{i : y_i = c\}|`.

    Args:
        output: logits ``(..., C)`` (the prediction is their ``argmax``) or integer predictions
            of ``target``'s shape.
        target: integer labels ``(...)``; ``ignore_index`` labels are left out.
        num_classes: ``C``; taken from the logits if not given, needed for integer predictions.

    Returns:
        float tensor ``(C,)``; **NaN** for a class absent from ``target`` (its recall is undefined).
    """
    pred, num_classes = _predictions(output, target, num_classes)
    keep = target != ignore_index
    label, pred = target[keep], pred[keep]
    if ((label < 0) | (label >= num_classes)).any():
        bad = label[(label < 0) | (label >= num_classes)]
        raise ValueError(
            f"target labels must be in [0, {num_classes}) or ignore_index={ignore_index}, "
            f"got {sorted(set(bad.tolist()))[:5]}"
        )
    support = torch.bincount(label, minlength=num_classes)
    hits = torch.bincount(label[pred == label], minlength=num_classes)
    return hits.float() / support.float()


def balanced_accuracy(
    output: Tensor, target: Tensor, num_classes: int | None = None, ignore_index: int = -100
) -> Tensor:
    r"""Mean recall over the classes present in ``target``: :math:`\frac1{|P|}\sum_{c\in P} r_c`.

    Classes absent from ``target`` (recall NaN in :func:`recall_per_class`) are left out of the
    mean; NaN only when no label is kept at all. Unlike accuracy it is not dominated by the
    frequent classes: always predicting the majority class scores :math:`1/|P|`. Arguments as in
    :func:`recall_per_class`. As a metric of :class:`rnnkit.Trainer` (``"balanced_accuracy"``) it
    is computed per batch and averaged over batches, which approximates, but is not, the value on
    the whole set.
    """
    return recall_per_class(output, target, num_classes, ignore_index).nanmean()
