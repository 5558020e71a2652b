"""Padding and lengths: the bookkeeping that keeps padded steps out of states and losses.

A padded batch stores ``B`` sequences of different lengths in one tensor of ``T = max(lengths)``
steps. ``lengths[b]`` says how many leading steps of row ``b`` are real ("right" padding, the
default); the boolean ``mask[b, t] = t < lengths[b]`` says the same per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Lengths = torch.Tensor | Sequence[int]


def check_lengths(lengths: Lengths, batch_size: int, max_len: int) -> torch.Tensor:
    """Validate sequence lengths against a batch and return them as an int64 CPU tensor.

    Lengths may live on any device; they must be integers in ``[0, max_len]``, one per sequence.
    """
    if isinstance(lengths, torch.Tensor):
        dtype = lengths.dtype
        if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
            raise ValueError(f"lengths must be integers, got a tensor of dtype {lengths.dtype}")
        if lengths.dim() != 1:
            raise ValueError(
                f"lengths must be 1-D (one length per sequence), got shape {tuple(lengths.shape)}"
            )
        lengths = lengths.detach().to("cpu", torch.int64)
    else:
        values = list(lengths)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"lengths must be integers, got {values!r}")
        lengths = torch.tensor(values, dtype=torch.int64)
    if lengths.numel() != batch_size:
        raise ValueError(
            f"expected one length per sequence ({batch_size}), got {lengths.numel()} lengths"
        )
    if batch_size and int(lengths.min()) < 0:
        raise ValueError(f"lengths must be >= 0, got min {int(lengths.min())}")
    if batch_size and int(lengths.max()) > max_len:
        raise ValueError(
            f"a length ({int(lengths.max())}) exceeds the time axis of the input ({max_len} steps)"
        )
    return lengths


def lengths_to_mask(
    lengths: Lengths, max_len: int | None = None, *, side: str = "right"
) -> torch.Tensor:
    """Boolean mask ``(B, T)`` that is True on the real steps of each sequence.

    ``side="right"``: real steps first (``mask[b, t] = t < lengths[b]``); ``side="left"``: real
    steps last. The mask lives on the device of ``lengths`` when it is a tensor.
    """
    device = lengths.device if isinstance(lengths, torch.Tensor) else torch.device("cpu")
    checked = check_lengths(lengths, len(lengths), max_len if max_len is not None else 2**62)
    if max_len is None:
        max_len = int(checked.max()) if checked.numel() else 0
    checked = checked.to(device)
    steps = torch.arange(max_len, device=device)
    if side == "right":
        return steps[None, :] < checked[:, None]
    if side == "left":
        return steps[None, :] >= (max_len - checked)[:, None]
    raise ValueError(f"side must be 'right' or 'left', got {side!r}")


def mask_to_lengths(mask: torch.Tensor, *, side: str = "right") -> torch.Tensor:
    """Lengths (int64, on the mask's device) from a boolean ``(B, T)`` mask.

    The mask must be contiguous on the declared side (``True...True False...False`` for right
    padding): a mask with holes describes no padded batch and is rejected.
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a boolean tensor, got {got}")
    if mask.dim() != 2:
        raise ValueError(f"mask must have shape (batch, time), got shape {tuple(mask.shape)}")
    lengths = mask.sum(dim=1)
    if not torch.equal(mask, lengths_to_mask(lengths, mask.shape[1], side=side)):
        raise ValueError(
            f"mask is not contiguous on the {side} side: every row must be "
            + ("True...True False...False" if side == "right" else "False...False True...True")
        )
    return lengths
