"""Exact resume: what a training checkpoint holds, and how a run continues from one.

A checkpoint is the state at a *step boundary*: the parameters after the last completed step,
the optimizer, scheduler and scaler states, the counters, the epoch's running sums, the history,
the callbacks' states, the random-number generators and (stateful training) the carried state as
of that boundary — even when it is written from inside a step (Ctrl+C in a forward, or a
callback that runs while the next step is in flight): then the state is the one the step began
from, and that step runs again after a resume.

**Replaying the epoch's data order.** The checkpoint also holds what decided the current epoch's
data order: the generators' state at the epoch's start and, for a positioned sampler or batch
source (:mod:`rnnkit.loaders`), its state at the epoch's start. Resuming mid-epoch then does, in
this order: restore the epoch-start generators; position the sampler at the number of batches
*consumed* (or, for a plain loader, create its iterator and skip those batches — creating a
DataLoader iterator draws from the global generator, so this must come before the next step);
then restore the generators as of the checkpoint. On CPU the resumed run is bit-identical to an
uninterrupted one.

**Refused with a clear error**: a checkpoint of another model or optimizer class, one without
training state (weights only), and a mid-epoch checkpoint whose epoch was cut differently (another
batch size, number of samples, number of batches per epoch or world size): continuing it would
silently train on another split of the epoch.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rnnkit import distributed as ddp
from rnnkit import loaders
from rnnkit.callbacks import History, LRSchedule
from rnnkit.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from rnnkit.seeding import get_rng_state, set_rng_state

if TYPE_CHECKING:
    from rnnkit.train import Trainer

TRAINING_KEYS = ("model", "optimizer", "epoch", "step", "batch_in_epoch", "rng", "history")


def epoch_start(loader) -> dict:
    """What replays this epoch's data order (call after ``set_epoch``, before ``iter``)."""
    part = loaders.positioned(loader)
    return {"rng": get_rng_state(), "sampler": part.state_dict() if part is not None else None}


def data_shape(trainer: Trainer) -> dict:
    """How the running epoch is cut into batches (checked on a mid-epoch resume)."""
    loader = trainer._loader
    return {
        "batches_per_epoch": trainer.steps_per_epoch,
        "batch_size": loaders.batch_size_of(loader),
        "samples": loaders.num_samples(loader),
        "world_size": trainer._env.world_size if trainer._env else 1,
    }


def trainer_state(trainer: Trainer) -> dict:
    """The checkpoint dict of ``trainer`` as of its last step boundary (module doc)."""
    model = ddp.unwrap(trainer._net)
    boundary = trainer._boundary
    if boundary is None:
        if trainer._in_step:
            warnings.warn(
                "this checkpoint is written after an interrupt inside a step, and the trainer "
                "had no callback with on_interrupt (such as ModelCheckpoint) to keep the state "
                "that step began from: a run resumed from it draws other random numbers",
                stacklevel=3,
            )
        boundary = {"rng": get_rng_state(), "carried_state": trainer.carried_state}
    return {
        "model": model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "scheduler_active": trainer.scheduler_active,
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "epoch": trainer.epoch,
        "step": trainer.step,
        "batch_in_epoch": trainer.batch_in_epoch,
        "rng": boundary["rng"],
        "epoch_start": trainer._epoch_start,
        "epoch_sums": trainer._sums.state_dict(),
        "carried_state": boundary["carried_state"],
        "history": trainer.history.to_dict(),
        "callbacks": {
            f"{i}:{type(cb).__name__}": cb.state_dict()
            for i, cb in enumerate(trainer.callbacks)
            if hasattr(cb, "state_dict") and not isinstance(cb, (History, LRSchedule))
        },
        "data": data_shape(trainer),
        "config": {
            "model_class": type(model).__name__,
            "optimizer_class": type(trainer.optimizer).__name__,
            "parameter_names": [name for name, _ in model.named_parameters()],
            "grad_clip": trainer.grad_clip,
            "amp": trainer.amp,
            "nonfinite": trainer.guard.policy,
            "stateful": trainer.stateful,
            "world_size": trainer._env.world_size if trainer._env else 1,
            "torch": str(torch.__version__),
        },
    }


def save(trainer: Trainer, path: str | Path) -> Path:
    """Write ``trainer``'s checkpoint; refused (previous file untouched) if a parameter is not
    finite."""
    return save_checkpoint(path, trainer_state(trainer))


