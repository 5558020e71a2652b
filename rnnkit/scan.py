r"""Parallel-scan recurrences: minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?").

A minGRU or minLSTM layer computes its gates from the input alone, never from ``h_{t-1}``, so
the recurrence that remains is first-order and linear in the state:

.. math::
    h_t = a_t \odot h_{t-1} + b_t, \qquad a_t \in (0, 1),

with ``a_t`` and ``b_t`` computed for all steps at once by one matrix multiply. Such a
recurrence is a scan (Blelloch 1990, "Prefix sums and their applications"; Martin & Cundy 2018,
"Parallelizing Linear Recurrent Neural Nets Over Sequence Length") and needs no loop over every
step. Two engines compute it:

* ``engine="scan"`` (default, training and long sequences): a chunked scan. The ``T`` steps are
  cut into ``n`` chunks of ``C ~ sqrt(T)`` steps; (1) every chunk runs the recurrence from a zero
  state, all chunks at once (``C`` vectorised steps), giving its end value, and the product of its
  ``a`` gives its decay; (2) the state entering each chunk is carried across the ``n`` chunks;
  (3) every chunk reruns from its true entering state, writing the outputs. That is ``2C + n``
  vectorised steps instead of ``T``. The backward pass is the same scan run backwards in time
  (the adjoint ``lambda_t = g_t + a_{t+1} lambda_{t+1}``), so gradients cost one more scan.
* ``engine="loop"``: the recurrence step by step, for reference and for one-step streaming.

Why not the log-space scan of the paper: there ``log h_t = a*_t + logcumsumexp_s(log b_s - a*_s)``
with ``a*_t = sum_{s<=t} log a_s``. The values need to be positive (the paper passes the candidate
through ``g(x) = x + 0.5`` for ``x >= 0``, ``sigmoid(x)`` otherwise), and ``|a*_t|`` grows with
``t``, so in float32 the differences ``a*_t - a*_s`` lose digits: a naive float32 log-space scan is
off by 6.7e-4 at ``T = 4096`` (measured on an H200). The chunked scan multiplies and adds the very
numbers the sequential recurrence does, only regrouped (a chunk's decay is a product of at most
``C`` factors in ``(0, 1)``), so its error is that of the float32 recurrence itself, whatever
``T`` (``benchmarks/scan.py`` on CPU at ``T = 4096``: 5e-7 of the output's scale against the
float64 recurrence, where the naive log-space scan gives 2e-4), for any sign of the candidate and
with no ``exp``/``log``.

Both engines carry state across calls: ``forward(x, hx)`` returns ``(output, h_n)``, and running
a sequence in two calls with the first call's ``h_n`` as the second's ``hx`` gives what one call
gives. With ``lengths=`` (or ``mask=``), padded steps get ``a = 1, b = 0`` so the state passes
through them unchanged: ``h_n`` is each sequence's state at its own last step and outputs past
each end are zero; the padded input steps are zeroed first, so that NaN or inf padding reaches
no gradient. Bad input raises :class:`rnnkit.InputError` (a ``ValueError`` and a
``RuntimeError``), as for :class:`rnnkit.GRU`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.engines.selection import describe
from rnnkit.engines.triton import support as triton_support
from rnnkit.errors import InputError
from rnnkit.recurrent import _check_state, _finish, _prepare, _valid

ENGINES = ("scan", "loop")
KINDS = ("gru", "lstm")


# --------------------------------------------------------------------------------------------
# The linear recurrence h_t = a_t * h_{t-1} + b_t over the leading (time) dimension.


def _chunked_scan(a: Tensor, b: Tensor, h0: Tensor, reverse: bool) -> Tensor:
    """All states of ``h_t = a_t h_{t-1} + b_t`` (``h_{-1} = h0``) for ``a, b (T, *S)``.

    ``reverse`` runs from the last step to the first (``h_t = a_t h_{t+1} + b_t``). The
    algorithm is the module docstring's chunked scan; ``T >= 1``. On CUDA with triton installed
    it runs as three Triton kernels (:mod:`rnnkit.engines.triton.scan`, same algorithm).
    """
    if _on_triton(a):
        from rnnkit.engines.triton.scan import chunked_scan

        return chunked_scan(a, b, h0, reverse)
    steps, shape = a.shape[0], a.shape[1:]
    chunk = math.isqrt(steps - 1) + 1  # ceil(sqrt(T))
    n = -(-steps // chunk)
    pad = n * chunk - steps
    if pad:  # identity steps (a = 1, b = 0) after the end leave every real state unchanged
        ones, zeros = a.new_ones(pad, *shape), b.new_zeros(pad, *shape)
        a = torch.cat([ones, a] if reverse else [a, ones])
        b = torch.cat([zeros, b] if reverse else [b, zeros])
    a, b = a.reshape(n, chunk, *shape), b.reshape(n, chunk, *shape)
    within = range(chunk - 1, -1, -1) if reverse else range(chunk)
    starts = h0.unsqueeze(0)
    if n > 1:
        first, *others = within
        end = b[:, first]
        for j in others:
            end = torch.addcmul(b[:, j], a[:, j], end)
        decay = a.prod(dim=1)
        starts = torch.empty_like(end)
        state = h0
        for k in range(n - 1, -1, -1) if reverse else range(n):
            starts[k] = state
            state = torch.addcmul(end[k], decay[k], state)
    h = torch.empty_like(b)
    previous = starts
    for j in within:
        previous = torch.addcmul(b[:, j], a[:, j], previous, out=h[:, j])
    h = h.reshape(n * chunk, *shape)
    return h[pad:] if reverse else h[:steps]


def _on_triton(a: Tensor) -> bool:
    """Whether the chunked scan runs as Triton kernels: on CUDA, where triton is installed."""
    return a.is_cuda and triton_support.triton_installed()


class _LinearScan(torch.autograd.Function):
    """Differentiable :func:`_chunked_scan`; its backward is a scan the other way in time."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor, reverse: bool) -> Tensor:
        h = _chunked_scan(a, b, h0, reverse)
        ctx.save_for_backward(a, h0, h)
        ctx.reverse = reverse
        return h

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, h0, h = ctx.saved_tensors
        # lambda_t = dL/dh_t in total = g_t + a_{t+1} lambda_{t+1} (forward in time; mirrored
        # for reverse). Then dL/db_t = lambda_t, dL/da_t = lambda_t h_{t-1}, dL/dh0 = a_0 lambda_0.
        zero = a.new_zeros(1, *a.shape[1:])
        if ctx.reverse:
            following, previous = torch.cat([zero, a[:-1]]), torch.cat([h[1:], h0.unsqueeze(0)])
        else:
            following, previous = torch.cat([a[1:], zero]), torch.cat([h0.unsqueeze(0), h[:-1]])
        lam = _LinearScan.apply(following, grad, torch.zeros_like(h0), not ctx.reverse)
        first = -1 if ctx.reverse else 0
        return lam * previous, lam, a[first] * lam[first], None


