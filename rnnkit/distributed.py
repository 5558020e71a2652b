"""Data-parallel training under ``torchrun``: detection, process group, DDP, samplers, averages.

``torchrun --nproc_per_node=N script.py`` starts N processes with ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`setup` sees them and joins the
process group (``nccl`` on GPU, ``gloo`` on CPU); the trainer then wraps the model in
``DistributedDataParallel`` (gradients are averaged across ranks in backward), gives each rank a
``DistributedSampler`` share of the data, averages losses and metrics across ranks, and writes
checkpoints on rank 0 only, between barriers. With per-rank batch ``b`` on ``N`` ranks a step
sees the same global batch of ``N * b`` samples that one process with batch ``N * b`` sees.
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


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum each value over all ranks (float64 on the wire)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    if dist.is_initialized():
        dist.barrier()
