"""Padding and lengths: the bookkeeping that keeps padded steps out of states and losses.

A padded batch stores ``B`` sequences of different lengths in one tensor of ``T = max(lengths)``
steps. ``lengths[b]`` says how many steps of row ``b`` are real; with ``side="right"`` (the
default, and what the layers take) they are the leading steps and the boolean mask is
``mask[b, t] = t < lengths[b]``; with ``side="left"`` they are the trailing ones,
``mask[b, t] = t >= T - lengths[b]``.

Zero-length sequences are allowed everywhere and count for nothing: :func:`pad` gives them a row
of padding, the layers give them zero outputs and return their initial state, :func:`last_valid`,
:func:`masked_sum` and :func:`masked_mean` give zeros for them, and :func:`sequence_loss` gives
them no steps (and a ``per_sequence`` loss of 0).

Every function takes its tensors in the layers' layout: ``(B, T, *)`` with ``batch_first=True``,
``(T, B, *)`` otherwise; a mask is shaped like the first two axes of the data it describes.
Lengths may be a tensor on any device, a numpy array or a list of ints.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import default_collate

Lengths = Tensor | np.ndarray | Sequence[int]
SIDES = ("right", "left")
REDUCTIONS = ("mean", "sum", "per_sequence")


def _check_side(side: str) -> None:
    if side not in SIDES:
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")


def check_lengths(lengths: Lengths, batch_size: int, max_len: int) -> Tensor:
    """Validate sequence lengths against a batch and return them as an int64 CPU tensor.

    Lengths may be a tensor (on any device), a numpy array or a sequence of ints; they must be
    integers in ``[0, max_len]``, one per sequence.
    """
    if isinstance(lengths, np.ndarray):
        if not np.issubdtype(lengths.dtype, np.integer):
            raise ValueError(
                f"lengths must be integers, got a numpy array of dtype {lengths.dtype}"
            )
        lengths = torch.from_numpy(lengths.astype(np.int64))
    if isinstance(lengths, Tensor):
        dtype = lengths.dtype
        if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
            raise ValueError(f"lengths must be integers, got a tensor of dtype {lengths.dtype}")
        if lengths.dim() != 1:
            raise ValueError(
                f"lengths must be 1-D (one length per sequence), got shape {tuple(lengths.shape)}"
            )
        lengths = lengths.detach().to("cpu", torch.int64)
    elif isinstance(lengths, Sequence) and not isinstance(lengths, str):
        for position, value in enumerate(lengths):
            if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
                raise ValueError(
                    f"lengths must be integers, got {value!r} ({type(value).__name__}) "
                    f"at position {position}"
                )
        lengths = torch.tensor([int(v) for v in lengths], dtype=torch.int64)
    else:
        raise ValueError(
            "lengths must be a 1-D integer tensor, numpy array or sequence of ints, "
            f"got {type(lengths).__name__}"
        )
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


def _lengths_device(lengths: Lengths) -> torch.device:
    return lengths.device if isinstance(lengths, Tensor) else torch.device("cpu")


def _count(lengths: Lengths) -> int:
    if isinstance(lengths, (Tensor, np.ndarray)) and lengths.ndim != 1:
        raise ValueError(
            f"lengths must be 1-D (one length per sequence), got shape {tuple(lengths.shape)}"
        )
    try:
        return len(lengths)
    except TypeError:
        raise ValueError(
            "lengths must be a 1-D integer tensor, numpy array or sequence of ints, "
            f"got {type(lengths).__name__}"
        ) from None


def lengths_to_mask(lengths: Lengths, max_len: int | None = None, *, side: str = "right") -> Tensor:
    """Boolean mask ``(B, T)`` that is True on the real steps of each sequence.

    ``T`` is ``max_len``, or the longest length when it is None. ``side="right"``: real steps
    first (``mask[b, t] = t < lengths[b]``); ``side="left"``: real steps last. The mask lives on
    the device of ``lengths`` when it is a tensor.
    """
    _check_side(side)
    if max_len is not None and (
        not isinstance(max_len, numbers.Integral) or isinstance(max_len, bool) or max_len < 0
    ):
        raise ValueError(f"max_len must be an int >= 0 or None, got {max_len!r}")
    device = _lengths_device(lengths)
    checked = check_lengths(lengths, _count(lengths), max_len if max_len is not None else 2**62)
    if max_len is None:
        max_len = int(checked.max()) if checked.numel() else 0
    checked = checked.to(device)
    steps = torch.arange(max_len, device=device)
    if side == "right":
        return steps[None, :] < checked[:, None]
    return steps[None, :] >= (max_len - checked)[:, None]


def mask_to_lengths(mask: Tensor, *, side: str = "right") -> Tensor:
    """Lengths (int64, on the mask's device) from a boolean ``(B, T)`` mask.

    The mask must be contiguous on the declared side (``True...True False...False`` for right
    padding): a mask with holes describes no padded batch and is rejected.
    """
    _check_side(side)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
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


# --------------------------------------------------------------------------------------------
# Padded batches.


class PaddedBatch(NamedTuple):
    """A padded batch: ``data`` ``(B, T, *)`` (``(T, B, *)`` time-major), ``lengths`` (int64,
    ``(B,)``) and ``mask`` (bool, shaped like the first two axes of ``data``).

    It unpacks, ``x, lengths, mask = batch``, and ``batch.to(device)`` moves it: ``data`` and
    ``mask`` go to the device (a dtype in the arguments converts ``data`` only), ``lengths`` stay
    on the CPU — the PyTorch convention (``pack_padded_sequence`` wants them there) and where the
    layers read them without waiting for the device; the mask is their on-device form. Being a
    named tuple, it is handled like a tuple by the DataLoader's ``pin_memory`` and other
    nested-structure tools.
    """

    data: Tensor
    lengths: Tensor
    mask: Tensor

    def to(self, *args: Any, **kwargs: Any) -> PaddedBatch:
        """``data.to(*args, **kwargs)``; ``mask`` follows it to its device, ``lengths`` stay."""
        data = self.data.to(*args, **kwargs)
        non_blocking = kwargs.get("non_blocking", False)
        return PaddedBatch(data, self.lengths, self.mask.to(data.device, non_blocking=non_blocking))


def _layout(batch_first: bool, rest: str = "*") -> str:
    return f"(batch, time, {rest})" if batch_first else f"(time, batch, {rest})"


def pad(
    sequences: Sequence[Tensor],
    batch_first: bool = True,
    padding_value: float = 0.0,
    side: str = "right",
) -> PaddedBatch:
    """Stack sequences ``(L_i, *)`` into a padded batch ``(B, max L_i, *)`` with their lengths.

    ``side="right"`` puts the padding after each sequence (what the layers take), ``"left"``
    before it. The sequences must share trailing shape, dtype and device; zero-length sequences
    become rows of ``padding_value`` with length 0. ``data`` and ``mask`` are on the sequences'
    device, ``lengths`` (int64) on the CPU. Gradients flow back into the sequences.
    """
    _check_side(side)
    if isinstance(sequences, Tensor) or not isinstance(sequences, Sequence):
        raise TypeError(
            f"pad expects a list or tuple of tensors (time, *), got {type(sequences).__name__}"
        )
    if not sequences:
        raise ValueError("pad needs at least one sequence to know the feature shape, got none")
    first = sequences[0]
    for i, seq in enumerate(sequences):
        if not isinstance(seq, Tensor):
            raise TypeError(f"sequence {i} is a {type(seq).__name__}, expected a Tensor (time, *)")
        if seq.dim() < 1:
            raise ValueError(f"sequence {i} is a 0-d tensor; expected at least a time axis")
        if seq.shape[1:] != first.shape[1:]:
            raise ValueError(
                f"sequences must share their trailing shape: sequence 0 is (time, "
                f"{', '.join(map(str, first.shape[1:]))}), sequence {i} is {tuple(seq.shape)}"
            )
        if seq.dtype != first.dtype or seq.device != first.device:
            raise ValueError(
                f"sequences must share dtype and device: sequence 0 is {first.dtype} on "
                f"{first.device}, sequence {i} is {seq.dtype} on {seq.device}"
            )
    lengths = torch.tensor([seq.shape[0] for seq in sequences], dtype=torch.int64)
    steps = int(lengths.max())
    lead = (len(sequences), steps) if batch_first else (steps, len(sequences))
    data = first.new_full((*lead, *first.shape[1:]), padding_value)
    rows = data if batch_first else data.transpose(0, 1)  # a view: writing it fills data
    for row, seq in enumerate(sequences):
        start = 0 if side == "right" else steps - seq.shape[0]
        rows[row, start : start + seq.shape[0]] = seq
    mask = lengths_to_mask(lengths, steps, side=side).to(data.device)
    return PaddedBatch(data, lengths, mask if batch_first else mask.t().contiguous())


def _batch_major(data: Tensor, batch_first: bool, what: str) -> Tensor:
    if not isinstance(data, Tensor):
        raise TypeError(f"{what} must be a Tensor, got {type(data).__name__}")
    if data.dim() < 2:
        raise ValueError(
            f"{what} must be {_layout(batch_first)} with at least 2 axes, "
            f"got shape {tuple(data.shape)}"
        )
    return data if batch_first else data.transpose(0, 1)


def unpad(
    data: Tensor, lengths: Lengths, *, batch_first: bool = True, side: str = "right"
) -> list[Tensor]:
    """The sequences of a padded batch: ``[data[b, :lengths[b]] for b]`` (right padding) or the
    last ``lengths[b]`` steps of each row (left padding). Each is a ``(lengths[b], *)`` view.

    ``unpad(*pad(seqs)[:2]) == seqs`` for any sequences and either side.
    """
    _check_side(side)
    rows = _batch_major(data, batch_first, "data")
    lengths = check_lengths(lengths, rows.shape[0], rows.shape[1]).tolist()
    steps = rows.shape[1]
    if side == "right":
        return [rows[b, :n] for b, n in enumerate(lengths)]
    return [rows[b, steps - n :] for b, n in enumerate(lengths)]


def last_valid(
    output: Tensor, lengths: Lengths, batch_first: bool = True, side: str = "right"
) -> Tensor:
    """Each sequence's output at its own last real step: ``(B, *)`` from ``output`` ``(B, T, *)``.

    Row ``b`` is ``output[b, lengths[b] - 1]`` for right padding and ``output[b, T - 1]`` for
    left padding; a zero-length sequence gives zeros. For a unidirectional layer this equals
    the top layer's ``h_n``. For a bidirectional layer only the forward half is a summary of the
    whole sequence there (the backward direction has seen one step): use ``h_n`` instead.
    """
    _check_side(side)
    rows = _batch_major(output, batch_first, "output")
    lengths = check_lengths(lengths, rows.shape[0], rows.shape[1]).to(rows.device)
    last = lengths - 1 if side == "right" else torch.full_like(lengths, rows.shape[1] - 1)
    index = last.clamp(min=0).view(-1, 1, *([1] * (rows.dim() - 2)))
    picked = rows.gather(1, index.expand(-1, 1, *rows.shape[2:])).squeeze(1)
    empty = (lengths == 0).view(-1, *([1] * (picked.dim() - 1)))
    return picked.masked_fill(empty, 0)


def _step_mask(
    values: Tensor, lengths: Lengths | None, mask: Tensor | None, batch_first: bool, side: str
) -> Tensor:
    """The ``(B, T)`` boolean mask of real steps of ``values``, on its device, batch-major."""
    _check_side(side)
    rows = _batch_major(values, batch_first, "values")
    if (lengths is None) == (mask is None):
        raise ValueError("pass exactly one of lengths= or mask=")
    if mask is None:
        return lengths_to_mask(
            check_lengths(lengths, rows.shape[0], rows.shape[1]), rows.shape[1], side=side
        ).to(rows.device)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a boolean tensor, got {got}")
    expected = tuple(values.shape[:2])
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"mask must be shaped like the first two axes of the values "
            f"{_layout(batch_first, '...')} = {expected}, got {tuple(mask.shape)}"
        )
    return (mask if batch_first else mask.t()).to(rows.device)


def _masked_sum(rows: Tensor, step_mask: Tensor) -> Tensor:
    keep = step_mask.view(*step_mask.shape, *([1] * (rows.dim() - 2)))
    return rows.masked_fill(~keep, 0).sum(dim=1)


def masked_sum(
    values: Tensor,
    lengths: Lengths | None = None,
    *,
    mask: Tensor | None = None,
    batch_first: bool = True,
    side: str = "right",
) -> Tensor:
    """Sum over time of the real steps only: ``(B, *)`` from ``values`` ``(B, T, *)``.

    ``sum_t mask[b, t] * values[b, t]``, computed by selection, so that a NaN or inf in a padded
    step changes neither the sum nor its gradient. Give ``lengths`` or a boolean ``mask`` (any
    pattern of real steps, holes allowed).
    """
    step_mask = _step_mask(values, lengths, mask, batch_first, side)
    return _masked_sum(values if batch_first else values.transpose(0, 1), step_mask)


def masked_mean(
    values: Tensor,
    lengths: Lengths | None = None,
    *,
    mask: Tensor | None = None,
    batch_first: bool = True,
    side: str = "right",
) -> Tensor:
    """Mean over time of the real steps only, ``masked_sum / (number of real steps)``; a
    sequence with no real step has mean 0 (not NaN). Arguments as :func:`masked_sum`."""
    step_mask = _step_mask(values, lengths, mask, batch_first, side)
    total = _masked_sum(values if batch_first else values.transpose(0, 1), step_mask)
    count = step_mask.sum(dim=1).clamp(min=1).to(total.dtype)
    return total / count.view(-1, *([1] * (total.dim() - 1)))


def sequence_loss(
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    pred: Tensor,
    target: Tensor,
    lengths: Lengths | None = None,
    *,
    mask: Tensor | None = None,
    reduction: str = "mean",
    batch_first: bool = True,
    side: str = "right",
) -> Tensor:
    """A per-step loss over the real steps of a padded batch; padded steps never count.

    ``pred`` is ``(B, T, *)`` and ``target`` ``(B, T, *)`` (time-major with
    ``batch_first=False``). The real steps are selected first, giving ``pred_r (N, *)`` and
    ``target_r (N, *)`` for the ``N`` real steps of the batch, and ``loss_fn(pred_r, target_r)``
    must return the elementwise loss ``(N, *)``: a ``torch.nn`` loss with ``reduction='none'``
    (``nn.CrossEntropyLoss(reduction='none')`` takes ``pred_r (N, C)`` and ``target_r (N,)``
    as it is) or any such callable. Then, over those elements:

    * ``"mean"``: the mean over all real elements — with one loss value per step, the mean over
      the real steps of the batch, so a long sequence weighs more than a short one. It equals
      ``loss_fn`` with ``reduction='mean'`` on the concatenated real steps.
    * ``"sum"``: the sum over all real elements.
    * ``"per_sequence"``: ``(B,)``, each sequence's mean over its own real elements (0 for a
      zero-length sequence); ``.mean()`` of it weighs every sequence the same.

    A batch with no real step at all gives 0 for ``"mean"``. Padding is selected away, not
    multiplied by 0, so NaN or inf in padded predictions cannot leak into the loss or gradients.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if getattr(loss_fn, "reduction", "none") != "none":
        raise ValueError(
            f"loss_fn must return one loss per element: build it with reduction='none', "
            f"got reduction={loss_fn.reduction!r}"
        )
    step_mask = _step_mask(pred, lengths, mask, batch_first, side)
    target_rows = _batch_major(target, batch_first, "target")
    pred_rows = pred if batch_first else pred.transpose(0, 1)
    if target_rows.shape[:2] != pred_rows.shape[:2]:
        raise ValueError(
            f"pred and target must share their batch and time axes, got pred "
            f"{tuple(pred.shape)} and target {tuple(target.shape)}"
        )
    losses = loss_fn(pred_rows[step_mask], target_rows[step_mask])
    steps = int(step_mask.sum())
    if not isinstance(losses, Tensor) or losses.dim() == 0 or losses.shape[0] != steps:
        got = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ValueError(
            f"loss_fn must return one loss per real step, shape ({steps}, *), got {got}; "
            "use an elementwise loss (reduction='none')"
        )
    per_step = losses.reshape(steps, math.prod(losses.shape[1:]))
    if reduction == "sum":
        return per_step.sum()
    if reduction == "mean":
        return per_step.sum() / max(per_step.numel(), 1)
    rows = step_mask.nonzero()[:, 0]
    sums = per_step.new_zeros(step_mask.shape[0]).index_add(0, rows, per_step.sum(dim=1))
    counts = step_mask.sum(dim=1) * per_step.shape[1]
    return sums / counts.clamp(min=1).to(sums.dtype)