def linear_scan(a: Tensor, b: Tensor, h0: Tensor, *, reverse: bool = False) -> Tensor:
    r"""All states of the linear recurrence :math:`h_t = a_t \odot h_{t-1} + b_t`.

    ``a`` and ``b`` are ``(T, *S)`` (time first), ``h0`` is ``(*S)``; returns ``(T, *S)`` with
    ``h_{-1} = h0``. ``reverse=True`` runs from the last step back (``h_t = a_t h_{t+1} + b_t``,
    ``h_T = h0``). Computed by the chunked scan of the module docstring, differentiable in all
    three inputs (twice, too). Any real ``a`` works; with ``|a_t| <= 1`` (the minimal RNNs) the
    rounding error is that of the sequential recurrence in the same precision.
    """
    for name, value in (("a", a), ("b", b), ("h0", h0)):
        if not isinstance(value, Tensor):
            raise TypeError(f"linear_scan: {name} must be a Tensor, got {type(value).__name__}")
    if a.shape != b.shape or a.dim() < 1:
        raise InputError(
            f"linear_scan: expected a and b of one shape (T, ...), got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    if h0.shape != a.shape[1:]:
        raise InputError(
            f"linear_scan: expected h0 of shape {tuple(a.shape[1:])} (a's shape without time), "
            f"got {tuple(h0.shape)}"
        )
    if not a.dtype == b.dtype == h0.dtype:
        raise InputError(
            f"linear_scan: a, b and h0 must share one dtype, got {a.dtype}, {b.dtype}, {h0.dtype}"
        )
    if a.shape[0] == 0:
        return b.clone()
    return _LinearScan.apply(a, b, h0, reverse)


def _linear_loop(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """The same recurrence step by step (autograd records every step)."""
    states, h = [], h0
    for a_t, b_t in zip(a.unbind(0), b.unbind(0), strict=True):  # unbind: see run_cell
        h = torch.addcmul(b_t, a_t, h)
        states.append(h)
    return torch.stack(states) if states else b.clone()


# --------------------------------------------------------------------------------------------
# The layers.


def _check_size(owner: str, name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}: {name} must be an int >= 1, got {value!r}")


def _check_engine(owner: str, engine) -> None:
    if engine not in ENGINES:
        raise ValueError(f"{owner}: engine must be one of {ENGINES}, got {engine!r}")


class _MinRNN(nn.Module):
    """A one-layer minimal RNN: input projection, coefficients ``(a, b)``, linear recurrence."""

    projections: int  # rows of weight_ih per hidden unit

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        batch_first: bool = False,
        engine: str = "scan",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        _check_size(owner, "input_size", input_size)
        _check_size(owner, "hidden_size", hidden_size)
        _check_engine(owner, engine)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.bias, self.batch_first, self._engine = bias, batch_first, engine
        kw = {"device": device, "dtype": dtype}
        rows = self.projections * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size, **kw))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(rows, **kw))
        else:
            self.register_parameter("bias_ih", None)
        self.reset_parameters()

    @property
    def engine(self) -> str:
        """``"scan"`` (chunked parallel scan) or ``"loop"`` (step by step); settable."""
        return self._engine

    @engine.setter
    def engine(self, value: str) -> None:
        _check_engine(type(self).__name__, value)
        self._engine = value

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(H), 1/sqrt(H)) for every parameter, as ``torch.nn.GRU`` does."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, bias={self.bias}, "
            f"batch_first={self.batch_first}, engine={self.engine!r}"
        )

    def coefficients(self, projected: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)`` of ``h_t = a_t h_{t-1} + b_t`` from ``W_ih x + b_ih`` (any leading dims)."""
        raise NotImplementedError

    def forward(
        self, input, hx: Tensor | None = None, *, lengths=None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(output, h_n)`` with the shapes of a one-layer ``torch.nn.GRU``.

        ``input`` is ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``), unbatched ``(T, I)``, or a
        PackedSequence; ``hx`` and ``h_n`` are ``(1, B, H)`` (``(1, H)`` unbatched). ``lengths``
        or ``mask`` as in :class:`rnnkit.GRU`.
        """
        dtype = self.weight_ih.dtype
        prep = _prepare(self, input, self.input_size, dtype, self.batch_first, lengths, mask)
        x, batch = prep.x, prep.x.shape[1]
        if hx is None:
            h0 = x.new_zeros(batch, self.hidden_size)
        else:
            shape = (1, self.hidden_size) if prep.unbatched else (1, batch, self.hidden_size)
            _check_state(describe(self), hx, [shape], dtype)
            h0 = hx if prep.unbatched else hx[0]  # (B, H); unbatched (1, H) is a batch of one
        a, b = self.coefficients(F.linear(x, self.weight_ih, self.bias_ih))
        valid = _valid(prep)
        if valid is not None:
            padded = ~valid.unsqueeze(-1)
            a, b = a.masked_fill(padded, 1.0), b.masked_fill(padded, 0.0)
        if self.engine == "scan":
            h = linear_scan(a, b, h0)
        else:
            h = _linear_loop(a, b, h0)
        h_n = (h[-1] if h.shape[0] else h0).unsqueeze(0)
        output = h if valid is None else h.masked_fill(padded, 0.0)
        return _finish(prep, output, h_n, self.batch_first)


