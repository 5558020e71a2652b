"""Length bucketing: batches of similar lengths, so that padded batches are mostly real steps.

(These are *batch samplers* for DataLoaders. To draw text from a language model, see
:func:`rnnkit.sample` in :mod:`rnnkit.generate`.)

A random batch of lengths drawn from a long-tailed distribution is padded to its longest member
and is mostly padding; sorting by length before batching removes most of it but makes every
epoch the same. The samplers here sort *pools* of randomly drawn samples instead (the "sortish"
sampler of fastai; length bucketing as in Khomenko et al. 2016, "Accelerating recurrent neural
network training using sequence bucketing and multi-GPU data parallelization"):

1. draw a random permutation of the data set (seeded by ``(seed, epoch)``);
2. cut it into pools of ``pool_batches * batch_size`` samples and sort each pool by length,
   longest first (ties keep the random order);
3. cut each pool into batches of ``batch_size`` and shuffle the order of all the batches.

Every index appears exactly once per epoch (unless ``drop_last``); only the last pool can leave
one short batch. Larger pools pad less, smaller pools mix more. ``padding_stats`` measures the
result. A batch lists its indices longest first, so it also suits
``pack_padded_sequence(..., enforce_sorted=True)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Sampler

from rnnkit.padding import Lengths, check_lengths


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _as_lengths(lengths: Lengths) -> np.ndarray:
    try:
        count = len(lengths)
    except TypeError:
        raise ValueError(
            f"lengths must be a 1-D sequence of ints, one per sample, got {type(lengths).__name__}"
        ) from None
    return check_lengths(lengths, count, 2**62).numpy()


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices with similar lengths, reshuffled deterministically every epoch.

    Use it as a DataLoader's ``batch_sampler`` (with :func:`rnnkit.collate_padded`):
    ``lengths[i]`` is the length of sample ``i``. Batches are made as the module docstring
    says; the order of epoch ``e`` depends only on ``(seed, e)``: call :meth:`set_epoch` before
    each epoch, as with ``torch.utils.data.DistributedSampler``. With ``shuffle=False`` the
    batches are the data set sorted by length, longest first (for evaluation).

    ``len(sampler)`` is the number of batches per epoch: ``ceil(N / batch_size)``, or
    ``floor(N / batch_size)`` with ``drop_last`` (which drops the one short batch).

    Exact resume: :meth:`state_dict` records the epoch and how many batches of it the sampler
    has yielded; after :meth:`load_state_dict` the next iteration continues with the batch after
    those (later iterations start epochs from their beginning). A DataLoader with worker
    processes draws batches ahead of the training loop: there, store the number of batches the
    loop has consumed as ``state["position"]``.
    """

    def __init__(
        self,
        lengths: Lengths,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        pool_batches: int = 100,
    ) -> None:
        self._setup(lengths, batch_size, shuffle, seed, drop_last, pool_batches, 1, 0)

    def _setup(self, lengths, batch_size, shuffle, seed, drop_last, pool_batches, replicas, rank):
        self.lengths = _as_lengths(lengths)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.pool_batches = _positive_int("pool_batches", pool_batches)
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.num_replicas, self.rank = replicas, rank
        self.epoch = 0
        self._position = 0  # batches of the current epoch yielded by the latest iteration
        self._resume = 0  # where the next iteration starts (set by load_state_dict)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch``. A different epoch starts from its first
        batch; the same epoch keeps a position loaded by :meth:`load_state_dict`."""
        if not isinstance(epoch, numbers.Integral) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        if epoch != self.epoch:
            self.epoch, self._position, self._resume = int(epoch), 0, 0

    def _steps(self) -> list[np.ndarray]:
        """The epoch's steps: index arrays of ``batch_size * num_replicas``, longest first."""
        group = self.batch_size * self.num_replicas
        n = len(self.lengths)
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable")
            steps = [order[i : i + group] for i in range(0, n, group)]
        else:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = rng.permutation(n)
            pool = group * self.pool_batches
            steps = []
            for start in range(0, n, pool):
                chunk = order[start : start + pool]
                chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                steps.extend(chunk[i : i + group] for i in range(0, len(chunk), group))
            steps = [steps[i] for i in rng.permutation(len(steps))]
        if self.drop_last:
            steps = [s for s in steps if len(s) == group]
        return steps

    def _rank_batch(self, step: np.ndarray) -> list[int]:
        share = math.ceil(len(step) / self.num_replicas)
        if len(step) < share * self.num_replicas:
            step = np.resize(step, share * self.num_replicas)  # repeats the step cyclically
            step = step[np.argsort(-self.lengths[step], kind="stable")]
        return step[self.rank * share : (self.rank + 1) * share].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        steps = self._steps()
        start, self._resume = self._resume, 0
        self._position = start
        for position in range(start, len(steps)):
            self._position = position + 1
            yield self._rank_batch(steps[position])

    def __len__(self) -> int:
        group = self.batch_size * self.num_replicas
        n = len(self.lengths)
        return n // group if self.drop_last else math.ceil(n / group)

    def state_dict(self) -> dict[str, Any]:
        """The epoch, the batches of it yielded so far, and the settings they depend on."""
        return {
            "epoch": self.epoch,
            "position": self._position,
            "seed": self.seed,
            "num_samples": len(self.lengths),
            "batch_size": self.batch_size,
            "num_replicas": self.num_replicas,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "pool_batches": self.pool_batches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`; the settings must be the same as when it was made."""
        if not isinstance(state, dict):
            raise ValueError(f"expected a state dict, got {type(state).__name__}")
        mine = self.state_dict()
        missing = sorted(set(mine) - set(state))
        if missing:
            raise ValueError(f"state dict lacks {missing}")
        for key in sorted(mine.keys() - {"epoch", "position"}):
            if state[key] != mine[key]:
                raise ValueError(
                    f"state dict was made with {key}={state[key]!r}, this sampler has "
                    f"{key}={mine[key]!r}: the batches would differ"
                )
        epoch, position = state["epoch"], state["position"]
        if not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"state dict epoch must be an int >= 0, got {epoch!r}")
        if not isinstance(position, numbers.Integral) or not 0 <= position <= len(self):
            raise ValueError(
                f"state dict position must be an int in [0, {len(self)}], got {position!r}"
            )
        self.epoch, self._position, self._resume = int(epoch), int(position), int(position)


class DistributedBucketSampler(BucketBatchSampler):
    """:class:`BucketBatchSampler` for distributed data parallel training.

    Every rank builds the same epoch (same ``seed`` and epoch) with steps of
    ``batch_size * num_replicas`` similar lengths, and takes its own contiguous share of each
    step: at every step all ranks hold batches of similar lengths (so none waits long for the
    others) and every rank gets the same number of batches, ``len(sampler)``. Ranks' indices
    are disjoint, with one documented exception: without ``drop_last``, the short last step is
    filled up to a multiple of ``num_replicas`` by repeating some of its own indices, so at most
    ``num_replicas - 1`` indices appear twice per epoch (on different ranks), and every rank's
    last batch has ``ceil(m / num_replicas)`` samples for the ``m`` samples of that step. With
    ``drop_last`` the short step is dropped instead (fewer than ``batch_size * num_replicas``
    samples are skipped, different ones each epoch when shuffled).

    ``num_replicas`` and ``rank`` default to ``torch.distributed``'s world size and rank when a
    process group is initialised, and to a single process (1 and 0) otherwise.
    """

    def __init__(
        self,
        lengths: Lengths,
        batch_size: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        pool_batches: int = 100,
    ) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if distributed else 1
        if rank is None:
            rank = torch.distributed.get_rank() if distributed else 0
        num_replicas = _positive_int("num_replicas", num_replicas)
        if not isinstance(rank, numbers.Integral) or isinstance(rank, bool):
            raise ValueError(f"rank must be an int, got {rank!r}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas - 1}], got {rank}")
        self._setup(lengths, batch_size, shuffle, seed, drop_last, pool_batches, num_replicas, rank)


class PaddingStats(NamedTuple):
    """How much of a batching's padded tensors is real: ``useful_fraction = real / padded``."""

    useful_fraction: float
    real_steps: int
    padded_steps: int
    num_batches: int


def padding_stats(lengths: Lengths, batches: Iterable[Sequence[int]]) -> PaddingStats:
    """The useful-step fraction of a batching: each batch padded to its longest member.

    ``real_steps = sum of all lengths``, ``padded_steps = sum over batches of
    len(batch) * max length in the batch``; ``useful_fraction`` is their ratio (1.0 when nothing
    is padded, including a batching with no steps at all). ``batches`` is any iterable of index
    lists: a sampler, a list of lists, ``torch.randperm(n).split(batch_size)``.
    """
    table = _as_lengths(lengths)
    real = padded = count = 0
    for batch in batches:
        index = np.asarray([int(i) for i in batch], dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(table)):
            raise ValueError(
                f"batch {count} holds index {int(index.min() if index.min() < 0 else index.max())}"
                f", outside the {len(table)} lengths"
            )
        picked = table[index]
        real += int(picked.sum())
        padded += len(picked) * (int(picked.max()) if len(picked) else 0)
        count += 1
    return PaddingStats(real / padded if padded else 1.0, real, padded, count)
