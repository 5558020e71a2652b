"""The fused-kernel engine: torch's own RNN kernels (cuDNN on a GPU, aten/oneDNN on a CPU).

``torch.lstm``, ``torch.gru``, ``torch.rnn_tanh`` and ``torch.rnn_relu`` run a whole stacked,
optionally bidirectional layer in one call. They know nothing of lengths, so with ``lengths=``
this engine keeps the layers' semantics (zeros past each end, the state at each sequence's own
end, the backward direction reversed within each length) in one of two ways. Both rely on the
layers' input preparation, which zeroes the padded steps of the input, so that a NaN or inf
there cannot reach the gradients through a padded step's computation.

* GRU and RNN: one padded call per layer and direction. In a right-padded batch a real step
  depends only on earlier real steps, so the kernel's outputs at the real steps are exact
  whatever it computes past each end; the state at each sequence's own end is the output at its
  last real step, gathered (the initial state for a zero length); the outputs past each end are
  then set to zero. A layer's next layer reads its (finite) outputs past the ends only at
  padded steps again. The backward direction runs the same way over each sequence reversed
  within its own length (:func:`reverse_within_lengths`), which is again right-padded.
* LSTM: its ``c_n`` at each own end is returned by no padded call, so the batch is sorted by
  decreasing length (a no-op for bucketed batches, which come sorted), the time axis is cut at
  each distinct length and the kernel runs segment after segment on the leading rows still
  active, carrying the state; a row that ends at a cut keeps its state there. A bidirectional
  LSTM runs layer by layer, its backward direction reversed within each length. A
  length-bucketed batch has few distinct lengths, hence few segments.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkit import cells as _cells
from rnnkit.engines.states import State, state_output

KERNELS = {
    "LSTM": torch.lstm,
    "GRU": torch.gru,
    "RNN_TANH": torch.rnn_tanh,
    "RNN_RELU": torch.rnn_relu,
}
# Cells whose step is exactly a fused kernel's (the exact type: a subclass may change the step).
_FUSABLE_CELLS = {
    _cells.LSTMCell: "LSTM",
    nn.LSTMCell: "LSTM",
    _cells.GRUCell: "GRU",
    nn.GRUCell: "GRU",
    _cells.RNNCell: "RNN",
    nn.RNNCell: "RNN",
}


def cells_mode(cells) -> str | None:
    """The kernel (``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``, ``"RNN_RELU"``) that computes every cell
    of ``cells`` exactly, or None: all must be exact RNN/LSTM/GRU cells of one kind, one
    nonlinearity and one bias setting."""
    kinds = {_FUSABLE_CELLS.get(type(c)) for c in cells}
    if len(kinds) != 1 or None in kinds:
        return None
    kind = kinds.pop()
    if kind == "RNN":
        acts = {c.nonlinearity for c in cells}
        if len(acts) != 1:
            return None
        kind = "RNN_TANH" if acts.pop() == "tanh" else "RNN_RELU"
    if len({c.bias_ih is not None for c in cells}) != 1:
        return None
    return kind


def kernel_name(module: nn.Module) -> str:
    """What runs the kernel for ``module``'s parameters: cuDNN, CUDA without it, or aten."""
    p = next(module.parameters(), None)
    if p is not None and p.is_cuda:
        cudnn = torch.backends.cudnn
        return "cuDNN" if cudnn.is_available() and cudnn.enabled else "CUDA (no cuDNN)"
    return "aten CPU kernel"


def lengths_strategy(mode: str | None) -> str:
    """How this engine runs a layer of kernel ``mode`` with ``lengths=`` (module doc)."""
    if mode == "LSTM":
        return "with lengths: segments cut at the distinct lengths (c_n at each own end)"
    return "with lengths: one padded call per layer and direction, h_n gathered at each own end"


