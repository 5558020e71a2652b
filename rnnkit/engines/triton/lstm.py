r"""The LSTM on the Triton engine (gates ``i, f, g, o`` as in ``torch.nn.LSTM``; ``proj_size``).

Forward step ``k`` (time ``t``), after the product ``W_hh h_{k} + b_hh`` by cuBLAS:

.. math::
    a = x_t + W_{hh} h + b_{hh}, \quad i, f, o = \sigma(a_{i,f,o}), \; g = \tanh(a_g), \quad
    c' = f c + i g, \quad r = o \tanh(c'), \quad h' = r \;(\text{or } W_{hr} r)

and where the step is padded, ``(h, c)`` stay. With a projection the kernel writes ``r`` masked
to zero and ``keep = h`` where padded (zero elsewhere), and ``h' = keep + r W_hr^T`` is one
``addmm``: exact on both sides of the mask. Backward, with :math:`\bar h` the total gradient of
the state (``driver.py``) and :math:`\bar r = \bar h` (or :math:`\bar h W_{hr}`):

.. math::
    \bar c \mathrel{+}= \bar r\, o (1 - \tanh^2 c'), \quad
    \bar a_i = \bar c\, g\, i (1 - i), \; \bar a_f = \bar c\, c\, f (1 - f), \;
    \bar a_g = \bar c\, i (1 - g^2), \; \bar a_o = \bar r \tanh(c')\, o (1 - o),

:math:`\bar c_{prev} = \bar c f`, :math:`\bar h_{prev} = \bar a W_{hh}` + carry; the input
terms' gradient is :math:`\bar a` itself, and :math:`\partial L/\partial W_{hh} = \sum \bar a^\top
h`, :math:`\partial L/\partial b_{hh} = \sum \bar a`, :math:`\partial L/\partial W_{hr} = \sum
\bar h^\top r` after the loop.
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
def _forward_step(
    xp_ptr, gh_ptr, len_ptr, h_ptr, c_ptr, gates_ptr, hmm_ptr, r_ptr, keep_ptr,
    t, k, r_step, B, H, P,
    BLOCK: tl.constexpr, SAVE: tl.constexpr, PROJ: tl.constexpr, LOW: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_h = j < H
    S = c_ptr.dtype.element_ty
    valid = t < tl.load(len_ptr + b)
    x = xp_ptr + (t * B + b).to(tl.int64) * 4 * H + j
    g = gh_ptr + b * 4 * H + j
    a_i = tl.load(x, mask=in_h, other=0.0).to(S) + tl.load(g, mask=in_h, other=0.0).to(S)
    a_f = tl.load(x + H, mask=in_h, other=0.0).to(S) + tl.load(g + H, mask=in_h, other=0.0).to(S)
    a_g = tl.load(x + 2 * H, mask=in_h, other=0.0).to(S)
    a_g += tl.load(g + 2 * H, mask=in_h, other=0.0).to(S)
    a_o = tl.load(x + 3 * H, mask=in_h, other=0.0).to(S)
    a_o += tl.load(g + 3 * H, mask=in_h, other=0.0).to(S)
    here = (k * B + b).to(tl.int64) * H + j
    c_prev = tl.load(c_ptr + here, mask=in_h, other=0.0)
    i, f, gg, o = sigmoid(a_i), sigmoid(a_f), tanh(a_g), sigmoid(a_o)
    c_new = f * c_prev + i * gg
    r = o * tanh(c_new)
    tl.store(c_ptr + here + B * H, tl.where(valid, c_new, c_prev), mask=in_h)
    if SAVE:
        s = gates_ptr + (k * B + b).to(tl.int64) * 4 * H + j
        tl.store(s, tl.where(valid, i, 0.0), mask=in_h)
        tl.store(s + H, tl.where(valid, f, 0.0), mask=in_h)
        tl.store(s + 2 * H, tl.where(valid, gg, 0.0), mask=in_h)
        tl.store(s + 3 * H, tl.where(valid, o, 0.0), mask=in_h)
    if PROJ:
        in_p = j < P
        r_row = (r_step * B + b).to(tl.int64) * H
        tl.store(r_ptr + r_row + j, tl.where(valid, r, 0.0), mask=in_h)
        h_prev = tl.load(h_ptr + (k * B + b).to(tl.int64) * P + j, mask=in_p, other=0.0)
        tl.store(keep_ptr + b * P + j, tl.where(valid, 0.0, h_prev), mask=in_p)
    else:
        h_prev = tl.load(h_ptr + here, mask=in_h, other=0.0)
        h_new = tl.where(valid, r, h_prev)
        tl.store(h_ptr + here + B * H, h_new, mask=in_h)
        if LOW:
            tl.store(hmm_ptr + b * H + j, h_new, mask=in_h)


@triton.jit
def _backward_step(
    gates_ptr, c_ptr, len_ptr, go_ptr, dhmm_ptr, carry_in_ptr, carry_ptr, dc_ptr, dr_ptr,
    da_ptr, dhp_ptr,
    t, k, t_next, B, H, P,
    BLOCK: tl.constexpr, HAS_MM: tl.constexpr, HAS_NEXT: tl.constexpr, PROJ: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_h = j < H
    in_p = j < P
    S = carry_ptr.dtype.element_ty
    length = tl.load(len_ptr + b)
    valid = t < length
    total = tl.load(carry_in_ptr + b * P + j, mask=in_p, other=0.0)
    if HAS_MM:
        total += tl.load(dhmm_ptr + b * P + j, mask=in_p, other=0.0).to(S)
    carry = tl.where(valid, 0.0, total)
    if HAS_NEXT:
        go = tl.load(go_ptr + (t_next * B + b).to(tl.int64) * P + j, mask=in_p, other=0.0)
        carry += tl.where(t_next < length, go.to(S), 0.0)
    tl.store(carry_ptr + b * P + j, carry, mask=in_p)
    if PROJ:
        tl.store(dhp_ptr + (k * B + b).to(tl.int64) * P + j, tl.where(valid, total, 0.0), mask=in_p)
        dr = tl.load(dr_ptr + b * H + j, mask=in_h, other=0.0)
    else:
        dr = total
    s = gates_ptr + (k * B + b).to(tl.int64) * 4 * H + j
    i = tl.load(s, mask=in_h, other=0.0)
    f = tl.load(s + H, mask=in_h, other=0.0)
    g = tl.load(s + 2 * H, mask=in_h, other=0.0)
    o = tl.load(s + 3 * H, mask=in_h, other=0.0)
    here = (k * B + b).to(tl.int64) * H + j
    c_prev = tl.load(c_ptr + here, mask=in_h, other=0.0)
    tc = tanh(tl.load(c_ptr + here + B * H, mask=in_h, other=0.0))
    dc_in = tl.load(dc_ptr + b * H + j, mask=in_h, other=0.0)
    dc = dc_in + dr * o * (1.0 - tc * tc)
    tl.store(dc_ptr + b * H + j, tl.where(valid, dc * f, dc_in), mask=in_h)
    d = da_ptr + (k * B + b).to(tl.int64) * 4 * H + j
    tl.store(d, tl.where(valid, dc * g * i * (1.0 - i), 0.0), mask=in_h)
    tl.store(d + H, tl.where(valid, dc * c_prev * f * (1.0 - f), 0.0), mask=in_h)
    tl.store(d + 2 * H, tl.where(valid, dc * i * (1.0 - g * g), 0.0), mask=in_h)
    tl.store(d + 3 * H, tl.where(valid, dr * tc * o * (1.0 - o), 0.0), mask=in_h)


@dataclass(frozen=True)
class LSTMDriver:
    """LSTM through time; ``weights = (W_hh, b_hh or None, W_hr or None)``."""

    mm_dtype: torch.dtype
    state_parts = 2
    graphable = True

    def forward(
        self, xp: Tensor, lengths: Tensor, state0, weights, *, reverse: bool, save: bool
    ) -> Forward:
        w_hh, b_hh, w_hr = weights
        h0, c0 = state0
        steps, batch, width = xp.shape
        hidden, proj = width // 4, w_hr is not None
        out = w_hr.shape[0] if proj else hidden
        low = self.mm_dtype != h0.dtype
        hs = h0.new_empty(steps + 1, batch, out)
        cs = c0.new_empty(steps + 1, batch, hidden)
        hs[0], cs[0] = h0, c0
        gates = h0.new_empty(steps, batch, width) if save else hs
        h_mm = h0.to(self.mm_dtype).contiguous() if low else hs
        gh = xp.new_empty(batch, width, dtype=self.mm_dtype)
        w_t = w_hh.to(self.mm_dtype).t()
        bias = None if b_hh is None else b_hh.to(self.mm_dtype)
        r = h0.new_empty(steps if save else 1, batch, hidden) if proj else hs
        keep = h0.new_empty(batch, out) if proj else hs
        width_block = block(max(hidden, out))
        grid = (batch, triton.cdiv(max(hidden, out), width_block))
        for k in range(steps):
            h_in = h_mm if low else hs[k]
            if bias is None:
                torch.mm(h_in, w_t, out=gh)
            else:
                torch.addmm(bias, h_in, w_t, out=gh)
            r_step = k if save else 0
            _forward_step[grid](
                xp, gh, lengths, hs, cs, gates, h_mm, r, keep,
                time_index(k, steps, reverse), k, r_step, batch, hidden, out,
                BLOCK=width_block, SAVE=save, PROJ=proj, LOW=low,
            )  # fmt: skip
            if proj:
                torch.addmm(keep, r[r_step], w_hr.t(), out=hs[k + 1])
        saved = (hs, cs, gates) + ((r,) if proj else ()) if save else ()
        return Forward(hs, (hs[steps], cs[steps]), saved)

    def backward(self, go: Tensor, grads, lengths: Tensor, weights, saved, *, reverse: bool):
        w_hh, b_hh, w_hr = weights
        hs, cs, gates = saved[:3]
        proj = w_hr is not None
        steps, batch, width = gates.shape
        hidden, out = width // 4, hs.shape[-1]
        state = hs.dtype
        carry = initial_carry(go, grads[0], lengths, steps, reverse, state)
        dc = grads[1].to(state).clone(memory_format=torch.contiguous_format)
        da = gates.new_empty(steps, batch, width, dtype=self.mm_dtype)
        w_mm = w_hh.to(self.mm_dtype)
        dhmm = hs.new_empty(batch, out, dtype=self.mm_dtype)
        total = hs.new_empty(batch, out) if proj else carry
        dr = hs.new_empty(batch, hidden) if proj else carry
        dhp = hs.new_empty(steps, batch, out) if proj else carry
        width_block = block(max(hidden, out))
        grid = (batch, triton.cdiv(max(hidden, out), width_block))
        for k in range(steps - 1, -1, -1):
            has_mm = k < steps - 1
            if proj:
                if has_mm:
                    torch.addmm(carry, da[k + 1], w_hh, out=total)
                else:
                    total.copy_(carry)
                torch.mm(total, w_hr, out=dr)
            elif has_mm:
                torch.mm(da[k + 1], w_mm, out=dhmm)
            _backward_step[grid](
                gates, cs, lengths, go, dhmm, total, carry, dc, dr, da, dhp,
                time_index(k, steps, reverse), k, time_index(k - 1, steps, reverse),
                batch, hidden, out,
                BLOCK=width_block, HAS_MM=has_mm and not proj, HAS_NEXT=k > 0, PROJ=proj,
            )  # fmt: skip
        dh0 = carry + (da[0] @ w_mm).to(state)
        d_weights = (
            outer_sum(da, hs[:-1]),
            None if b_hh is None else column_sum(da, state),
            outer_sum(dhp, saved[3]) if proj else None,
        )
        inputs = da.flip(0) if reverse else da
        return Backward(inputs, (dh0, dc), d_weights)
