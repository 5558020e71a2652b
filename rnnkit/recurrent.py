"""Recurrent layers: a cell run over time, stacked and bidirectional, with lengths.

One layer, two engines. When a configuration is one that PyTorch's fused kernels compute (cuDNN
on GPU, aten/oneDNN on CPU), the layer calls them; otherwise it runs its own loop over time with
the input projection hoisted out of it. Both give the same numbers;
:func:`explain_fast_path` says which engine a layer uses and why.

Lengths are first-class. With ``lengths=`` (or ``mask=``) every layer returns zeros past each
sequence's end, the state at each sequence's own last step as ``h_n`` (and ``c_n``), and runs the
backward direction of a bidirectional layer from each sequence's own end — what running each
sequence alone gives. How:

* own loop: a masked update ``state_t = where(t < length, step(x_t, state_{t-1}), state_{t-1})``
  in both directions, so padded steps never touch a state;
* fused kernel: the padded batch is cut in time at its distinct lengths and the kernel runs
  segment after segment, carrying the state; the state of a sequence that ends at a cut is taken
  there. The backward direction runs the same way over each sequence reversed within its length.
  A length-bucketed batch has few distinct lengths, so few segments: this is the fast exact path
  (``pack_padded_sequence`` is accepted too, for compatibility, but is not needed).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit import cells as _cells
from rnnkit.cells import State
from rnnkit.padding import check_lengths, mask_to_lengths

ENGINES = ("auto", "fused", "loop")
_FUSED_FUNCTIONS = {
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

StepObserver = Callable[[int, int, int, Tensor], None]


# --------------------------------------------------------------------------------------------
# State layout helpers. Layers exchange states in torch.nn's layout: a tensor (L*D, B, H) or a
# tuple of them; the loop works on one state per (layer, direction) unit.


def _split_state(hx: State, units: int) -> list[State]:
    if isinstance(hx, tuple):
        return [tuple(part[u] for part in hx) for u in range(units)]
    return [hx[u] for u in range(units)]


def _stack_states(states: list[State]) -> State:
    if isinstance(states[0], tuple):
        return tuple(torch.stack(parts) for parts in zip(*states, strict=True))
    return torch.stack(states)


def _state_output(state: State) -> Tensor:
    return state[0] if isinstance(state, tuple) else state


def _where(keep: Tensor, new: State, old: State) -> State:
    if isinstance(new, tuple):
        return tuple(torch.where(keep, n, o) for n, o in zip(new, old, strict=True))
    return torch.where(keep, new, old)


# --------------------------------------------------------------------------------------------
# The own-loop engine.


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
            new = _where(keep, new, state)
        out = _state_output(new)
        if observe is not None:
            observe(t, out)
        outputs.append(out if valid is None else out.masked_fill(~keep, 0.0))
        state = new
    if reverse:
        outputs.reverse()
    if not outputs:
        return x_proj.new_zeros(0, *_state_output(state).shape), state
    return torch.stack(outputs), state


def _loop_engine(
    x: Tensor,
    states: list[State],
    units: list[tuple[Callable[[Tensor], Tensor], Callable]],
    *,
    num_layers: int,
    num_directions: int,
    valid: Tensor | None,
    dropout: float,
    training: bool,
    observer: StepObserver | None,
) -> tuple[Tensor, list[State]]:
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


# --------------------------------------------------------------------------------------------
# The fused engine with lengths.


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


def _fused_segments(
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
    if start < x.shape[0] or not outputs:  # steps past the longest sequence: outputs are zero
        width = _state_output(state).shape[-1]
        outputs.append(x.new_zeros(x.shape[0] - start, batch, width))
    return torch.cat(outputs), state


def _fused_engine(
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
    kernel = _FUSED_FUNCTIONS[mode]
    kw = {"has_biases": has_biases, "dropout": dropout, "training": training}
    state = hx if isinstance(hx, tuple) else (hx,)
    unpack = (lambda s: s) if isinstance(hx, tuple) else (lambda s: s[0])
    if lengths is None:
        flat = [w for ws in unit_weights for w in ws]
        kw.update(num_layers=num_layers, bidirectional=bidirectional)
        output, final = _run_kernel(kernel, x, state, flat, **kw)
        return output, unpack(final)
    # Sort by decreasing length (a no-op for bucketed batches, which come sorted) so that each
    # segment runs a leading block of rows; undo the order at the end.
    order = torch.argsort(lengths, descending=True, stable=True)
    is_sorted = bool((order == torch.arange(len(order))).all())
    if not is_sorted:
        lengths = lengths[order]
        index = order.to(x.device)
        x, state = x[:, index], tuple(s[:, index] for s in state)
    output, final = _fused_sorted(
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


def _fused_sorted(
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
        return _fused_segments(kernel, x, state, flat, lengths, num_layers=num_layers, **kw)
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
            out, final = _fused_segments(kernel, inp, one, unit_weights[unit], lengths, **kw)
            outputs.append(reverse_within_lengths(out, lengths) if direction else out)
            finals.append(final)
        layer_input = torch.cat(outputs, dim=-1)
        if dropout and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, dropout, training=True)
    return layer_input, tuple(torch.cat(parts) for parts in zip(*finals, strict=True))


def _cpu_lstm_lacks_autocast_dtype(mode: str | None, input: Tensor | PackedSequence) -> bool:
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


def _in_float32(forward: Callable, input, hx, dtype: torch.dtype, **kw):
    """``forward`` with CPU autocast off and the input and state cast to the weights' dtype."""
    if hx is not None:
        hx = tuple(h.to(dtype) for h in hx) if isinstance(hx, tuple) else hx.to(dtype)
    with torch.autocast("cpu", enabled=False):
        return forward(input.to(dtype), hx, **kw)


