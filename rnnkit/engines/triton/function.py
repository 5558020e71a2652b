"""One (layer, direction) through time as one autograd function, captured in CUDA graphs or not.

:func:`recur` is what the layer runner calls per unit. It returns the outputs ``(T, B, P)`` (zero
past each length, time order) and the final state. Where a gradient is wanted, the run goes
through :class:`Recurrence`, whose backward is the driver's hand-derived one (so the whole
recurrence is one node of the autograd graph, not ``T`` steps of small ones); otherwise the
driver runs without saving anything for a backward (``torch.no_grad``, evaluation, inputs that
need no gradient).

Either way the work is done by a *runner*: :class:`Direct` calls the driver's kernels one by one;
:class:`rnnkit.engines.triton.graphs.Graphed` replays the same calls captured in CUDA graphs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.engines.triton import graphs
from rnnkit.engines.triton.driver import Backward, Forward
from rnnkit.errors import InputError


def outputs(states: Tensor, lengths: Tensor, steps: int, reverse: bool, dtype) -> Tensor:
    """The outputs in time order from the states in processing order (a new tensor): ``y_t`` is
    the state after step ``t``, zero where ``t >= length``."""
    run = states[1:].flip(0) if reverse else states[1:]
    valid = torch.arange(steps, device=states.device)[:, None] < lengths[None, :]
    return torch.where(valid.unsqueeze(-1), run[:steps], 0).to(dtype)


class Direct:
    """Runs the driver's kernels one by one (what a graph would capture)."""

    def __init__(self, driver, reverse: bool) -> None:
        self.driver, self.reverse = driver, reverse

    def forward(self, xp, lengths, state0, weights, save: bool) -> Forward:
        return self.driver.forward(
            xp.contiguous(), lengths, state0, weights, reverse=self.reverse, save=save
        )

    def backward(self, go, grads, lengths, weights, saved) -> Backward:
        return self.driver.backward(
            go.contiguous(), grads, lengths, weights, saved, reverse=self.reverse
        )


class Recurrence(torch.autograd.Function):
    """``(outputs, *final_state) = recurrence(xp, *state0, *weights)`` with its own backward."""

    @staticmethod
    def forward(ctx, runner, lengths: Tensor, steps: int, dtype, xp: Tensor, *tensors):
        parts = runner.driver.state_parts
        state0, weights = tensors[:parts], tensors[parts:]
        result = runner.forward(xp, lengths, state0, weights, save=True)
        ctx.runner, ctx.steps, ctx.parts, ctx.xp_dtype = runner, steps, parts, xp.dtype
        ctx.weight_count = len(weights)
        ctx.save_for_backward(lengths, *weights, *result.saved)
        out = outputs(result.states, lengths, steps, runner.reverse, dtype)
        return (out, *(f.to(dtype, copy=True) for f in result.finals))

    @staticmethod
    def backward(ctx, grad_out: Tensor, *grad_finals: Tensor):
        if torch.is_grad_enabled():
            raise InputError(
                "engine='triton' has no double backward (its backward through time is "
                "hand-derived); use engine='loop' for higher-order gradients"
            )
        lengths, *rest = ctx.saved_tensors
        weights, saved = rest[: ctx.weight_count], tuple(rest[ctx.weight_count :])
        result = ctx.runner.backward(grad_out, grad_finals, lengths, weights, saved)
        inputs = result.inputs[: ctx.steps].to(ctx.xp_dtype)
        return (None, None, None, None, inputs, *result.state0, *result.weights)


def recur(
    driver,
    xp: Tensor,
    state0: tuple[Tensor, ...],
    weights: tuple[Tensor | None, ...],
    lengths: Tensor,
    *,
    reverse: bool,
    dtype: torch.dtype,
    capture: bool,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One unit over time: ``(outputs (T, B, P), final state)``, differentiable.

    ``lengths`` are int32 on the device (``T`` for every row without lengths); ``dtype`` is the
    outputs' (the autocast dtype under autocast); ``capture`` asks for CUDA graphs (the caller
    has checked that they apply).
    """
    steps = xp.shape[0]
    tensors = (*state0, *weights)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (xp, *tensors)
    )
    runner = graphs.runner(driver, xp, lengths, tensors, reverse, needs_grad) if capture else None
    runner = runner or Direct(driver, reverse)
    with torch.autocast(xp.device.type, enabled=False):
        if needs_grad:
            out, *finals = Recurrence.apply(runner, lengths, steps, dtype, xp, *tensors)
            return out, tuple(finals)
        with torch.no_grad():
            result = runner.forward(xp, lengths, state0, weights, save=False)
            out = outputs(result.states, lengths, steps, reverse, dtype)
            return out, tuple(f.to(dtype, copy=True) for f in result.finals)
