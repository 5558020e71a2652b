"""Recurrent layers: a cell run over time, stacked and bidirectional, with lengths.

``rnnkit.RNN/LSTM/GRU`` are ``torch.nn``'s layers (same constructor, state dict and numbers) with
lengths and engines; :class:`Recurrent` runs any cell. How a layer runs is an engine's business
(:mod:`rnnkit.engines`): the layer checks its input, asks :func:`rnnkit.engines.select` which
engine computes it exactly, and hands over.

Lengths are first-class. With ``lengths=`` (or ``mask=``) every layer returns zeros past each
sequence's end, the state at each sequence's own last step as ``h_n`` (and ``c_n``), and runs the
backward direction of a bidirectional layer from each sequence's own end — what running each
sequence alone gives. How:

* own loop (:mod:`rnnkit.engines.loop`): a masked update ``state_t = where(t < length,
  step(x_t, state_{t-1}), state_{t-1})`` in both directions, so padded steps never touch a state;
* Triton (:mod:`rnnkit.engines.triton`, CUDA): the same masked update, in each step's kernel;
* fused kernel (:mod:`rnnkit.engines.fused`): a GRU or RNN runs one padded call per layer and
  direction and gathers each sequence's state at its own end; an LSTM, whose ``c_n`` no padded
  call returns, is cut in time at its distinct lengths and the kernel runs segment after
  segment, carrying the state. The backward direction runs over each sequence reversed within
  its length. With length-bucketed batches this is the fast exact path (``pack_padded_sequence``
  is accepted too, for compatibility, but is not needed).

Padded steps reach neither the outputs nor the gradients: the input's padded steps are zeroed
before any engine runs, so a NaN or inf there cannot leak through a discarded computation.
Bad input (a state that does not fit, a wrong feature count or dtype, an empty time axis
without ``lengths=``) raises :class:`rnnkit.InputError`, both a ``ValueError`` and the
``RuntimeError`` that ``torch.nn`` raises for the same mistakes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit.cells import gru_step, lstm_step, rnn_step
from rnnkit.checks import State, check_features, check_state
from rnnkit.engines import fused, loop
from rnnkit.engines import triton as triton_engine
from rnnkit.engines.loop import StepObserver
from rnnkit.engines.selection import (
    Blockers,
    check_engine,
    describe,
    explain_fast_path,
    select,
)
from rnnkit.engines.states import split_state, stack_states
from rnnkit.errors import InputError
from rnnkit.padding import check_lengths, mask_to_lengths

__all__ = ["GRU", "LSTM", "RNN", "Recurrent", "explain_fast_path"]

_OBSERVER_BLOCKER = (
    "a per-step observer is attached (diagnostics)",
    "it is removed after the call",
)


# --------------------------------------------------------------------------------------------
# Input handling shared by the layers.


@dataclass
class _Prepared:
    """A forward call's input in time-major batched form, with what is needed to undo it."""

    x: Tensor
    lengths: Tensor | None
    unbatched: bool = False
    packed: PackedSequence | None = None
    valid: Tensor | None = None  # (T, B): True at the real steps, with lengths

    def __post_init__(self) -> None:
        if self.lengths is not None:
            steps = torch.arange(self.x.shape[0], device=self.x.device)[:, None]
            self.valid = steps < self.lengths.to(self.x.device)[None, :]


def _prepare(
    layer: nn.Module,
    input: Tensor | PackedSequence,
    input_size: int,
    dtype: torch.dtype,
    batch_first: bool,
    lengths,
    mask: Tensor | None,
) -> _Prepared:
    name = describe(layer)
    if isinstance(input, PackedSequence):
        if lengths is not None or mask is not None:
            raise InputError(f"{name}: a PackedSequence carries its lengths; pass no lengths/mask")
        padded, packed_lengths = pad_packed_sequence(input)  # zeros at the padded steps
        check_features(name, padded, input_size, dtype)
        return _Prepared(padded, packed_lengths, packed=input)
    if not isinstance(input, Tensor):
        raise InputError(f"{name}: expected a Tensor or PackedSequence, got {type(input).__name__}")
    if input.dim() not in (2, 3):
        layout = "(batch, time, features)" if batch_first else "(time, batch, features)"
        raise InputError(
            f"{name}: expected a 3-D input {layout} or a 2-D unbatched input (time, features), "
            f"got shape {tuple(input.shape)}"
        )
    check_features(name, input, input_size, dtype)
    if input.dim() == 2:
        if lengths is not None or mask is not None:
            raise InputError(f"{name}: lengths/mask need a batched 3-D input")
        _require_steps(name, input.shape[0])
        return _Prepared(input.unsqueeze(1), None, unbatched=True)
    x = input.transpose(0, 1) if batch_first else input
    if lengths is not None and mask is not None:
        raise InputError(f"{name}: pass lengths or mask, not both")
    if mask is not None:
        expected = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise InputError(f"{name}: mask must be a boolean tensor, got {got}")
        if tuple(mask.shape) != expected:
            layout = "(batch, time)" if batch_first else "(time, batch)"
            raise InputError(
                f"{name}: expected a mask of shape {layout} = {expected}, got {tuple(mask.shape)}"
            )
        try:
            lengths = mask_to_lengths(mask if batch_first else mask.t())
        except ValueError as err:
            raise InputError(f"{name}: {err} (layers take right-padded batches)") from None
    if lengths is None:
        _require_steps(name, x.shape[0])
        return _Prepared(x, None)
    try:
        lengths = check_lengths(lengths, x.shape[1], x.shape[0])
    except ValueError as err:
        raise InputError(f"{name}: {err}") from None
    prep = _Prepared(x, lengths)
    if x.shape[1] and int(lengths.min()) < x.shape[0]:
        # Padded steps must not reach the gradients either: a NaN or inf there would, through
        # a padded step's computation (0 * NaN = NaN), even though its result is discarded.
        prep.x = x.masked_fill(~prep.valid.unsqueeze(-1), 0.0)
    return prep


