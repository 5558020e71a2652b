"""Where a training run's batches come from: tensors, DataLoaders and batch sources.

:meth:`rnnkit.Trainer.fit` takes three kinds of data:

* tensors ``(x, y)`` / ``(x, y, lengths)``: batched here by ``batch_size`` (shuffled iff
  ``shuffle``; the last short batch dropped iff ``drop_last``);
* a ``torch.utils.data.DataLoader``;
* a *batch source*: any re-iterable object yielding batches, with ``len()``, ``set_epoch(epoch)``
  and optionally ``state_dict()``/``load_state_dict()`` and ``shard(rank, world_size)`` — e.g.
  :func:`rnnkit.bptt_batches`' language-model windows.

**Distributed runs.** Training data is split across ranks: a loader with a plain sampler gets a
``DistributedSampler`` (its ``drop_last`` decides what happens when the samples do not divide
evenly: ``False`` pads each rank's share by repeating samples, ``True`` leaves up to
``world_size - 1`` samples out of the epoch); a batch source is asked for ``shard(rank,
world_size)``. Evaluation data is split without padding (rank ``r`` takes samples ``r, r + W,
...``), so that every sample counts exactly once in validation figures.

**Resume.** A loader whose batch sampler (or sampler) has ``state_dict()``/``load_state_dict()``
(e.g. :class:`rnnkit.BucketBatchSampler`), and a batch source with them, is *positioned*: its
state at the epoch's start is saved, and on resume its ``"position"`` is set to the number of
batches the loop consumed — not the number it yielded, which runs ahead with DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    Sampler,
)

from rnnkit import distributed as ddp
from rnnkit import names
from rnnkit.batches import TensorData, check_tensors, leaves


def is_batch_source(data: object) -> bool:
    """A re-iterable batch source (not a DataLoader, not tensors)."""
    return (
        not isinstance(data, (DataLoader, tuple, list, torch.Tensor))
        and hasattr(data, "__iter__")
        and hasattr(data, "set_epoch")
    )


def make_loader(
    data,
    *,
    batch_size: int,
    shuffle: bool,
    drop_last: bool,
    role: str,
    env: ddp.DistEnv | None,
):
    """A DataLoader or batch source over ``data`` for this rank (see the module doc)."""
    if is_batch_source(data):
        if env is None:
            return data
        if not hasattr(data, "shard"):
            raise ValueError(
                f"in a distributed run the {role} batch source needs shard(rank, world_size) "
                f"to give each rank its own batches; {type(data).__name__} has none"
            )
        return data.shard(env.rank, env.world_size)
    if isinstance(data, DataLoader):
        loader = data
    elif isinstance(data, (tuple, list)) and len(data) in (2, 3):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        check_tensors(*data, role=role)
        loader = DataLoader(
            TensorData(*data), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last
        )
    else:
        raise TypeError(
            f"{role} data must be a DataLoader, a batch source (e.g. rnnkit.bptt_batches) or a "
            f"tuple (x, y) / (x, y, lengths) of tensors, got {type(data).__name__}"
        )
    if env is None:
        return loader
    if role == "train":
        return ddp.distribute_loader(loader, env)
    return ddp.shard_loader_for_eval(loader, env)


def trainer_loader(trainer, data, *, batch_size, shuffle, drop_last, role: str):
    """:func:`make_loader` for ``trainer``: tensor data checked against its loss and model, and a
    stateful trainer refused shuffled batches."""
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        _check_dtypes(trainer, data[0], data[1], role)
    loader = make_loader(
        data,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        role=role,
        env=trainer._env,
    )
    if trainer.stateful and role == "train" and is_shuffled(loader):
        raise ValueError(
            "stateful training carries the state from one batch to the next, so the batches "
            "must come in order: pass shuffle=False (or a batch source such as "
            "rnnkit.bptt_batches)"
        )
    return loader


def _check_dtypes(trainer, x, y, role: str) -> None:
    try:
        names.check_target_dtype(trainer.loss, y)
    except ValueError as err:
        raise ValueError(f"{role} data: {err}") from None
    params = next(trainer.model.parameters(), None)
    for name, t in leaves(x, "x"):
        if params is not None and t.is_floating_point() and t.dtype != params.dtype:
            raise ValueError(
                f"{role} data: {name} has dtype {t.dtype} but the model's parameters are "
                f"{params.dtype}; convert one of them (e.g. x.to({params.dtype}))"
            )


def is_shuffled(source) -> bool:
    """Whether ``source`` yields its batches in a random order."""
    if isinstance(source, DataLoader):
        sampler = source.sampler
        return isinstance(sampler, RandomSampler) or bool(getattr(sampler, "shuffle", False))
    return bool(getattr(source, "shuffle", False))


def positioned(source) -> object | None:
    """The part of ``source`` that saves and restores its position (module doc), or None."""
    parts: Iterable = (
        (source.batch_sampler, source.sampler) if isinstance(source, DataLoader) else (source,)
    )
    for part in parts:
        if hasattr(part, "state_dict") and hasattr(part, "load_state_dict"):
            return part
    return None


def set_epoch(source, epoch: int) -> None:
    """Tell every part of ``source`` that has ``set_epoch`` which epoch starts."""
    parts = (source.sampler, source.batch_sampler) if isinstance(source, DataLoader) else (source,)
    for part in parts:
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)


def length(source) -> int | None:
    """Batches per epoch, or None when ``source`` cannot tell."""
    try:
        return len(source)
    except TypeError:
        return None


def num_samples(source) -> int | None:
    """Samples per epoch on this rank, where the source can tell (for resume checks)."""
    if isinstance(source, DataLoader):
        sampler = source.batch_sampler if source.batch_sampler is not None else source.sampler
        inner: Sampler | None = getattr(sampler, "sampler", sampler)
        try:
            return len(inner)
        except TypeError:
            return None
    state = source.state_dict() if hasattr(source, "state_dict") else {}
    return state.get("tokens")


def batch_size_of(source) -> int | None:
    """The batch size the source makes, where it has one."""
    if isinstance(source, DataLoader):
        sampler = source.batch_sampler
        if isinstance(sampler, BatchSampler):
            return sampler.batch_size
        return getattr(sampler, "batch_size", source.batch_size)
    return getattr(source, "batch_size", None)
