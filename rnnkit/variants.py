"""Cell variants beyond the classic three: layer-normalised LSTM/GRU and the IndRNN.

They are :class:`rnnkit.RecurrentCell` subclasses, so :class:`rnnkit.Recurrent` runs them over
time with lengths, stacked and bidirectional (on rnnkit's own loop: no fused kernel computes
them), with the input terms hoisted out of the time loop by ``project_input``.

Each cell also has ``step_with_gates(x_proj, state) -> (state, gates)``: the same step that also
returns every gate's activation by name, which :func:`rnnkit.saturation` reads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.cells import RecurrentCell, State


class _LayerNormCell(RecurrentCell):
    """``weight_ih (G*H, I)``, ``weight_hh (G*H, H)`` and a LayerNorm on each projection."""

    gates = 1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        eps: float = 1e-5,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, hidden_size
        self.bias, self.eps = bias, eps
        width = self.gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(width, input_size, **kw))
        self.weight_hh = nn.Parameter(torch.empty(width, hidden_size, **kw))
        self.norm_ih = nn.LayerNorm(width, eps=eps, bias=bias, **kw)
        self.norm_hh = nn.LayerNorm(width, eps=eps, bias=bias, **kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights Uniform(-1/sqrt(H), 1/sqrt(H)) as in torch.nn; LayerNorm gains 1, shifts 0."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size else 0.0
        nn.init.uniform_(self.weight_ih, -bound, bound)
        nn.init.uniform_(self.weight_hh, -bound, bound)
        for module in self.children():
            module.reset_parameters()

    def project_input(self, x: Tensor) -> Tensor:
        """``LN(W_ih x)`` for any number of leading dimensions (it needs no state)."""
        return self.norm_ih(F.linear(x, self.weight_ih))

    def step(self, x_proj: Tensor, state: State) -> State:
        return self.step_with_gates(x_proj, state)[0]

    def step_with_gates(self, x_proj: Tensor, state: State) -> tuple[State, dict[str, Tensor]]:
        raise NotImplementedError

    def replicate(self, input_size: int) -> _LayerNormCell:
        """A fresh cell like this one for ``input_size`` inputs (for stacked layers)."""
        p = self.weight_ih
        return type(self)(
            input_size, self.hidden_size, self.bias, self.eps, device=p.device, dtype=p.dtype
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bias={self.bias}, eps={self.eps}"


class LayerNormLSTMCell(_LayerNormCell):
    r"""LSTM cell with layer normalisation (Ba, Kiros & Hinton 2016, "Layer Normalization", eqs.
    20-22), gates in ``torch.nn.LSTM``'s order ``i, f, g, o``.

    .. math::
        \begin{array}{ll}
        a_t = \mathrm{LN}(W_{ih} x_t; \gamma_{ih}, \beta_{ih})
              + \mathrm{LN}(W_{hh} h_{t-1}; \gamma_{hh}, \beta_{hh})
              \quad (a_t = [a_i, a_f, a_g, a_o]) \\
        i_t = \sigma(a_i), \; f_t = \sigma(a_f), \; g_t = \tanh(a_g), \; o_t = \sigma(a_o) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t = o_t \odot \tanh(\mathrm{LN}(c_t; \gamma_c, \beta_c))
        \end{array}

    where :math:`\mathrm{LN}(z; \gamma, \beta) = \gamma \odot (z - \mu_z) / \sqrt{\sigma_z^2 +
    \epsilon} + \beta` normalises over the whole vector (all four gates together, as in the
    paper). The paper's extra bias :math:`b` is absorbed into the shifts, so the effective bias
    of a gate is :math:`\beta_{ih} + \beta_{hh}` (``bias=False`` drops the shifts). Parameters:
    ``weight_ih (4H, I)``, ``weight_hh (4H, H)`` and the LayerNorms ``norm_ih``, ``norm_hh``
    (``4H``) and ``norm_c`` (``H``). The state is the pair ``(h, c)``.
    """

    gates = 4
    state_arity = 2

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        eps: float = 1e-5,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(input_size, hidden_size, bias, eps, device, dtype)
        self.norm_c = nn.LayerNorm(hidden_size, eps=eps, bias=bias, device=device, dtype=dtype)

    def step_with_gates(
        self, x_proj: Tensor, state: tuple[Tensor, Tensor]
    ) -> tuple[tuple[Tensor, Tensor], dict[str, Tensor]]:
        """One step; also returns ``i, f, g, o`` and ``c`` (the output's ``tanh(LN(c_t))``)."""
        h, c = state
        a_i, a_f, a_g, a_o = (x_proj + self.norm_hh(F.linear(h, self.weight_hh))).chunk(4, -1)
        i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
        c = f * c + i * g
        tanh_c = torch.tanh(self.norm_c(c))
        return (o * tanh_c, c), {"i": i, "f": f, "g": g, "o": o, "c": tanh_c}


class LayerNormGRUCell(_LayerNormCell):
    r"""GRU cell with layer normalisation (Ba, Kiros & Hinton 2016 applied to the GRU), gates in
    ``torch.nn.GRU``'s order ``r, z, n``.

    .. math::
        \begin{array}{ll}
        a_t = \mathrm{LN}(W_{ih} x_t; \gamma_{ih}, \beta_{ih}), \quad
        b_t = \mathrm{LN}(W_{hh} h_{t-1}; \gamma_{hh}, \beta_{hh})
        \quad (\text{blocks } r, z, n) \\
        r_t = \sigma(a_r + b_r), \; z_t = \sigma(a_z + b_z) \\
        n_t = \tanh(a_n + r_t \odot b_n) \\
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}
        \end{array}

    — :class:`rnnkit.GRUCell` with each linear map replaced by a normalised one (normalised over
    all three blocks together); the shifts :math:`\beta` play the role of the biases. Parameters:
    ``weight_ih (3H, I)``, ``weight_hh (3H, H)`` and the LayerNorms ``norm_ih``, ``norm_hh``
    (``3H``).
    """

    gates = 3

    def step_with_gates(self, x_proj: Tensor, state: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """One step; also returns ``r, z, n``."""
        a_r, a_z, a_n = x_proj.chunk(3, -1)
        b_r, b_z, b_n = self.norm_hh(F.linear(state, self.weight_hh)).chunk(3, -1)
        r, z = torch.sigmoid(a_r + b_r), torch.sigmoid(a_z + b_z)
        n = torch.tanh(a_n + r * b_n)
        return (1 - z) * n + z * state, {"r": r, "z": z, "n": n}


class IndRNNCell(RecurrentCell):
    r"""Independently recurrent cell (Li et al. 2018, "Independently Recurrent Neural Network").

    .. math::
        h_t = \mathrm{relu}(W_{ih} x_t + b_{ih} + u \odot h_{t-1})

    Each unit sees only its own past through one recurrent weight :math:`u_j` (``weight_hh`` is a
    vector ``(H,)``), so the gradient through time of unit ``j`` is a product of :math:`u_j`
    times the ReLU's 0/1 derivatives: :math:`|u_j| \le \gamma^{1/T}` keeps it from exploding or
    vanishing over ``T`` steps beyond a factor :math:`\gamma`. ``recurrent_max_abs`` applies that
    constraint as the paper does with clipping: the step uses ``u.clamp(-max, max)``.
    ``nonlinearity="tanh"`` is accepted for comparison.

    Initialisation: ``weight_ih`` and ``bias_ih`` Uniform(-1/sqrt(H), 1/sqrt(H)) as in
    ``torch.nn``; ``u`` Uniform(0, 1) (Uniform(0, recurrent_max_abs) when that is below 1).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "relu",
        recurrent_max_abs: float | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if nonlinearity not in ("relu", "tanh"):
            raise ValueError(f"nonlinearity must be 'relu' or 'tanh', got {nonlinearity!r}")
        if recurrent_max_abs is not None and not recurrent_max_abs > 0:
            raise ValueError(f"recurrent_max_abs must be > 0 or None, got {recurrent_max_abs!r}")
        kw = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, hidden_size
        self.bias, self.nonlinearity, self.recurrent_max_abs = bias, nonlinearity, recurrent_max_abs
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size, **kw))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, **kw))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(hidden_size, **kw))
        else:
            self.register_parameter("bias_ih", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size else 0.0
        nn.init.uniform_(self.weight_ih, -bound, bound)
        if self.bias_ih is not None:
            nn.init.uniform_(self.bias_ih, -bound, bound)
        nn.init.uniform_(self.weight_hh, 0.0, min(1.0, self.recurrent_max_abs or 1.0))

    def recurrent_weight(self) -> Tensor:
        """The ``u`` the step uses: ``weight_hh``, clamped to ``recurrent_max_abs`` if set."""
        if self.recurrent_max_abs is None:
            return self.weight_hh
        return self.weight_hh.clamp(-self.recurrent_max_abs, self.recurrent_max_abs)

    def step(self, x_proj: Tensor, state: Tensor) -> Tensor:
        pre = x_proj + self.recurrent_weight() * state
        return torch.relu(pre) if self.nonlinearity == "relu" else torch.tanh(pre)

    def step_with_gates(self, x_proj: Tensor, state: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """One step; the only "gate" is the output ``h``."""
        h = self.step(x_proj, state)
        return h, {"h": h}

    def replicate(self, input_size: int) -> IndRNNCell:
        p = self.weight_ih
        return IndRNNCell(
            input_size,
            self.hidden_size,
            self.bias,
            self.nonlinearity,
            self.recurrent_max_abs,
            device=p.device,
            dtype=p.dtype,
        )

    def extra_repr(self) -> str:
        extra = f", recurrent_max_abs={self.recurrent_max_abs}" if self.recurrent_max_abs else ""
        return f"{super().extra_repr()}, nonlinearity={self.nonlinearity!r}{extra}"
