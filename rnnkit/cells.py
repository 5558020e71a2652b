"""Recurrent cells written from their equations.

A cell computes one time step; :class:`rnnkit.Recurrent` runs a cell over time. Every cell here
splits its step in two so that a layer can hoist the input projection out of the time loop:

* ``project_input(x)`` computes the input terms ``W_ih x + b_ih`` — for a whole sequence in one
  matrix multiply;
* ``step(x_proj, state)`` computes the recurrence from the projected input and the previous state.

``cell(x, state)`` does both for one step, with the ``torch.nn`` cell conventions: batched
``(B, input_size)`` or unbatched ``(input_size,)`` input, ``state=None`` meaning zeros, and the
parameters ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` shaped as in ``torch.nn`` so that
state dicts move both ways. A state that does not fit the input (its batch, size, rank, arity or
dtype) raises :class:`rnnkit.InputError` as ``torch.nn``'s cells raise, never broadcasts.

The step functions (:func:`rnn_step`, :func:`lstm_step`, :func:`gru_step`) are plain functions of
tensors, shared by the cells and by the own-loop engine of the layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.checks import State, check_features, check_state
from rnnkit.errors import InputError


def rnn_step(
    x_proj: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor | None, nonlinearity: str
) -> Tensor:
    """``h' = act(x_proj + W_hh h + b_hh)`` with ``act`` tanh or relu."""
    pre = x_proj + F.linear(h, weight_hh, bias_hh)
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def lstm_step(
    x_proj: Tensor,
    state: tuple[Tensor, Tensor],
    weight_hh: Tensor,
    bias_hh: Tensor | None,
    weight_hr: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One LSTM step from the projected input; gate order i, f, g, o as in ``torch.nn.LSTM``."""
    h, c = state
    gates = x_proj + F.linear(h, weight_hh, bias_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    if weight_hr is not None:
        h = F.linear(h, weight_hr)
    return h, c


def gru_step(x_proj: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor | None) -> Tensor:
    """One GRU step from the projected input; gate order r, z, n as in ``torch.nn.GRU``."""
    x_r, x_z, x_n = x_proj.chunk(3, dim=-1)
    h_r, h_z, h_n = F.linear(h, weight_hh, bias_hh).chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


class RecurrentCell(nn.Module):
    """Base class of rnnkit's cells: one step ``state' = f(x, state)``, split for hoisting.

    Subclasses set ``input_size`` and ``hidden_size``, register their parameters and implement
    :meth:`step`; the default :meth:`project_input` is ``x W_ih^T + b_ih``. A cell whose state is a
    tuple emits its first element as the step output (the LSTM's ``h``).
    """

    input_size: int
    hidden_size: int
    output_size: int  # size of the step output: hidden_size, or proj_size for a projected LSTM
    state_arity = 1  # how many tensors make the state: 1 (h) or 2 (h, c)

    def project_input(self, x: Tensor) -> Tensor:
        """The input terms of every gate for any number of leading dimensions."""
        return F.linear(x, self.weight_ih, self.bias_ih)

    def step(self, x_proj: Tensor, state: State) -> State:
        raise NotImplementedError

    def initial_state(
        self, batch_size: int | None, *, dtype: torch.dtype, device: torch.device
    ) -> State:
        """The zero state for ``batch_size`` sequences (``None``: one unbatched sequence)."""
        shape = () if batch_size is None else (batch_size,)
        h = torch.zeros(*shape, self.output_size, dtype=dtype, device=device)
        if self.state_arity == 1:
            return h
        return h, torch.zeros(*shape, self.hidden_size, dtype=dtype, device=device)

    def state_shapes(self, batch_size: int | None) -> list[tuple[int, ...]]:
        """The shape of each state tensor for ``batch_size`` sequences (``None``: unbatched)."""
        lead = () if batch_size is None else (batch_size,)
        sizes = (self.output_size, self.hidden_size)[: self.state_arity]
        return [(*lead, size) for size in sizes]

    def forward(self, input: Tensor, hx: State | None = None) -> State:
        """One step, ``torch.nn``'s cell conventions; a state that does not fit the input (its
        batch, size, arity or dtype) raises an :class:`rnnkit.InputError`, never broadcasts."""
        name = type(self).__name__
        if not isinstance(input, Tensor):
            raise InputError(f"{name}: expected a Tensor input, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise InputError(
                f"{name}: expected input of shape (batch, {self.input_size}) or "
                f"({self.input_size},), got shape {tuple(input.shape)}"
            )
        weight = next(self.parameters(), None)
        dtype = input.dtype if weight is None else weight.dtype
        check_features(name, input, self.input_size, dtype)
        batch = input.shape[0] if input.dim() == 2 else None
        if hx is None:
            hx = self.initial_state(batch, dtype=input.dtype, device=input.device)
        else:
            layout = "(size,) for an unbatched input" if batch is None else "(batch, size)"
            check_state(name, hx, self.state_shapes(batch), dtype, labels=("h", "c"), layout=layout)
        return self.step(self.project_input(input), hx)

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(H), 1/sqrt(H)) for every parameter, as ``torch.nn``'s cells do."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size else 0.0
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


class _GatedCell(RecurrentCell):
    """Parameters ``weight_ih (G*H, I)``, ``weight_hh (G*H, H)``, ``bias_ih/bias_hh (G*H,)``."""

    gates = 1

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.output_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(self.gates * hidden_size, input_size, **kw))
        self.weight_hh = nn.Parameter(torch.empty(self.gates * hidden_size, hidden_size, **kw))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(self.gates * hidden_size, **kw))
            self.bias_hh = nn.Parameter(torch.empty(self.gates * hidden_size, **kw))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def replicate(self, input_size: int) -> _GatedCell:
        """A fresh cell like this one for ``input_size`` inputs (for stacked layers)."""
        p = self.weight_ih
        return type(self)(input_size, self.hidden_size, self.bias, device=p.device, dtype=p.dtype)


class RNNCell(_GatedCell):
    r"""The Elman cell.

    .. math::
        h_t = \tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})

    (the notebooks' :math:`h_t = \tanh(W_{hh} h_{t-1} + W_{xh} x_t + b_h)` with
    :math:`b_h = b_{ih} + b_{hh}`), or ReLU instead of tanh with ``nonlinearity="relu"``.
    Same parameters and numbers as :class:`torch.nn.RNNCell`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device=None,
        dtype=None,
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, bias, device, dtype)
        self.nonlinearity = nonlinearity

    def replicate(self, input_size: int) -> RNNCell:
        p = self.weight_ih
        return RNNCell(
            input_size, self.hidden_size, self.bias, self.nonlinearity, p.device, p.dtype
        )

    def step(self, x_proj: Tensor, state: Tensor) -> Tensor:
        return rnn_step(x_proj, state, self.weight_hh, self.bias_hh, self.nonlinearity)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nonlinearity={self.nonlinearity!r}"


class LSTMCell(_GatedCell):
    r"""Long short-term memory (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al.
    2000).

    .. math::
        \begin{array}{ll}
        i_t = \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\
        f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
        g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        o_t = \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t = o_t \odot \tanh(c_t)
        \end{array}

    The gates are stacked ``i, f, g, o`` in ``weight_ih (4H, I)`` and ``weight_hh (4H, H)``, as in
    :class:`torch.nn.LSTMCell`. The state is the pair ``(h, c)``.
    """

    gates = 4
    state_arity = 2

    def step(self, x_proj: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return lstm_step(x_proj, state, self.weight_hh, self.bias_hh)


class GRUCell(_GatedCell):
    r"""Gated recurrent unit (Cho et al. 2014).

    .. math::
        \begin{array}{ll}
        r_t = \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t = \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t = \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})) \\
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}
        \end{array}

    The reset gate multiplies ``W_hn h + b_hn`` (not ``h`` itself), as in cuDNN and
    :class:`torch.nn.GRUCell`; gates are stacked ``r, z, n``.
    """

    gates = 3

    def step(self, x_proj: Tensor, state: Tensor) -> Tensor:
        return gru_step(x_proj, state, self.weight_hh, self.bias_hh)
