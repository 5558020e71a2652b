"""Checkpoints: atomic saves, safe loads, weights as safetensors.

**Atomic save.** A checkpoint is written to a temporary file in the destination's folder, flushed
and ``fsync``-ed, then renamed over the destination with ``os.replace`` (atomic on POSIX and
Windows within one file system), and the folder is ``fsync``-ed so the rename survives a power
cut. A save killed midway leaves the previous checkpoint byte-identical and never a partial file
under the final name: at worst a ``.<name>.<host>.<pid>.*.tmp`` file beside it, which the next
save of the same file removes once no process ``<pid>`` runs on this host (a live writer's file
is never touched).

**Verified.** Every checkpoint stores a SHA-256 checksum of its whole content (every tensor's
bytes, dtype and shape, and every other value, in order); :func:`load_checkpoint` recomputes it
and refuses a file whose content changed (one flipped byte inside a tensor included), naming the
file. Format version 1 files (older rnnkit, no checksum) still load, with a warning that they
cannot be verified.

**Finite.** A checkpoint is never written with a NaN or infinite parameter: the previous file is
left as it was and a :class:`NonFiniteCheckpointError` names the parameter. Buffers may hold
infinities (a causal mask's ``-inf``); the trainer's checkpoints name their parameters in
``config["parameter_names"]`` so that only those are checked, and a plain ``{"model": ...}``
dict is checked whole unless ``allow_nonfinite`` lists the buffers that may hold them.

**Safe load.** :func:`load_checkpoint` always calls ``torch.load(..., weights_only=True)``: only
tensors, numbers, strings, lists, tuples and dicts are rebuilt, and a file that carries any other
pickled object (which could run code when unpickled) is refused with a ``ValueError``, with no
fallback to full unpickling. Everything rnnkit stores (RNG states included, see
:mod:`rnnkit.seeding`) is made of those types.

**Contents** of a training checkpoint (written by :meth:`rnnkit.Trainer.save_checkpoint`):
``format``, ``format_version``, ``model``, ``optimizer``, ``scheduler``, ``scaler``, ``epoch``,
``step``, ``batch_in_epoch``, ``rng`` (at the step boundary), ``epoch_start`` (what replays the
epoch's data order), ``epoch_sums``, ``carried_state``, ``history``, ``callbacks``, ``data`` (how
the epoch is cut into batches), ``config``, ``checksum`` (see :mod:`rnnkit.resume`).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

FORMAT = "rnnkit-checkpoint"
FORMAT_VERSION = 2  # 2: a checksum of the content

PathLike = str | os.PathLike


class NonFiniteCheckpointError(ValueError):
    """A checkpoint or weights file would hold a NaN or infinite parameter (nothing is written)."""


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{socket.gethostname()}."


def _remove_stale_temps(path: Path) -> None:
    """Remove temporary files of earlier saves of ``path`` whose writer no longer runs."""
    prefix = _temp_prefix(path)
    for temp in path.parent.glob(f"{_glob_escape(prefix)}*.tmp"):
        pid = temp.name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and not _process_runs(int(pid)):
            temp.unlink(missing_ok=True)


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _process_runs(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then move it onto ``path``.

    The temporary file (``.<name>.<host>.<pid>.<random>.tmp``) is fsync-ed before ``os.replace``
    and the folder after it. If ``write`` raises, the temporary file is removed and ``path`` is
    untouched. Temporary files left by killed saves of ``path`` are removed first.
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    handle, temp = tempfile.mkstemp(
        prefix=f"{_temp_prefix(path)}{os.getpid()}.", suffix=".tmp", dir=folder
    )
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


def checksum(state: object) -> str:
    """SHA-256 of a checkpoint's content: every tensor's dtype, shape and bytes, every other
    value's ``repr``, and the structure, in order (the ``checksum`` entry itself left out)."""
    digest = hashlib.sha256()
    _hash_into(digest, state)
    return digest.hexdigest()


