r"""The layer-norm GRU (:class:`rnnkit.LayerNormGRUCell`) on the Triton engine.

Per step, after ``u = W_hh h`` by cuBLAS, one program per row normalises ``u`` over all three
blocks and runs the GRU's gates (:mod:`.gru`) with ``q = LN(u) = \gamma \hat u + \beta``:

.. math::
    \hat u = (u - \mu_u)\, \rho_u, \quad \rho_u = (\sigma_u^2 + \epsilon)^{-1/2}, \qquad
    r, z, n, h' \text{ as the GRU with } q.

Backward: the GRU's gate gradients give :math:`\bar q`, then the layer norm's

.. math::
    \bar u = \rho_u \left(\gamma \bar q - \overline{\gamma \bar q}
    - \hat u\, \overline{\gamma \bar q\, \hat u}\right)

(bars over a product: its mean over the row), :math:`\bar h_{prev} = \bar u W_{hh}` + carry, and
after the loop :math:`\partial L/\partial \gamma = \sum \bar q \hat u`, :math:`\partial
L/\partial \beta = \sum \bar q`, :math:`\partial L/\partial W_{hh} = \sum \bar u^\top h`.
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
from rnnkit.engines.triton.gru import gru_carry, gru_gate_gradients, gru_gates
from rnnkit.engines.triton.jit import row_block, warps


@triton.jit
def _forward_step(
    xp_ptr, u_ptr, len_ptr, h_ptr, gamma_ptr, beta_ptr, gates_ptr, uhat_ptr, rstd_ptr, hmm_ptr,
    t, k, B, H, eps,
    BLOCK: tl.constexpr, HAS_BETA: tl.constexpr, SAVE: tl.constexpr, LOW: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    j = tl.arange(0, BLOCK)
    m = j < H
    S = h_ptr.dtype.element_ty
    valid = t < tl.load(len_ptr + b)
    u = u_ptr + b * 3 * H + j
    u_r = tl.load(u, mask=m, other=0.0).to(S)
    u_z = tl.load(u + H, mask=m, other=0.0).to(S)
    u_n = tl.load(u + 2 * H, mask=m, other=0.0).to(S)
    mean = (tl.sum(u_r, axis=0) + tl.sum(u_z, axis=0) + tl.sum(u_n, axis=0)) / (3 * H)
    u_r = tl.where(m, u_r - mean, 0.0)
    u_z = tl.where(m, u_z - mean, 0.0)
    u_n = tl.where(m, u_n - mean, 0.0)
    var = (tl.sum(u_r * u_r, axis=0) + tl.sum(u_z * u_z, axis=0) + tl.sum(u_n * u_n, axis=0)) / (
        3 * H
    )
    rstd = 1.0 / tl.sqrt(var + eps)
    u_r, u_z, u_n = u_r * rstd, u_z * rstd, u_n * rstd
    q_r = u_r * tl.load(gamma_ptr + j, mask=m, other=0.0).to(S)
    q_z = u_z * tl.load(gamma_ptr + H + j, mask=m, other=0.0).to(S)
    q_n = u_n * tl.load(gamma_ptr + 2 * H + j, mask=m, other=0.0).to(S)
    if HAS_BETA:
        q_r += tl.load(beta_ptr + j, mask=m, other=0.0).to(S)
        q_z += tl.load(beta_ptr + H + j, mask=m, other=0.0).to(S)
        q_n += tl.load(beta_ptr + 2 * H + j, mask=m, other=0.0).to(S)
    x = xp_ptr + (t * B + b).to(tl.int64) * 3 * H + j
    x_r = tl.load(x, mask=m, other=0.0).to(S)
    x_z = tl.load(x + H, mask=m, other=0.0).to(S)
    x_n = tl.load(x + 2 * H, mask=m, other=0.0).to(S)
    here = (k * B + b).to(tl.int64) * H + j
    h_prev = tl.load(h_ptr + here, mask=m, other=0.0)
    r, z, n, h_new = gru_gates(x_r, x_z, x_n, q_r, q_z, q_n, h_prev)
    h_new = tl.where(valid, h_new, h_prev)
    tl.store(h_ptr + here + B * H, h_new, mask=m)
    if LOW:
        tl.store(hmm_ptr + b * H + j, h_new, mask=m)
    if SAVE:
        s = gates_ptr + (k * B + b).to(tl.int64) * 4 * H + j
        tl.store(s, tl.where(valid, r, 0.0), mask=m)
        tl.store(s + H, tl.where(valid, z, 0.0), mask=m)
        tl.store(s + 2 * H, tl.where(valid, n, 0.0), mask=m)
        tl.store(s + 3 * H, tl.where(valid, q_n, 0.0), mask=m)
        s = uhat_ptr + (k * B + b).to(tl.int64) * 3 * H + j
        tl.store(s, tl.where(valid, u_r, 0.0), mask=m)
        tl.store(s + H, tl.where(valid, u_z, 0.0), mask=m)
        tl.store(s + 2 * H, tl.where(valid, u_n, 0.0), mask=m)
        tl.store(rstd_ptr + k * B + b, tl.where(valid, rstd, 0.0))


@triton.jit
def _backward_step(
    gates_ptr, uhat_ptr, rstd_ptr, h_ptr, gamma_ptr, len_ptr, go_ptr, dhmm_ptr, carry_ptr,
    dxp_ptr, dq_ptr, du_ptr,
    t, k, t_next, B, H,
    BLOCK: tl.constexpr, HAS_MM: tl.constexpr, HAS_NEXT: tl.constexpr,
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
    s = gates_ptr + (k * B + b).to(tl.int64) * 4 * H + j
    r = tl.load(s, mask=m, other=0.0)
    z = tl.load(s + H, mask=m, other=0.0)
    n = tl.load(s + 2 * H, mask=m, other=0.0)
    q_n = tl.load(s + 3 * H, mask=m, other=0.0)
    h_prev = tl.load(h_ptr + (k * B + b).to(tl.int64) * H + j, mask=m, other=0.0)
    dr, dz, dn = gru_gate_gradients(total, r, z, n, q_n, h_prev)
    dr, dz, dn = tl.where(valid, dr, 0.0), tl.where(valid, dz, 0.0), tl.where(valid, dn, 0.0)
    d = dxp_ptr + (t * B + b).to(tl.int64) * 3 * H + j
    tl.store(d, dr, mask=m)
    tl.store(d + H, dz, mask=m)
    tl.store(d + 2 * H, dn, mask=m)
    dq_n = dn * r
    d = dq_ptr + (k * B + b).to(tl.int64) * 3 * H + j
    tl.store(d, dr, mask=m)
    tl.store(d + H, dz, mask=m)
    tl.store(d + 2 * H, dq_n, mask=m)
    # the layer norm's backward over the whole row (three blocks)
    s = uhat_ptr + (k * B + b).to(tl.int64) * 3 * H + j
    u_r = tl.load(s, mask=m, other=0.0)
    u_z = tl.load(s + H, mask=m, other=0.0)
    u_n = tl.load(s + 2 * H, mask=m, other=0.0)
    g_r = dr * tl.load(gamma_ptr + j, mask=m, other=0.0).to(S)
    g_z = dz * tl.load(gamma_ptr + H + j, mask=m, other=0.0).to(S)
    g_n = dq_n * tl.load(gamma_ptr + 2 * H + j, mask=m, other=0.0).to(S)
    mean_g = (tl.sum(g_r, axis=0) + tl.sum(g_z, axis=0) + tl.sum(g_n, axis=0)) / (3 * H)
    mean_gu = tl.sum(g_r * u_r, axis=0) + tl.sum(g_z * u_z, axis=0) + tl.sum(g_n * u_n, axis=0)
    mean_gu = mean_gu / (3 * H)
    rstd = tl.load(rstd_ptr + k * B + b)
    d = du_ptr + (k * B + b).to(tl.int64) * 3 * H + j
    tl.store(d, rstd * (g_r - mean_g - u_r * mean_gu), mask=m)
    tl.store(d + H, rstd * (g_z - mean_g - u_z * mean_gu), mask=m)
    tl.store(d + 2 * H, rstd * (g_n - mean_g - u_n * mean_gu), mask=m)
    carry = gru_carry(total, z, valid, go_ptr, length, t_next, B, b, H, j, m, HAS_NEXT)
    tl.store(carry_ptr + b * H + j, carry, mask=m)


@dataclass(frozen=True)
class LayerNormGRUDriver:
    """Layer-norm GRU through time; ``weights = (W_hh, gamma_hh, beta_hh or None)``."""

    mm_dtype: torch.dtype
    eps: float = 1e-5
    state_parts = 1
    graphable = True

    def forward(self, xp: Tensor, lengths, state0, weights, *, reverse: bool, save: bool):
        w_hh, gamma, beta = weights
        (h0,) = state0
        steps, batch, width = xp.shape
        hidden = width // 3
        low = self.mm_dtype != h0.dtype
        hs = h0.new_empty(steps + 1, batch, hidden)
        hs[0] = h0
        gates = h0.new_empty(steps, batch, 4 * hidden) if save else hs
        uhat = h0.new_empty(steps, batch, width) if save else hs
        rstd = h0.new_empty(steps, batch) if save else hs
        h_mm = h0.to(self.mm_dtype).contiguous() if low else hs
        u = xp.new_empty(batch, width, dtype=self.mm_dtype)
        w_t = w_hh.to(self.mm_dtype).t()
        row = row_block(hidden)
        for k in range(steps):
            torch.mm(h_mm if low else hs[k], w_t, out=u)
            _forward_step[(batch,)](
                xp, u, lengths, hs, gamma, gamma if beta is None else beta, gates, uhat, rstd,
                h_mm, time_index(k, steps, reverse), k, batch, hidden, self.eps,
                BLOCK=row, HAS_BETA=beta is not None, SAVE=save, LOW=low,
                num_warps=warps(3 * row),
            )  # fmt: skip
        return Forward(hs, (hs[steps],), (hs, gates, uhat, rstd) if save else ())

    def backward(self, go: Tensor, grads, lengths, weights, saved, *, reverse: bool):
        w_hh, gamma, beta = weights
        hs, gates, uhat, rstd = saved
        steps, batch, hidden = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        state = hs.dtype
        carry = initial_carry(go, grads[0], lengths, steps, reverse, state)
        dxp = hs.new_empty(steps, batch, 3 * hidden)
        dq = hs.new_empty(steps, batch, 3 * hidden)
        du = hs.new_empty(steps, batch, 3 * hidden, dtype=self.mm_dtype)
        w_mm = w_hh.to(self.mm_dtype)
        dhmm = hs.new_empty(batch, hidden, dtype=self.mm_dtype)
        row = row_block(hidden)
        for k in range(steps - 1, -1, -1):
            if k < steps - 1:
                torch.mm(du[k + 1], w_mm, out=dhmm)
            _backward_step[(batch,)](
                gates, uhat, rstd, hs, gamma, lengths, go, dhmm, carry, dxp, dq, du,
                time_index(k, steps, reverse), k, time_index(k - 1, steps, reverse), batch, hidden,
                BLOCK=row, HAS_MM=k < steps - 1, HAS_NEXT=k > 0, num_warps=warps(3 * row),
            )  # fmt: skip
        dh0 = carry + (du[0] @ w_mm).to(state)
        d_weights = (
            outer_sum(du, hs[:-1]),
            column_sum(dq * uhat, state),
            None if beta is None else column_sum(dq, state),
        )
        return Backward(dxp, (dh0,), d_weights)
