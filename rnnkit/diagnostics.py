"""Diagnostics of recurrent networks: gradient flow through time, spectral radius, saturation.

They answer "why does this RNN not learn?" with numbers, as plain tensors and dicts (the plots
belong to the notebooks and widgets):

* :func:`gradient_flow` — the norm of :math:`\\partial L / \\partial h_t` at every step of every
  recurrent layer: the vanishing/exploding curve;
* :func:`spectral_radius` — the largest :math:`|\\lambda|` of each recurrent matrix, per gate;
* :func:`saturation` — the fraction of gate units whose nonlinearity is near flat.

Layers are named ``"<module path>.l<k>"`` (``"_reverse"`` for the backward direction), as in
:func:`rnnkit.units.recurrent_units`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import recurrent as _recurrent
from rnnkit.cells import State
from rnnkit.engines.loop import run_cell
from rnnkit.engines.states import split_state
from rnnkit.regularization import Zoneout
from rnnkit.units import RecurrentUnit, call_model, evaluating, record_layer_calls, recurrent_units

_TORCH_TO_RNNKIT = {
    nn.RNN: _recurrent.RNN,
    nn.LSTM: _recurrent.LSTM,
    nn.GRU: _recurrent.GRU,
}


def _layer_key(module_name: str, layer: int, direction: int) -> str:
    suffix = f"l{layer}" + ("_reverse" if direction else "")
    return f"{module_name}.{suffix}" if module_name else suffix


def _set_attrs(module: nn.Module, observer, engine: str) -> None:
    module._observer, module.engine = observer, engine


@contextmanager
def _observing(model: nn.Module, observe: Callable[[str, int, Tensor], None]) -> Iterator[None]:
    """Within the block, every recurrent layer of ``model`` runs rnnkit's loop and calls
    ``observe(layer_key, t, h_t)`` at each step. A plain ``torch.nn.RNN/LSTM/GRU`` is switched
    to its rnnkit subclass for the block (same parameters, same numbers); all is restored."""
    undo: list[Callable[[], None]] = []
    try:
        for name, module in model.named_modules():
            if not isinstance(module, (nn.RNNBase, _recurrent.Recurrent)):
                continue
            hook = lambda layer, direction, t, h, name=name: observe(
                _layer_key(name, layer, direction), t, h
            )
            if isinstance(module, (_recurrent._TorchCompatible, _recurrent.Recurrent)):
                undo.append(partial(_set_attrs, module, module._observer, module.engine))
                module._observer = hook
                if module.engine in ("fused", "triton"):  # the observer needs the loop
                    module.engine = "auto"
                continue
            subclass = _TORCH_TO_RNNKIT.get(type(module))
            if subclass is None:
                raise ValueError(
                    f"cannot observe {name or 'the model'} ({type(module).__name__}): only "
                    "torch.nn.RNN/LSTM/GRU, rnnkit's layers and rnnkit.Recurrent step by step"
                )

            def restore(m=module, cls=module.__class__) -> None:
                m.__class__ = cls
                del m.engine, m._observer

            module.__class__ = subclass
            undo.append(restore)
            module.engine, module._observer = "auto", hook
        yield
    finally:
        for action in reversed(undo):
            action()


@dataclass
class GradientFlow:
    """What :func:`gradient_flow` measured.

    ``per_step[layer]`` is a float tensor ``(T,)``: :math:`\\lVert \\partial L / \\partial h_t
    \\rVert` (Frobenius norm over batch and units) for ``t = 0 .. T-1`` in time order.
    ``parameters[name]`` is the norm of each parameter's gradient. ``loss`` is the loss value.
    """

    per_step: dict[str, Tensor]
    parameters: dict[str, float]
    loss: float


def gradient_flow(
    model: nn.Module, inputs: Any, targets: Any, loss_fn: Callable[[Any, Any], Tensor]
) -> GradientFlow:
    r"""Backpropagate ``loss_fn(model(inputs), targets)`` once and measure the gradient reaching
    every hidden state.

    For each recurrent layer (and direction) it records the total derivative
    :math:`\partial L / \partial h_t` at each step: the gradient that arrives at :math:`h_t` from
    the outputs at every later step through
    :math:`\partial h_{t+1} / \partial h_t = \mathrm{diag}(\phi'(\cdot)) W_{hh}`. Its norm
    decaying towards early steps is the vanishing gradient, growing is the exploding one
    (Bengio, Simard & Frasconi 1994; Pascanu, Mikolov & Bengio 2013).

    ``inputs``: a tensor or PackedSequence (``model(inputs)``), a tuple/list
    (``model(*inputs)``) or a dict (``model(**inputs)``). How: each layer runs rnnkit's own loop
    for the call and its per-step states get ``retain_grad`` (a plain ``torch.nn`` layer is
    switched to its rnnkit subclass for the call, same numbers). The model runs in its current
    mode (call ``model.eval()`` first to measure without dropout); its parameters' ``.grad`` are
    left as they were before the call. If a layer runs several times in one forward, the last
    run is reported.
    """
    records: dict[str, dict[int, Tensor]] = {}

    def observe(key: str, t: int, h: Tensor) -> None:
        if h.requires_grad:
            h.retain_grad()
            records.setdefault(key, {})[t] = h

    params = list(model.parameters())
    saved = [p.grad for p in params]
    try:
        for p in params:
            p.grad = None
        with torch.enable_grad():
            with _observing(model, observe):
                output = call_model(model, inputs)
            loss = loss_fn(output, targets)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                got = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
                raise ValueError(f"gradient_flow: loss_fn must return a scalar tensor, got {got}")
            if not records:
                raise ValueError(
                    "gradient_flow: no recurrent layer ran with gradients: the model must contain "
                    "an RNN/LSTM/GRU layer or rnnkit.Recurrent whose parameters require grad"
                )
            loss.backward()
        per_step = {}
        for key, steps in records.items():
            norms = [
                torch.linalg.vector_norm(h.grad).item() if h.grad is not None else 0.0
                for _, h in sorted(steps.items())
            ]
            per_step[key] = torch.tensor(norms, dtype=torch.float64)
        grads = {
            name: torch.linalg.vector_norm(p.grad).item()
            for name, p in model.named_parameters()
            if p.grad is not None
        }
        return GradientFlow(per_step, grads, loss.item())
    finally:
        for p, grad in zip(params, saved, strict=True):
            p.grad = grad


def _recurrent_weight(unit: RecurrentUnit) -> Tensor:
    if unit.kind == "IndRNN":
        return unit.owner.recurrent_weight()
    return unit.get(unit.weight_hh)


def spectral_radius(module: nn.Module) -> dict[str, dict[str, float]]:
    r"""The spectral radius :math:`\rho = \max_i |\lambda_i|` of each recurrent matrix, per gate.

    Returns ``{layer: {gate: rho}}`` with the gates of each unit (``"h"`` for an RNN, ``"i", "f",
    "g", "o"`` for an LSTM, ``"r", "z", "n"`` for a GRU), for every recurrent unit inside
    ``module``. For a linearised tanh RNN, :math:`\rho < 1` makes :math:`\partial h_T / \partial
    h_t` shrink geometrically and :math:`\rho > 1` lets it grow (Pascanu et al. 2013). With an
    LSTM projection (``proj_size``) the recurrence goes through :math:`W_{hr}`, so the matrix is
    :math:`W_{hr} W_{hh}^{(g)}`; for an IndRNN it is :math:`\mathrm{diag}(u)`.
    """
    result: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for unit in recurrent_units(module):
            weight = _recurrent_weight(unit).double()
            if weight.dim() == 1:
                result[unit.name] = {"h": weight.abs().max().item()}
                continue
            radii = {}
            for gate, block in zip(unit.gates, weight.chunk(len(unit.gates)), strict=True):
                if unit.weight_hr is not None:
                    block = unit.get(unit.weight_hr).double() @ block
                radii[gate] = torch.linalg.eigvals(block).abs().max().item()
            result[unit.name] = radii
    return result


# --------------------------------------------------------------------------------------------
# Saturation: the layers are replayed step by step from their recorded inputs, with steps that
# also return the gates.

_SIGMOID_GATES = {"i", "f", "o", "r", "z"}


def _relative_slope(kind: str, nonlinearity: str, gate: str, value: Tensor) -> Tensor:
    """Per unit: the nonlinearity's slope at ``value`` relative to its maximum slope."""
    if gate in _SIGMOID_GATES:
        return 4 * value * (1 - value)
    if kind in ("RNN", "IndRNN") and nonlinearity == "relu":
        return (value > 0).to(value.dtype)
    return 1 - value * value