# --------------------------------------------------------------------------------------------
# Input handling shared by the layers.


@dataclass
class _Prepared:
    """A forward call's input in time-major batched form, with what is needed to undo it."""

    x: Tensor
    lengths: Tensor | None
    unbatched: bool = False
    packed: PackedSequence | None = None


def _prepare(
    layer: nn.Module,
    input: Tensor | PackedSequence,
    input_size: int,
    dtype: torch.dtype,
    batch_first: bool,
    lengths,
    mask: Tensor | None,
) -> _Prepared:
    name = _describe(layer)
    if isinstance(input, PackedSequence):
        if lengths is not None or mask is not None:
            raise ValueError(f"{name}: a PackedSequence carries its lengths; pass no lengths/mask")
        padded, packed_lengths = pad_packed_sequence(input)
        _check_features(name, padded, input_size, dtype)
        return _Prepared(padded, packed_lengths, packed=input)
    if not isinstance(input, Tensor):
        raise ValueError(f"{name}: expected a Tensor or PackedSequence, got {type(input).__name__}")
    if input.dim() not in (2, 3):
        layout = "(batch, time, features)" if batch_first else "(time, batch, features)"
        raise ValueError(
            f"{name}: expected a 3-D input {layout} or a 2-D unbatched input (time, features), "
            f"got shape {tuple(input.shape)}"
        )
    _check_features(name, input, input_size, dtype)
    if input.dim() == 2:
        if lengths is not None or mask is not None:
            raise ValueError(f"{name}: lengths/mask need a batched 3-D input")
        return _Prepared(input.unsqueeze(1), None, unbatched=True)
    x = input.transpose(0, 1) if batch_first else input
    if lengths is not None and mask is not None:
        raise ValueError(f"{name}: pass lengths or mask, not both")
    if mask is not None:
        expected = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"{name}: mask must be a boolean tensor, got {got}")
        if tuple(mask.shape) != expected:
            layout = "(batch, time)" if batch_first else "(time, batch)"
            raise ValueError(
                f"{name}: expected a mask of shape {layout} = {expected}, got {tuple(mask.shape)}"
            )
        try:
            lengths = mask_to_lengths(mask if batch_first else mask.t())
        except ValueError as err:
            raise ValueError(f"{name}: {err} (layers take right-padded batches)") from None
    if lengths is not None:
        try:
            lengths = check_lengths(lengths, x.shape[1], x.shape[0])
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    return _Prepared(x, lengths)


