"""The Triton engine: cells that cuDNN lacks, at kernel speed on a GPU.

What it promises: the same numbers as the own loop (outputs, final states, every gradient; tested
against it), for RNN (tanh/relu), LSTM (``proj_size`` too), GRU, :class:`rnnkit.LayerNormLSTMCell`,
:class:`rnnkit.LayerNormGRUCell` and :class:`rnnkit.IndRNNCell`, stacked, bidirectional, with
``lengths=`` (the backward direction reversed within each length), in float32 or float64, and
under CUDA autocast with bfloat16/float16 matrix products and float32 state.

How, per (layer, direction):

* the input terms of all steps are one torch product, differentiated by torch;
* each step is one recurrent matrix product through torch (cuBLAS) and ONE Triton kernel for
  everything elementwise: the gates, the cell update, the layer norms, IndRNN's update, the
  lengths mask (``t < length[b]``, read in the kernel, so a launch never depends on the values)
  and what the backward needs (:mod:`.lstm`, :mod:`.gru`, :mod:`.rnn`, :mod:`.layernorm_lstm`,
  :mod:`.layernorm_gru`); IndRNN needs no product, so one kernel runs its whole sequence;
* the backward through time is one autograd function with the hand-derived gradient (one kernel
  and one product per step, the weight gradients as one product over all steps after the loop;
  :mod:`.driver`, :mod:`.function`); no double backward (use ``engine="loop"``);
* on CUDA the forward and the backward loops are captured in CUDA graphs and replayed
  (:mod:`.graphs`), except where a capture cannot hold (autocast, weights made per call such as
  WeightDrop's, a capture already running), which runs the same kernels uncaptured.

MinGRU/MinLSTM's chunked scan has a Triton version too (:mod:`.scan`), used on CUDA by
:func:`rnnkit.scan.linear_scan`.

On a CPU, the kernels run in Triton's interpreter when ``TRITON_INTERPRET=1`` is set before
triton is imported (torch imports it, creating an optimizer does: set it before using torch) and
the layer asks for ``engine="triton"``: that is how the tests check them without a GPU (slowly).
``import rnnkit`` never imports triton; this package imports it at the first run.
"""

from __future__ import annotations

from torch import Tensor, nn

from rnnkit.engines.states import State
from rnnkit.engines.triton import graphs, support
from rnnkit.engines.triton.graphs import set_graphs, set_memory_budget

__all__ = ["blockers", "describe", "run", "set_graphs", "set_memory_budget"]


def blockers(layer: nn.Module) -> list[tuple[str, str]]:
    """What keeps the Triton engine from running ``layer`` now (see :mod:`.support`)."""
    return support.blockers(layer)


def run(
    layer: nn.Module, x: Tensor, states: list[State], lengths: Tensor | None
) -> tuple[Tensor, list[State]]:
    """``layer`` over time-major ``x``: the last layer's outputs and each unit's final state."""
    from rnnkit.engines.triton import layers  # imports triton

    return layers.run(layer, x, states, lengths)


def describe(layer: nn.Module) -> str:
    """What runs ``layer`` on this engine, and why its loops are not in CUDA graphs if not."""
    kinds = {unit.kind for unit in support.units(layer)}
    param = next(layer.parameters())
    if kinds == {"indrnn"}:
        text = "one Triton kernel over the whole sequence, forward and backward"
    else:
        text = "cuBLAS product + one Triton kernel per step, forward and backward"
    if param.device.type == "cpu":
        return text + "; Triton's CPU interpreter (TRITON_INTERPRET=1): for tests, slow"
    if kinds == {"indrnn"}:
        return text
    reason = _graph_reason(layer, param)
    return text + ("; in CUDA graphs" if reason is None else f"; not in CUDA graphs: {reason}")


def _graph_reason(layer: nn.Module, param) -> str | None:
    """Why the layer's loops would run uncaptured, as far as it can be told between calls."""
    if any(name.endswith("_raw") for name, _ in layer.named_parameters()):
        return "WeightDrop makes new recurrent weights on every training call"
    for unit in support.units(layer):
        reason = graphs.usable(unit.kind != "indrnn", unit.weights, param.device)
        if reason is not None:
            return reason
    failure = graphs.last_failure()
    return None if failure is None else f"a capture failed ({failure})"
