r"""The chunked scan of :mod:`rnnkit.scan` as three Triton kernels (MinGRU/MinLSTM on CUDA).

All states of :math:`h_t = a_t h_{t-1} + b_t` by the same algorithm, with the same grouping of
the same products, as :func:`rnnkit.scan._chunked_scan` (so the same numbers to float rounding):
the ``T`` steps are cut into ``n`` chunks of ``C = ceil(sqrt(T))`` (identity steps ``a = 1,
b = 0`` fill the last chunk, or the first one in reverse), and

1. every chunk runs from a zero state, giving its end value, and multiplies its ``a`` into its
   decay (one program per block of channels and chunk);
2. the state entering each chunk is carried across the ``n`` chunks (one program per block of
   channels);
3. every chunk reruns from its entering state and writes the states.

Where torch runs ``2C + n`` small vectorised steps, this is three launches. The kernels compute
in float32 (float64 for float64 inputs) and store in the inputs' dtype. Padded steps of a
``lengths=`` batch arrive as ``a = 1, b = 0`` from the layer. The autograd function stays
:class:`rnnkit.scan._LinearScan`, whose backward is this scan run the other way in time.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from rnnkit.engines.triton.jit import block


@triton.jit
def _wide(x, WIDE: tl.constexpr):
    if WIDE:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)


@triton.jit
def _chunk_ends(
    a_ptr, b_ptr, end_ptr, decay_ptr, T, S, CHUNK, OFFSET,
    BLOCK: tl.constexpr, REVERSE: tl.constexpr, WIDE: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = cols < S
    k = tl.program_id(1)
    end = _wide(tl.zeros([BLOCK], dtype=tl.float32), WIDE)
    decay = _wide(tl.full([BLOCK], 1.0, dtype=tl.float32), WIDE)
    for jj in range(0, CHUNK):
        if REVERSE:
            j = CHUNK - 1 - jj
        else:
            j = jj
        t = k * CHUNK + j - OFFSET
        at = t + cols * 0  # a vector: Triton's interpreter rejects a scalar & vector mask
        inside = (at >= 0) & (at < T)
        row = tl.minimum(tl.maximum(t, 0), T - 1).to(tl.int64) * S
        a = tl.where(inside, _wide(tl.load(a_ptr + row + cols, mask=m, other=1.0), WIDE), 1.0)
        b = tl.where(inside, _wide(tl.load(b_ptr + row + cols, mask=m, other=0.0), WIDE), 0.0)
        end = tl.where(jj == 0, b, b + a * end)
        decay = decay * a
    tl.store(end_ptr + k.to(tl.int64) * S + cols, end, mask=m)
    tl.store(decay_ptr + k.to(tl.int64) * S + cols, decay, mask=m)


@triton.jit
def _chunk_starts(
    end_ptr, decay_ptr, h0_ptr, start_ptr, S, N,
    BLOCK: tl.constexpr, REVERSE: tl.constexpr, WIDE: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = cols < S
    state = _wide(tl.load(h0_ptr + cols, mask=m, other=0.0), WIDE)
    for kk in range(0, N):
        if REVERSE:
            k = N - 1 - kk
        else:
            k = kk
        row = k.to(tl.int64) * S
        tl.store(start_ptr + row + cols, state, mask=m)
        state = (
            tl.load(end_ptr + row + cols, mask=m, other=0.0)
            + tl.load(decay_ptr + row + cols, mask=m, other=1.0) * state
        )


@triton.jit
def _chunk_states(
    a_ptr, b_ptr, start_ptr, h_ptr, T, S, CHUNK, OFFSET,
    BLOCK: tl.constexpr, REVERSE: tl.constexpr, WIDE: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = cols < S
    k = tl.program_id(1)
    h = _wide(tl.load(start_ptr + k.to(tl.int64) * S + cols, mask=m, other=0.0), WIDE)
    for jj in range(0, CHUNK):
        if REVERSE:
            j = CHUNK - 1 - jj
        else:
            j = jj
        t = k * CHUNK + j - OFFSET
        at = t + cols * 0  # a vector: Triton's interpreter rejects a scalar & vector mask
        inside = (at >= 0) & (at < T)
        row = tl.minimum(tl.maximum(t, 0), T - 1).to(tl.int64) * S
        a = tl.where(inside, _wide(tl.load(a_ptr + row + cols, mask=m, other=1.0), WIDE), 1.0)
        b = tl.where(inside, _wide(tl.load(b_ptr + row + cols, mask=m, other=0.0), WIDE), 0.0)
        h = b + a * h
        tl.store(h_ptr + row + cols, h, mask=m & inside)


def chunked_scan(a: Tensor, b: Tensor, h0: Tensor, reverse: bool) -> Tensor:
    """All states of ``h_t = a_t h_{t-1} + b_t`` for ``a, b (T, *S)``, ``h0 (*S)``, ``T >= 1``
    (``reverse``: from the last step back), as :func:`rnnkit.scan._chunked_scan`."""
    steps, shape = a.shape[0], a.shape[1:]
    a, b = a.reshape(steps, -1).contiguous(), b.reshape(steps, -1).contiguous()
    h0 = h0.reshape(-1).contiguous()
    width = a.shape[1]
    chunk = math.isqrt(steps - 1) + 1
    count = -(-steps // chunk)
    offset = count * chunk - steps if reverse else 0
    wide = a.dtype == torch.float64
    cols = block(width)
    lanes = triton.cdiv(width, cols)
    h = torch.empty_like(b)
    if count > 1:
        precision = torch.float64 if wide else torch.float32
        end = torch.empty(count, width, dtype=precision, device=h.device)
        decay = torch.empty_like(end)
        starts = torch.empty_like(end)
        _chunk_ends[(lanes, count)](
            a, b, end, decay, steps, width, chunk, offset, BLOCK=cols, REVERSE=reverse, WIDE=wide
        )
        _chunk_starts[(lanes,)](
            end, decay, h0, starts, width, count, BLOCK=cols, REVERSE=reverse, WIDE=wide
        )
    else:
        starts = h0.unsqueeze(0)
    _chunk_states[(lanes, count)](
        a, b, starts, h, steps, width, chunk, offset, BLOCK=cols, REVERSE=reverse, WIDE=wide
    )
    return h.reshape(steps, *shape)
