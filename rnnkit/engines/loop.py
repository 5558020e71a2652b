"""The own-loop engine: any cell's step run over time in Python, the input projection hoisted.

For each (layer, direction) unit, ``project(x)`` computes the input terms of the whole sequence
in one matrix product, then ``step(x_proj_t, state)`` runs once per time step. With a validity
mask ``valid (T, B)`` the update is masked::

    state_t = where(valid_t, step(x_proj_t, state_{t-1}), state_{t-1}),   output_t = 0 if padded

so padded steps never change a state. The layers hand this engine inputs whose padded steps
are zero, so a padded step's discarded computation is finite and adds exactly zero to every
gradient (a NaN there would not: 0 * NaN is NaN). The backward direction runs from the last
step to the first with the same mask, which is each sequence reversed within its own length.
This engine runs every cell (variants, user cells) and every configuration, and is the reference
the others are tested against.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.engines.states import State, state_output, where

StepObserver = Callable[[int, int, int, Tensor], None]
Unit = tuple[Callable[[Tensor], Tensor], Callable[[Tensor, State], State]]


def run_cell(
    step: Callable[[Tensor, State], State],
    x_proj: Tensor,
    state: State,
    *,
    valid: Tensor | None = None,
    reverse: bool = False,
    observe: Callable[[int, Tensor], None] | None = None,
) -> tuple[Tensor, State]:
    """Run ``step`` over the time-major projected inputs ``x_proj (T, B, *)``.

    ``valid (T, B)`` masks padded steps: there the state is carried unchanged and the output is 0.
    ``reverse`` runs from the last step to the first. ``observe(t, h_t)`` sees each step's output
    state (the tensor the next step consumes; diagnostics call ``retain_grad`` on it).
    Returns the outputs ``(T, B, H)`` in time order and the final state.
    """
    outputs = []
    # unbind, not x_proj[t]: indexing would make the backward pass fill a zero gradient of the
    # whole sequence at every step (quadratic in T); unbind's backward stacks once.
    inputs = x_proj.unbind(0)
    masks = valid.unsqueeze(-1).unbind(0) if valid is not None else None
    times = range(x_proj.shape[0] - 1, -1, -1) if reverse else range(x_proj.shape[0])
    for t in times:
        new = step(inputs[t], state)
        if masks is not None:
            keep = masks[t]
            new = where(keep, new, state)
        out = state_output(new)
        if observe is not None:
            observe(t, out)
        outputs.append(out if valid is None else out.masked_fill(~keep, 0.0))
        state = new
    if reverse:
        outputs.reverse()
    if not outputs:
        return x_proj.new_zeros(0, *state_output(state).shape), state
    return torch.stack(outputs), state


def run_layers(
    x: Tensor,
    states: list[State],
    units: list[Unit],
    *,
    num_layers: int,
    num_directions: int,
    valid: Tensor | None,
    dropout: float,
    training: bool,
    observer: StepObserver | None,
) -> tuple[Tensor, list[State]]:
    """A stacked (optionally bidirectional) layer over time-major ``x (T, B, I)``.

    ``units[layer * num_directions + direction] = (project, step)``; ``states`` likewise.
    Dropout applies between layers in training, as in ``torch.nn``. ``observer(layer, direction,
    t, h_t)`` sees every step. Returns the last layer's outputs and the final state of each unit.
    """
    finals: list[State] = []
    layer_input = x
    for layer in range(num_layers):
        outputs = []
        for direction in range(num_directions):
            unit = layer * num_directions + direction
            project, step = units[unit]
            observe = None
            if observer is not None:
                observe = lambda t, h, layer=layer, direction=direction: observer(
                    layer, direction, t, h
                )
            out, final = run_cell(
                step,
                project(layer_input),
                states[unit],
                valid=valid,
                reverse=direction == 1,
                observe=observe,
            )
            outputs.append(out)
            finals.append(final)
        layer_input = torch.cat(outputs, dim=-1) if num_directions == 2 else outputs[0]
        if dropout and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, dropout, training=True)
    return layer_input, finals