def _hash_into(digest, value: object) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        digest.update(b"{")
        for key, item in value.items():
            if key == "checksum":
                continue
            digest.update(repr(key).encode())
            _hash_into(digest, item)
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[" if isinstance(value, list) else b"(")
        for item in value:
            _hash_into(digest, item)
        digest.update(b"]")
    else:
        digest.update(repr(value).encode())


def nonfinite_entries(tensors: Mapping, names: Iterable[str] | None = None) -> list[str]:
    """Names of the floating tensors of ``tensors`` (only those in ``names`` when given) that
    hold a NaN or an infinity."""
    keys = list(tensors) if names is None else [n for n in names if n in tensors]
    bad = []
    for key in keys:
        value = tensors[key]
        if (
            isinstance(value, torch.Tensor)
            and (value.is_floating_point() or value.is_complex())
            and not torch.isfinite(value).all()
        ):
            bad.append(key)
    return bad


def _refuse_nonfinite(where: str, bad: list[str]) -> None:
    if bad:
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        raise NonFiniteCheckpointError(
            f"refusing to write {where}: parameter {', '.join(bad[:5])}{more} holds NaN or inf "
            "values; the previous file (if any) is unchanged. Fix the run (lower the learning "
            "rate, clip gradients) or pass allow_nonfinite=[...] for buffers that may hold inf"
        )


def save_checkpoint(path: PathLike, state: Mapping, *, allow_nonfinite: Iterable[str] = ()) -> Path:
    """Save a checkpoint dict atomically with ``torch.save`` and return its path.

    ``state`` must hold only what weights-only loading rebuilds (tensors, numbers, strings, lists,
    tuples, dicts); ``format``, ``format_version`` and ``checksum`` are added. Refused with a
    :class:`NonFiniteCheckpointError` (nothing written) when ``state["model"]`` holds a NaN or
    infinite parameter: those named in ``state["config"]["parameter_names"]`` if given, else
    every floating tensor but the ``allow_nonfinite`` ones (module doc).
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    model = state.get("model")
    if isinstance(model, Mapping):
        config = state.get("config")
        names = config.get("parameter_names") if isinstance(config, Mapping) else None
        if names is None:
            names = [k for k in model if k not in set(allow_nonfinite)]
        _refuse_nonfinite(str(path), nonfinite_entries(model, names))
    payload = {**state, "format": FORMAT, "format_version": FORMAT_VERSION}
    payload["checksum"] = checksum(payload)
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
        with path.open("rb") as file:
            starts_like_zip = file.read(4) == b"PK\x03\x04"
        if starts_like_zip:
            raise ValueError(
                f"{path} is truncated or damaged: it starts like a checkpoint but its end is "
                "missing (a save that was killed or a copy that did not finish?). Use another "
                "checkpoint, e.g. the previous last.pt or best.pt"
            )
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
        raise ValueError(
            f"{path} is damaged and cannot be read ({err}); use another checkpoint"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not an rnnkit checkpoint (expected a dict with format={FORMAT!r}); "
            "for plain weights use rnnkit.import_safetensors or model.load_state_dict"
        )
    version = state.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {version}, newer than this rnnkit reads "
            f"({FORMAT_VERSION}); upgrade rnnkit"
        )
    if "checksum" not in state:
        warnings.warn(
            f"{path} is a format-{version} checkpoint without a checksum (written by an older "
            "rnnkit): its content cannot be verified",
            stacklevel=2,
        )
    elif checksum(state) != state["checksum"]:
        raise ValueError(
            f"{path} is damaged: its content does not match the checksum stored when it was "
            "saved (a changed byte?), so its weights cannot be trusted; use another checkpoint"
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


EXTRA = "rnnkit.extra:"  # metadata key prefix of a state-dict entry that is a string


def export_safetensors(
    model: nn.Module, path: PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``model``'s state dict as a ``.safetensors`` file (atomically).

    safetensors stores raw tensors and a JSON header only, so loading it can never run code.
    Tensors that share memory (tied weights) are stored once each under every name. String
    entries of the state dict (extra state, e.g. :class:`rnnkit.LanguageModel`'s vocabulary as
    JSON) go into the header's metadata under ``"rnnkit.extra:<name>"``; any other non-tensor
    entry is refused. Refused too (nothing written): a NaN or infinite parameter.
    """
    from safetensors.torch import save

    _refuse_nonfinite(str(path), nonfinite_entries(dict(model.named_parameters())))
    tensors, seen = {}, set()
    header = {str(k): str(v) for k, v in (metadata or {}).items()}
    for name, tensor in model.state_dict().items():
        if isinstance(tensor, str):
            header[EXTRA + name] = tensor
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"export_safetensors: state-dict entry {name!r} is a {type(tensor).__name__}; "
                "safetensors holds tensors (and strings in its metadata) only"
            )
        tensor = tensor.detach().cpu().contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        tensors[name] = tensor.clone() if key in seen else tensor
        seen.add(key)
    data = save(tensors, metadata=header)
    return atomic_write(path, lambda file: file.write(data))


def import_safetensors(model: nn.Module, path: PathLike) -> nn.Module:
    """Load weights written by :func:`export_safetensors` (or any safetensors state dict) into
    ``model``, string entries from the metadata included; a file for another model raises a
    ``ValueError`` listing the differences."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load

    path = Path(path)
    try:
        tensors = load(path.read_bytes())
        with safe_open(str(path), framework="pt") as file:
            header = file.metadata() or {}
    except SafetensorError as err:
        raise ValueError(f"{path} is not a valid safetensors file: {err}") from None
    state = {**tensors, **{k[len(EXTRA) :]: v for k, v in header.items() if k.startswith(EXTRA)}}
    load_model_state(model, state, source=str(path))
    return model
