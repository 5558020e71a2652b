"""What the Triton engine can run, and why not when it cannot (never imports triton).

A layer asks :func:`blockers` on every forward call, so the checks here are cheap: attribute
reads, ``isinstance`` and one cached ``find_spec``. :func:`units` turns a layer into one
:class:`Unit` per (layer, direction): the cell's kind, how its input terms are computed (the
input projection, hoisted out of the time loop and left to torch's autograd) and the tensors of
its recurrence, in the order the kernels take them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import cells as rnnkit_cells
from rnnkit import variants

Reason = tuple[str, str]

_TRUE = ("1", "true", "on", "yes")


@cache
def triton_installed() -> bool:
    """Whether ``import triton`` would work (looked up once, without importing it)."""
    return importlib.util.find_spec("triton") is not None


def interpreter_on() -> bool:
    """Whether Triton kernels run in its CPU interpreter.

    Triton decides when a function is defined, from ``TRITON_INTERPRET``: once rnnkit's kernels
    or ``triton.language`` (whose functions the kernels call) are imported, their mode is the
    answer, whatever the variable says now.
    """
    jit = sys.modules.get("rnnkit.engines.triton.jit")
    if jit is not None:
        return jit.INTERPRETED
    language = sys.modules.get("triton.language")
    if language is not None and hasattr(language, "sum"):
        return language_interpreted(language)
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE


def language_interpreted(language) -> bool:
    """Whether ``triton.language``'s own jitted functions were defined for the interpreter."""
    return type(language.sum).__name__ == "InterpretedFunction"


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The lower precision autocast asks for on ``device`` now, or None when it is off."""
    if not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


@dataclass(frozen=True)
class Unit:
    """One (layer, direction) of a layer, as the Triton engine runs it.

    ``kind`` names the driver (``"rnn"``, ``"lstm"``, ``"gru"``, ``"layernorm_lstm"``,
    ``"layernorm_gru"``, ``"indrnn"``); ``options`` are its settings (nonlinearity, eps);
    ``project(x)`` gives the input terms of every step; ``weights`` are the tensors of the
    recurrence in the driver's order (None where a cell has no such tensor).
    """

    kind: str
    options: tuple
    project: Callable[[Tensor], Tensor]
    weights: tuple[Tensor | None, ...]


def _linear(weight: Tensor, bias: Tensor | None) -> Callable[[Tensor], Tensor]:
    return partial(F.linear, weight=weight, bias=bias)


def _cell_unit(cell: nn.Module) -> Unit | None:
    kind = type(cell)
    if kind in (rnnkit_cells.LSTMCell, nn.LSTMCell):
        weights = (cell.weight_hh, cell.bias_hh, None)
        return Unit("lstm", (), _linear(cell.weight_ih, cell.bias_ih), weights)
    if kind in (rnnkit_cells.GRUCell, nn.GRUCell):
        weights = (cell.weight_hh, cell.bias_hh)
        return Unit("gru", (), _linear(cell.weight_ih, cell.bias_ih), weights)
    if kind in (rnnkit_cells.RNNCell, nn.RNNCell):
        weights = (cell.weight_hh, cell.bias_hh)
        project = _linear(cell.weight_ih, cell.bias_ih)
        return Unit("rnn", (cell.nonlinearity,), project, weights)
    if kind is variants.LayerNormLSTMCell:
        hh, c = cell.norm_hh, cell.norm_c
        weights = (cell.weight_hh, hh.weight, hh.bias, c.weight, c.bias)
        return Unit("layernorm_lstm", (hh.eps, c.eps), cell.project_input, weights)
    if kind is variants.LayerNormGRUCell:
        hh = cell.norm_hh
        weights = (cell.weight_hh, hh.weight, hh.bias)
        return Unit("layernorm_gru", (hh.eps,), cell.project_input, weights)
    if kind is variants.IndRNNCell:
        weights = (cell.recurrent_weight(),)
        return Unit("indrnn", (cell.nonlinearity,), cell.project_input, weights)
    return None


_MODES = {"LSTM": ("lstm", ()), "GRU": ("gru", ()), "RNN_TANH": ("rnn", ("tanh",))}
_MODES["RNN_RELU"] = ("rnn", ("relu",))


def units(layer: nn.Module) -> list[Unit]:
    """The units of an rnnkit layer (``RNN/LSTM/GRU`` or ``Recurrent``), in torch.nn's order."""
    if isinstance(layer, nn.RNNBase):
        kind, options = _MODES[layer.mode]
        found = []
        for names in layer._all_weights:
            w = [getattr(layer, name) for name in names]
            b_ih, b_hh = (w[2], w[3]) if layer.bias else (None, None)
            weights = (w[1], b_hh)
            if kind == "lstm":
                weights += (w[-1] if layer.proj_size else None,)
            found.append(Unit(kind, options, _linear(w[0], b_ih), weights))
        return found
    return [_cell_unit(cell) for cell in layer.cells]


