"""Checkpoints: atomic saves, safe loads, weights as safetensors.

**Atomic save.** A checkpoint is written to a temporary file in the destination's folder, flushed
and ``fsync``-ed, then renamed over the destination with ``os.replace`` (atomic on POSIX and
Windows within one file system), and the folder is ``fsync``-ed so the rename survives a power
cut. A save killed midway leaves the previous checkpoint byte-identical and never a partial file
under the final name (at worst a ``.<name>.*.tmp`` file beside it).

**Safe load.** :func:`load_checkpoint` always calls ``torch.load(..., weights_only=True)``: only
tensors, numbers, strings, lists, tuples and dicts are rebuilt, and a file that carries any other
pickled object (which could run code when unpickled) is refused with a ``ValueError``, with no
fallback to full unpickling. Everything rnnkit stores (RNG states included, see
:mod:`rnnkit.seeding`) is made of those types.

**Contents** of a training checkpoint (written by :meth:`rnnkit.Trainer.save_checkpoint`):
``format``, ``format_version``, ``model``, ``optimizer``, ``scheduler``, ``scaler``, ``epoch``,
``step``, ``batch_in_epoch``, ``sampler``, ``rng`` (now) and ``epoch_rng`` (at the start of the
epoch, to replay its data order), ``epoch_totals``, ``history``, ``config``.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

FORMAT = "rnnkit-checkpoint"
FORMAT_VERSION = 1

PathLike = str | os.PathLike


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then move it onto ``path``.

    The temporary file is fsync-ed before ``os.replace`` and the folder after it. If ``write``
    raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def save_checkpoint(path: PathLike, state: Mapping) -> Path:
    """Save a checkpoint dict atomically with ``torch.save`` and return its path.

    ``state`` must hold only what weights-only loading rebuilds (tensors, numbers, strings, lists,
    tuples, dicts); ``format`` and ``format_version`` are added.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    payload = {**state, "format": FORMAT, "format_version": FORMAT_VERSION}
    return atomic_write(path, lambda file: torch.save(payload, file))


def load_checkpoint(path: PathLike, map_location: str | torch.device | None = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`, safely.

    Always ``torch.load(path, weights_only=True)``, never a fallback: a file that carries a
    pickled object other than tensors and plain containers is refused with a ``ValueError`` and
    nothing in it runs. A file that is no rnnkit checkpoint, or of a newer format, is refused too.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not an rnnkit checkpoint (not a torch.save zip archive); refusing to "
            "unpickle it"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        details = [line for line in str(err).splitlines() if "nsupported" in line]
        raise ValueError(
            f"refusing to load {path}: it holds objects that weights-only loading does not allow "
            "(a pickle payload could run code), and rnnkit never falls back to full unpickling"
            + (f" ({details[0].strip()})" if details else "")
        ) from None
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"{path} is not a readable checkpoint: {err}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not an rnnkit checkpoint (expected a dict with format={FORMAT!r}); "
            "for plain weights use rnnkit.import_safetensors or model.load_state_dict"
        )
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {state['format_version']}, newer than this "
            f"rnnkit reads ({FORMAT_VERSION}); upgrade rnnkit"
        )
    return state


def load_model_state(model: nn.Module, state_dict: Mapping, source: str = "checkpoint") -> None:
    """``model.load_state_dict(state_dict)`` with an error that says why the weights do not fit.

    A checkpoint of another model (missing or unexpected keys, other shapes) raises a
    ``ValueError`` that lists the differences instead of loading part of the weights.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: {tuple(state_dict[k].shape)} in {source}, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in state_dict
        and isinstance(v, torch.Tensor)
        and isinstance(state_dict[k], torch.Tensor)
        and state_dict[k].shape != v.shape
    ]
    problems = []
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            problems.append(f"{label}: {', '.join(items[:5])}{more}")
    if problems:
        raise ValueError(
            f"the weights in {source} do not fit this {type(model).__name__} (a checkpoint of "
            "another model?): " + "; ".join(problems)
        )
    model.load_state_dict(state_dict)


def export_safetensors(
    model: nn.Module, path: PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``model``'s state dict as a ``.safetensors`` file (atomically).

    safetensors stores raw tensors and a JSON header only, so loading it can never run code.
    Tensors that share memory (tied weights) are stored once each under every name.
    """
    from safetensors.torch import save

    tensors, seen = {}, set()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        tensors[name] = tensor.clone() if key in seen else tensor
        seen.add(key)
    data = save(tensors, metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    return atomic_write(path, lambda file: file.write(data))


def import_safetensors(model: nn.Module, path: PathLike) -> nn.Module:
    """Load weights written by :func:`export_safetensors` (or any safetensors state dict) into
    ``model``; a file for another model raises a ``ValueError`` listing the differences."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    try:
        tensors = load(path.read_bytes())
    except SafetensorError as err:
        raise ValueError(f"{path} is not a valid safetensors file: {err}") from None
    load_model_state(model, tensors, source=str(path))
    return model