def _dtype_mismatch(x: Tensor, dtype: torch.dtype) -> bool:
    # Under autocast, mixed floating dtypes are expected (a Linear before the layer emits bf16).
    if x.dtype == dtype:
        return False
    return not (x.is_floating_point() and torch.is_autocast_enabled(x.device.type))


def _check_features(name: str, x: Tensor, input_size: int, dtype: torch.dtype) -> None:
    if x.shape[-1] != input_size:
        raise ValueError(f"{name}: expected {input_size} input features, got {x.shape[-1]}")
    if _dtype_mismatch(x, dtype):
        raise ValueError(
            f"{name}: input dtype {x.dtype} does not match the weights' dtype {dtype}; "
            f"convert one of them (e.g. input.to({dtype}))"
        )


def _check_state(name: str, hx: State, expected: list[tuple[int, ...]], dtype: torch.dtype):
    parts = hx if isinstance(hx, tuple) else (hx,)
    if len(parts) != len(expected):
        what = "a tuple (h_0, c_0)" if len(expected) == 2 else "one tensor h_0"
        raise ValueError(f"{name}: expected the initial state as {what}, got {len(parts)} tensors")
    for label, part, shape in zip(("h_0", "c_0"), parts, expected, strict=False):
        if not isinstance(part, Tensor):
            raise ValueError(f"{name}: {label} must be a Tensor, got {type(part).__name__}")
        if tuple(part.shape) != shape:
            raise ValueError(
                f"{name}: expected {label} of shape {shape} (layers*directions, batch, size), "
                f"got {tuple(part.shape)}"
            )
        if _dtype_mismatch(part, dtype):
            raise ValueError(f"{name}: {label} dtype {part.dtype} does not match {dtype}")


def _finish(
    prep: _Prepared, output: Tensor, final: State, batch_first: bool
) -> tuple[Tensor | PackedSequence, State]:
    if prep.unbatched:
        squeeze = lambda s: s.squeeze(1)
        final = tuple(map(squeeze, final)) if isinstance(final, tuple) else squeeze(final)
        return output.squeeze(1), final
    if prep.packed is not None:
        p = prep.packed
        sorted_out = output if p.sorted_indices is None else output[:, p.sorted_indices]
        sorted_lengths = (
            prep.lengths if p.sorted_indices is None else (prep.lengths[p.sorted_indices.cpu()])
        )
        data = pack_padded_sequence(sorted_out, sorted_lengths, enforce_sorted=True).data
        return PackedSequence(data, p.batch_sizes, p.sorted_indices, p.unsorted_indices), final
    return (output.transpose(0, 1) if batch_first else output), final


def _describe(layer: nn.Module) -> str:
    return f"{type(layer).__name__}({layer.extra_repr()})"


# --------------------------------------------------------------------------------------------
# torch.nn-compatible layers.


