r"""Per-step hidden states and gate activations of the recurrent layers of a model.

:func:`trace_states` runs ``model(inputs)`` once, records what each ``torch.nn.RNN/LSTM/GRU``
layer (rnnkit's subclasses included) received, and replays every layer step by step with the
equations written out, keeping each gate:

.. math::
    \begin{array}{lll}
    \text{RNN:}  & h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}) &
        \phi = \tanh \text{ or ReLU} \\
    \text{LSTM:} & i_t, f_t, o_t = \sigma(\cdot),\ g_t = \tanh(\cdot) &
        c_t = f_t \odot c_{t-1} + i_t \odot g_t,\ h_t = o_t \odot \tanh(c_t) \\
    \text{GRU:}  & r_t, z_t = \sigma(\cdot),\ n_t = \tanh(W_{in} x_t + b_{in}
        + r_t \odot (W_{hn} h_{t-1} + b_{hn})) & h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}
    \end{array}

with the gate blocks stacked as in ``torch.nn`` (``i, f, g, o`` and ``r, z, n``). The replay is
the evaluation-mode computation (no dropout between layers); its ``hidden`` equals the layer's
own output. What it is for: looking at a network's memory — which units saturate, when the
forget gate closes, how far a state carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.units import evaluating, record_layer_calls

GATES = {"RNN": (), "LSTM": ("i", "f", "g", "o", "c"), "GRU": ("r", "z", "n")}


@dataclass
class StateTrace:
    """One layer's trace. ``hidden`` is ``(B, T, H)`` (batch first, whatever the layer's layout);
    ``gates[name]`` has the same shape: ``"i", "f", "g", "o"`` and the cell state ``"c"`` for an
    LSTM, ``"r", "z", "n"`` for a GRU, none for a plain RNN. ``kind`` is "RNN", "LSTM" or "GRU"."""

    layer: str
    kind: str
    hidden: Tensor
    gates: dict[str, Tensor]


def _check_layer(name: str, layer: nn.RNNBase, kwargs: dict) -> None:
    label = name or type(layer).__name__
    if layer.bidirectional:
        raise ValueError(f"trace_states: {label} is bidirectional; expected a one-way layer")
    if getattr(layer, "proj_size", 0):
        raise ValueError(f"trace_states: {label} has proj_size={layer.proj_size}; expected 0")
    for key in ("lengths", "mask"):
        if kwargs.get(key) is not None:
            raise ValueError(
                f"trace_states: {label} was called with {key}=...; trace one unpadded input "
                "(slice it to its length) instead"
            )


def _step(kind: str, act, x_proj: Tensor, h: Tensor, c: Tensor, w_hh, b_hh):
    """One step; returns ``(h, c, gates)``."""
    if kind == "LSTM":
        a_i, a_f, a_g, a_o = (x_proj + F.linear(h, w_hh, b_hh)).chunk(4, dim=-1)
        i, f, g, o = a_i.sigmoid(), a_f.sigmoid(), a_g.tanh(), a_o.sigmoid()
        c = f * c + i * g
        return o * c.tanh(), c, {"i": i, "f": f, "g": g, "o": o, "c": c}
    if kind == "GRU":
        x_r, x_z, x_n = x_proj.chunk(3, dim=-1)
        h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)
        r, z = (x_r + h_r).sigmoid(), (x_z + h_z).sigmoid()
        n = (x_n + r * h_n).tanh()
        return (1 - z) * n + z * h, c, {"r": r, "z": z, "n": n}
    return act(x_proj + F.linear(h, w_hh, b_hh)), c, {}


def _replay(name: str, layer: nn.RNNBase, args: tuple, kwargs: dict) -> dict[str, StateTrace]:
    x = args[0] if args else kwargs["input"]
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    unbatched = x.dim() == 2
    if unbatched:
        x = x.unsqueeze(0 if layer.batch_first else 1)
        if hx is not None:
            hx = tuple(s.unsqueeze(1) for s in hx) if isinstance(hx, tuple) else hx.unsqueeze(1)
    if not layer.batch_first:
        x = x.transpose(0, 1)
    kind = "RNN" if layer.mode.startswith("RNN") else layer.mode
    act = torch.relu if layer.mode == "RNN_RELU" else torch.tanh
    batch, hidden = x.shape[0], layer.hidden_size
    traces = {}
    for k in range(layer.num_layers):
        weights = [getattr(layer, f"{w}_l{k}", None) for w in ("weight_ih", "weight_hh")]
        b_ih, b_hh = (getattr(layer, f"{b}_l{k}", None) for b in ("bias_ih", "bias_hh"))
        if hx is None:
            h = x.new_zeros(batch, hidden)
            c = x.new_zeros(batch, hidden)
        else:
            h = hx[0][k] if isinstance(hx, tuple) else hx[k]
            c = hx[1][k] if isinstance(hx, tuple) else x.new_zeros(batch, hidden)
        x_proj = F.linear(x, weights[0], b_ih)
        hs, gates = [], {g: [] for g in GATES[kind]}
        for t in range(x.shape[1]):
            h, c, step_gates = _step(kind, act, x_proj[:, t], h, c, weights[1], b_hh)
            hs.append(h)
            for g, value in step_gates.items():
                gates[g].append(value)
        x = torch.stack(hs, dim=1)
        key = f"{name}.l{k}" if name else f"l{k}"
        traces[key] = StateTrace(key, kind, x, {g: torch.stack(v, 1) for g, v in gates.items()})
    return traces


def trace_states(model: nn.Module, inputs: Any) -> dict[str, StateTrace]:
    """Hidden states and gate activations at every step of every recurrent layer in ``model``.

    ``inputs``: a tensor (``model(inputs)``), a tuple/list (``model(*inputs)``) or a dict
    (``model(**inputs)``). Layers are ``torch.nn.RNN/LSTM/GRU`` or rnnkit's subclasses, one-way
    and without ``proj_size``, called without ``lengths``/``mask`` (pass one unpadded
    sequence); ``model`` may be such a layer itself. Results are keyed ``"<module path>.l<k>"``
    for layer ``k`` of the stack (``"l<k>"`` when ``model`` is the layer). The model runs once
    in evaluation mode without gradients (modes are restored). See the module docstring for the
    equations.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"trace_states: model must be a torch.nn.Module, got {type(model).__name__}"
        )
    with evaluating(model):
        calls = record_layer_calls(model, inputs, (nn.RNNBase,), "trace_states", "RNN/LSTM/GRU")
        result = {}
        for name, (layer, args, kwargs) in calls.items():
            _check_layer(name, layer, kwargs)
            result.update(_replay(name, layer, args, kwargs))
    return result
