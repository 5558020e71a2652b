"""Keras-style :func:`fit`: train a model on tensors in one call, with names for the usual parts."""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor, nn

from rnnkit import names
from rnnkit.batches import check_tensors, first_tensor
from rnnkit.callbacks import EpochPrinter, History
from rnnkit.loaders import is_batch_source
from rnnkit.seeding import seed_everything
from rnnkit.train import Trainer


def fit(
    model: nn.Module,
    x,
    y,
    epochs: int = 1,
    batch_size: int = 32,
    validation_split: float | None = None,
    optimizer="adam",
    loss="mse",
    *,
    lengths: Tensor | None = None,
    validation_data: tuple | None = None,
    lr: float | None = None,
    metrics=None,
    callbacks=(),
    schedule: str | None = None,
    grad_clip: float | None = None,
    shuffle: bool | None = None,
    drop_last: bool = False,
    seed: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    verbose: int | None = None,
    resume=None,
    max_steps: int | None = None,
    **trainer_kwargs,
) -> History:
    """Train ``model`` on tensors in one call, Keras-style; returns the :class:`History`.

    ``x`` may also be a batch source such as :func:`rnnkit.bptt_batches`' language-model
    windows, with ``y=None``. ``validation_split`` in (0, 1) holds out the *last* fraction of
    the samples (before shuffling) for validation; or pass ``validation_data=(x, y[, lengths])``.
    ``optimizer`` and ``loss`` are names (:mod:`rnnkit.names`) or objects;
    ``schedule="one_cycle"`` steps ``OneCycleLR`` (peak ``lr``) per batch, ``"cosine"`` anneals
    per batch to 0. ``seed`` calls
    :func:`rnnkit.seed_everything` first: it fixes the shuffling, dropout and every other draw
    from here on, not the model's initial weights, which were drawn when the model was built
    (call ``seed_everything`` before building it for a run that repeats exactly).
    ``device=None`` picks CUDA when available. ``verbose`` (Keras' name): 0 silent, 1 a progress
    bar (``progress=True``, the default), 2 one line per epoch. ``resume`` continues a run from a
    checkpoint (see :meth:`Trainer.fit`); ``drop_last`` drops the last short batch (and decides
    how a distributed run splits an uneven data set: :mod:`rnnkit.distributed`); ``shuffle``
    defaults to True, False with ``stateful=True``. Other keyword arguments go to
    :class:`Trainer` (``stateful``, ``nonfinite``, ``checkpoint``, ``amp``, ...); an unknown one
    is an error that lists the valid ones.
    """
    _check_keywords(trainer_kwargs)
    if verbose is not None:
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2 (as in Keras), got {verbose!r}")
        progress = verbose == 1
        if verbose == 2:
            callbacks = [*callbacks, EpochPrinter()]
    if seed is not None:
        seed_everything(seed)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if validation_split is not None and validation_data is not None:
        raise ValueError("pass validation_split or validation_data, not both")
    if is_batch_source(x):
        if y is not None or lengths is not None or validation_split is not None:
            raise ValueError(
                "with a batch source (e.g. rnnkit.bptt_batches) as x, pass y=None and no "
                "lengths or validation_split: the source makes the targets; give validation "
                "data as validation_data"
            )
        train, val = x, validation_data
        steps_per_epoch = len(x)
    else:
        check_tensors(x, y, lengths)
        train, val = (x, y, lengths), validation_data
        if validation_split is not None:
            train, val = _split(train, validation_split)
        train = tuple(t for t in train if t is not None)
        if isinstance(val, (tuple, list)):
            val = tuple(t for t in val if t is not None)
        samples = first_tensor(train[0]).shape[0]
        steps_per_epoch = samples // batch_size if drop_last else math.ceil(samples / batch_size)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    opt = names.make_optimizer(optimizer, model.parameters(), lr)
    scheduler = _make_schedule(schedule, opt, epochs * steps_per_epoch)
    trainer = Trainer(
        model,
        opt,
        loss,
        metrics=metrics,
        callbacks=callbacks,
        device=device,
        grad_clip=grad_clip,
        scheduler=scheduler,
        progress=progress,
        **trainer_kwargs,
    )
    return trainer.fit(
        train,
        val,
        epochs=epochs,
        resume=resume,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        max_steps=max_steps,
    )


def _check_keywords(extra: dict) -> None:
    accepted = set(inspect.signature(Trainer).parameters) - {"model", "optimizer", "loss_fn"}
    unknown = sorted(set(extra) - accepted)
    if unknown:
        own = [p for p in inspect.signature(fit).parameters if p != "trainer_kwargs"]
        raise TypeError(
            f"rnnkit.fit got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(own)}, and the Trainer's {', '.join(sorted(accepted))}"
        )


def _split(data: tuple, fraction: float) -> tuple[tuple, tuple]:
    """Hold out the last ``fraction`` of the samples of ``(x, y, lengths)``."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"validation_split must be in (0, 1), got {fraction!r}")
    n = first_tensor(data[0]).shape[0]
    n_val = round(n * fraction)
    if n_val < 1 or n_val >= n:
        raise ValueError(
            f"validation_split={fraction} of {n} samples leaves {n - n_val} to train on and "
            f"{n_val} to validate on; both need at least one"
        )
    head = tuple(None if t is None else _index_range(t, 0, n - n_val) for t in data)
    tail = tuple(None if t is None else _index_range(t, n - n_val, n) for t in data)
    return head, tail


def _index_range(tree, start: int, stop: int):
    if isinstance(tree, Tensor):
        return tree[start:stop]
    return {k: _index_range(v, start, stop) for k, v in tree.items()}


def _make_schedule(schedule: str | None, optimizer, total_steps: int):
    if schedule is None:
        return None
    peak = optimizer.param_groups[0]["lr"]
    if schedule == "one_cycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, peak, total_steps=max(total_steps, 2))
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    raise ValueError(f"unknown schedule {schedule!r}; expected 'one_cycle', 'cosine' or None")