def _gated_step(unit: RecurrentUnit) -> tuple[Callable, Callable]:
    """``(project_input, step_with_gates)`` for a unit, from its weights or its cell."""
    owner = unit.owner
    if hasattr(owner, "step_with_gates"):
        return owner.project_input, owner.step_with_gates
    w_ih, w_hh = unit.get(unit.weight_ih), unit.get(unit.weight_hh)
    b_ih, b_hh = (unit.get(b) for b in unit.biases) if unit.biases else (None, None)
    w_hr = unit.get(unit.weight_hr) if unit.weight_hr else None

    def project(x: Tensor) -> Tensor:
        return F.linear(x, w_ih, b_ih)

    if unit.kind == "LSTM":

        def step(x_proj: Tensor, state: tuple[Tensor, Tensor]):
            h, c = state
            a_i, a_f, a_g, a_o = (x_proj + F.linear(h, w_hh, b_hh)).chunk(4, -1)
            i, f, g, o = a_i.sigmoid(), a_f.sigmoid(), a_g.tanh(), a_o.sigmoid()
            c = f * c + i * g
            tanh_c = c.tanh()
            h = o * tanh_c if w_hr is None else F.linear(o * tanh_c, w_hr)
            return (h, c), {"i": i, "f": f, "g": g, "o": o, "c": tanh_c}

    elif unit.kind == "GRU":

        def step(x_proj: Tensor, h: Tensor):
            x_r, x_z, x_n = x_proj.chunk(3, -1)
            h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, -1)
            r, z = (x_r + h_r).sigmoid(), (x_z + h_z).sigmoid()
            n = (x_n + r * h_n).tanh()
            return (1 - z) * n + z * h, {"r": r, "z": z, "n": n}

    else:
        act = torch.relu if unit.nonlinearity == "relu" else torch.tanh

        def step(x_proj: Tensor, h: Tensor):
            h = act(x_proj + F.linear(h, w_hh, b_hh))
            return h, {"h": h}

    return project, step


