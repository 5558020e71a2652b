"""Find the recurrent units inside any module: one unit per layer and direction.

Init recipes and diagnostics act per unit — the weights of one layer in one direction — whether
they live in a ``torch.nn.RNN/LSTM/GRU`` (or rnnkit's subclasses), in the cells of an
:class:`rnnkit.Recurrent`, or in a standalone cell. :func:`recurrent_units` lists them with the
names of their weights and the layout of their gate blocks. :func:`record_layer_calls` runs a
model once and keeps what each recurrent layer was called with, for diagnostics that replay a
layer step by step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit import cells as _cells
from rnnkit import variants as _variants
from rnnkit.recurrent import Recurrent

GATES = {
    "RNN": ("h",),
    "IndRNN": ("h",),
    "LSTM": ("i", "f", "g", "o"),
    "GRU": ("r", "z", "n"),
}


@dataclass(frozen=True)
class RecurrentUnit:
    """One layer-direction of a recurrent module and where its weights are.

    ``name`` is ``"<module path>.l<k>"`` (``"_reverse"`` appended for the backward direction) for
    layers, the module path for a standalone cell. ``owner`` holds the weights as attributes
    named ``weight_ih``, ``weight_hh`` (``(G*H, ·)`` with the gates of ``kind`` stacked in the
    order of :data:`GATES`, a vector ``(H,)`` for the IndRNN), ``weight_hr`` (LSTM projection) and
    ``biases``: tensors whose sum is the effective bias of the gates (dotted names reach into
    submodules, e.g. ``"norm_hh.bias"``).
    """

    name: str
    owner: nn.Module
    kind: str
    nonlinearity: str
    weight_ih: str
    weight_hh: str
    biases: tuple[str, ...]
    weight_hr: str | None = None
    layer: int = 0
    direction: int = 0

    @property
    def gates(self) -> tuple[str, ...]:
        return GATES[self.kind]

    @property
    def hidden_size(self) -> int:
        return self.get(self.weight_hh).shape[0] // len(self.gates)

    def get(self, attr: str) -> Tensor:
        owner = self.owner
        *path, last = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        return getattr(owner, last)


_RNN_BASE_KIND = {
    "LSTM": ("LSTM", "tanh"),
    "GRU": ("GRU", "tanh"),
    "RNN_TANH": ("RNN", "tanh"),
    "RNN_RELU": ("RNN", "relu"),
}


def _layer_units(prefix: str, module: nn.RNNBase) -> list[RecurrentUnit]:
    kind, act = _RNN_BASE_KIND[module.mode]
    units = []
    directions = 2 if module.bidirectional else 1
    for index, names in enumerate(module._all_weights):
        suffix = names[0][len("weight_ih_") :]
        has_proj = bool(getattr(module, "proj_size", 0))
        units.append(
            RecurrentUnit(
                name=f"{prefix}.{suffix}" if prefix else suffix,
                owner=module,
                kind=kind,
                nonlinearity=act,
                weight_ih=names[0],
                weight_hh=names[1],
                biases=tuple(names[2:4]) if module.bias else (),
                weight_hr=names[-1] if has_proj else None,
                layer=index // directions,
                direction=index % directions,
            )
        )
    return units


def _unwrap_cell(cell: nn.Module) -> nn.Module:
    """The cell inside wrappers such as :class:`rnnkit.Zoneout` (which keep it as ``.cell``)."""
    while _cell_unit_kind(cell) is None and isinstance(getattr(cell, "cell", None), nn.Module):
        cell = cell.cell
    return cell


def _cell_unit_kind(cell: nn.Module) -> tuple[str, str, tuple[str, ...]] | None:
    """``(kind, nonlinearity, bias names)`` of a known cell type, else None."""
    if isinstance(cell, (_variants.LayerNormLSTMCell, _variants.LayerNormGRUCell)):
        kind = "LSTM" if isinstance(cell, _variants.LayerNormLSTMCell) else "GRU"
        biases = tuple(f"{n}.bias" for n in ("norm_ih", "norm_hh") if cell.bias)
        return kind, "tanh", biases
    if isinstance(cell, _variants.IndRNNCell):
        return "IndRNN", cell.nonlinearity, ("bias_ih",) if cell.bias else ()
    biases = ("bias_ih", "bias_hh") if getattr(cell, "bias_ih", None) is not None else ()
    if isinstance(cell, (_cells.LSTMCell, nn.LSTMCell)):
        return "LSTM", "tanh", biases
    if isinstance(cell, (_cells.GRUCell, nn.GRUCell)):
        return "GRU", "tanh", biases
    if isinstance(cell, (_cells.RNNCell, nn.RNNCell)):
        return "RNN", cell.nonlinearity, biases
    return None


def _cell_unit(name: str, cell: nn.Module, layer: int = 0, direction: int = 0):
    known = _cell_unit_kind(cell)
    if known is None:
        return None
    kind, act, biases = known
    return RecurrentUnit(
        name or "cell", cell, kind, act, "weight_ih", "weight_hh", biases, None, layer, direction
    )


def recurrent_units(model: nn.Module) -> list[RecurrentUnit]:
    """Every recurrent unit inside ``model``, in ``named_modules`` order.

    Recognised: ``torch.nn.RNN/LSTM/GRU`` and rnnkit's subclasses, :class:`rnnkit.Recurrent`
    (its cells, named by layer and direction, seen through wrappers such as
    :class:`rnnkit.Zoneout`), and standalone rnnkit or ``torch.nn`` cells and rnnkit's variant
    cells. Cells of unknown types are skipped.
    """
    units: list[RecurrentUnit] = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        if id(module) in seen:
            continue
        if isinstance(module, nn.RNNBase):
            units.extend(_layer_units(name, module))
        elif isinstance(module, Recurrent):
            directions = 2 if module.bidirectional else 1
            for index, wrapped in enumerate(module.cells):
                cell = _unwrap_cell(wrapped)
                seen.update(id(m) for m in wrapped.modules())
                layer, direction = divmod(index, directions)
                suffix = f"l{layer}" + ("_reverse" if direction else "")
                unit = _cell_unit(f"{name}.{suffix}" if name else suffix, cell, layer, direction)
                if unit is not None:
                    units.append(unit)
        else:
            unit = _cell_unit(name, module)
            if unit is not None:
                units.append(unit)
    return units


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a dict, ``model(*inputs)`` for a tuple or list, else
    ``model(inputs)``."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if type(inputs) in (tuple, list):  # not a PackedSequence, which is a tuple too
        return model(*inputs)
    return model(inputs)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Within the block ``model`` is in evaluation mode and gradients are off; every
    submodule's mode is restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes.items():
            module.training = mode


def record_layer_calls(
    model: nn.Module, inputs: Any, layer_types: tuple[type, ...], caller: str, kind: str
) -> dict[str, tuple[nn.Module, tuple, dict]]:
    """Run ``model`` on ``inputs`` once and return ``{module path: (layer, args, kwargs)}`` for
    every submodule of ``layer_types`` (the last call of each). When there is none, the
    ``ValueError`` says "<caller>: found no <kind> layer in <model class>"."""
    calls: dict[str, tuple[nn.Module, tuple, dict]] = {}
    handles = [
        module.register_forward_pre_hook(
            lambda m, args, kwargs, name=name: calls.__setitem__(name, (m, args, kwargs)),
            with_kwargs=True,
        )
        for name, module in model.named_modules()
        if isinstance(module, layer_types)
    ]
    if not handles:
        raise ValueError(f"{caller}: found no {kind} layer in {type(model).__name__}")
    try:
        call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return calls