def _first_parameter(layer: nn.Module) -> Tensor | None:
    return next(layer.parameters(), None)


_KNOWN_CELLS = (
    rnnkit_cells.LSTMCell,
    nn.LSTMCell,
    rnnkit_cells.GRUCell,
    nn.GRUCell,
    rnnkit_cells.RNNCell,
    nn.RNNCell,
    variants.LayerNormLSTMCell,
    variants.LayerNormGRUCell,
    variants.IndRNNCell,
)


def _known_cells(layer: nn.Module) -> list[Reason]:
    if isinstance(layer, nn.RNNBase):
        return []
    unknown = sorted({type(c).__name__ for c in layer.cells if type(c) not in _KNOWN_CELLS})
    if not unknown:
        return []
    return [
        (
            f"cells {', '.join(unknown)} have no Triton kernel (it has RNN, LSTM, GRU, "
            "LayerNormLSTM, LayerNormGRU and IndRNN cells, of their exact types)",
            "use one of those cells, or accept the own loop",
        )
    ]


def _hooked_cells(layer: nn.Module) -> list[Reason]:
    # The own loop calls a torch.nn cell as a module, so its hooks run there; the kernels
    # cannot call them. (rnnkit cells are run through their step, by every engine.)
    if isinstance(layer, nn.RNNBase):
        return []
    global_hooks = bool(
        nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
    )
    hooked = sorted(
        {
            type(c).__name__
            for c in layer.cells
            if not hasattr(c, "project_input")
            and (global_hooks or c._forward_hooks or c._forward_pre_hooks)
        }
    )
    if not hooked:
        return []
    return [
        (
            f"forward hooks on {', '.join(hooked)} cells run only in the own loop",
            "remove the hooks to run the Triton engine",
        )
    ]


def blockers(layer: nn.Module) -> list[Reason]:
    """What keeps the Triton engine from running ``layer`` now: ``[(reason, fix), ...]``.

    On a CPU the engine runs only when asked for by name (``engine="triton"``) with the
    interpreter on: it is there to test the kernels, far too slow to be chosen by ``"auto"``.
    """
    param = _first_parameter(layer)
    if param is None:
        return [("the layer has no parameters", "use cells with weights")]
    reasons = _known_cells(layer)
    if param.device.type == "cpu":
        if not (layer.engine == "triton" and interpreter_on()):
            reasons.append(
                (
                    "the layer is on the CPU: the Triton engine runs on CUDA (on a CPU only "
                    "under TRITON_INTERPRET=1, set before torch imports triton, with "
                    "engine='triton', to test it)",
                    "move the model to a CUDA device",
                )
            )
            return reasons
    elif param.device.type != "cuda":
        return reasons + [(f"the layer is on {param.device.type}", "move it to a CUDA device")]
    if not triton_installed():
        reasons.append(("triton is not installed", "pip install triton (Linux), or rnnkit[gpu]"))
    if param.dtype not in (torch.float32, torch.float64):
        reasons.append(
            (
                f"the weights are {param.dtype}: the Triton engine keeps float32 or float64 "
                "weights and state, and computes in lower precision under autocast",
                "keep float32 weights and use torch.autocast",
            )
        )
    low = autocast_dtype(param.device)
    if low is not None and param.device.type == "cpu":
        reasons.append(
            (
                "autocast on a CPU: Triton's interpreter has no bfloat16/float16 arithmetic",
                "turn autocast off to test the kernels",
            )
        )
    elif low is not None and getattr(layer, "proj_size", 0):
        reasons.append(
            (
                "proj_size under autocast: the projected LSTM runs in float32/float64 only",
                "turn autocast off for this layer",
            )
        )
    return reasons + _hooked_cells(layer)