def _zoned(wrapper: Zoneout, step: Callable) -> Callable:
    def zoned(x_proj: Tensor, state: State):
        new, gates = step(x_proj, state)
        return wrapper.zone(state, new), gates

    return zoned


def _replay(
    name: str, module: nn.Module, args: tuple, kwargs: dict, threshold: float
) -> dict[str, dict[str, float]] | None:
    """Run ``module``'s recorded call again unit by unit and measure its gates' saturation."""
    units = recurrent_units(module)
    is_layer = isinstance(module, nn.RNNBase)
    count = len(module._all_weights) if is_layer else len(module.cells)
    if len(units) != count:
        return None  # a Recurrent with cells of unknown types
    input = args[0] if args else kwargs["input"]
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    dtype = units[0].get(units[0].weight_ih).dtype
    input_size = module.input_size or input.shape[-1]
    prep = _recurrent._prepare(
        module,
        input,
        input_size,
        dtype,
        module.batch_first,
        kwargs.get("lengths"),
        kwargs.get("mask"),
    )
    x, valid = prep.x, _recurrent._valid(prep)
    if hx is not None:
        if prep.unbatched:
            hx = tuple(h.unsqueeze(1) for h in hx) if isinstance(hx, tuple) else hx.unsqueeze(1)
        states = split_state(hx, count)
    elif is_layer:
        batch = x.shape[1]
        h = x.new_zeros(batch, getattr(module, "proj_size", 0) or module.hidden_size)
        c = x.new_zeros(batch, module.hidden_size)
        states = [(h, c) if module.mode == "LSTM" else h] * count
    else:
        states = module._initial_states(x)
    if valid is None:
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    directions = 2 if module.bidirectional else 1
    result: dict[str, dict[str, float]] = {}
    layer_input = x
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            unit = units[index]
            project, step = _gated_step(unit)
            if not is_layer and isinstance(module.cells[index], Zoneout):
                step = _zoned(module.cells[index], step)
            recorded: list[dict[str, Tensor]] = []

            def plain_step(x_proj, state, step=step, recorded=recorded):
                new, gates = step(x_proj, state)
                recorded.append(gates)
                return new

            out, _ = run_cell(
                plain_step, project(layer_input), states[index], valid=valid, reverse=direction == 1
            )
            outputs.append(out)
            if direction:
                recorded.reverse()
            keep = valid.unsqueeze(-1)
            fractions = {}
            for gate in recorded[0] if recorded else ():
                values = torch.stack([r[gate] for r in recorded])
                flat = _relative_slope(unit.kind, unit.nonlinearity, gate, values) < threshold
                total = keep.sum() * values.shape[-1]
                fractions[gate] = ((flat & keep).sum() / total.clamp_min(1)).item()
            result[_layer_key(name, layer, direction)] = fractions
        layer_input = torch.cat(outputs, dim=-1)
    return result