def reverse_within_lengths(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence of a time-major right-padded batch within its own length.

    Step ``t < lengths[b]`` of row ``b`` becomes step ``lengths[b] - 1 - t``; padded steps stay.
    Applying it twice gives back ``x``.
    """
    steps = torch.arange(x.shape[0], device=x.device)[:, None]
    lengths = lengths.to(x.device)[None, :]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, index)


def _run_kernel(kernel: Callable, x: Tensor, state: tuple[Tensor, ...], weights, **kw):
    """One fused-kernel call with the state as a tuple: returns ``(output, state)``."""
    result = kernel(
        x,
        state if len(state) == 2 else state[0],
        weights,
        kw["has_biases"],
        kw["num_layers"],
        kw["dropout"],
        kw["training"],
        kw.get("bidirectional", False),
        False,
    )
    return result[0], tuple(result[1:])


def _segments(
    kernel: Callable,
    x: Tensor,
    state: tuple[Tensor, ...],
    weights: list[Tensor],
    lengths: Tensor,
    **kw,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """A unidirectional fused kernel over a right-padded batch sorted by decreasing length.

    The time axis is cut at each distinct length; each segment runs only the leading rows still
    active in it, so finished rows keep their final state and get zero outputs.
    """
    batch, outputs, start = x.shape[1], [], 0
    for end in torch.unique(lengths).tolist():
        if end == start:
            continue
        active = int((lengths >= end).sum())
        rows = tuple(s[:, :active] for s in state)
        out, new = _run_kernel(kernel, x[start:end, :active], rows, weights, **kw)
        outputs.append(F.pad(out, (0, 0, 0, batch - active)))
        if active < batch:
            new = tuple(
                torch.cat([n, s[:, active:]], dim=1) for n, s in zip(new, state, strict=True)
            )
        state, start = new, end
    if not outputs and x.shape[0]:
        # Every length is zero (or the batch is empty): the kernel over no rows keeps the
        # outputs in the autograd graph, as for any other batch.
        none = tuple(s[:, :0] for s in state)
        out, _ = _run_kernel(kernel, x[:, :0], none, weights, **kw)
        return F.pad(out, (0, 0, 0, batch)), state
    if start < x.shape[0] or not outputs:  # steps past the longest sequence: outputs are zero
        width = state_output(state).shape[-1]
        outputs.append(x.new_zeros(x.shape[0] - start, batch, width))
    return torch.cat(outputs), state


def run(
    mode: str,
    x: Tensor,
    hx: State,
    unit_weights: list[list[Tensor]],
    lengths: Tensor | None,
    *,
    has_biases: bool,
    num_layers: int,
    bidirectional: bool,
    dropout: float,
    training: bool,
) -> tuple[Tensor, State]:
    """The fused kernel over a time-major batch; with ``lengths``, in segments (module doc)."""
    kernel = KERNELS[mode]
    kw = {"has_biases": has_biases, "dropout": dropout, "training": training}
    state = hx if isinstance(hx, tuple) else (hx,)
    unpack = (lambda s: s) if isinstance(hx, tuple) else (lambda s: s[0])
    if lengths is None:
        flat = [w for ws in unit_weights for w in ws]
        kw.update(num_layers=num_layers, bidirectional=bidirectional)
        output, final = _run_kernel(kernel, x, state, flat, **kw)
        return output, unpack(final)
    if mode != "LSTM":
        output, final = _padded_layers(
            kernel,
            x,
            state,
            unit_weights,
            lengths,
            num_layers=num_layers,
            bidirectional=bidirectional,
            **kw,
        )
        return output, unpack(final)
    order = torch.argsort(lengths, descending=True, stable=True)
    is_sorted = bool((order == torch.arange(len(order))).all())
    if not is_sorted:
        lengths = lengths[order]
        index = order.to(x.device)
        x, state = x[:, index], tuple(s[:, index] for s in state)
    output, final = _run_sorted(
        kernel,
        x,
        state,
        unit_weights,
        lengths,
        num_layers=num_layers,
        bidirectional=bidirectional,
        **kw,
    )
    if not is_sorted:
        inverse = torch.argsort(order).to(x.device)
        output, final = output[:, inverse], tuple(s[:, inverse] for s in final)
    return output, unpack(final)


def _run_sorted(
    kernel: Callable,
    x: Tensor,
    state: tuple[Tensor, ...],
    unit_weights: list[list[Tensor]],
    lengths: Tensor,
    *,
    num_layers: int,
    bidirectional: bool,
    **kw,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    if not bidirectional:
        flat = [w for ws in unit_weights for w in ws]
        return _segments(kernel, x, state, flat, lengths, num_layers=num_layers, **kw)
    # Bidirectional with lengths: layer by layer, each direction a one-layer forward run; the
    # backward one over each sequence reversed within its length.
    kw["num_layers"] = 1
    dropout, training = kw["dropout"], kw["training"]
    finals, layer_input = [], x
    for layer in range(num_layers):
        outputs = []
        for direction in range(2):
            unit = 2 * layer + direction
            one = tuple(s[unit : unit + 1] for s in state)
            inp = reverse_within_lengths(layer_input, lengths) if direction else layer_input
            out, final = _segments(kernel, inp, one, unit_weights[unit], lengths, **kw)
            outputs.append(reverse_within_lengths(out, lengths) if direction else out)
            finals.append(final)
        layer_input = torch.cat(outputs, dim=-1)
        if dropout and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, dropout, training=True)
    return layer_input, tuple(torch.cat(parts) for parts in zip(*finals, strict=True))


def _padded_layers(
    kernel: Callable,
    x: Tensor,
    state: tuple[Tensor, ...],
    unit_weights: list[list[Tensor]],
    lengths: Tensor,
    *,
    num_layers: int,
    bidirectional: bool,
    **kw,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """A GRU or RNN over a right-padded batch: one padded call per layer and direction, each
    unit's final state gathered at each sequence's own end (module doc)."""
    (h0,) = state
    steps, batch = x.shape[:2]
    if steps == 0:  # every length is zero
        return x.new_zeros(0, batch, h0.shape[-1] * (1 + bidirectional)), state
    lengths = lengths.to(x.device)
    valid = (torch.arange(steps, device=x.device)[:, None] < lengths)[..., None]
    last = (lengths - 1).clamp_min(0).view(1, batch, 1).expand(1, batch, h0.shape[-1])
    ended = (lengths > 0)[:, None]
    dropout, training = kw.pop("dropout"), kw["training"]
    directions = 2 if bidirectional else 1
    finals, layer_input = [], x
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            unit = layer * directions + direction
            inp = reverse_within_lengths(layer_input, lengths) if direction else layer_input
            one = (h0[unit : unit + 1],)
            out, _ = _run_kernel(
                kernel, inp, one, unit_weights[unit], num_layers=1, dropout=0.0, **kw
            )
            finals.append(torch.where(ended, out.gather(0, last)[0], h0[unit]))
            outputs.append(reverse_within_lengths(out, lengths) if direction else out)
        layer_input = torch.cat(outputs, dim=-1) if bidirectional else outputs[0]
        if dropout and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, dropout, training=True)
    return layer_input.masked_fill(~valid, 0.0), (torch.stack(finals),)


def cpu_lstm_lacks_autocast_dtype(mode: str | None, input: Tensor | PackedSequence) -> bool:
    """Whether ``torch.lstm`` would fail here under CPU autocast.

    ``torch.lstm`` is on CPU autocast's lower-precision list, so under autocast it asks oneDNN
    for an LSTM in bfloat16 (or float16), which CPUs without those instructions cannot build
    ("could not create a primitive descriptor"); the layers then run the kernel in float32.
    """
    if mode != "LSTM" or not torch.is_autocast_enabled("cpu"):
        return False
    data = input.data if isinstance(input, PackedSequence) else input
    if not isinstance(data, Tensor) or data.device.type != "cpu":
        return False  # not a tensor: the input checks name the problem
    if torch.get_autocast_dtype("cpu") == torch.float16:
        return not torch.ops.mkldnn._is_mkldnn_fp16_supported()
    return not torch.ops.mkldnn._is_mkldnn_bf16_supported()


def in_float32(forward: Callable, input, hx, dtype: torch.dtype, **kw):
    """``forward`` with CPU autocast off and the input and state cast to the weights' dtype."""
    if hx is not None:
        hx = tuple(h.to(dtype) for h in hx) if isinstance(hx, tuple) else hx.to(dtype)
    with torch.autocast("cpu", enabled=False):
        return forward(input.to(dtype), hx, **kw)
