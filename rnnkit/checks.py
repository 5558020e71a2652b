"""Input checks shared by the cells and the layers: features, dtypes and recurrent states.

A state that does not fit must never be broadcast into a result: ``torch.nn``'s cells and
layers raise ``RuntimeError`` (or ``ValueError``) for it, and so does rnnkit, with
:class:`rnnkit.InputError` (both kinds) and a message naming what was expected and what came.
Checked: the state's arity (one tensor, or a tuple ``(h, c)``), each part's type, exact shape
(batch and size, batched or unbatched as the input is) and dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.errors import InputError

State = Tensor | tuple[Tensor, ...]


def dtype_mismatch(x: Tensor, dtype: torch.dtype) -> bool:
    """Whether ``x``'s dtype is not ``dtype`` (under autocast, other float dtypes are expected:
    a Linear before the layer emits bfloat16)."""
    if x.dtype == dtype:
        return False
    return not (x.is_floating_point() and torch.is_autocast_enabled(x.device.type))


def check_features(owner: str, x: Tensor, input_size: int, dtype: torch.dtype) -> None:
    """``x``'s last axis is ``input_size`` features of the weights' ``dtype``."""
    if x.shape[-1] != input_size:
        raise InputError(f"{owner}: expected {input_size} input features, got {x.shape[-1]}")
    if dtype_mismatch(x, dtype):
        raise InputError(
            f"{owner}: input dtype {x.dtype} does not match the weights' dtype {dtype}; "
            f"convert one of them (e.g. input.to({dtype}))"
        )


def check_state(
    owner: str,
    hx: object,
    expected: list[tuple[int, ...]],
    dtype: torch.dtype,
    *,
    labels: tuple[str, str] = ("h_0", "c_0"),
    layout: str = "",
) -> None:
    """``hx`` is one tensor (``len(expected) == 1``) or a tuple of ``len(expected)`` tensors,
    part ``k`` of shape ``expected[k]`` and of ``dtype``; else an :class:`InputError`.

    ``layout`` names the axes of the expected shape in messages, e.g. ``"(batch, hidden_size)"``.
    """
    if isinstance(hx, (tuple, list)):
        parts = tuple(hx)
        if len(parts) != len(expected):
            raise InputError(
                f"{owner}: expected {_arity(expected, labels)}, got {len(parts)} tensors"
            )
        if len(expected) == 1:
            raise InputError(
                f"{owner}: expected {_arity(expected, labels)}, got a {type(hx).__name__} of one"
            )
    elif len(expected) == 1 or not isinstance(hx, Tensor):
        parts = (hx,)
    else:
        raise InputError(
            f"{owner}: expected {_arity(expected, labels)}, got one tensor of shape "
            f"{tuple(hx.shape)}"
        )
    for label, part, shape in zip(labels, parts, expected, strict=False):
        if not isinstance(part, Tensor):
            raise InputError(f"{owner}: {label} must be a Tensor, got {type(part).__name__}")
        if tuple(part.shape) != shape:
            axes = f" {layout}" if layout else ""
            raise InputError(
                f"{owner}: expected {label} of shape {shape}{axes}, got {tuple(part.shape)}"
            )
        if dtype_mismatch(part, dtype):
            raise InputError(
                f"{owner}: {label} dtype {part.dtype} does not match {dtype} (the weights' dtype)"
            )


def _arity(expected: list, labels: tuple[str, str]) -> str:
    if len(expected) == 1:
        return f"the initial state as one tensor {labels[0]}"
    return f"the initial state as a tuple ({', '.join(labels[: len(expected)])})"