def saturation(
    model: nn.Module, inputs: Any, threshold: float = 0.1
) -> dict[str, dict[str, float]]:
    r"""The fraction of saturated units per recurrent layer and gate on ``inputs``.

    A unit is saturated at a step when the slope of its nonlinearity there is below
    ``threshold`` times the maximum slope: :math:`4\sigma(1-\sigma) < \text{threshold}` for a
    sigmoid gate, :math:`1 - \tanh^2 < \text{threshold}` for a tanh (at 0.1: :math:`\sigma`
    outside [0.026, 0.974], :math:`|\tanh|` above 0.949), a ReLU unit at 0 (dead). A saturated
    unit passes almost no gradient, so a high fraction means vanishing gradients through that
    gate — or, for an LSTM forget gate near 1, long memory on purpose.

    Gates: ``"h"`` for an RNN/IndRNN; ``"i", "f", "g", "o"`` and ``"c"`` (the output's
    :math:`\tanh(c_t)`) for an LSTM; ``"r", "z", "n"`` for a GRU. Returns ``{layer: {gate:
    fraction}}`` over every real (non-padded) step, sequence and unit.

    How: ``model(inputs)`` runs once in evaluation mode without gradients (modes are restored)
    while the input of each recurrent layer is recorded; then each layer is replayed step by step
    with steps that also return the gates. An ``rnnkit.Recurrent`` whose cells are of a type
    rnnkit does not know (neither rnnkit's nor torch.nn's cells, bare or inside
    :class:`rnnkit.Zoneout`) is left out.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"saturation: threshold must be a number in (0, 1), got {threshold!r}")
    if not 0 < threshold < 1:
        raise ValueError(f"saturation: threshold must be in (0, 1), got {threshold!r}")
    with evaluating(model):
        calls = record_layer_calls(
            model, inputs, (nn.RNNBase, _recurrent.Recurrent), "saturation", "recurrent"
        )
        result = {}
        for name, (module, args, kwargs) in calls.items():
            measured = _replay(name, module, args, kwargs, threshold)
            if measured is not None:
                result.update(measured)
    return result
