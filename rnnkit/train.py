"""The training engine: :class:`Trainer`, its step loop, step-boundary control and resume.

One training step, in this order (see :meth:`Trainer._train_step`)::

    batch  = batch_fn(raw)                     # (x, y) / (x, y, lengths) / {"x", "y", "lengths"}
    output = forward_fn(model, batch)          # model(x) or model(x, lengths=lengths)
    loss   = loss_fn(output, batch.y)
    loss.backward()                            # scaled by the GradScaler under fp16 autocast
    grad_norm = ||all gradients||_2            # logged; read by the non-finite guard
    on_after_backward(logs)                    # NonFiniteGuard: raise, or mark the step skipped
    clip to trainer.grad_clip                  # read every step; None = off
    optimizer.step()                           # unless skipped

Between two steps (a *step boundary*) the trainer applies what other threads asked for:
``set_lr``, ``pause`` (the loop waits on an Event, no busy-waiting), ``stop`` and Ctrl+C / Kernel
Interrupt. A stopped or interrupted run ends there: the parameters are those after the last
completed step, the history is kept, ``on_interrupt`` runs (``ModelCheckpoint`` writes
``interrupted.pt``), the SIGINT handler is restored and ``sys.exit`` is never called.

**Ctrl+C re-raises.** After that clean-up ``fit`` re-raises ``KeyboardInterrupt``, so "Run All"
stops at the interrupted cell while the trainer, model and history stay usable in the kernel.
``trainer.stop()`` (a button, a callback) returns normally and ``fit`` returns the history.
A second Ctrl+C during one step interrupts at once (for a step that hangs); if that lands inside
``optimizer.step()`` no checkpoint is written (``trainer.clean_stop`` is False).

**Exact resume.** A checkpoint holds everything that decides the rest of the run (see
:mod:`rnnkit.checkpoint`). Resuming mid-epoch replays the data order: the RNG state from the
start of the epoch is restored, the loader is iterated past the batches already done, then the
RNG state at the save is restored. On CPU the resumed run is bit-identical to an uninterrupted
one. A sampler with ``state_dict()``/``load_state_dict()`` is saved and trusted to resume its own
position instead (no batches are skipped).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import clip_grads_with_norm_, get_total_norm
from torch.utils.data import DataLoader

from rnnkit import distributed as ddp
from rnnkit import names
from rnnkit.batches import (
    Batch,
    TensorData,
    check_tensors,
    default_batch_fn,
    default_forward_fn,
    leaves,
)
from rnnkit.callbacks import (
    Callback,
    History,
    LRSchedule,
    ModelCheckpoint,
    NonFiniteGuard,
    ProgressBar,
)
from rnnkit.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from rnnkit.seeding import get_rng_state, set_rng_state

STATUSES = ("idle", "running", "paused", "stopped", "finished", "failed")


# --------------------------------------------------------------------------------------------
# The trainer.


@dataclass
class _Totals:
    """Sums over the batches of the current epoch (this rank)."""

    loss: float = 0.0
    samples: float = 0.0
    skipped: int = 0
    metrics: dict | None = None

    def add(self, loss: float, n: int, metrics: dict[str, float]) -> None:
        self.loss += loss * n
        self.samples += n
        self.metrics = self.metrics or {}
        for k, v in metrics.items():
            self.metrics[k] = self.metrics.get(k, 0.0) + v * n

    def state_dict(self) -> dict:
        return {
            "loss": self.loss,
            "samples": self.samples,
            "skipped": self.skipped,
            "metrics": dict(self.metrics or {}),
        }


class Trainer:
    """Train a model with an optimizer and a loss, observably and interruptibly.

    Args:
        model: the module; ``forward_fn(model, batch)`` computes its output.
        optimizer: a ``torch.optim`` optimizer over the model's parameters.
        loss_fn: ``loss(output, target) -> scalar``, or a name from :mod:`rnnkit.names`.
        metrics: names (``"accuracy"``, ``"balanced_accuracy"``, ``"mae"``, ``"mse"``),
            callables or ``{name: fn}``; averaged over each epoch's samples (a per-batch value
            averaged: exact for means, close for balanced accuracy), on validation data as
            ``val_<name>``.
        callbacks: :class:`rnnkit.Callback` objects, called after the built-in ones.
        device: where to train; None keeps the model where it is (``cuda:LOCAL_RANK`` under
            torchrun with GPUs).
        grad_clip: max global gradient norm; ``trainer.grad_clip`` is read every step.
        amp: mixed precision: True/"fp16" (fp16 autocast and a GradScaler on CUDA; bf16 on
            CPU), "bf16", or False.
        nonfinite: "stop" or "skip": what a NaN/inf loss or gradient does (:class:`NonFiniteGuard`).
        scheduler, scheduler_interval: a torch LR scheduler stepped per "batch" or per "epoch".
        checkpoint: a folder (or a :class:`ModelCheckpoint`) for last/best/interrupted checkpoints.
        progress: show a ``tqdm.auto`` progress bar.
        forward_fn: ``fn(model, batch: Batch) -> output``, for models called differently.
        batch_fn: ``fn(raw_batch) -> Batch``, for loaders yielding other layouts.
        distributed: "auto" (join a torchrun run when there is one), True, or False.

    Control from any thread, effective at the next step boundary: :meth:`stop`, :meth:`pause`,
    :meth:`unpause`, :meth:`set_lr`; ``grad_clip`` may be set at any time. ``status`` is one of
    "idle", "running", "paused", "stopped", "finished", "failed" (``error`` holds the exception).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable | str,
        metrics=None,
        callbacks=(),
        device: str | torch.device | None = None,
        grad_clip: float | None = None,
        amp: bool | str = False,
        nonfinite: str = "stop",
        scheduler=None,
        scheduler_interval: str = "batch",
        checkpoint: str | Path | ModelCheckpoint | None = None,
        progress: bool = False,
        forward_fn: Callable[[nn.Module, Batch], Any] | None = None,
        batch_fn: Callable[[Any], Batch] | None = None,
        distributed: str | bool = "auto",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__} "
                "(rnnkit.fit takes optimizer names)"
            )
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be a positive number or None, got {grad_clip!r}")
        if amp not in (False, True, "fp16", "bf16"):
            raise ValueError(f"amp must be False, True, 'fp16' or 'bf16', got {amp!r}")
        callbacks = list(callbacks)
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be rnnkit.Callback objects, got {cb!r}")
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = names.resolve_loss(loss_fn)
        self.loss_name = loss_fn if isinstance(loss_fn, str) else None
        self.metrics = names.resolve_metrics(metrics)
        self.device = torch.device(device) if device is not None else None
        self.grad_clip = grad_clip
        self.amp = amp
        self.scheduler = scheduler
        self.forward_fn = forward_fn or default_forward_fn
        self.batch_fn = batch_fn or default_batch_fn
        self.distributed = distributed
        self.history = History()
        self.guard = NonFiniteGuard(nonfinite)
        builtin: list[Callback] = [self.history, self.guard]
        if scheduler is not None:
            builtin.append(LRSchedule(scheduler, scheduler_interval))
        elif scheduler_interval not in ("batch", "epoch"):
            raise ValueError(
                f"scheduler_interval must be 'batch' or 'epoch', got {scheduler_interval!r}"
            )
        if checkpoint is not None:
            builtin.append(
                checkpoint
                if isinstance(checkpoint, ModelCheckpoint)
                else ModelCheckpoint(checkpoint)
            )
        if progress:
            builtin.append(ProgressBar())
        self.callbacks: list[Callback] = builtin + callbacks
        self.scaler: torch.amp.GradScaler | None = None
        self.status = "idle"
        self.error: BaseException | None = None
        self.epoch = self.step = self.batch_in_epoch = 0
        self.epochs = 0
        self.steps_per_epoch: int | None = None
        self.max_steps: int | None = None
        self.stop_training = False  # set by callbacks (EarlyStopping) to end as "finished"
        self.scheduler_active = scheduler is not None
        self.clean_stop = True
        self.interrupted = False
        self._net: nn.Module = model
        self._env: ddp.DistEnv | None = None
        self._totals = _Totals()
        self._epoch_rng: dict | None = None
        self._loader: DataLoader | None = None
        self._lock = threading.Lock()
        self._resume = threading.Event()
        self._resume.set()
        self._pause_requested = self._stop_requested = self._sigint = False
        self._pending_lr: float | None = None
        self._updating = False

    # ---- control from other threads -----------------------------------------------------

    def stop(self) -> None:
        """End the run at the next step boundary (returns at once; ``fit`` returns normally)."""
        self._stop_requested = True
        self._resume.set()

    def pause(self) -> None:
        """Hold the loop at the next step boundary until :meth:`unpause` (or :meth:`stop`)."""
        self._pause_requested = True
        self._resume.clear()

    def unpause(self) -> None:
        """Let a paused loop continue."""
        self._pause_requested = False
        self._resume.set()

    def set_lr(self, lr: float) -> None:
        """Set every parameter group's learning rate from the next step on (recorded in
        ``history.events``). A running LR schedule stops: manual control wins."""
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        with self._lock:
            self._pending_lr = float(lr)
        if self.status not in ("running", "paused"):
            self._apply_pending_lr()

    @property
    def is_main_process(self) -> bool:
        return self._env is None or self._env.is_main

    @property
    def scaler_enabled(self) -> bool:
        return self.scaler is not None and self.scaler.is_enabled()

    @property
    def skipped_steps(self) -> int:
        return self.guard.skipped

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    # ---- the run --------------------------------------------------------------------------

    def fit(
        self,
        train,
        val=None,
        epochs: int = 1,
        resume: str | Path | dict | None = None,
        *,
        batch_size: int = 32,
        shuffle: bool = True,
        max_steps: int | None = None,
    ) -> History:
        """Train for ``epochs`` more epochs; with ``resume``, up to ``epochs`` in total; blocks.

        Calling ``fit`` again continues the counters and the history; an epoch that a stop cut
        short starts over (resuming from a checkpoint continues it exactly instead).

        ``train``/``val``: DataLoaders, or tensors ``(x, y)`` / ``(x, y, lengths)`` batched by
        ``batch_size`` (train shuffled iff ``shuffle``). ``resume``: a checkpoint path or dict.
        ``max_steps`` ends the run (as finished) after that many more steps (with ``resume``:
        steps in total); ``trainer.max_steps`` holds the step count it ends at.
        Returns ``self.history``; see the module doc for stop, interrupt and failure.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
        if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 0):
            raise ValueError(f"max_steps must be an int >= 0 or None, got {max_steps!r}")
        if self.status in ("running", "paused"):
            raise RuntimeError("this Trainer is already running a fit")
        try:
            self._prepare_run()
            train_loader = self._as_loader(train, batch_size, shuffle, "train")
            val_loader = None if val is None else self._as_loader(val, batch_size, False, "val")
            self._loader = train_loader
            self.steps_per_epoch = _length(train_loader)
            if resume is not None:
                replay = self._restore(resume, train_loader)
                self.epochs, self.max_steps = epochs, max_steps
            else:  # more epochs; an epoch a stop cut short starts over
                replay, self.batch_in_epoch = None, 0
                self.epochs = self.epoch + epochs
                self.max_steps = None if max_steps is None else self.step + max_steps
        except BaseException as exc:
            self.status, self.error = "failed", exc
            raise
        self._stop_requested = self._sigint = self.stop_training = self.interrupted = False
        self._pause_requested = False
        self._resume.set()
        self.clean_stop, self.error = True, None
        self.status = "running"
        previous_handler = self._install_sigint_handler()
        try:
            self._emit("on_fit_begin")
            while self.epoch < self.epochs and not self._end_requested():
                if not self._run_epoch(train_loader, val_loader, replay):
                    break
                replay = None
            if self._stop_requested or self._sigint:
                self._end_interrupted()
            else:
                self.status = "finished"
        except KeyboardInterrupt:  # a second Ctrl+C, or one outside our handler
            self.clean_stop = not self._updating
            self._sigint = True
            self._end_interrupted()
        except BaseException as exc:
            self.status, self.error = "failed", exc
            self._emit("on_exception", exc)
            raise
        finally:
            self._updating = False
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
            self._emit("on_fit_end")
        if self._sigint:
            raise KeyboardInterrupt("training interrupted; trainer, model and history are kept")
        return self.history

    def _end_interrupted(self) -> None:
        self.status, self.interrupted = "stopped", True
        self._emit("on_interrupt")

    def _run_epoch(self, train_loader, val_loader, replay: dict | None) -> bool:
        """One epoch; False if the run ended at a step boundary inside it."""
        started = time.perf_counter()
        _set_epoch(train_loader, self.epoch)
        if replay is None:
            self._epoch_rng = get_rng_state()
            self._totals = _Totals()
            batches = iter(train_loader)
        else:
            batches = self._replay(train_loader, replay)
        self._emit("on_epoch_begin", self.epoch)
        while True:
            if self._at_step_boundary():
                return False
            raw = next(batches, None)
            if raw is None:
                break
            self._emit("on_batch_begin", self.batch_in_epoch)
            logs = self._train_step(raw)
            self._emit("on_batch_end", logs)
            if self.max_steps is not None and self.step >= self.max_steps:
                self.stop_training = True
        epoch_logs = self._epoch_logs(val_loader, time.perf_counter() - started)
        self.epoch += 1
        self.batch_in_epoch = 0
        self._emit("on_epoch_end", epoch_logs)
        return True

    def _train_step(self, raw) -> dict:
        started = time.perf_counter()
        batch = self.batch_fn(raw).to(self.device)
        self._net.train()
        lr = self.lr
        with self._autocast():
            output = self.forward_fn(self._net, batch)
            loss = self.loss_fn(output, batch.y)
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            got = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"loss_fn must return a scalar tensor, got {got}")
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler_enabled else loss).backward()
        if self.scaler_enabled:
            self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        grad_norm = get_total_norm(grads) if grads else torch.zeros(())
        local = {"loss": float(loss.detach()), **self._metric_values(output, batch.y)}
        shown = local
        if self._env is not None:  # the logs show averages over the ranks
            sums = ddp.all_reduce_sum(list(local.values()), self.device)
            shown = {k: s / self._env.world_size for k, s in zip(local, sums, strict=True)}
        logs = {
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch_in_epoch,
            "loss": shown["loss"],
            "grad_norm": float(grad_norm),
            "lr": lr,
            "batch_size": batch.size,
        }
        self._emit("on_after_backward", logs)  # may raise (policy "stop") or mark "skipped"
        if logs.get("skipped"):
            self.optimizer.zero_grad(set_to_none=True)
            self._totals.skipped += 1
        else:
            if self.grad_clip is not None and grads and math.isfinite(logs["grad_norm"]):
                clip_grads_with_norm_(self.model.parameters(), self.grad_clip, grad_norm)
            self._updating = True
            if self.scaler_enabled:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self._updating = False
            self._totals.add(local.pop("loss"), batch.size, local)
        logs.update({k: v for k, v in shown.items() if k != "loss"})
        self.step += 1
        self.batch_in_epoch += 1
        logs["time"] = time.perf_counter() - started
        return logs

    def _metric_values(self, output, target) -> dict[str, float]:
        if not self.metrics:
            return {}
        with torch.no_grad():
            out = output.detach() if isinstance(output, Tensor) else output
            return {name: float(fn(out, target)) for name, fn in self.metrics.items()}

    def _epoch_logs(self, val_loader, seconds: float) -> dict:
        totals = self._totals
        sums = [totals.loss, totals.samples, *(totals.metrics or {}).values()]
        if self._env is not None:
            sums = ddp.all_reduce_sum(sums, self.device)
        samples = sums[1]
        mean = lambda s: s / samples if samples else float("nan")
        logs = {"epoch": self.epoch, "loss": mean(sums[0])}
        metrics = {k: mean(s) for k, s in zip(totals.metrics or {}, sums[2:], strict=True)}
        if val_loader is not None:
            result = self.evaluate(val_loader)
            logs["val_loss"] = result["loss"]
            metrics.update({f"val_{k}": v for k, v in result["metrics"].items()})
        logs.update(
            metrics=metrics,
            lr=self.lr,
            time=seconds,
            steps=self.batch_in_epoch,
            skipped=totals.skipped,
        )
        return logs

    @torch.no_grad()
    def evaluate(self, data, batch_size: int = 32) -> dict:
        """Mean loss and metrics over ``data`` (a DataLoader or tensors), in eval mode.

        Returns ``{"loss": float, "metrics": {name: float}}``; averaged over all ranks when
        distributed.
        """
        if self.device is None:
            self._prepare_run()
        loader = self._as_loader(data, batch_size, False, "val")
        was_training = self._net.training
        self._net.eval()
        sums = [0.0, 0.0] + [0.0] * len(self.metrics)
        try:
            for raw in loader:
                batch = self.batch_fn(raw).to(self.device)
                with self._autocast():
                    output = self.forward_fn(self._net, batch)
                    loss = float(self.loss_fn(output, batch.y))
                n = batch.size
                sums[0] += loss * n
                sums[1] += n
                for i, fn in enumerate(self.metrics.values()):
                    sums[2 + i] += float(fn(output, batch.y)) * n
        finally:
            self._net.train(was_training)
        if self._env is not None:
            sums = ddp.all_reduce_sum(sums, self.device)
        mean = lambda s: s / sums[1] if sums[1] else float("nan")
        metrics = dict(zip(self.metrics, map(mean, sums[2:]), strict=True))
        return {"loss": mean(sums[0]), "metrics": metrics}

    # ---- step boundaries ------------------------------------------------------------------

    def _at_step_boundary(self) -> bool:
        """Apply requests from other threads; True when the run must end here."""
        if self._pause_requested and not (self._stop_requested or self._sigint):
            self.status = "paused"
            self._resume.wait()
            self.status = "running"
        self._apply_pending_lr()
        return self._end_requested()

    def _end_requested(self) -> bool:
        flags = [self._stop_requested, self._sigint, self.stop_training]
        if self._env is not None:  # every rank must end at the same step
            flags = [v > 0 for v in ddp.all_reduce_sum([float(f) for f in flags], self.device)]
            self._stop_requested, self._sigint, self.stop_training = flags
        return any(flags)

    def _apply_pending_lr(self) -> None:
        with self._lock:
            lr, self._pending_lr = self._pending_lr, None
        if lr is None:
            return
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        event = {"event": "set_lr", "step": self.step, "lr": lr}
        if self.scheduler_active:
            self.scheduler_active = False
            event["scheduler"] = "stopped"
        self.history.events.append(event)

    def _install_sigint_handler(self):
        if threading.current_thread() is not threading.main_thread():
            return None  # signals reach the main thread only; stop() works from anywhere

        def on_sigint(signum, frame):
            if self._sigint:  # second Ctrl+C: interrupt now
                raise KeyboardInterrupt
            self._sigint = True
            self._resume.set()

        return signal.signal(signal.SIGINT, on_sigint)

    # ---- set-up ---------------------------------------------------------------------------

    def _prepare_run(self) -> None:
        self._env = ddp.setup(self.distributed)
        if self._env is not None and (self.device is None or self.device.type == "cuda"):
            self.device = ddp.device_for(self._env)
        if self.device is None:
            first = next(self.model.parameters(), None)
            self.device = first.device if first is not None else torch.device("cpu")
        self.model.to(self.device)
        if self._env is not None:
            self._net = ddp.wrap(self.model, self.device)
        if self.amp and self.scaler is None:
            fp16 = self.amp in (True, "fp16") and self.device.type == "cuda"
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)

    @contextlib.contextmanager
    def _autocast(self):
        if not self.amp:
            yield
            return
        fp16 = self.amp in (True, "fp16") and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.float16 if fp16 else torch.bfloat16):
            yield

    def _as_loader(self, data, batch_size: int, shuffle: bool, role: str) -> DataLoader:
        if isinstance(data, DataLoader):
            loader = data
        elif isinstance(data, (tuple, list)) and len(data) in (2, 3):
            if not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
            check_tensors(*data, role=role)
            self._check_dtypes(data[0], data[1], role)
            loader = DataLoader(TensorData(*data), batch_size=batch_size, shuffle=shuffle)
        else:
            raise TypeError(
                f"{role} data must be a DataLoader or a tuple (x, y) / (x, y, lengths) of tensors, "
                f"got {type(data).__name__}"
            )
        if self._env is not None:
            loader = ddp.distribute_loader(loader, self._env)
        return loader

    def _check_dtypes(self, x, y, role: str) -> None:
        if self.loss_name is not None:
            try:
                names.check_target_dtype(self.loss_name, y)
            except ValueError as err:
                raise ValueError(f"{role} data: {err}") from None
        params = next(self.model.parameters(), None)
        for name, t in leaves(x, "x"):
            if params is not None and t.is_floating_point() and t.dtype != params.dtype:
                raise ValueError(
                    f"{role} data: {name} has dtype {t.dtype} but the model's parameters are "
                    f"{params.dtype}; convert one of them (e.g. x.to({params.dtype}))"
                )

    # ---- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything a checkpoint holds (see :mod:`rnnkit.checkpoint`)."""
        model = ddp.unwrap(self._net)
        sampler = _stateful_sampler(self._loader)
        return {
            "model": model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scheduler_active": self.scheduler_active,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "sampler": sampler.state_dict() if sampler is not None else None,
            "rng": get_rng_state(),
            "epoch_rng": self._epoch_rng,
            "epoch_totals": self._totals.state_dict(),
            "history": self.history.to_dict(),
            "callbacks": {
                f"{i}:{type(cb).__name__}": cb.state_dict()
                for i, cb in enumerate(self.callbacks)
                if hasattr(cb, "state_dict") and not isinstance(cb, (History, LRSchedule))
            },
            "config": {
                "model_class": type(model).__name__,
                "optimizer_class": type(self.optimizer).__name__,
                "grad_clip": self.grad_clip,
                "amp": self.amp,
                "nonfinite": self.guard.policy,
                "world_size": self._env.world_size if self._env else 1,
                "torch": str(torch.__version__),
            },
        }

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write a checkpoint atomically (rank 0 only, between barriers when distributed)."""
        ddp.barrier()
        if self.is_main_process:
            save_checkpoint(path, self.state_dict())
        ddp.barrier()
        return Path(path)

    def _restore(self, resume, loader: DataLoader) -> dict | None:
        """Load a checkpoint into the run; returns the replay info for a mid-epoch resume."""
        source = str(resume) if isinstance(resume, (str, Path)) else "the checkpoint"
        state = resume if isinstance(resume, dict) else load_checkpoint(resume)
        model = ddp.unwrap(self._net)
        saved_class = state.get("config", {}).get("model_class")
        load_model_state(model, state["model"], source=f"{source} (a {saved_class})")
        self.optimizer.load_state_dict(state["optimizer"])
        if (state["scheduler"] is None) != (self.scheduler is None):
            has = "has" if state["scheduler"] is not None else "has no"
            raise ValueError(
                f"{source} {has} LR scheduler state but this Trainer "
                f"{'has none' if self.scheduler is None else 'has one'}; build the Trainer as "
                "the checkpointed run was built"
            )
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler_active = state["scheduler_active"]
        if state["scaler"] is not None and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.batch_in_epoch = state["batch_in_epoch"]
        self.history.load_state_dict(state["history"])
        for key, cb_state in state["callbacks"].items():
            index, name = key.split(":", 1)
            cb = self.callbacks[int(index)] if int(index) < len(self.callbacks) else None
            if cb is not None and type(cb).__name__ == name:
                cb.load_state_dict(cb_state)
        totals = state["epoch_totals"]
        self._totals = _Totals(
            totals["loss"], totals["samples"], totals["skipped"], dict(totals["metrics"])
        )
        self._epoch_rng = state["epoch_rng"]
        sampler = _stateful_sampler(loader)
        if sampler is not None and state["sampler"] is not None:
            sampler.load_state_dict(state["sampler"])
        if self.batch_in_epoch == 0:  # at an epoch boundary: a normal epoch start follows
            set_rng_state(state["rng"])
            return None
        if sampler is not None:  # the sampler resumes its own position
            set_rng_state(state["rng"])
            return {"skip": 0, "epoch_rng": None, "rng": None}
        return {"skip": self.batch_in_epoch, "epoch_rng": state["epoch_rng"], "rng": state["rng"]}

    def _replay(self, loader: DataLoader, replay: dict):
        """The epoch's iterator, positioned after the batches done before the checkpoint."""
        if replay["epoch_rng"] is not None:
            set_rng_state(replay["epoch_rng"])
        batches = iter(loader)
        for _ in range(replay["skip"]):
            next(batches)
        if replay["rng"] is not None:
            set_rng_state(replay["rng"])
        return batches

    def _emit(self, event: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)


def _length(loader: DataLoader) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def _set_epoch(loader: DataLoader, epoch: int) -> None:
    for part in (loader.sampler, loader.batch_sampler):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)


def _stateful_sampler(loader: DataLoader | None):
    if loader is None:
        return None
    for part in (loader.batch_sampler, loader.sampler):
        if hasattr(part, "state_dict") and hasattr(part, "load_state_dict"):
            return part
    return None