# --------------------------------------------------------------------------------------------
# Collating samples of different lengths.


def _is_sequence_field(values: list[Any]) -> bool:
    return all(isinstance(v, Tensor) and v.dim() >= 1 for v in values) and (
        len({v.shape[0] for v in values}) > 1
    )


def collate_padded(
    samples: Sequence[Any],
    *,
    sequence_fields: Sequence[int | str] | None = None,
    batch_first: bool = True,
    padding_value: float = 0.0,
    side: str = "right",
) -> Any:
    """``collate_fn`` for a DataLoader over samples of different lengths.

    A sample is a tensor ``(L, *)``, a tuple/list of fields or a dict of fields. Sequence fields
    (tensors whose first axis is time) become a :class:`PaddedBatch` ``(data, lengths, mask)``
    made by :func:`pad`; every other field (labels, ids, fixed-size features) is collated by
    ``torch.utils.data.default_collate`` (numbers and tensors stacked, strings listed). The batch
    keeps the samples' structure: ``((x, lengths, mask), y)`` for ``(x, y)`` samples, a dict
    with the same keys for dicts.

    Which fields are sequences: ``sequence_fields`` names them (indices for tuples, keys for
    dicts). Without it, a field is a sequence when its tensors have at least one axis and their
    first axes differ within the batch; a tensor sample is always a sequence. The automatic rule
    decides per batch, so a batch whose sequences happen to be equally long would stack that
    field instead: pass ``sequence_fields`` for training code, e.g.
    ``DataLoader(ds, collate_fn=functools.partial(rnnkit.collate_padded, sequence_fields=[0]))``.
    """
    if isinstance(samples, (Tensor, str)) or not isinstance(samples, Sequence):
        raise TypeError(f"collate_padded expects a list of samples, got {type(samples).__name__}")
    if not samples:
        raise ValueError("collate_padded needs at least one sample, got an empty list")
    options = {"batch_first": batch_first, "padding_value": padding_value, "side": side}
    first = samples[0]
    if isinstance(first, Tensor):
        if sequence_fields is not None:
            raise ValueError("sequence_fields is for tuple or dict samples; tensor samples are")
        if not all(isinstance(s, Tensor) for s in samples):
            raise TypeError("every sample must be a Tensor when the first one is")
        return pad(list(samples), **options)
    if isinstance(first, Mapping):
        keys = list(first.keys())
        for i, s in enumerate(samples):
            if not isinstance(s, Mapping) or list(s.keys()) != keys:
                got = list(s.keys()) if isinstance(s, Mapping) else type(s).__name__
                raise ValueError(f"sample {i} has fields {got}, sample 0 has {keys}")
    elif isinstance(first, (tuple, list)):
        keys = list(range(len(first)))
        for i, s in enumerate(samples):
            if not isinstance(s, (tuple, list)) or len(s) != len(first):
                got = f"{len(s)} fields" if isinstance(s, (tuple, list)) else type(s).__name__
                raise ValueError(f"sample {i} has {got}, sample 0 has {len(first)} fields")
    else:
        raise TypeError(
            f"a sample must be a Tensor, tuple, list or dict, got {type(first).__name__}"
        )
    if sequence_fields is not None:
        if isinstance(sequence_fields, str) or any(f not in keys for f in sequence_fields):
            raise ValueError(
                f"sequence_fields must list fields of the samples {keys}, got {sequence_fields!r}"
            )
    batch = {}
    for key in keys:
        values = [s[key] for s in samples]
        if sequence_fields is None:
            is_sequence = _is_sequence_field(values)
        else:
            is_sequence = key in sequence_fields
        batch[key] = pad(values, **options) if is_sequence else default_collate(values)
    if isinstance(first, Mapping):
        return batch
    return type(first)(batch.values()) if isinstance(first, list) else tuple(batch.values())