class MinGRU(_MinRNN):
    r"""The minimal GRU of Feng et al. 2024 ("Were RNNs All We Needed?"): a GRU whose gate and
    candidate depend on the input only, trainable with a parallel scan over time.

    .. math::
        \begin{array}{ll}
        z_t = \sigma(W_{z} x_t + b_{z}) \\
        \tilde h_t = W_{h} x_t + b_{h} \\
        h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t
        \end{array}

    (``z_t`` weighs the new candidate, as in the paper; ``torch.nn.GRU``'s ``z_t`` weighs the old
    state). ``weight_ih (2H, I)`` and ``bias_ih (2H,)`` stack ``z, h~``; initialised
    Uniform(-1/sqrt(H), 1/sqrt(H)). The candidate is not passed through the paper's positivity
    function ``g``: the chunked scan (see :mod:`rnnkit.scan`) is exact for any sign.

    Args:
        input_size, hidden_size, bias, batch_first: as in :class:`torch.nn.GRU`.
        engine: ``"scan"`` (chunked parallel scan, the default) or ``"loop"`` (step by step);
            both give the same numbers up to float rounding. Settable later: ``layer.engine``.

    ``forward(input, hx=None, *, lengths=None, mask=None) -> (output, h_n)`` with
    ``torch.nn.GRU``'s shapes for one layer; ``h_n`` carried into the next call continues the
    sequence exactly (streaming). Stack layers with :class:`rnnkit.MinRNNStack`.
    """

    projections = 2

    def coefficients(self, projected: Tensor) -> tuple[Tensor, Tensor]:
        gate, candidate = projected.chunk(2, dim=-1)
        return torch.sigmoid(-gate), torch.sigmoid(gate) * candidate


