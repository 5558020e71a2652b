"""Gradient clipping: by global norm, by value, or adaptively per unit (AGC), with a guard
against non-finite gradients."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

MODES = ("norm", "value", "agc")
ON_NONFINITE = ("raise", "report")

NamedParameters = nn.Module | Mapping[str, Tensor] | Iterable[Tensor] | Iterable[tuple[str, Tensor]]


class NonFiniteError(FloatingPointError):
    """A training step produced a non-finite loss or gradient."""


class NonFiniteGradientError(NonFiniteError, RuntimeError):
    """The gradients hold a NaN or an infinity; ``name`` is the first parameter affected (None
    when every gradient is finite but their norm overflowed). A :class:`NonFiniteError`."""

    def __init__(self, message: str, name: str | None) -> None:
        super().__init__(message)
        self.name = name


def first_nonfinite_gradient(parameters: NamedParameters) -> str | None:
    """The name of the first parameter whose gradient holds a NaN or an infinity, else None."""
    for name, p in _named(parameters):
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return name
    return None


def first_nonfinite(parameters: NamedParameters) -> str | None:
    """The name of the first parameter that itself holds a NaN or an infinity, else None."""
    for name, p in _named(parameters):
        if not torch.isfinite(p.detach()).all():
            return name
    return None


def _named(parameters: NamedParameters) -> list[tuple[str, Tensor]]:
    if isinstance(parameters, nn.Module):
        return list(parameters.named_parameters())
    if isinstance(parameters, Tensor):
        return [("parameter 0", parameters)]
    if isinstance(parameters, Mapping):
        items = list(parameters.items())
    else:
        items = [
            item if isinstance(item, tuple) else (f"parameter {i}", item)
            for i, item in enumerate(parameters)
        ]
    for name, p in items:
        if not isinstance(p, Tensor):
            raise TypeError(
                "clip_gradients: expected a module, tensors, (name, tensor) pairs or a dict of "
                f"tensors, got {type(p).__name__} for {name!r}"
            )
    return items


def _check_args(mode: str, max_norm, max_value, on_nonfinite: str) -> None:
    if mode not in MODES:
        raise ValueError(f"clip_gradients: mode must be one of {MODES}, got {mode!r}")
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(
            f"clip_gradients: on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}"
        )
    needed, other = ("max_value", "max_norm") if mode == "value" else ("max_norm", "max_value")
    given = {"max_norm": max_norm, "max_value": max_value}
    if given[other] is not None:
        raise ValueError(f"clip_gradients: mode={mode!r} takes {needed}, not {other}")
    limit = given[needed]
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
        raise ValueError(f"clip_gradients: mode={mode!r} needs {needed} > 0, got {limit!r}")


def _unitwise_norm(x: Tensor) -> Tensor:
    """Norm per output unit (row) of a weight; the whole norm for vectors and scalars."""
    if x.dim() <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim())), keepdim=True)


def _agc_(params: list[Tensor], clip: float, eps: float) -> None:
    for p in params:
        weight_norm = _unitwise_norm(p.detach()).clamp_min(eps)
        grad_norm = _unitwise_norm(p.grad)
        allowed = weight_norm * clip
        scale = torch.where(grad_norm > allowed, allowed / grad_norm.clamp_min(1e-6), 1.0)
        p.grad.mul_(scale)


def clip_gradients(
    parameters: NamedParameters,
    max_norm: float | None = None,
    max_value: float | None = None,
    mode: str = "norm",
    *,
    on_nonfinite: str = "raise",
    norm_type: float = 2.0,
    agc_eps: float = 1e-3,
) -> Tensor:
    r"""Clip the gradients of ``parameters`` in place; return their total norm before clipping.

    ``parameters``: a module, an iterable of tensors or of ``(name, tensor)`` pairs (e.g.
    ``model.named_parameters()``), or a dict. Parameters without a gradient are ignored.

    Modes:

    * ``"norm"`` (``max_norm``) — rescale all gradients together so that their total
      ``norm_type``-norm is at most ``max_norm``: :math:`g \leftarrow g \cdot \min(1,
      \text{max\_norm} / (\lVert g \rVert + 10^{-6}))` (Pascanu, Mikolov & Bengio 2013, "On the
      difficulty of training recurrent neural networks"); the numbers of
      :func:`torch.nn.utils.clip_grad_norm_`. The direction of the step is kept.
    * ``"value"`` (``max_value``) — clamp every element to ``[-max_value, max_value]``
      (Mikolov 2012); the direction changes.
    * ``"agc"`` (``max_norm`` is the ratio :math:`\lambda`) — adaptive gradient clipping (Brock,
      De, Smith & Simonyan 2021, "High-Performance Large-Scale Image Recognition Without
      Normalization"): per output unit :math:`i` (row of a weight; a vector parameter is one
      unit), :math:`G_i \leftarrow \lambda \frac{\max(\lVert W_i \rVert, \epsilon)}{\lVert G_i
      \rVert} G_i` where :math:`\lVert G_i \rVert / \max(\lVert W_i \rVert, \epsilon) >
      \lambda`, with :math:`\epsilon` = ``agc_eps``. Typical :math:`\lambda`: 0.01 to 0.16.

    The returned norm is always the total ``norm_type``-norm of all gradients before clipping
    (a 0-d tensor on their device), what a training log shows. When it is not finite:

    * ``on_nonfinite="raise"`` (default): a :class:`NonFiniteGradientError` naming the first
      parameter whose gradient holds a NaN or an infinity (names come from the module or the
      pairs; plain tensors are called ``"parameter <index>"``); nothing is changed.
    * ``on_nonfinite="report"``: nothing is changed and the non-finite norm is returned, so the
      caller can skip the optimizer step (``if not torch.isfinite(norm): optimizer.zero_grad()``).

    Checking finiteness reads the norm on the host (one device synchronisation per call).
    Unknown modes, a missing or non-positive limit, or the limit of another mode raise a
    ``ValueError``.
    """
    _check_args(mode, max_norm, max_value, on_nonfinite)
    named = [(n, p) for n, p in _named(parameters) if p.grad is not None]
    if not named:
        return torch.zeros(())
    params = [p for _, p in named]
    total = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type)
    if not torch.isfinite(total):
        if on_nonfinite == "report":
            return total
        bad = first_nonfinite_gradient(named)
        if bad is None:
            raise NonFiniteGradientError(
                f"clip_gradients: the gradient norm overflowed to {total.item()} although every "
                "gradient is finite (use a larger dtype or scale the loss down)",
                None,
            )
        raise NonFiniteGradientError(
            f"clip_gradients: the gradient norm is {total.item()}: the gradient of {bad!r} "
            "holds NaN or inf (pass on_nonfinite='report' to skip the step instead)",
            bad,
        )
    if mode == "norm":
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    elif mode == "value":
        for p in params:
            p.grad.clamp_(-max_value, max_value)
    else:
        _agc_(params, max_norm, agc_eps)
    return total
