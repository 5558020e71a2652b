r"""The layer-norm LSTM (:class:`rnnkit.LayerNormLSTMCell`) on the Triton engine.

Per step, after ``u = W_hh h`` by cuBLAS, one program per row computes (Ba et al. 2016):

.. math::
    a = x_t + \gamma_{hh} \hat u + \beta_{hh}, \quad \hat u = (u - \mu_u) \rho_u, \qquad
    i, f, o = \sigma(a_{i,f,o}), \; g = \tanh(a_g), \quad c' = f c + i g, \\
    \hat c = (c' - \mu_{c'}) \rho_{c'}, \quad m = \gamma_c \hat c + \beta_c, \quad
    h' = o \tanh(m),

with :math:`\rho = (\sigma^2 + \epsilon)^{-1/2}` over the row (all four gates for ``u``).
Backward, with :math:`\bar h` the total gradient of the state (``driver.py``):

.. math::
    \bar m = \bar h\, o (1 - \tanh^2 m), \quad
    \bar c \mathrel{+}= \rho_{c'} \left(\gamma_c \bar m - \overline{\gamma_c \bar m}
    - \hat c\, \overline{\gamma_c \bar m \hat c}\right), \\
    \bar a_i = \bar c g\, i(1 - i), \; \bar a_f = \bar c c\, f(1 - f), \;
    \bar a_g = \bar c i (1 - g^2), \; \bar a_o = \bar h \tanh(m)\, o (1 - o), \quad
    \bar c_{prev} = \bar c f, \\
    \bar u = \rho_u \left(\gamma_{hh} \bar a - \overline{\gamma_{hh} \bar a}
    - \hat u\, \overline{\gamma_{hh} \bar a \hat u}\right), \quad
    \bar h_{prev} = \bar u W_{hh} + \text{carry}.

The input terms' gradient is :math:`\bar a`; after the loop :math:`\partial L/\partial
\gamma_{hh} = \sum \bar a \hat u`, :math:`\partial L/\partial \beta_{hh} = \sum \bar a`,
:math:`\partial L/\partial \gamma_c = \sum \bar m \hat c`, :math:`\partial L/\partial \beta_c =
\sum \bar m`, :math:`\partial L/\partial W_{hh} = \sum \bar u^\top h`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from rnnkit.engines.triton.driver import (
    Backward,
    Forward,
    column_sum,
    initial_carry,
    outer_sum,
    time_index,
)
from rnnkit.engines.triton.jit import row_block, sigmoid, tanh, warps


@triton.jit
def _forward_step(
    xp_ptr, u_ptr, len_ptr, h_ptr, c_ptr, gamma_ptr, beta_ptr, gamma_c_ptr, beta_c_ptr,
    gates_ptr, uhat_ptr, chat_ptr, rstd_ptr, hmm_ptr,
    t, k, B, H, eps, eps_c,
    BLOCK: tl.constexpr, HAS_BETA: tl.constexpr, SAVE: tl.constexpr, LOW: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    j = tl.arange(0, BLOCK)
    m = j < H
    S = h_ptr.dtype.element_ty
    valid = t < tl.load(len_ptr + b)
    u = u_ptr + b * 4 * H + j
    u_i = tl.load(u, mask=m, other=0.0).to(S)
    u_f = tl.load(u + H, mask=m, other=0.0).to(S)
    u_g = tl.load(u + 2 * H, mask=m, other=0.0).to(S)
    u_o = tl.load(u + 3 * H, mask=m, other=0.0).to(S)
    total = tl.sum(u_i, axis=0) + tl.sum(u_f, axis=0) + tl.sum(u_g, axis=0)
    mean = (total + tl.sum(u_o, axis=0)) / (4 * H)
    u_i = tl.where(m, u_i - mean, 0.0)
    u_f = tl.where(m, u_f - mean, 0.0)
    u_g = tl.where(m, u_g - mean, 0.0)
    u_o = tl.where(m, u_o - mean, 0.0)
    var = tl.sum(u_i * u_i, axis=0) + tl.sum(u_f * u_f, axis=0) + tl.sum(u_g * u_g, axis=0)
    var = (var + tl.sum(u_o * u_o, axis=0)) / (4 * H)
    rstd = 1.0 / tl.sqrt(var + eps)
    u_i, u_f, u_g, u_o = u_i * rstd, u_f * rstd, u_g * rstd, u_o * rstd
    x = xp_ptr + (t * B + b).to(tl.int64) * 4 * H + j
    a_i = tl.load(x, mask=m, other=0.0).to(S) + u_i * tl.load(gamma_ptr + j, mask=m, other=0.0)
    a_f = tl.load(x + H, mask=m, other=0.0).to(S)
    a_f += u_f * tl.load(gamma_ptr + H + j, mask=m, other=0.0)
    a_g = tl.load(x + 2 * H, mask=m, other=0.0).to(S)
    a_g += u_g * tl.load(gamma_ptr + 2 * H + j, mask=m, other=0.0)
    a_o = tl.load(x + 3 * H, mask=m, other=0.0).to(S)
    a_o += u_o * tl.load(gamma_ptr + 3 * H + j, mask=m, other=0.0)
    if HAS_BETA:
        a_i += tl.load(beta_ptr + j, mask=m, other=0.0)
        a_f += tl.load(beta_ptr + H + j, mask=m, other=0.0)
        a_g += tl.load(beta_ptr + 2 * H + j, mask=m, other=0.0)
        a_o += tl.load(beta_ptr + 3 * H + j, mask=m, other=0.0)
    i, f, g, o = sigmoid(a_i), sigmoid(a_f), tanh(a_g), sigmoid(a_o)
    here = (k * B + b).to(tl.int64) * H + j
    c_prev = tl.load(c_ptr + here, mask=m, other=0.0)
    c_new = f * c_prev + i * g
    mean_c = tl.sum(tl.where(m, c_new, 0.0), axis=0) / H
    c_hat = tl.where(m, c_new - mean_c, 0.0)
    rstd_c = 1.0 / tl.sqrt(tl.sum(c_hat * c_hat, axis=0) / H + eps_c)
    c_hat = c_hat * rstd_c
    n_c = c_hat * tl.load(gamma_c_ptr + j, mask=m, other=0.0)
    if HAS_BETA:
        n_c += tl.load(beta_c_ptr + j, mask=m, other=0.0)
    h_prev = tl.load(h_ptr + here, mask=m, other=0.0)
    h_new = tl.where(valid, o * tanh(n_c), h_prev)
    tl.store(c_ptr + here + B * H, tl.where(valid, c_new, c_prev), mask=m)
    tl.store(h_ptr + here + B * H, h_new, mask=m)
    if LOW:
        tl.store(hmm_ptr + b * H + j, h_new, mask=m)
    if SAVE:
        s = gates_ptr + (k * B + b).to(tl.int64) * 4 * H + j
        tl.store(s, tl.where(valid, i, 0.0), mask=m)
        tl.store(s + H, tl.where(valid, f, 0.0), mask=m)
        tl.store(s + 2 * H, tl.where(valid, g, 0.0), mask=m)
        tl.store(s + 3 * H, tl.where(valid, o, 0.0), mask=m)
        s = uhat_ptr + (k * B + b).to(tl.int64) * 4 * H + j
        tl.store(s, tl.where(valid, u_i, 0.0), mask=m)
        tl.store(s + H, tl.where(valid, u_f, 0.0), mask=m)
        tl.store(s + 2 * H, tl.where(valid, u_g, 0.0), mask=m)
        tl.store(s + 3 * H, tl.where(valid, u_o, 0.0), mask=m)
        tl.store(chat_ptr + here, tl.where(valid, c_hat, 0.0), mask=m)
        tl.store(rstd_ptr + (k * B + b) * 2, tl.where(valid, rstd, 0.0))
        tl.store(rstd_ptr + (k * B + b) * 2 + 1, tl.where(valid, rstd_c, 0.0))


@triton.jit
def _backward_step(
    gates_ptr, uhat_ptr, chat_ptr, rstd_ptr, c_ptr, gamma_ptr, gamma_c_ptr, beta_c_ptr, len_ptr,
    go_ptr, dhmm_ptr, carry_ptr, dc_ptr, da_ptr, du_ptr, dm_ptr,
    t, k, t_next, B, H,
    BLOCK: tl.constexpr, HAS_BETA: tl.constexpr, HAS_MM: tl.constexpr,
    HAS_NEXT: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    j = tl.arange(0, BLOCK)
    m = j < H
    S = carry_ptr.dtype.element_ty
    length = tl.load(len_ptr + b)
    valid = t < length
    total = tl.load(carry_ptr + b * H + j, mask=m, other=0.0)
    if HAS_MM:
        total += tl.load(dhmm_ptr + b * H + j, mask=m, other=0.0).to(S)
    carry = tl.where(valid, 0.0, total)
    if HAS_NEXT:
        go = tl.load(go_ptr + (t_next * B + b).to(tl.int64) * H + j, mask=m, other=0.0)
        carry += tl.where(t_next < length, go.to(S), 0.0)
    tl.store(carry_ptr + b * H + j, carry, mask=m)
    s = gates_ptr + (k * B + b).to(tl.int64) * 4 * H + j
    i = tl.load(s, mask=m, other=0.0)
    f = tl.load(s + H, mask=m, other=0.0)
    g = tl.load(s + 2 * H, mask=m, other=0.0)
    o = tl.load(s + 3 * H, mask=m, other=0.0)
    here = (k * B + b).to(tl.int64) * H + j
    c_hat = tl.load(chat_ptr + here, mask=m, other=0.0)
    rstd = tl.load(rstd_ptr + (k * B + b) * 2)
    rstd_c = tl.load(rstd_ptr + (k * B + b) * 2 + 1)
    gamma_c = tl.load(gamma_c_ptr + j, mask=m, other=0.0)
    n_c = c_hat * gamma_c
    if HAS_BETA:
        n_c += tl.load(beta_c_ptr + j, mask=m, other=0.0)
    tm = tanh(n_c)
    dm = tl.where(valid & m, total * o * (1.0 - tm * tm), 0.0)
    tl.store(dm_ptr + here, dm, mask=m)
    g_c = dm * gamma_c
    mean_g = tl.sum(g_c, axis=0) / H
    mean_gc = tl.sum(g_c * c_hat, axis=0) / H
    dc_in = tl.load(dc_ptr + b * H + j, mask=m, other=0.0)
    dc = dc_in + rstd_c * (g_c - mean_g - c_hat * mean_gc)
    c_prev = tl.load(c_ptr + here, mask=m, other=0.0)
    tl.store(dc_ptr + b * H + j, tl.where(valid, dc * f, dc_in), mask=m)
    da_i = tl.where(valid, dc * g * i * (1.0 - i), 0.0)
    da_f = tl.where(valid, dc * c_prev * f * (1.0 - f), 0.0)
    da_g = tl.where(valid, dc * i * (1.0 - g * g), 0.0)
    da_o = tl.where(valid, total * tm * o * (1.0 - o), 0.0)
    d = da_ptr + (k * B + b).to(tl.int64) * 4 * H + j
    tl.store(d, da_i, mask=m)
    tl.store(d + H, da_f, mask=m)
    tl.store(d + 2 * H, da_g, mask=m)
    tl.store(d + 3 * H, da_o, mask=m)
    # the layer norm of W_hh h, over the whole row (four blocks)
    s = uhat_ptr + (k * B + b).to(tl.int64) * 4 * H + j
    u_i = tl.load(s, mask=m, other=0.0)
    u_f = tl.load(s + H, mask=m, other=0.0)
    u_g = tl.load(s + 2 * H, mask=m, other=0.0)
    u_o = tl.load(s + 3 * H, mask=m, other=0.0)
    g_i = da_i * tl.load(gamma_ptr + j, mask=m, other=0.0)
    g_f = da_f * tl.load(gamma_ptr + H + j, mask=m, other=0.0)
    g_g = da_g * tl.load(gamma_ptr + 2 * H + j, mask=m, other=0.0)
    g_o = da_o * tl.load(gamma_ptr + 3 * H + j, mask=m, other=0.0)
    mean_g = tl.sum(g_i, axis=0) + tl.sum(g_f, axis=0) + tl.sum(g_g, axis=0)
    mean_g = (mean_g + tl.sum(g_o, axis=0)) / (4 * H)
    mean_gu = tl.sum(g_i * u_i, axis=0) + tl.sum(g_f * u_f, axis=0) + tl.sum(g_g * u_g, axis=0)
    mean_gu = (mean_gu + tl.sum(g_o * u_o, axis=0)) / (4 * H)
    d = du_ptr + (k * B + b).to(tl.int64) * 4 * H + j
    tl.store(d, rstd * (g_i - mean_g - u_i * mean_gu), mask=m)
    tl.store(d + H, rstd * (g_f - mean_g - u_f * mean_gu), mask=m)
    tl.store(d + 2 * H, rstd * (g_g - mean_g - u_g * mean_gu), mask=m)
    tl.store(d + 3 * H, rstd * (g_o - mean_g - u_o * mean_gu), mask=m)


@dataclass(frozen=True)
class LayerNormLSTMDriver:
    """Layer-norm LSTM through time; ``weights = (W_hh, gamma_hh, beta_hh, gamma_c, beta_c)``
    (the shifts None with ``bias=False``)."""

    mm_dtype: torch.dtype
    eps: float = 1e-5
    eps_c: float = 1e-5
    state_parts = 2
    graphable = True

    def forward(self, xp: Tensor, lengths, state0, weights, *, reverse: bool, save: bool):
        w_hh, gamma, beta, gamma_c, beta_c = weights
        h0, c0 = state0
        steps, batch, width = xp.shape
        hidden = width // 4
        low = self.mm_dtype != h0.dtype
        hs = h0.new_empty(steps + 1, batch, hidden)
        cs = c0.new_empty(steps + 1, batch, hidden)
        hs[0], cs[0] = h0, c0
        gates = h0.new_empty(steps, batch, width) if save else hs
        uhat = h0.new_empty(steps, batch, width) if save else hs
        chat = h0.new_empty(steps, batch, hidden) if save else hs
        rstd = h0.new_empty(steps, batch, 2) if save else hs
        h_mm = h0.to(self.mm_dtype).contiguous() if low else hs
        u = xp.new_empty(batch, width, dtype=self.mm_dtype)
        w_t = w_hh.to(self.mm_dtype).t()
        has_beta = beta is not None
        row = row_block(hidden)
        for k in range(steps):
            torch.mm(h_mm if low else hs[k], w_t, out=u)
            _forward_step[(batch,)](
                xp, u, lengths, hs, cs, gamma, beta if has_beta else gamma, gamma_c,
                beta_c if has_beta else gamma_c, gates, uhat, chat, rstd, h_mm,
                time_index(k, steps, reverse), k, batch, hidden, self.eps, self.eps_c,
                BLOCK=row, HAS_BETA=has_beta, SAVE=save, LOW=low, num_warps=warps(4 * row),
            )  # fmt: skip
        saved = (hs, cs, gates, uhat, chat, rstd) if save else ()
        return Forward(hs, (hs[steps], cs[steps]), saved)

    def backward(self, go: Tensor, grads, lengths, weights, saved, *, reverse: bool):
        w_hh, gamma, beta, gamma_c, beta_c = weights
        hs, cs, gates, uhat, chat, rstd = saved
        steps, batch, width = gates.shape
        hidden = width // 4
        state = hs.dtype
        has_beta = beta is not None
        carry = initial_carry(go, grads[0], lengths, steps, reverse, state)
        dc = grads[1].to(state).clone(memory_format=torch.contiguous_format)
        da = hs.new_empty(steps, batch, width, dtype=self.mm_dtype)
        du = hs.new_empty(steps, batch, width, dtype=self.mm_dtype)
        dm = hs.new_empty(steps, batch, hidden)
        w_mm = w_hh.to(self.mm_dtype)
        dhmm = hs.new_empty(batch, hidden, dtype=self.mm_dtype)
        row = row_block(hidden)
        for k in range(steps - 1, -1, -1):
            if k < steps - 1:
                torch.mm(du[k + 1], w_mm, out=dhmm)
            _backward_step[(batch,)](
                gates, uhat, chat, rstd, cs, gamma, gamma_c, beta_c if has_beta else gamma_c,
                lengths, go, dhmm, carry, dc, da, du, dm,
                time_index(k, steps, reverse), k, time_index(k - 1, steps, reverse), batch, hidden,
                BLOCK=row, HAS_BETA=has_beta, HAS_MM=k < steps - 1, HAS_NEXT=k > 0,
                num_warps=warps(4 * row),
            )  # fmt: skip
        dh0 = carry + (du[0] @ w_mm).to(state)
        d_weights = (
            outer_sum(du, hs[:-1]),
            column_sum(da.to(state) * uhat, state),
            column_sum(da, state) if has_beta else None,
            column_sum(dm * chat, state),
            column_sum(dm, state) if has_beta else None,
        )
        return Backward(da.flip(0) if reverse else da, (dh0, dc), d_weights)