def _require_steps(name: str, steps: int) -> None:
    if steps == 0:
        raise InputError(
            f"{name}: expected a sequence of at least one step, got an empty time axis "
            "(as torch.nn's layers do); with lengths= (all zero) a layer returns zero outputs "
            "and the initial state"
        )


def _check_state(name: str, hx: State, expected: list[tuple[int, ...]], dtype: torch.dtype):
    unbatched = len(expected[0]) == 2
    layout = "(layers*directions, size) for an unbatched input"
    if not unbatched:
        layout = "(layers*directions, batch, size)"
    check_state(name, hx, expected, dtype, layout=layout)


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


# --------------------------------------------------------------------------------------------
# torch.nn-compatible layers.


class _TorchCompatible:
    """Mixin for subclasses of ``torch.nn.RNN/LSTM/GRU``: same parameters and state dict keys,
    plus ``lengths=``/``mask=``, an own-loop engine and input checks that name the problem."""

    mode: str
    engine: str
    _observer: StepObserver | None

    def _init_engine(self, engine: str) -> None:
        self.engine = check_engine(type(self).__name__, engine)
        self._observer = None

    def engine_blockers(self) -> Blockers:
        """What keeps each engine faster than the loop from running this layer now."""
        observer = [_OBSERVER_BLOCKER] if self._observer is not None else []
        return {"fused": observer, "triton": observer + triton_engine.blockers(self)}

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
                step = lambda xp, s, w=w_hh, b=b_hh, r=w_hr: lstm_step(xp, s, w, b, r)
            elif self.mode == "GRU":
                step = lambda xp, s, w=w_hh, b=b_hh: gru_step(xp, s, w, b)
            else:
                act = "tanh" if self.mode == "RNN_TANH" else "relu"
                step = lambda xp, s, w=w_hh, b=b_hh, a=act: rnn_step(xp, s, w, b, a)
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
        name = describe(self)
        dtype = self._flat_weights[0].dtype
        engine = select(name, self.engine, self.engine_blockers())
        if engine == "fused" and fused.cpu_lstm_lacks_autocast_dtype(self.mode, input):
            return fused.in_float32(self.forward, input, hx, dtype, lengths=lengths, mask=mask)
        prep = _prepare(self, input, self.input_size, dtype, self.batch_first, lengths, mask)
        batch = prep.x.shape[1]
        if hx is not None:
            _check_state(name, hx, self._state_shapes(None if prep.unbatched else batch), dtype)
        if engine == "fused" and (prep.lengths is None or prep.packed is not None):
            return super().forward(input, hx)
        if hx is None:
            zeros = [prep.x.new_zeros(shape) for shape in self._state_shapes(batch)]
            hx = tuple(zeros) if self.mode == "LSTM" else zeros[0]
        elif prep.unbatched:
            hx = tuple(h.unsqueeze(1) for h in hx) if self.mode == "LSTM" else hx.unsqueeze(1)
        if engine == "fused":
            output, final = fused.run(
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
        elif engine == "triton":
            states = split_state(hx, len(self._all_weights))
            output, finals = triton_engine.run(self, prep.x, states, prep.lengths)
            final = stack_states(finals)
        else:
            output, finals = loop.run_layers(
                prep.x,
                split_state(hx, len(self._all_weights)),
                self._step_units(),
                num_layers=self.num_layers,
                num_directions=2 if self.bidirectional else 1,
                valid=_valid(prep),
                dropout=self.dropout,
                training=self.training,
                observer=self._observer,
            )
            final = stack_states(finals)
        return _finish(prep, output, final, self.batch_first)


def _valid(prep: _Prepared) -> Tensor | None:
    """``(T, B)``: True at each sequence's real steps; None without lengths."""
    return prep.valid


_ENGINE_DOC = """
    Beyond ``torch.nn.{base}``: ``forward(input, hx=None, *, lengths=None, mask=None)`` takes
    each sequence's length (or a right-padding boolean mask shaped like the input's batch and
    time axes): outputs past a sequence's end are zero and ``h_n`` holds each sequence's state at
    its own last step. ``engine="auto"`` runs the fused kernel whenever it computes the layer
    exactly, else on CUDA the Triton engine (:mod:`rnnkit.engines.triton`), else rnnkit's own
    loop; ``"loop"``, ``"fused"`` and ``"triton"`` insist on one. Inputs are checked: a wrong
    shape, size or dtype of the input or of ``hx``, or an empty time axis without ``lengths=``,
    raises an :class:`rnnkit.InputError` naming the layer, what was expected and what came; it
    is both a ``ValueError`` and a ``RuntimeError``, so code written for ``torch.nn`` (``except
    RuntimeError``) keeps working (under autocast, lower-precision inputs are accepted; where
    CPU autocast would make oneDNN fail to build a bfloat16/float16 LSTM, the LSTM kernel runs
    in float32 instead). With ``lengths=`` all zero the outputs are zero and ``h_n`` is ``hx``;
    an empty batch works as in ``torch.nn``.
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
    fused kernel runs with the cells' weights; on CUDA the layer-norm LSTM/GRU and IndRNN cells
    run on the Triton engine (:mod:`rnnkit.engines.triton`); other cells run in rnnkit's loop,
    with the input projection of rnnkit cells hoisted out of it (``cell.project_input``/
    ``cell.step``). ``forward(input, hx=None, *, lengths=None, mask=None)`` takes lengths as
    :class:`rnnkit.LSTM` does; bad input raises :class:`rnnkit.InputError` (a ``ValueError``
    and a ``RuntimeError``).
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
        self.num_layers, self.bidirectional = num_layers, bidirectional
        self.batch_first, self.dropout = batch_first, dropout
        self.engine = check_engine("Recurrent", engine)
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
        return fused.cells_mode(self.cells)

    def engine_blockers(self) -> Blockers:
        """What keeps each engine faster than the loop from running this layer now."""
        blockers = []
        if self._fused_mode() is None:
            names = sorted({type(c).__name__ for c in self.cells})
            blockers.append(
                (
                    f"cells {', '.join(names)} have no fused kernel (only exact RNNCell, "
                    "LSTMCell or GRUCell of one kind and one bias setting do)",
                    "use rnnkit.LSTM/GRU/RNN or standard cells if the variant is not needed",
                )
            )
        observer = [_OBSERVER_BLOCKER] if self._observer is not None else []
        return {"fused": blockers + observer, "triton": observer + triton_engine.blockers(self)}

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
        name = describe(self)
        params = next(self.cells[0].parameters(), None)
        dtype = params.dtype if params is not None else input.dtype
        engine = select(name, self.engine, self.engine_blockers())
        if engine == "fused" and fused.cpu_lstm_lacks_autocast_dtype(self._fused_mode(), input):
            return fused.in_float32(self.forward, input, hx, dtype, lengths=lengths, mask=mask)
        input_size = self.input_size if self.input_size is not None else input.shape[-1]
        prep = _prepare(self, input, input_size, dtype, self.batch_first, lengths, mask)
        zero_states = self._initial_states(prep.x)
        if hx is None:
            states = zero_states
        else:
            parts = zero_states[0] if isinstance(zero_states[0], tuple) else (zero_states[0],)
            keep = slice(1, None) if prep.unbatched else slice(None)
            shapes = [(len(self.cells), *p.shape[keep]) for p in parts]
            _check_state(name, hx, shapes, dtype)
            if prep.unbatched:
                hx = tuple(h.unsqueeze(1) for h in hx) if isinstance(hx, tuple) else hx.unsqueeze(1)
            states = split_state(hx, len(self.cells))
        if engine == "fused":
            has_biases = self.cells[0].bias_ih is not None
            weights = [
                [c.weight_ih, c.weight_hh] + ([c.bias_ih, c.bias_hh] if has_biases else [])
                for c in self.cells
            ]
            output, final = fused.run(
                self._fused_mode(),
                prep.x,
                stack_states(states),
                weights,
                prep.lengths,
                has_biases=has_biases,
                num_layers=self.num_layers,
                bidirectional=self.bidirectional,
                dropout=self.dropout,
                training=self.training,
            )
        elif engine == "triton":
            output, finals = triton_engine.run(self, prep.x, states, prep.lengths)
            final = stack_states(finals)
        else:
            step_units = [
                (c.project_input, c.step) if hasattr(c, "project_input") else (lambda x: x, c)
                for c in self.cells
            ]
            output, finals = loop.run_layers(
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
            final = stack_states(finals)
        return _finish(prep, output, final, self.batch_first)