class MinLSTM(_MinRNN):
    r"""The minimal LSTM of Feng et al. 2024 ("Were RNNs All We Needed?"): an LSTM whose gates and
    candidate depend on the input only, with normalised gates, trainable with a parallel scan.

    .. math::
        \begin{array}{ll}
        f_t = \sigma(W_{f} x_t + b_{f}) \\
        i_t = \sigma(W_{i} x_t + b_{i}) \\
        \tilde h_t = W_{h} x_t + b_{h} \\
        f'_t = f_t / (f_t + i_t), \quad i'_t = i_t / (f_t + i_t) \\
        h_t = f'_t \odot h_{t-1} + i'_t \odot \tilde h_t
        \end{array}

    The normalised gates are computed as
    :math:`f'_t = \sigma(\log\sigma(k_f) - \log\sigma(k_i))` and :math:`i'_t = 1 - f'_t`
    (with ``k`` the pre-activations), which is the same number and stays accurate when both gates
    are tiny. ``weight_ih (3H, I)`` and ``bias_ih (3H,)`` stack ``f, i, h~``; initialised
    Uniform(-1/sqrt(H), 1/sqrt(H)). As in :class:`MinGRU`, the candidate may have any sign.

    Args, forward and engines: as :class:`MinGRU`.
    """

    projections = 3

    def coefficients(self, projected: Tensor) -> tuple[Tensor, Tensor]:
        forget, input_gate, candidate = projected.chunk(3, dim=-1)
        log_ratio = F.logsigmoid(forget) - F.logsigmoid(input_gate)
        return torch.sigmoid(log_ratio), torch.sigmoid(-log_ratio) * candidate


_LAYERS = {"gru": MinGRU, "lstm": MinLSTM}


