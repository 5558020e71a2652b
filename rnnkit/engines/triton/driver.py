r"""The contract between a cell's kernels and the engine, and the gradient bookkeeping they share.

A *driver* runs one (layer, direction) of one cell kind through time. Its ``forward`` takes the
projected inputs ``xp (T, B, G*H)`` (time order), the lengths ``(B,)`` as int32 on the device, the
initial state and the recurrence's tensors, and returns every state in processing order
(``states[0]`` is the initial one, ``states[k + 1]`` the one after the ``k``-th step; the
reverse direction processes ``t = T - 1 - k``) and, when asked to ``save``, what its backward
needs. Per step: one matrix product through torch (cuBLAS), then one Triton kernel that does
everything elementwise, the lengths mask included (``valid = t < length[b]``: a padded step
leaves the state as it was).

``backward`` is the hand-derived gradient through time. With :math:`\bar h_t` the total
gradient reaching the state after step ``t`` (from later steps and from the output ``y_t``),
a padded step passes :math:`\bar h` on unchanged, and the output gradient :math:`\bar y_t`
counts only where the step is valid (the output is zero elsewhere). The kernels therefore keep
a *carry*, the part of :math:`\bar h_{t-1}` that is not a matrix product,

.. math::
    \mathrm{carry}_{t-1} = [\,\text{t padded}\,]\,\bar h_t + \text{(direct terms, e.g. the GRU's }
    z_t \bar h_t) + [\,t-1 \text{ valid}\,]\,\bar y_{t-1},

and the next step adds ``dgates_t W_hh`` (one matrix product) to it. The weight gradients are
one product over all steps after the loop, e.g. :math:`\partial L/\partial W_{hh} =
\sum_t \mathrm{dgates}_t^\top h_{t-1}`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Forward:
    """What a driver's forward returns: all states ``h`` (``(T + 1, B, P)``), the final state
    (``(h_n,)`` or ``(h_n, c_n)``) and the tensors its backward reads (empty without saving)."""

    states: Tensor
    finals: tuple[Tensor, ...]
    saved: tuple[Tensor, ...]


@dataclass
class Backward:
    """Gradients: of the projected inputs (time order), the initial state and the weights."""

    inputs: Tensor
    state0: tuple[Tensor, ...]
    weights: tuple[Tensor | None, ...]


def time_index(k: int, steps: int, reverse: bool) -> int:
    """The time step that the ``k``-th processed step computes."""
    return steps - 1 - k if reverse else k


def initial_carry(
    go: Tensor, grad_h: Tensor, lengths: Tensor, steps: int, reverse: bool, dtype: torch.dtype
) -> Tensor:
    """The carry entering the last processed step, in ``dtype``: ``dL/dh_n`` plus that step's
    output gradient where the step is valid."""
    t = time_index(steps - 1, steps, reverse)
    valid = (lengths > t).unsqueeze(-1)
    return (grad_h.to(dtype) + torch.where(valid, go[t], 0).to(dtype)).contiguous()


def outer_sum(left: Tensor, right: Tensor) -> Tensor:
    r""":math:`\sum_{t, b} \mathrm{left}_{t b}^\top \mathrm{right}_{t b}` as one product.

    ``left (T, B, G)`` and ``right (T, B, P)`` give ``(G, P)``, in ``right``'s precision: a
    weight gradient over all steps, e.g. ``outer_sum(dgates, states[:-1])`` for ``W_hh``.
    """
    flat = left.reshape(-1, left.shape[-1]).to(right.dtype)
    return flat.t() @ right.reshape(-1, right.shape[-1])


def column_sum(values: Tensor, dtype: torch.dtype) -> Tensor:
    """Sum over all steps and rows: ``(T, B, G) -> (G,)``."""
    return values.reshape(-1, values.shape[-1]).sum(0, dtype=dtype)
