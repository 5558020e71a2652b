"""Batches: what a training step gets from a DataLoader or from tensors, and input checks.

A batch is ``(x, y)``, ``(x, y, lengths)`` or ``{"x": x, "y": y, "lengths": lengths}``;
:func:`default_batch_fn` turns each into a :class:`Batch`. ``x`` and ``y`` may be tensors or dicts
of tensors (several modalities, several targets). The trainer calls the model with
:func:`default_forward_fn`: ``model(x)``, or ``model(x, lengths=lengths)`` when the batch has
lengths, which is what rnnkit's layers take. Other layouts: pass ``batch_fn=`` and/or
``forward_fn=`` to the :class:`rnnkit.Trainer`; a loss that needs the lengths can get them through
``y`` (e.g. ``batch_fn`` returning ``Batch(x, (y, lengths), lengths)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset


@dataclass
class Batch:
    """One batch as the trainer sees it: inputs, targets and (optionally) sequence lengths.

    ``x`` and ``y`` may be tensors or dicts/tuples of tensors (several modalities or targets).
    """

    x: Any
    y: Any
    lengths: Tensor | None = None

    @property
    def size(self) -> int:
        return first_tensor(self.x).shape[0]

    def to(self, device: torch.device) -> Batch:
        """Inputs and targets on ``device``; lengths stay put (rnnkit layers take any device)."""
        return Batch(to_device(self.x, device), to_device(self.y, device), self.lengths)


def first_tensor(tree) -> Tensor:
    if isinstance(tree, Tensor):
        return tree
    values = tree.values() if isinstance(tree, Mapping) else tree
    return first_tensor(next(iter(values)))


def to_device(tree, device: torch.device):
    """Every tensor of ``tree`` (tensors, dicts, lists, tuples) moved to ``device``."""
    if isinstance(tree, Tensor):
        return tree if tree.device == device else tree.to(device, non_blocking=True)
    if isinstance(tree, Mapping):
        return {k: to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_device(v, device) for v in tree)
    return tree


def default_batch_fn(raw) -> Batch:
    """``(x, y)``, ``(x, y, lengths)`` or ``{"x": ..., "y": ..., "lengths": ...}`` -> Batch."""
    if isinstance(raw, Batch):
        return raw
    if isinstance(raw, Mapping) and "x" in raw and "y" in raw:
        return Batch(raw["x"], raw["y"], raw.get("lengths"))
    if isinstance(raw, (list, tuple)) and len(raw) in (2, 3):
        return Batch(*raw)
    shape = f"a {type(raw).__name__}" + (
        f" of {len(raw)} items" if isinstance(raw, (list, tuple)) else ""
    )
    raise TypeError(
        "expected each batch as (x, y), (x, y, lengths) or a dict with keys 'x', 'y' and "
        f"optionally 'lengths', got {shape}; pass batch_fn= to convert other layouts"
    )


def default_forward_fn(model: nn.Module, batch: Batch):
    """``model(x)``, or ``model(x, lengths=lengths)`` when the batch has lengths."""
    if batch.lengths is None:
        return model(batch.x)
    return model(batch.x, lengths=batch.lengths)


def stateful_forward(model: nn.Module, batch: Batch, state):
    """``model(x, state)`` (with ``lengths=`` when the batch has them) -> ``(output, state)``."""
    if batch.lengths is None:
        result = model(batch.x, state)
    else:
        result = model(batch.x, state, lengths=batch.lengths)
    if not isinstance(result, tuple) or len(result) != 2:
        raise TypeError(
            "a stateful model's forward must return (output, state), got "
            f"{type(result).__name__}; see rnnkit.LanguageModel or wrap the model"
        )
    return result


class TensorData(Dataset):
    """Samples ``i`` of ``x``, ``y`` (tensors or dicts of tensors) and ``lengths`` as a dict."""

    def __init__(self, x, y, lengths: Tensor | None = None) -> None:
        self.parts = {"x": x, "y": y} | ({} if lengths is None else {"lengths": lengths})
        self.count = first_tensor(x).shape[0]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        return _index(self.parts, index)


def _index(tree, index):
    if isinstance(tree, Tensor):
        return tree[index]
    return {k: _index(v, index) for k, v in tree.items()}


def leaves(tree, prefix: str):
    if isinstance(tree, Tensor):
        yield prefix, tree
    elif isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from leaves(v, f"{prefix}[{k!r}]")
    else:
        raise TypeError(
            f"{prefix} must be a Tensor or a dict of Tensors, got {type(tree).__name__}"
        )


def check_tensors(x, y, lengths=None, role: str = "train") -> None:
    """Raise a ValueError/TypeError when tensor data cannot be trained on (see module doc)."""
    parts = [*leaves(x, "x"), *leaves(y, "y")]
    if lengths is not None:
        parts += list(leaves(lengths, "lengths"))
    counts = {name: t.shape[0] if t.dim() else None for name, t in parts}
    for name, count in counts.items():
        if count is None:
            raise ValueError(f"{role} data: {name} must have a sample axis first, got a scalar")
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name} has {count}" for name, count in counts.items())
        raise ValueError(f"{role} data: x, y (and lengths) need one sample each: {listed}")
    if next(iter(counts.values())) == 0:
        raise ValueError(f"{role} data is empty (0 samples)")
    for name, t in parts:
        if t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"{role} data: {name} has dtype {t.dtype}; expected float or integer")
    if lengths is not None and (lengths.is_floating_point() or lengths.dim() != 1):
        raise ValueError(
            f"{role} data: lengths must be a 1-D integer tensor, got dtype {lengths.dtype} and "
            f"shape {tuple(lengths.shape)}"
        )
