r"""The Elman RNN and the IndRNN on the Triton engine.

Elman (``torch.nn.RNN``), per step after the product ``W_hh h + b_hh`` by cuBLAS:

.. math::
    h' = \phi(x_t + W_{hh} h + b_{hh}), \qquad
    \bar a = \bar h\, \phi'(h'), \quad \bar h_{prev} = \bar a W_{hh} + \text{carry},

with :math:`\phi` tanh (:math:`\phi' = 1 - h'^2`) or relu (:math:`\phi' = [h' > 0]`).

IndRNN (Li et al. 2018): the recurrent weight is a vector, :math:`h' = \phi(x_t + u \odot h)`,
so no step needs a matrix product and ONE kernel runs the whole sequence (each program owns a
block of units of one row and loops over time), forward and backward:
:math:`\bar a = \bar h \phi'(h')`, :math:`\bar h_{prev} = u \bar a` + carry, and
:math:`\partial L/\partial u = \sum_t \bar a_t h_{t-1}` accumulated in the loop. The lengths
mask is the same as every cell's: a padded step keeps the state.
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
from rnnkit.engines.triton.jit import activate, activation_slope, block


@triton.jit
def _forward_step(
    xp_ptr, gh_ptr, len_ptr, h_ptr, hmm_ptr,
    t, k, B, H,
    BLOCK: tl.constexpr, RELU: tl.constexpr, LOW: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = j < H
    S = h_ptr.dtype.element_ty
    valid = t < tl.load(len_ptr + b)
    pre = tl.load(xp_ptr + (t * B + b).to(tl.int64) * H + j, mask=m, other=0.0).to(S)
    pre += tl.load(gh_ptr + b * H + j, mask=m, other=0.0).to(S)
    here = (k * B + b).to(tl.int64) * H + j
    h_prev = tl.load(h_ptr + here, mask=m, other=0.0)
    h_new = tl.where(valid, activate(pre, RELU), h_prev)
    tl.store(h_ptr + here + B * H, h_new, mask=m)
    if LOW:
        tl.store(hmm_ptr + b * H + j, h_new, mask=m)


@triton.jit
def _backward_step(
    h_ptr, len_ptr, go_ptr, dhmm_ptr, carry_ptr, da_ptr,
    t, k, t_next, B, H,
    BLOCK: tl.constexpr, RELU: tl.constexpr, HAS_MM: tl.constexpr, HAS_NEXT: tl.constexpr,
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
    h_new = tl.load(h_ptr + ((k + 1) * B + b).to(tl.int64) * H + j, mask=m, other=0.0)
    da = total * activation_slope(h_new, RELU)
    tl.store(da_ptr + (k * B + b).to(tl.int64) * H + j, tl.where(valid, da, 0.0), mask=m)
    carry = tl.where(valid, 0.0, total)
    if HAS_NEXT:
        go = tl.load(go_ptr + (t_next * B + b).to(tl.int64) * H + j, mask=m, other=0.0)
        carry += tl.where(t_next < length, go.to(S), 0.0)
    tl.store(carry_ptr + b * H + j, carry, mask=m)


@dataclass(frozen=True)
class RNNDriver:
    """Elman RNN through time; ``weights = (W_hh, b_hh or None)``."""

    mm_dtype: torch.dtype
    nonlinearity: str = "tanh"
    state_parts = 1
    graphable = True

    def forward(self, xp: Tensor, lengths, state0, weights, *, reverse: bool, save: bool):
        w_hh, b_hh = weights
        (h0,) = state0
        steps, batch, hidden = xp.shape
        low = self.mm_dtype != h0.dtype
        hs = h0.new_empty(steps + 1, batch, hidden)
        hs[0] = h0
        h_mm = h0.to(self.mm_dtype).contiguous() if low else hs
        gh = xp.new_empty(batch, hidden, dtype=self.mm_dtype)
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
                xp, gh, lengths, hs, h_mm, time_index(k, steps, reverse), k, batch, hidden,
                BLOCK=width_block, RELU=self.nonlinearity == "relu", LOW=low,
            )  # fmt: skip
        return Forward(hs, (hs[steps],), (hs,) if save else ())

    def backward(self, go: Tensor, grads, lengths, weights, saved, *, reverse: bool):
        w_hh, b_hh = weights
        (hs,) = saved
        steps, batch, hidden = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        state = hs.dtype
        carry = initial_carry(go, grads[0], lengths, steps, reverse, state)
        da = hs.new_empty(steps, batch, hidden, dtype=self.mm_dtype)
        w_mm = w_hh.to(self.mm_dtype)
        dhmm = hs.new_empty(batch, hidden, dtype=self.mm_dtype)
        width_block = block(hidden)
        grid = (batch, triton.cdiv(hidden, width_block))
        for k in range(steps - 1, -1, -1):
            if k < steps - 1:
                torch.mm(da[k + 1], w_mm, out=dhmm)
            _backward_step[grid](
                hs, lengths, go, dhmm, carry, da,
                time_index(k, steps, reverse), k, time_index(k - 1, steps, reverse), batch, hidden,
                BLOCK=width_block, RELU=self.nonlinearity == "relu", HAS_MM=k < steps - 1,
                HAS_NEXT=k > 0,
            )  # fmt: skip
        dh0 = carry + (da[0] @ w_mm).to(state)
        d_weights = (outer_sum(da, hs[:-1]), None if b_hh is None else column_sum(da, state))
        return Backward(da.flip(0) if reverse else da, (dh0,), d_weights)


@triton.jit
def _indrnn_forward(
    xp_ptr, u_ptr, len_ptr, h_ptr,
    T, B, H,
    BLOCK: tl.constexpr, RELU: tl.constexpr, REVERSE: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = j < H
    S = h_ptr.dtype.element_ty
    length = tl.load(len_ptr + b)
    u = tl.load(u_ptr + j, mask=m, other=0.0).to(S)
    h = tl.load(h_ptr + b * H + j, mask=m, other=0.0)
    for k in range(0, T):
        if REVERSE:
            t = T - 1 - k
        else:
            t = k
        pre = tl.load(xp_ptr + (t * B + b).to(tl.int64) * H + j, mask=m, other=0.0).to(S)
        h = tl.where(t < length, activate(pre + u * h, RELU), h)
        tl.store(h_ptr + ((k + 1) * B + b).to(tl.int64) * H + j, h, mask=m)


@triton.jit
def _indrnn_backward(
    h_ptr, u_ptr, len_ptr, go_ptr, carry_ptr, dxp_ptr, du_ptr,
    T, B, H,
    BLOCK: tl.constexpr, RELU: tl.constexpr, REVERSE: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = j < H
    S = carry_ptr.dtype.element_ty
    length = tl.load(len_ptr + b)
    u = tl.load(u_ptr + j, mask=m, other=0.0).to(S)
    total = tl.load(carry_ptr + b * H + j, mask=m, other=0.0)
    du = tl.zeros([BLOCK], dtype=S)
    for step in range(0, T):
        k = T - 1 - step
        if REVERSE:
            t = T - 1 - k
            t_next = t + 1
        else:
            t = k
            t_next = t - 1
        valid = t < length
        row = (k * B + b).to(tl.int64) * H + j
        h_prev = tl.load(h_ptr + row, mask=m, other=0.0)
        h_new = tl.load(h_ptr + row + B * H, mask=m, other=0.0)
        da = tl.where(valid, total * activation_slope(h_new, RELU), 0.0)
        tl.store(dxp_ptr + (t * B + b).to(tl.int64) * H + j, da, mask=m)
        du += da * h_prev
        total = tl.where(valid, da * u, total)
        # the next step's output gradient (none after the first step: its index is clamped)
        t_read = tl.minimum(tl.maximum(t_next, 0), T - 1)
        go = tl.load(go_ptr + (t_read * B + b).to(tl.int64) * H + j, mask=m, other=0.0)
        total += tl.where((k > 0) & (t_next < length), go.to(S), 0.0)
    tl.store(carry_ptr + b * H + j, total, mask=m)
    tl.store(du_ptr + b * H + j, du, mask=m)


@dataclass(frozen=True)
class IndRNNDriver:
    """IndRNN through time in one kernel each way; ``weights = (u,)``."""

    mm_dtype: torch.dtype
    nonlinearity: str = "relu"
    state_parts = 1
    graphable = False

    def forward(self, xp: Tensor, lengths, state0, weights, *, reverse: bool, save: bool):
        (u,) = weights
        (h0,) = state0
        steps, batch, hidden = xp.shape
        hs = h0.new_empty(steps + 1, batch, hidden)
        hs[0] = h0
        width_block = block(hidden)
        grid = (batch, triton.cdiv(hidden, width_block))
        _indrnn_forward[grid](
            xp, u.contiguous(), lengths, hs, steps, batch, hidden,
            BLOCK=width_block, RELU=self.nonlinearity == "relu", REVERSE=reverse,
        )  # fmt: skip
        return Forward(hs, (hs[steps],), (hs,) if save else ())

    def backward(self, go: Tensor, grads, lengths, weights, saved, *, reverse: bool):
        (u,) = weights
        (hs,) = saved
        steps, batch, hidden = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        carry = initial_carry(go, grads[0], lengths, steps, reverse, hs.dtype)
        dxp = hs.new_empty(steps, batch, hidden)
        du = hs.new_empty(batch, hidden)
        width_block = block(hidden)
        grid = (batch, triton.cdiv(hidden, width_block))
        _indrnn_backward[grid](
            hs, u.contiguous(), lengths, go, carry, dxp, du, steps, batch, hidden,
            BLOCK=width_block, RELU=self.nonlinearity == "relu", REVERSE=reverse,
        )  # fmt: skip
        return Backward(dxp, (carry,), (du.sum(0),))