class MinRNNStack(nn.Module):
    r"""A residual, pre-normalised stack of :class:`MinGRU` or :class:`MinLSTM` layers.

    .. math::
        \begin{array}{ll}
        u^{(0)}_t = W_{in} x_t + b_{in}
            \quad (\text{or } x_t \text{ when input\_size} = \text{hidden\_size}) \\
        u^{(l)}_t = u^{(l-1)}_t + \mathrm{Dropout}\big(\mathrm{Min}_l(
            \mathrm{LayerNorm}_l(u^{(l-1)}))_t\big), \quad l = 1 \dots L \\
        y_t = \mathrm{LayerNorm}_{out}(u^{(L)}_t)
        \end{array}

    Feng et al. 2024 stack their minimal RNNs in residual blocks like this; normalising each
    block's input (pre-norm) rather than its output keeps the residual path an identity, which
    trains deep stacks without warm-up (Xiong et al. 2020, "On Layer Normalization in the
    Transformer Architecture").

    Args:
        input_size: features of ``x``.
        hidden_size: width of every layer and of the output.
        num_layers: ``L``, the number of minimal RNN layers.
        kind: ``"gru"`` (:class:`MinGRU`) or ``"lstm"`` (:class:`MinLSTM`).
        bias, batch_first: as in :class:`torch.nn.GRU`.
        dropout: on each layer's output before the residual add, in training.
        engine: ``"scan"`` or ``"loop"`` for every layer (settable: ``stack.engine``).

    ``forward(input, hx=None, *, lengths=None, mask=None) -> (output, h_n)``: input and output as
    for :class:`torch.nn.GRU`, ``hx``/``h_n`` of shape ``(L, B, H)`` holding each layer's state,
    so streaming in pieces equals one call. Outputs past each sequence's end are zero.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        kind: str = "gru",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        engine: str = "scan",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        _check_size("MinRNNStack", "input_size", input_size)
        _check_size("MinRNNStack", "hidden_size", hidden_size)
        _check_size("MinRNNStack", "num_layers", num_layers)
        if kind not in KINDS:
            raise ValueError(f"MinRNNStack: kind must be one of {KINDS}, got {kind!r}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"MinRNNStack: dropout must be in [0, 1), got {dropout!r}")
        _check_engine("MinRNNStack", engine)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.kind, self.bias, self.batch_first, self.dropout = kind, bias, batch_first, dropout
        kw = {"device": device, "dtype": dtype}
        self.input_proj = (
            nn.Identity()
            if input_size == hidden_size
            else nn.Linear(input_size, hidden_size, bias, **kw)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_size, **kw) for _ in range(num_layers))
        self.layers = nn.ModuleList(
            _LAYERS[kind](hidden_size, hidden_size, bias, engine=engine, **kw)
            for _ in range(num_layers)
        )
        self.out_norm = nn.LayerNorm(hidden_size, **kw)

    @property
    def engine(self) -> str:
        """The engine of every layer, ``"scan"`` or ``"loop"``; settable."""
        return self.layers[0].engine

    @engine.setter
    def engine(self, value: str) -> None:
        _check_engine("MinRNNStack", value)
        for layer in self.layers:
            layer.engine = value

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"kind={self.kind!r}, batch_first={self.batch_first}, dropout={self.dropout}"
        )

    def forward(
        self, input, hx: Tensor | None = None, *, lengths=None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(output, h_n)``; see the class docstring."""
        dtype = self.layers[0].weight_ih.dtype
        prep = _prepare(self, input, self.input_size, dtype, self.batch_first, lengths, mask)
        batch = prep.x.shape[1]
        if hx is not None:
            shape = (self.num_layers, self.hidden_size)
            shape = shape if prep.unbatched else (self.num_layers, batch, self.hidden_size)
            _check_state(describe(self), hx, [shape], dtype)
            if prep.unbatched:
                hx = hx.unsqueeze(1)
        u = self.input_proj(prep.x)
        finals = []
        for index, (norm, layer) in enumerate(zip(self.norms, self.layers, strict=True)):
            state = None if hx is None else hx[index : index + 1]
            out, h_n = layer(norm(u), state, lengths=prep.lengths)
            u = u + F.dropout(out, self.dropout, self.training)
            finals.append(h_n)
        output = self.out_norm(u)
        valid = _valid(prep)
        if valid is not None:
            output = output.masked_fill(~valid.unsqueeze(-1), 0.0)
        return _finish(prep, output, torch.cat(finals), self.batch_first)
