r"""The GRU on the Triton engine (gates ``r, z, n`` as in ``torch.nn.GRU``).

Per step, after ``q = W_hh h + b_hh`` by cuBLAS (``q_n`` is what the reset gate scales):

.. math::
    r = \sigma(x_r + q_r), \; z = \sigma(x_z + q_z), \; n = \tanh(x_n + r q_n), \quad
    h' = (1 - z) n + z h.

Backward, with :math:`\bar h` the total gradient of the state (``driver.py``):

.. math::
    \bar n_{pre} = \bar h (1 - z)(1 - n^2), \quad \bar z_{pre} = \bar h (h - n) z (1 - z), \quad
    \bar r_{pre} = \bar n_{pre}\, q_n\, r (1 - r),

the input terms get :math:`(\bar r_{pre}, \bar z_{pre}, \bar n_{pre})`, the product ``q`` gets
:math:`\bar q = (\bar r_{pre}, \bar z_{pre}, r \bar n_{pre})`, and :math:`\bar h_{prev} = \bar q
W_{hh} + z \bar h` (+ the output gradient of the next step): the carry holds :math:`z \bar h`.
Then :math:`\partial L/\partial W_{hh} = \sum \bar q^\top h`, :math:`\partial L/\partial b_{hh}
= \sum \bar q`. The layer-norm GRU (:mod:`.layernorm_gru`) shares the gate arithmetic
(:func:`gru_gates`, :func:`gru_gate_gradients`).
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
from rnnkit.engines.triton.jit import block, sigmoid, tanh


@triton.jit
def gru_gates(x_r, x_z, x_n, q_r, q_z, q_n, h):
    """``(r, z, n, h')`` of one GRU step."""
    r = sigmoid(x_r + q_r)
    z = sigmoid(x_z + q_z)
    n = tanh(x_n + r * q_n)
    return r, z, n, (1.0 - z) * n + z * h


@triton.jit
def gru_gate_gradients(total, r, z, n, q_n, h):
    """``(dr_pre, dz_pre, dn_pre)`` of one GRU step from the state's total gradient."""
    dn_pre = total * (1.0 - z) * (1.0 - n * n)
    dz_pre = total * (h - n) * z * (1.0 - z)
    dr_pre = dn_pre * q_n * r * (1.0 - r)
    return dr_pre, dz_pre, dn_pre


@triton.jit
def gru_carry(total, z, valid, go_ptr, length, t_next, B, b, H, j, m, HAS_NEXT: tl.constexpr):
    """What of the previous state's gradient is not a matrix product: ``z h_bar`` (all of
    ``h_bar`` on a padded step), plus the next step's output gradient where it is valid."""
    carry = tl.where(valid, z * total, total)
    if HAS_NEXT:
        go = tl.load(go_ptr + (t_next * B + b).to(tl.int64) * H + j, mask=m, other=0.0)
        carry += tl.where(t_next < length, go.to(total.dtype), 0.0)
    return carry


@triton.jit
def _forward_step(
    xp_ptr, gh_ptr, len_ptr, h_ptr, gates_ptr, hmm_ptr,
    t, k, B, H,
    BLOCK: tl.constexpr, SAVE: tl.constexpr, LOW: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = j < H
    S = h_ptr.dtype.element_ty
    valid = t < tl.load(len_ptr + b)
    x = xp_ptr + (t * B + b).to(tl.int64) * 3 * H + j
    q = gh_ptr + b * 3 * H + j
    x_r = tl.load(x, mask=m, other=0.0).to(S)
    x_z = tl.load(x + H, mask=m, other=0.0).to(S)
    x_n = tl.load(x + 2 * H, mask=m, other=0.0).to(S)
    q_r = tl.load(q, mask=m, other=0.0).to(S)
    q_z = tl.load(q + H, mask=m, other=0.0).to(S)
    q_n = tl.load(q + 2 * H, mask=m, other=0.0).to(S)
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


@triton.jit
def _backward_step(
    gates_ptr, h_ptr, len_ptr, go_ptr, dhmm_ptr, carry_ptr, dxp_ptr, dq_ptr,
    t, k, t_next, B, H,
    BLOCK: tl.constexpr, HAS_MM: tl.constexpr, HAS_NEXT: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
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
    d = dq_ptr + (k * B + b).to(tl.int64) * 3 * H + j
    tl.store(d, dr, mask=m)
    tl.store(d + H, dz, mask=m)
    tl.store(d + 2 * H, dn * r, mask=m)
    carry = gru_carry(total, z, valid, go_ptr, length, t_next, B, b, H, j, m, HAS_NEXT)
    tl.store(carry_ptr + b * H + j, carry, mask=m)


@dataclass(frozen=True)
class GRUDriver:
    """GRU through time; ``weights = (W_hh, b_hh or None)``."""

    mm_dtype: torch.dtype
    state_parts = 1
    graphable = True

    def forward(self, xp: Tensor, lengths, state0, weights, *, reverse: bool, save: bool):
        w_hh, b_hh = weights
        (h0,) = state0
        steps, batch, width = xp.shape
        hidden = width // 3
        low = self.mm_dtype != h0.dtype
        hs = h0.new_empty(steps + 1, batch, hidden)
        hs[0] = h0
        gates = h0.new_empty(steps, batch, 4 * hidden) if save else hs
        h_mm = h0.to(self.mm_dtype).contiguous() if low else hs
        gh = xp.new_empty(batch, width, dtype=self.mm_dtype)
        w_t = w_hh.to(self.mm_dtype).t()
        bias = None if b_hh is None else b_hh.to(self.mm_dtype)
        width_block = block(hidden)
        grid = (batch, triton.cdiv(hidden, width_block))
        for k in range(steps):
            h_in = h_mm if low else hs[k]
            if bias is None:
                torch.mm(h_in, w_t, out=gh)
            else:
                torch.addmm(bias, h_in, w_t, out=gh)
            _forward_step[grid](
                xp, gh, lengths, hs, gates, h_mm, time_index(k, steps, reverse), k, batch, hidden,
                BLOCK=width_block, SAVE=save, LOW=low,
            )  # fmt: skip
        return Forward(hs, (hs[steps],), (hs, gates) if save else ())

    def backward(self, go: Tensor, grads, lengths, weights, saved, *, reverse: bool):
        w_hh, b_hh = weights
        hs, gates = saved
        steps, batch, hidden = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        state = hs.dtype
        carry = initial_carry(go, grads[0], lengths, steps, reverse, state)
        dxp = hs.new_empty(steps, batch, 3 * hidden)
        dq = hs.new_empty(steps, batch, 3 * hidden, dtype=self.mm_dtype)
        w_mm = w_hh.to(self.mm_dtype)
        dhmm = hs.new_empty(batch, hidden, dtype=self.mm_dtype)
        width_block = block(hidden)
        grid = (batch, triton.cdiv(hidden, width_block))
        for k in range(steps - 1, -1, -1):
            if k < steps - 1:
                torch.mm(dq[k + 1], w_mm, out=dhmm)
            _backward_step[grid](
                gates, hs, lengths, go, dhmm, carry, dxp, dq,
                time_index(k, steps, reverse), k, time_index(k - 1, steps, reverse), batch, hidden,
                BLOCK=width_block, HAS_MM=k < steps - 1, HAS_NEXT=k > 0,
            )  # fmt: skip
        dh0 = carry + (dq[0] @ w_mm).to(state)
        d_weights = (outer_sum(dq, hs[:-1]), None if b_hh is None else column_sum(dq, state))
        return Backward(dxp, (dh0,), d_weights)
