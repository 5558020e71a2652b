"""A whole layer on the Triton engine: stacked, bidirectional, lengths, dropout between layers.

The same structure as the own loop (:func:`rnnkit.engines.loop.run_layers`): per (layer,
direction) unit the input terms of the whole sequence are one torch product (differentiable by
torch), then the recurrence runs as one :class:`~rnnkit.engines.triton.function.Recurrence`.
The backward direction processes ``t = T - 1, ..., 0`` under the lengths mask, which is each
sequence reversed within its own length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.engines.states import State
from rnnkit.engines.triton import graphs, support
from rnnkit.engines.triton.function import recur
from rnnkit.engines.triton.gru import GRUDriver
from rnnkit.engines.triton.layernorm_gru import LayerNormGRUDriver
from rnnkit.engines.triton.layernorm_lstm import LayerNormLSTMDriver
from rnnkit.engines.triton.lstm import LSTMDriver
from rnnkit.engines.triton.rnn import IndRNNDriver, RNNDriver

_DRIVERS = {
    "rnn": RNNDriver,
    "lstm": LSTMDriver,
    "gru": GRUDriver,
    "layernorm_lstm": LayerNormLSTMDriver,
    "layernorm_gru": LayerNormGRUDriver,
    "indrnn": IndRNNDriver,
}


def driver_for(unit: support.Unit, mm_dtype: torch.dtype):
    """The driver that runs ``unit``, its matrix products in ``mm_dtype``."""
    return _DRIVERS[unit.kind](mm_dtype, *unit.options)


def run(
    layer: nn.Module, x: Tensor, states: list[State], lengths: Tensor | None
) -> tuple[Tensor, list[State]]:
    """``layer`` over time-major ``x (T, B, I)`` from one state per unit; lengths on any device.

    Returns the last layer's outputs and each unit's final state, as the own loop does.
    """
    steps, batch = x.shape[:2]
    units = support.units(layer)
    param = next(layer.parameters())
    state_dtype = param.dtype
    low = support.autocast_dtype(x.device)
    mm_dtype = low or state_dtype
    directions = 2 if layer.bidirectional else 1
    if steps == 0 or batch == 0:
        last = states[-1][0] if isinstance(states[-1], tuple) else states[-1]
        width = directions * last.shape[-1]
        return x.new_zeros(steps, batch, width, dtype=mm_dtype), states
    if lengths is None:
        lengths = torch.full((batch,), steps, dtype=torch.int32, device=x.device)
    else:
        lengths = lengths.to(device=x.device, dtype=torch.int32)
    finals: list[State] = []
    layer_input = x
    for depth in range(layer.num_layers):
        outputs = []
        for direction in range(directions):
            index = depth * directions + direction
            unit = units[index]
            driver = driver_for(unit, mm_dtype)
            state = states[index]
            parts = state if isinstance(state, tuple) else (state,)
            state0 = tuple(p.to(state_dtype).contiguous() for p in parts)
            capture = graphs.usable(driver.graphable, unit.weights, x.device) is None
            out, final = recur(
                driver,
                unit.project(layer_input),
                state0,
                unit.weights,
                lengths,
                reverse=direction == 1,
                dtype=mm_dtype,
                capture=capture,
            )
            outputs.append(out)
            finals.append(final if isinstance(state, tuple) else final[0])
        layer_input = torch.cat(outputs, dim=-1) if directions == 2 else outputs[0]
        if layer.dropout and layer.training and depth < layer.num_layers - 1:
            layer_input = F.dropout(layer_input, layer.dropout, training=True)
    return layer_input, finals