def restore(trainer: Trainer, checkpoint, loader) -> dict | None:
    """Load a checkpoint (path or dict) into ``trainer``; returns the replay info for a
    mid-epoch resume, None at an epoch boundary."""
    source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "the checkpoint"
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    missing = [k for k in TRAINING_KEYS if k not in state]
    if missing:
        raise ValueError(
            f"{source} holds no training state (it lacks {', '.join(missing)}; it has "
            f"{', '.join(sorted(state)) or 'nothing'}): it cannot be resumed. Load its weights "
            "with model.load_state_dict(rnnkit.load_checkpoint(path)['model']) and call fit "
            "without resume"
        )
    config = state.get("config", {})
    model = ddp.unwrap(trainer._net)
    load_model_state(model, state["model"], source=f"{source} (a {config.get('model_class')})")
    _load_optimizer(trainer, state["optimizer"], config.get("optimizer_class"), source)
    if (state.get("scheduler") is None) != (trainer.scheduler is None):
        has = "has" if state.get("scheduler") is not None else "has no"
        raise ValueError(
            f"{source} {has} LR scheduler state but this Trainer "
            f"{'has none' if trainer.scheduler is None else 'has one'}; build the Trainer as "
            "the checkpointed run was built"
        )
    if config.get("stateful", False) != trainer.stateful:
        raise ValueError(
            f"{source} was written by a {'stateful' if config.get('stateful') else 'stateless'} "
            f"run, this Trainer is {'stateful' if trainer.stateful else 'stateless'}"
        )
    if trainer.scheduler is not None:
        trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scheduler_active = state.get("scheduler_active", trainer.scheduler is not None)
    if state.get("scaler") is not None and trainer.scaler is not None:
        trainer.scaler.load_state_dict(state["scaler"])
    if state["batch_in_epoch"]:
        _check_same_epoch_cut(trainer, state.get("data"), source)
    trainer.epoch, trainer.step = state["epoch"], state["step"]
    trainer.batch_in_epoch = state["batch_in_epoch"]
    trainer.history.load_state_dict(state["history"])
    for key, cb_state in state.get("callbacks", {}).items():
        index, name = key.split(":", 1)
        cb = trainer.callbacks[int(index)] if int(index) < len(trainer.callbacks) else None
        if cb is not None and type(cb).__name__ == name:
            cb.load_state_dict(cb_state)
    if "epoch_sums" in state:
        trainer._sums.load_state_dict(state["epoch_sums"], trainer.device)
    elif "epoch_totals" in state:  # format 1
        trainer._sums.load_state_dict(_sums_from_totals(state["epoch_totals"]), trainer.device)
    trainer.carried_state = _to(state.get("carried_state"), trainer.device)
    trainer._epoch_start = state.get("epoch_start")
    if trainer._epoch_start is None and "epoch_rng" in state:  # format 1
        trainer._epoch_start = {"rng": state["epoch_rng"], "sampler": state.get("sampler")}
    if trainer.batch_in_epoch == 0:  # at an epoch boundary: a normal epoch start follows
        set_rng_state(state["rng"])
        return None
    return {
        "epoch_start": trainer._epoch_start,
        "consumed": trainer.batch_in_epoch,
        "rng": state["rng"],
        "epoch": trainer.epoch,
    }


def replay(loader, info: dict):
    """The epoch's iterator positioned after the batches consumed before the checkpoint."""
    loaders.set_epoch(loader, info["epoch"])
    start = info["epoch_start"] or {}
    if start.get("rng") is not None:
        set_rng_state(start["rng"])
    part = loaders.positioned(loader)
    skip = info["consumed"]
    if part is not None and start.get("sampler") is not None:
        part.load_state_dict({**start["sampler"], "position": info["consumed"]})
        skip = 0
    batches = iter(loader)
    for done in range(skip):
        if next(batches, None) is None:
            raise ValueError(
                f"the checkpoint's epoch had {info['consumed']} batches done, but this data "
                f"gives only {done} batches per epoch: resume with the data it was written with"
            )
    set_rng_state(info["rng"])
    return batches


def _load_optimizer(trainer: Trainer, state: dict, saved_class: str | None, source: str) -> None:
    mine = type(trainer.optimizer).__name__
    if saved_class is not None and saved_class != mine:
        raise ValueError(
            f"{source} holds the state of a {saved_class} optimizer, this Trainer has a {mine}; "
            f"build the Trainer with a {saved_class} to resume (or load only the weights)"
        )
    try:
        trainer.optimizer.load_state_dict(state)
    except (KeyError, ValueError, IndexError, RuntimeError) as err:
        raise ValueError(
            f"the optimizer state in {source} does not fit this {mine} (another set of "
            f"parameter groups or options?): {err}"
        ) from None


def _check_same_epoch_cut(trainer: Trainer, saved: dict | None, source: str) -> None:
    if saved is None:
        return  # an older checkpoint: nothing recorded to compare
    now = data_shape(trainer)
    differs = [
        f"{key} {saved[key]} then, {now[key]} now"
        for key in ("world_size", "batch_size", "samples", "batches_per_epoch")
        if saved.get(key) is not None and now.get(key) is not None and saved[key] != now[key]
    ]
    if differs:
        raise ValueError(
            f"{source} was written in the middle of an epoch that was cut differently ("
            + "; ".join(differs)
            + "): resuming would silently continue on another split of the epoch. Resume with "
            "the batch size, data and number of processes it was written with, or from a "
            "checkpoint at an epoch boundary"
        )


def _sums_from_totals(totals: dict) -> dict:
    """Format 1's per-sample epoch totals as :class:`rnnkit.accounting.EpochSums` state."""
    samples = float(totals["samples"])
    return {
        "loss_sum": torch.tensor(float(totals["loss"]), dtype=torch.float64),
        "weight": samples,
        "sums": {k: torch.tensor([float(v), samples]) for k, v in totals["metrics"].items()},
        "skipped": int(totals["skipped"]),
    }


def _to(tree, device):
    if tree is None:
        return None
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, (tuple, list)):
        return type(tree)(_to(t, device) for t in tree)
    if isinstance(tree, dict):
        return {k: _to(v, device) for k, v in tree.items()}
    return tree
