"""Data-parallel training under ``torchrun``: detection, process group, DDP, samplers, averages.

``torchrun --nproc_per_node=N script.py`` starts N processes with ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`setup` sees them and joins the
process group (``nccl`` on GPU, ``gloo`` on CPU); the trainer then wraps the model in
``DistributedDataParallel`` (gradients are averaged across ranks in backward), gives each rank a
``DistributedSampler`` share of the data, averages losses and metrics across ranks, and writes
checkpoints on rank 0 only, between barriers.

**What equals a single process.** With per-rank batch ``b`` on ``N`` ranks a step sees a global
batch of ``N * b`` samples, and DDP's averaged gradient is that batch's mean gradient — as long
as every rank's batch has the same size. When the training samples do not divide evenly by ``N``,
the loader's ``drop_last`` decides (``rnnkit.fit(..., drop_last=)``, ``Trainer.fit(...,
drop_last=)``): ``drop_last=True`` leaves up to ``N - 1`` samples out of each epoch, and the run
then equals one process with batch ``N * b`` on the remaining samples (up to the order in which
float sums are taken; with shuffling, the order of the samples is ``DistributedSampler``'s, not
one process's); ``drop_last=False`` (the default) pads each rank's share by repeating up to
``N - 1`` samples, which are then trained on twice per epoch and counted twice in the epoch's
*training* loss — not equivalent to one process. Evaluation never pads
(:func:`shard_loader_for_eval`): validation loss and metrics count every sample exactly once and
equal the single-process figures. Per-step logs show this rank's values; epoch figures are over
all ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a distributed run."""

    world_size: int
    rank: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistEnv | None:
    """The torchrun environment (``WORLD_SIZE > 1``), or None for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return DistEnv(world, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")))


def setup(mode: str | bool = "auto") -> DistEnv | None:
    """Join the process group when launched by torchrun (``mode="auto"``); ``False`` never does.

    An already initialised process group is used as it is.
    """
    if mode is False or mode == "off":
        return None
    if mode not in ("auto", True):
        raise ValueError(f"distributed must be 'auto', True or False, got {mode!r}")
    env = detect()
    if env is None:
        if mode is True:
            raise ValueError(
                "distributed=True but WORLD_SIZE is not > 1: launch with "
                "torchrun --nproc_per_node=N (or python -m torch.distributed.run)"
            )
        return None
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group(backend)
    return env


def shutdown() -> None:
    """Leave the process group (call at the end of a torchrun script)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def device_for(env: DistEnv) -> torch.device:
    """``cuda:LOCAL_RANK`` when GPUs are present, else the CPU."""
    return (
        torch.device("cuda", env.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    )


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` (parameters broadcast from rank 0)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def distribute_loader(loader: DataLoader, env: DistEnv, seed: int = 0) -> DataLoader:
    """A loader that gives this rank its share of the data.

    A loader with a plain ``SequentialSampler``/``RandomSampler`` is rebuilt with a
    ``DistributedSampler`` (shuffled iff it was random) and the same batch size, collate function,
    workers and ``drop_last``; a loader whose sampler or batch sampler already has ``set_epoch``
    (a distributed sampler) is returned as it is. Any other custom sampler is refused: it has to
    split the data across ranks itself.
    """
    batch_sampler = loader.batch_sampler
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch") or hasattr(batch_sampler, "set_epoch"):
        return loader
    plain = type(batch_sampler) is BatchSampler and type(sampler) in (
        SequentialSampler,
        RandomSampler,
    )
    if not plain:
        raise ValueError(
            f"in a distributed run the train/val DataLoader needs a distributed sampler "
            f"(one with set_epoch), got sampler {type(sampler).__name__} and batch sampler "
            f"{type(batch_sampler).__name__}"
        )
    shared = DistributedSampler(
        loader.dataset,
        num_replicas=env.world_size,
        rank=env.rank,
        shuffle=isinstance(sampler, RandomSampler),
        seed=seed,
        drop_last=loader.drop_last,
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=shared,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
    )


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``N`` takes samples ``r, r + N, r + 2N, ...`` in order: no padding, no
    shuffling, shares of unequal size — for evaluation, where every sample counts once."""

    def __init__(self, num_samples: int, num_replicas: int, rank: int) -> None:
        self.num_samples, self.num_replicas, self.rank = num_samples, num_replicas, rank

    def __iter__(self):
        return iter(range(self.rank, self.num_samples, self.num_replicas))

    def set_epoch(self, epoch: int) -> None:
        """Every epoch is the same; present so that loaders know this sampler is distributed."""

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.num_replicas))


def shard_loader_for_eval(loader: DataLoader, env: DistEnv) -> DataLoader:
    """An evaluation loader for this rank: a plain loader is rebuilt over a :class:`ShardSampler`
    (every sample once over all ranks); a loader with a distributed sampler is kept as it is."""
    if hasattr(loader.sampler, "set_epoch") or hasattr(loader.batch_sampler, "set_epoch"):
        return loader
    distribute_loader(loader, env)  # the same refusal of custom samplers
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=ShardSampler(len(loader.dataset), env.world_size, env.rank),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
    )


def all_reduce_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over all ranks (a new tensor; the input is left alone)."""
    total = tensor.clone()
    dist.all_reduce(total)
    return total


class FlagExchange:
    """Agree on boolean flags across ranks without waiting at every step.

    :meth:`exchange` posts this rank's flags as an asynchronous all-reduce and returns the
    agreement of the *previous* call (any rank's flag set), so every rank acts on the same flags
    at the same step boundary, one boundary after they were raised. :meth:`drain` completes the
    last exchange (call it before leaving the loop, on every rank).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pending: tuple[object, torch.Tensor] | None = None

    def exchange(self, flags: list[bool]) -> list[bool]:
        agreed = self.drain() or [False] * len(flags)
        tensor = torch.tensor([float(f) for f in flags], dtype=torch.float64, device=self.device)
        self._pending = (dist.all_reduce(tensor, async_op=True), tensor)
        return agreed

    def agree(self, flags: list[bool]) -> list[bool]:
        """The flags agreed now, waiting for every rank (pending ones included)."""
        pending = self.drain() or [False] * len(flags)
        tensor = torch.tensor([float(f) for f in flags], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return [p or v > 0 for p, v in zip(pending, tensor.tolist(), strict=True)]

    def drain(self) -> list[bool] | None:
        if self._pending is None:
            return None
        work, tensor = self._pending
        self._pending = None
        work.wait()
        return [v > 0 for v in tensor.tolist()]


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    if dist.is_initialized():
        dist.barrier()