class _TorchCompatible:
    """Mixin for subclasses of ``torch.nn.RNN/LSTM/GRU``: same parameters and state dict keys,
    plus ``lengths=``/``mask=``, an own-loop engine and input checks that name the problem."""

    mode: str
    engine: str
    _observer: StepObserver | None

    def _init_engine(self, engine: str) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.engine = engine
        self._observer = None

    def fused_blockers(self) -> list[tuple[str, str]]:
        """Why this layer would not use the fused kernel: ``[(reason, fix), ...]``."""
        blockers = []
        if self.engine == "loop":
            blockers.append(("engine='loop' was requested", "set layer.engine = 'auto'"))
        if self._observer is not None:
            blockers.append(
                ("a per-step observer is attached (diagnostics)", "it is removed after the call")
            )
        return blockers

    def _unit_weights(self) -> list[list[Tensor]]:
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def _step_units(self) -> list[tuple[Callable, Callable]]:
        units = []
        for names in self._all_weights:
            params = [getattr(self, n) for n in names]
            w_ih, w_hh = params[:2]
            b_ih, b_hh = params[2:4] if self.bias else (None, None)
            w_hr = params[-1] if getattr(self, "proj_size", 0) else None
            project = lambda x, w=w_ih, b=b_ih: F.linear(x, w, b)
            if self.mode == "LSTM":
                step = lambda xp, s, w=w_hh, b=b_hh, r=w_hr: _cells.lstm_step(xp, s, w, b, r)
            elif self.mode == "GRU":
                step = lambda xp, s, w=w_hh, b=b_hh: _cells.gru_step(xp, s, w, b)
            else:
                act = "tanh" if self.mode == "RNN_TANH" else "relu"
                step = lambda xp, s, w=w_hh, b=b_hh, a=act: _cells.rnn_step(xp, s, w, b, a)
            units.append((project, step))
        return units

    def _state_shapes(self, batch: int | None) -> list[tuple[int, ...]]:
        units = self.num_layers * (2 if self.bidirectional else 1)
        lead = (units,) if batch is None else (units, batch)
        out = getattr(self, "proj_size", 0) or self.hidden_size
        if self.mode == "LSTM":
            return [(*lead, out), (*lead, self.hidden_size)]
        return [(*lead, out)]

    def forward(self, input, hx=None, *, lengths=None, mask=None):
        name = _describe(self)
        dtype = self._flat_weights[0].dtype
        if _cpu_lstm_lacks_autocast_dtype(self.mode, input) and not self.fused_blockers():
            return _in_float32(self.forward, input, hx, dtype, lengths=lengths, mask=mask)
        prep = _prepare(self, input, self.input_size, dtype, self.batch_first, lengths, mask)
        batch = prep.x.shape[1]
        if hx is not None:
            _check_state(name, hx, self._state_shapes(None if prep.unbatched else batch), dtype)
        blockers = self.fused_blockers()
        if self.engine == "fused" and blockers:
            raise ValueError(f"{name}: engine='fused' is impossible: {blockers[0][0]}")
        if not blockers and (prep.lengths is None or prep.packed is not None):
            return super().forward(input, hx)
        if hx is None:
            zeros = [prep.x.new_zeros(shape) for shape in self._state_shapes(batch)]
            hx = tuple(zeros) if self.mode == "LSTM" else zeros[0]
        elif prep.unbatched:
            hx = tuple(h.unsqueeze(1) for h in hx) if self.mode == "LSTM" else hx.unsqueeze(1)
        if not blockers:
            output, final = _fused_engine(
                self.mode,
                prep.x,
                hx,
                self._unit_weights(),
                prep.lengths,
                has_biases=self.bias,
                num_layers=self.num_layers,
                bidirectional=self.bidirectional,
                dropout=self.dropout,
                training=self.training,
            )
        else:
            output, finals = _loop_engine(
                prep.x,
                _split_state(hx, len(self._all_weights)),
                self._step_units(),
                num_layers=self.num_layers,
                num_directions=2 if self.bidirectional else 1,
                valid=_valid(prep),
                dropout=self.dropout,
                training=self.training,
                observer=self._observer,
            )
            final = _stack_states(finals)
        return _finish(prep, output, final, self.batch_first)


def _valid(prep: _Prepared) -> Tensor | None:
    if prep.lengths is None:
        return None
    steps = torch.arange(prep.x.shape[0], device=prep.x.device)[:, None]
    return steps < prep.lengths.to(prep.x.device)[None, :]


