"""Pieces shared by the Triton kernels: activations and launch sizes (imports triton).

The kernels compute in the precision of the state (float32, or float64 where the weights are
float64), whatever the precision of the tensors they read: under autocast the matrix products
run in bfloat16/float16 and the kernels up-cast on load and round on store.

``INTERPRETED`` records whether Triton defined the kernels for its CPU interpreter
(``TRITON_INTERPRET=1`` when they were imported); :mod:`rnnkit.engines.triton.support` reads it.
The kernels call ``triton.language``'s own jitted functions (``tl.sum``), which Triton defined
in the mode of *its* import: the two must agree, and torch imports triton early (creating an
optimizer does), so ``TRITON_INTERPRET`` has to be set before torch is used.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton import knobs

from rnnkit.engines.triton import support

INTERPRETED = support.language_interpreted(tl)
if bool(knobs.runtime.interpret) != INTERPRETED:
    raise ImportError(
        f"TRITON_INTERPRET is {'on' if knobs.runtime.interpret else 'off'} now but was "
        f"{'on' if INTERPRETED else 'off'} when triton was imported (torch imports it, for "
        "example when an optimizer is created): rnnkit's kernels and triton.language would run "
        "in different modes. Set TRITON_INTERPRET before the first import of torch."
    )

_MAX_BLOCK = 256


def block(width: int) -> int:
    """Columns per program of the kernels that tile a row (a power of two)."""
    return min(_MAX_BLOCK, triton.next_power_of_2(max(width, 1)))


def row_block(width: int) -> int:
    """Columns of one program that holds a whole row (the layer-norm kernels)."""
    return triton.next_power_of_2(max(width, 1))


def warps(elements: int) -> int:
    """Warps for a program over ``elements`` values (more for the wide layer-norm rows)."""
    return 4 if elements <= 2048 else 8


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # 1 - 2 / (e^{2x} + 1): exact limits (+-1) where e^{2x} overflows or vanishes
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def activate(x, RELU: tl.constexpr):
    if RELU:
        return tl.maximum(x, 0.0)
    else:
        return tanh(x)


@triton.jit
def activation_slope(y, RELU: tl.constexpr):
    """d act / d pre, from the output ``y = act(pre)``."""
    if RELU:
        return tl.where(y > 0.0, 1.0, 0.0)
    else:
        return 1.0 - y * y