_ENGINE_DOC = """
    Beyond ``torch.nn.{base}``: ``forward(input, hx=None, *, lengths=None, mask=None)`` takes
    each sequence's length (or a right-padding boolean mask shaped like the input's batch and
    time axes): outputs past a sequence's end are zero and ``h_n`` holds each sequence's state at
    its own last step. ``engine="auto"`` runs the fused kernel whenever it computes the layer
    exactly and rnnkit's own loop otherwise; ``"loop"`` forces the loop and ``"fused"`` insists on
    the kernel. Inputs are checked: a wrong shape, size or dtype raises a ``ValueError`` naming
    the layer, what was expected and what came (under autocast, lower-precision inputs are
    accepted; where CPU autocast would make oneDNN fail to build a bfloat16/float16 LSTM, the
    LSTM kernel runs in float32 instead).
"""


class RNN(_TorchCompatible, nn.RNN):
    __doc__ = r"""Elman RNN layer,
    :math:`h_t = \tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})` (or ReLU),
    with :class:`torch.nn.RNN`'s constructor, forward, state dict and numbers.
    """ + _ENGINE_DOC.format(base="RNN")

    def __init__(self, *args, engine: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_engine(engine)


class LSTM(_TorchCompatible, nn.LSTM):
    __doc__ = """LSTM layer (gates as in :class:`rnnkit.LSTMCell`) with :class:`torch.nn.LSTM`'s
    constructor (``proj_size`` included), forward, state dict and numbers.
    """ + _ENGINE_DOC.format(base="LSTM")

    def __init__(self, *args, engine: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_engine(engine)


class GRU(_TorchCompatible, nn.GRU):
    __doc__ = """GRU layer (gates as in :class:`rnnkit.GRUCell`) with :class:`torch.nn.GRU`'s
    constructor, forward, state dict and numbers.
    """ + _ENGINE_DOC.format(base="GRU")

    def __init__(self, *args, engine: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_engine(engine)


# --------------------------------------------------------------------------------------------
# Any cell over time.


def _replicate(cell: nn.Module, input_size: int) -> nn.Module:
    if hasattr(cell, "replicate"):
        return cell.replicate(input_size)
    if isinstance(cell, nn.RNNCell):
        return nn.RNNCell(input_size, cell.hidden_size, cell.bias, cell.nonlinearity)
    if isinstance(cell, (nn.LSTMCell, nn.GRUCell)):
        return type(cell)(input_size, cell.hidden_size, cell.bias)
    if getattr(cell, "input_size", None) == input_size:
        twin = copy.deepcopy(cell)
        if hasattr(twin, "reset_parameters"):
            twin.reset_parameters()
        return twin
    raise ValueError(
        f"Recurrent: cannot build another {type(cell).__name__} for {input_size} inputs; give the "
        "cell a replicate(input_size) method that returns a fresh cell"
    )


def _output_size(cell: nn.Module) -> int:
    size = getattr(cell, "output_size", None) or getattr(cell, "hidden_size", None)
    if size is None:
        raise ValueError(
            f"Recurrent: {type(cell).__name__} needs a hidden_size (or output_size) attribute"
        )
    return size


class Recurrent(nn.Module):
    r"""Run any cell over time: stacked, bidirectional, with lengths.

    ``cell`` computes one step, ``state' = cell(x_t, state)`` with ``state=None`` meaning zeros —
    an rnnkit cell, a ``torch.nn`` cell, or your own module with that signature and a
    ``hidden_size`` attribute. The first layer's forward direction uses ``cell`` itself; the other
    layers and directions use fresh cells made by ``cell.replicate(input_size)``. A state that is a
    tuple (as the LSTM's ``(h, c)``) emits its first element as the output.

    Returns ``(output, h_n)`` where ``output`` is ``(T, B, D * H)`` (``(B, T, D * H)`` with
    ``batch_first``) and ``h_n`` stacks the final state of every layer and direction as
    ``torch.nn`` does: ``(L * D, B, H)``, or a tuple of such tensors for tuple states.

    When every cell is an exact ``RNNCell``/``LSTMCell``/``GRUCell`` (rnnkit's or torch.nn's), the
    fused kernel runs with the cells' weights; other cells run in rnnkit's loop, with the input
    projection of rnnkit cells hoisted out of it (``cell.project_input``/``cell.step``).
    """

    def __init__(
        self,
        cell: nn.Module,
        num_layers: int = 1,
        bidirectional: bool = False,
        batch_first: bool = False,
        dropout: float = 0.0,
        engine: str = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(cell, nn.Module):
            raise ValueError(f"Recurrent: expected a cell module, got {type(cell).__name__}")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"Recurrent: num_layers must be an int >= 1, got {num_layers!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Recurrent: dropout must be in [0, 1), got {dropout}")
        if engine not in ENGINES:
            raise ValueError(f"Recurrent: engine must be one of {ENGINES}, got {engine!r}")
        self.num_layers, self.bidirectional = num_layers, bidirectional
        self.batch_first, self.dropout, self.engine = batch_first, dropout, engine
        self.input_size = cell.input_size if hasattr(cell, "input_size") else None
        self.hidden_size = _output_size(cell)
        directions = 2 if bidirectional else 1
        units = [cell] + [
            _replicate(cell, self.input_size if layer == 0 else directions * self.hidden_size)
            for unit in range(1, num_layers * directions)
            for layer in [unit // directions]
        ]
        self.cells = nn.ModuleList(units)
        self._observer: StepObserver | None = None

    def extra_repr(self) -> str:
        return (
            f"num_layers={self.num_layers}, bidirectional={self.bidirectional}, "
            f"batch_first={self.batch_first}, dropout={self.dropout}, engine={self.engine!r}"
        )

    def _fused_mode(self) -> str | None:
        kinds = {_FUSABLE_CELLS.get(type(c)) for c in self.cells}
        if len(kinds) != 1 or None in kinds:
            return None
        kind = kinds.pop()
        if kind == "RNN":
            acts = {c.nonlinearity for c in self.cells}
            if len(acts) != 1:
                return None
            kind = "RNN_TANH" if acts.pop() == "tanh" else "RNN_RELU"
        if len({c.bias_ih is not None for c in self.cells}) != 1:
            return None
        return kind

    def fused_blockers(self) -> list[tuple[str, str]]:
        """Why this layer would not use the fused kernel: ``[(reason, fix), ...]``."""
        blockers = []
        if self.engine == "loop":
            blockers.append(("engine='loop' was requested", "set layer.engine = 'auto'"))
        if self._fused_mode() is None:
            names = sorted({type(c).__name__ for c in self.cells})
            blockers.append(
                (
                    f"cells {', '.join(names)} have no fused kernel (only exact RNNCell, "
                    "LSTMCell or GRUCell of one kind and one bias setting do)",
                    "use rnnkit.LSTM/GRU/RNN or standard cells if the variant is not needed",
                )
            )
        if self._observer is not None:
            blockers.append(
                ("a per-step observer is attached (diagnostics)", "it is removed after the call")
            )
        return blockers

    def _initial_states(self, x: Tensor) -> list[State]:
        batch = x.shape[1]
        states = []
        for cell in self.cells:
            if hasattr(cell, "initial_state"):
                states.append(cell.initial_state(batch, dtype=x.dtype, device=x.device))
            elif isinstance(cell, nn.LSTMCell):
                zeros = x.new_zeros(batch, cell.hidden_size)
                states.append((zeros, zeros.clone()))
            else:
                states.append(x.new_zeros(batch, cell.hidden_size))
        return states

    def forward(self, input, hx=None, *, lengths=None, mask=None):
        name = _describe(self)
        params = next(self.cells[0].parameters(), None)
        dtype = params.dtype if params is not None else input.dtype
        if _cpu_lstm_lacks_autocast_dtype(self._fused_mode(), input) and not self.fused_blockers():
            return _in_float32(self.forward, input, hx, dtype, lengths=lengths, mask=mask)
        input_size = self.input_size if self.input_size is not None else input.shape[-1]
        prep = _prepare(self, input, input_size, dtype, self.batch_first, lengths, mask)
        zero_states = self._initial_states(prep.x)
        if hx is None:
            states = zero_states
        else:
            if prep.unbatched:
                hx = (
                    tuple(h.unsqueeze(1) for h in hx)
                    if isinstance(hx, tuple)
                    else (hx.unsqueeze(1))
                )
            parts = zero_states[0] if isinstance(zero_states[0], tuple) else (zero_states[0],)
            _check_state(name, hx, [(len(self.cells), *p.shape) for p in parts], dtype)
            states = _split_state(hx, len(self.cells))
        blockers = self.fused_blockers()
        if self.engine == "fused" and blockers:
            raise ValueError(f"{name}: engine='fused' is impossible: {blockers[0][0]}")
        if not blockers:
            has_biases = self.cells[0].bias_ih is not None
            weights = [
                [c.weight_ih, c.weight_hh] + ([c.bias_ih, c.bias_hh] if has_biases else [])
                for c in self.cells
            ]
            output, final = _fused_engine(
                self._fused_mode(),
                prep.x,
                _stack_states(states),
                weights,
                prep.lengths,
                has_biases=has_biases,
                num_layers=self.num_layers,
                bidirectional=self.bidirectional,
                dropout=self.dropout,
                training=self.training,
            )
        else:
            step_units = [
                (c.project_input, c.step) if hasattr(c, "project_input") else (lambda x: x, c)
                for c in self.cells
            ]
            output, finals = _loop_engine(
                prep.x,
                states,
                step_units,
                num_layers=self.num_layers,
                num_directions=2 if self.bidirectional else 1,
                valid=_valid(prep),
                dropout=self.dropout,
                training=self.training,
                observer=self._observer,
            )
            final = _stack_states(finals)
        return _finish(prep, output, final, self.batch_first)


# --------------------------------------------------------------------------------------------
# Which engine runs.


@dataclass
class FastPath:
    """How one recurrent layer runs: ``engine`` is ``"fused"`` or ``"loop"``."""

    name: str
    layer: str
    engine: str
    kernel: str
    reasons: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        line = f"{self.name or '(module)'}: {self.layer} -> {self.engine} ({self.kernel})"
        for reason, fix in zip(self.reasons, self.fixes, strict=True):
            line += f"\n    because {reason}; to change: {fix}"
        return line


def _kernel_name(module: nn.Module) -> str:
    p = next(module.parameters(), None)
    if p is not None and p.is_cuda:
        cudnn = torch.backends.cudnn
        return "cuDNN" if cudnn.is_available() and cudnn.enabled else "CUDA (no cuDNN)"
    return "aten CPU kernel"


def explain_fast_path(module: nn.Module) -> list[FastPath]:
    """Say which engine each recurrent layer inside ``module`` uses and why.

    Returns one :class:`FastPath` per layer (rnnkit's layers, ``Recurrent`` and ``torch.nn``'s
    ``RNN/LSTM/GRU``); for a layer on rnnkit's own loop, every reason and the change that would
    enable the fused kernel. ``print(*explain_fast_path(model), sep="\\n")`` reads well.
    """
    reports = []
    for name, sub in module.named_modules():
        if isinstance(sub, (_TorchCompatible, Recurrent)):
            blockers = sub.fused_blockers()
            if blockers:
                kernel = "rnnkit loop, input projection hoisted; masked steps with lengths"
            else:
                kernel = _kernel_name(sub) + "; with lengths: segments cut at distinct lengths"
            reports.append(
                FastPath(
                    name,
                    _describe(sub),
                    "loop" if blockers else "fused",
                    kernel,
                    [b[0] for b in blockers],
                    [b[1] for b in blockers],
                )
            )
        elif isinstance(sub, nn.RNNBase):
            reports.append(FastPath(name, _describe(sub), "fused", _kernel_name(sub)))
    return reports
