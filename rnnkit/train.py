"""The training engine: :class:`Trainer`, its step loop and step-boundary control.

One training step, in this order (see :meth:`Trainer._train_step`)::

    batch  = batch_fn(raw)                     # (x, y) / (x, y, lengths) / {"x", "y", "lengths"}
    output = forward_fn(model, batch)          # model(x), model(x, lengths=...), or, stateful,
                                               # model(x, state) -> (output, state)
    check output against y                     # named losses: shapes and label range, on the host
    loss   = loss_fn(output, y)
    loss.backward()                            # scaled by the GradScaler under fp16 autocast
    grad_norm = ||gradients of the optimizer's parameters||_2
    on_after_backward(logs)                    # only callbacks that define it; may mark "skipped"
    clip to trainer.grad_clip                  # read every step; None = off
    snapshot; optimizer.step(); check          # UpdateGuard: a non-finite loss, gradient or
                                               # parameter undoes the update bit-exactly
    on_batch_end(logs)                         # plain floats, read from the device in one go

**Values stay on the device.** A step's loss, gradient norm and metrics are device tensors until
the step is *resolved* (:mod:`rnnkit.accounting`): on a CPU at once; on a GPU, when only rnnkit's
own callbacks listen, one step late — just before the next update, after the next forward and
backward are queued, so reading them does not stall the device. The epoch's sums are read once,
at its end. Under DDP the ranks agree on stop requests one step boundary late, without a blocking
collective per step (:class:`rnnkit.distributed.FlagExchange`).

Between two steps (a *step boundary*) the trainer applies what other threads asked for:
``set_lr``, ``pause`` (the loop waits on an Event, no busy-waiting), ``stop``, ``copy_model`` and
Ctrl+C / Kernel Interrupt. A stopped or interrupted run ends there: the parameters are those after
the last completed step, the history is kept, ``on_interrupt`` runs (``ModelCheckpoint`` writes
``interrupted.pt``, which holds the state as of that boundary even when Ctrl+C lands inside a
step), the SIGINT handler is restored and ``sys.exit`` is never called.

**Ctrl+C re-raises.** After that clean-up ``fit`` re-raises ``KeyboardInterrupt``, so "Run All"
stops at the interrupted cell while the trainer, model and history stay usable in the kernel.
``trainer.stop()`` (a button, a callback) returns normally and ``fit`` returns the history.
A second Ctrl+C during one step interrupts at once (for a step that hangs); if that lands inside
``optimizer.step()`` no checkpoint is written (``trainer.clean_stop`` is False).

**Stateful training** (``stateful=True``; Keras' ``stateful=True``, the char-rnn/AWD-LSTM
scheme): the model's forward is ``forward(x, state=None) -> (output, state)``; the state one
window returns starts the next, detached (truncated backpropagation through time), and is reset
to ``None`` at each epoch's start. Evaluation resets it once and carries it through the whole
validation data in order. Batches must come in order (no shuffling) with a fixed batch size (the
number of streams); checkpoints hold the carried state.

**Exact resume** is :mod:`rnnkit.resume`'s business.
"""

from __future__ import annotations

import contextlib
import copy
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from rnnkit import distributed as ddp
from rnnkit import loaders, names, resume
from rnnkit.accounting import EpochSums, StepRecord, batch_stats
from rnnkit.batches import Batch, default_batch_fn, default_forward_fn, stateful_forward, to_device
from rnnkit.callbacks import (
    Callback,
    History,
    LRSchedule,
    ModelCheckpoint,
    NonFiniteGuard,
    ProgressBar,
)
from rnnkit.clipping import first_nonfinite, first_nonfinite_gradient
from rnnkit.control import Requests
from rnnkit.seeding import get_rng_state, set_rng_state
from rnnkit.tbptt import detach_state
from rnnkit.update_guard import UpdateGuard

STATUSES = ("idle", "running", "paused", "stopped", "finished", "failed")


class Trainer:
    """Train a model with an optimizer and a loss, observably and interruptibly.

    Args:
        model: the module; ``forward_fn(model, batch)`` computes its output.
        optimizer: a ``torch.optim`` optimizer; it must hold some of the model's parameters
            (parameters outside the model, e.g. a loss's, are trained, clipped and guarded too).
        loss_fn: ``loss(output, target) -> scalar``, a ``torch.nn`` loss module, or a name from
            :mod:`rnnkit.names`. Named losses and torch's loss modules are checked against
            every batch's output and target (shapes, label range); custom callables are not.
        metrics: names (``"accuracy"``, ``"balanced_accuracy"``, ``"mae"``, ``"mse"``,
            ``"perplexity"``, ``"bits_per_token"``/``"bits_per_char"``), callables or
            ``{name: fn}``. The epoch's loss and metrics are means weighted by what the loss
            averages over (target elements, or labels that are not ignored: tokens for a language
            model; samples for custom callables), exact over the epoch (see
            :mod:`rnnkit.names`); on validation data as ``val_<name>``.
        callbacks: :class:`rnnkit.Callback` objects, called after the built-in ones.
        device: where to train; None keeps the model where it is (``cuda:LOCAL_RANK`` under
            torchrun with GPUs).
        grad_clip: max global gradient norm; ``trainer.grad_clip`` is read every step.
        amp: mixed precision: True/"fp16" (fp16 autocast and a GradScaler on CUDA; bf16 on
            CPU), "bf16", or False.
        nonfinite: "stop" or "skip": what a step whose loss, gradient or updated parameters are
            NaN/inf does (:class:`NonFiniteGuard`); either way that update is undone.
        scheduler, scheduler_interval: a torch LR scheduler stepped per "batch" or per "epoch"
            (never for a skipped step).
        checkpoint: a folder (or a :class:`ModelCheckpoint`) for last/best/interrupted checkpoints.
        progress: show a ``tqdm.auto`` progress bar.
        forward_fn: ``fn(model, batch: Batch) -> output`` (stateful: ``fn(model, batch, state)
            -> (output, state)``), for models called differently.
        batch_fn: ``fn(raw_batch) -> Batch``, for loaders yielding other layouts.
        distributed: "auto" (join a torchrun run when there is one), True, or False.
        stateful: carry the recurrent state across batches (module doc).

    ``fit`` may run in a thread of its own (a panel's Start button does); call
    ``torch.set_num_threads`` in that thread, since OpenMP keeps its thread count per thread.
    Control from any thread, effective at the next step boundary: :meth:`stop`, :meth:`pause`,
    :meth:`unpause`, :meth:`set_lr`, :meth:`copy_model`; ``grad_clip`` may be set at any time.
    ``status`` is one of "idle", "running", "paused", "stopped", "finished", "failed" (``error``
    holds the exception).
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
        forward_fn: Callable | None = None,
        batch_fn: Callable[[Any], Batch] | None = None,
        distributed: str | bool = "auto",
        stateful: bool = False,
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
        self._params = _trained_parameters(model, optimizer)
        self.loss = names.loss_spec(loss_fn)
        self.loss_fn = self.loss.fn
        self.loss_name = loss_fn if isinstance(loss_fn, str) else None
        self.metrics = names.resolve_metrics(metrics)
        self._metric_specs = names.metric_specs(metrics)
        self.device = torch.device(device) if device is not None else None
        self.grad_clip = grad_clip
        self.amp = amp
        self.scheduler = scheduler
        self.stateful = bool(stateful)
        self.forward_fn = forward_fn or (stateful_forward if stateful else default_forward_fn)
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
        self.carried_state = None  # stateful: the state the next window starts from
        self.defer_reads = False  # read step values one step late (module doc); set per run
        self._reads_override: bool | None = None  # tests force a choice
        self._after_backward: list[Callback] = []
        self._thread: threading.Thread | None = None
        self._streams: int | None = None  # stateful: rows per batch this epoch
        self._net: nn.Module = model
        self._env: ddp.DistEnv | None = None
        self._flags: ddp.FlagExchange | None = None
        self._sums = EpochSums({k: m for k, (m, _) in self._metric_specs.items()})
        self._update_guard = UpdateGuard(optimizer, self._params)
        self._pending: StepRecord | None = None
        self._boundary: dict | None = None  # RNG and carried state when the running step began
        self._keep_boundary = False  # whether to take _boundary at every step (_choose_reads)
        self._in_step = False
        self._epoch_start: dict | None = None  # what replays the running epoch's data order
        self._loader = None
        self.requests = Requests()
        self._updating = False

    # ---- control from other threads (rnnkit.control) ------------------------------------

    def stop(self) -> None:
        """End the run at the next step boundary (returns at once; ``fit`` returns normally)."""
        self.requests.ask_stop()

    def pause(self) -> None:
        """Hold the loop at the next step boundary until :meth:`unpause` (or :meth:`stop`)."""
        self.requests.ask_pause()

    def unpause(self) -> None:
        """Let a paused loop continue."""
        self.requests.ask_unpause()

    def set_lr(self, lr: float) -> None:
        """Set every parameter group's learning rate from the next step on (recorded in
        ``history.events``). A running LR schedule stops: manual control wins."""
        self.requests.ask_lr(names.check_lr(lr))
        if self.status not in ("running", "paused"):
            self._apply_pending_lr()

    def copy_model(self, timeout: float | None = None) -> nn.Module:
        """A deep copy of the model as of a step boundary.

        While a run is in progress in another thread, the copy is taken at its next step
        boundary (this call waits for it), so that using the copy — sampling from it, say —
        cannot touch the running job or its random numbers. Otherwise the model is copied now.
        """
        if threading.current_thread() is not self._thread:
            answered, copied = self.requests.ask_copy(timeout)
            if answered:
                return copied
        return self._copy()

    def _copy(self) -> nn.Module:
        return copy.deepcopy(ddp.unwrap(self._net))

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
        shuffle: bool | None = None,
        drop_last: bool = False,
        max_steps: int | None = None,
    ) -> History:
        """Train for ``epochs`` more epochs; with ``resume``, up to ``epochs`` in total; blocks.

        Calling ``fit`` again continues the counters and the history; an epoch that a stop cut
        short starts over (resuming from a checkpoint continues it exactly instead).

        ``train``/``val``: DataLoaders, batch sources (:mod:`rnnkit.loaders`), or tensors
        ``(x, y)`` / ``(x, y, lengths)`` batched by ``batch_size`` (train shuffled iff
        ``shuffle``, which defaults to True, False when stateful; the last short batch dropped
        iff ``drop_last``, which also decides how a distributed run splits an uneven data set:
        see :mod:`rnnkit.distributed`). ``resume``: a checkpoint path or dict.
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
        shuffle = (not self.stateful) if shuffle is None else shuffle
        self._thread = threading.current_thread()
        self.requests.open()
        try:
            self._prepare_run()
            train_loader = self._make_loader(train, batch_size, shuffle, drop_last, "train")
            val_loader = None
            if val is not None:
                val_loader = self._make_loader(val, batch_size, False, False, "val")
            self._loader = train_loader
            self.steps_per_epoch = loaders.length(train_loader)
            if resume is not None:
                replay = self._restore(resume, train_loader)
                self.epochs, self.max_steps = epochs, max_steps
            else:  # more epochs; an epoch a stop cut short starts over
                replay, self.batch_in_epoch = None, 0
                self.epochs = self.epoch + epochs
                self.max_steps = None if max_steps is None else self.step + max_steps
        except BaseException as exc:
            self.status, self.error = "failed", exc
            self.requests.close(self._copy)
            raise
        self.requests.reset()
        self.stop_training = self.interrupted = False
        self.clean_stop, self.error = True, None
        self.status = "running"
        self._choose_reads()
        previous_handler = self.requests.install_sigint_handler()
        try:
            self._emit("on_fit_begin")
            while self.epoch < self.epochs and not self._end_requested(at_once=True):
                if not self._run_epoch(train_loader, val_loader, replay):
                    break
                replay = None
            if self.requests.ending:
                self._end_interrupted()
            else:
                self.status = "finished"
        except KeyboardInterrupt:  # a second Ctrl+C, or one outside our handler
            self.clean_stop = not self._updating
            self.requests.sigint = True
            self._end_interrupted()
        except BaseException as exc:
            self.status, self.error = "failed", exc
            self._emit("on_exception", exc)
            raise
        finally:
            self._updating = False
            self.requests.close(self._copy)
            if self._flags is not None:
                self._flags.drain()
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
            self._emit("on_fit_end")
        if self.requests.sigint:
            raise KeyboardInterrupt("training interrupted; trainer, model and history are kept")
        return self.history

    def _end_interrupted(self) -> None:
        self.status, self.interrupted = "stopped", True
        self._emit("on_interrupt")  # _boundary stays: a later save resumes the aborted step

    def _run_epoch(self, train_loader, val_loader, replay: dict | None) -> bool:
        """One epoch; False if the run ended at a step boundary inside it."""
        started = time.perf_counter()
        if replay is None:
            loaders.set_epoch(train_loader, self.epoch)
            self._epoch_start = resume.epoch_start(train_loader)
            self._sums = EpochSums(self._sums.metrics)
            self.carried_state = None
            batches = iter(train_loader)
        else:
            batches = resume.replay(train_loader, replay)
        self._streams = None
        self._emit("on_epoch_begin", self.epoch)
        while True:
            if self._at_step_boundary():
                return False
            self._in_step = True
            if self._keep_boundary:
                self._boundary = {"rng": get_rng_state(), "carried_state": self.carried_state}
            raw = next(batches, None)
            if raw is None:
                self._in_step, self._boundary = False, None
                break
            self._emit("on_batch_begin", self.batch_in_epoch)
            self._train_step(raw)
            if self.max_steps is not None and self.step >= self.max_steps:
                self.stop_training = True
        self._resolve_pending()
        epoch_logs = self._epoch_logs(val_loader, time.perf_counter() - started)
        self.epoch += 1
        self.batch_in_epoch = 0
        self._emit("on_epoch_end", epoch_logs)
        return True

    def _train_step(self, raw) -> None:
        started = time.perf_counter()
        batch = self.batch_fn(raw)
        if not self._net.training:
            self._net.train()
        with self._autocast():
            output = self._forward(batch)
            target = self._target(batch.y, output, "train")
            loss = self.loss.fn(output, target)
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            got = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"loss_fn must return a scalar tensor, got {got}")
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler_enabled else loss).backward()
        if self.scaler_enabled:
            self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self._params if p.grad is not None]
        grad_norm = get_total_norm(grads) if grads else loss.new_zeros(())
        stats = self._stats(output, target, batch.size, loss)
        self._resolve_pending()  # the previous step, before this update changes anything
        record = StepRecord(
            {
                "step": self.step,
                "epoch": self.epoch,
                "batch": self.batch_in_epoch,
                "lr": self.lr * self._lr_factor(batch),
                "batch_size": batch.size,
            },
            {"loss": loss, "grad_norm": grad_norm, **self._metric_values(stats)},
        )
        if self._after_backward:
            logs = record.resolve()
            self._emit("on_after_backward", logs, only=self._after_backward)
            if logs.get("skipped"):
                record.logs["skipped"] = True
        if not record.logs.get("skipped"):
            record.ok = self._update(loss, grad_norm, grads, batch)
        if self.defer_reads:  # kept or not is known on the device only
            kept = record.ok if record.ok is not None else torch.zeros((), dtype=torch.bool)
            self._sums.add(stats, kept.to(loss.device))
        else:
            record.stats = stats  # added once the step is read (_finish_step)
        self.step += 1
        self.batch_in_epoch += 1
        self._in_step, self._boundary = False, None
        record.logs["time"] = time.perf_counter() - started
        if self.defer_reads:
            self._pending = record
        else:
            self._finish_step(record)

    def _forward(self, batch: Batch):
        batch = Batch(to_device(batch.x, self.device), batch.y, batch.lengths)
        if not self.stateful:
            return self.forward_fn(self._net, batch)
        if self._streams is None:
            self._streams = batch.size
        elif batch.size != self._streams:
            raise ValueError(
                f"stateful training carries one state per stream, so every batch needs the same "
                f"number of rows: the epoch began with {self._streams}, this batch has "
                f"{batch.size}. Drop the short last batch (drop_last=True) or use "
                "rnnkit.bptt_batches"
            )
        output, state = self.forward_fn(self._net, batch, self.carried_state)
        self.carried_state = detach_state(state)
        return output

    def _target(self, y, output, role: str):
        """``y`` checked against ``output`` on the host, then moved to the device."""
        try:
            self.loss.spec.check(self.loss.name, output, y)
        except ValueError as err:
            raise type(err)(f"{role} data: {err}") from None
        return to_device(y, self.device)

    def _stats(self, output, target, batch_size: int, loss: Tensor) -> dict[str, Tensor]:
        return batch_stats(self.loss, self._metric_specs, output, target, batch_size, loss)

    def _metric_values(self, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: metric.value(stats[name]) for name, (metric, _) in self._metric_specs.items()}

    def _lr_factor(self, batch: Batch) -> float:
        """AWD-LSTM's learning rate scaled by window length (Merity et al. 2017), for batch
        sources with variable windows; 1 otherwise."""
        source = self._loader
        if not getattr(source, "variable", False) or not isinstance(batch.x, Tensor):
            return 1.0
        return batch.x.shape[-1] / source.seq_len

    def _update(self, loss: Tensor, grad_norm: Tensor, grads, batch: Batch) -> Tensor:
        """Clip, step and check; returns the device flag ``ok`` (the update was kept)."""
        if self.grad_clip is not None and grads:
            clip_grads_with_norm_(self._params, self.grad_clip, grad_norm)
        factor = self._lr_factor(batch)
        if factor != 1.0:
            base = [group["lr"] for group in self.optimizer.param_groups]
            for group in self.optimizer.param_groups:
                group["lr"] = group["lr"] * factor
        self._update_guard.snapshot()
        self._updating = True
        try:
            if self.scaler_enabled:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        except BaseException:
            self._update_guard.restore()  # never leave a half-applied update behind
            raise
        finally:
            self._updating = False
            if factor != 1.0:
                for group, lr in zip(self.optimizer.param_groups, base, strict=True):
                    group["lr"] = lr
        gradients_count = not self.scaler_enabled  # a scaler skips inf gradients itself
        ok = self._update_guard.check(loss, grad_norm if gradients_count else loss.detach())
        if self.defer_reads:
            self._update_guard.restore_on_device(ok)
        return ok

    def _finish_step(self, record: StepRecord) -> None:
        """Read the step's values, undo a non-finite update's host state, tell the callbacks."""
        marked = bool(record.logs.get("skipped"))  # by an on_after_backward callback
        logs = record.resolve()
        if marked:
            self.optimizer.zero_grad(set_to_none=True)
            self.guard.skipped += 1
        elif logs.get("skipped"):
            culprit = first_nonfinite_gradient(self._named_params())
            if self.defer_reads:
                self._update_guard.restore_host()
            else:
                culprit = culprit or first_nonfinite(self._named_params())
                self._update_guard.restore()
            self.guard.on_skipped(self, logs, culprit)  # "stop" raises; "skip" counts
        if record.stats is not None:
            if logs.get("skipped"):
                self._sums.skipped += 1
            else:
                self._sums.add(record.stats, None)
        self._emit("on_batch_end", logs)

    def _named_params(self) -> list[tuple[str, Tensor]]:
        names_of = {id(p): n for n, p in ddp.unwrap(self._net).named_parameters()}
        return [
            (names_of.get(id(p), f"optimizer parameter {i}"), p) for i, p in enumerate(self._params)
        ]

    def _resolve_pending(self) -> None:
        record, self._pending = self._pending, None
        if record is not None:
            self._finish_step(record)

    def _choose_reads(self) -> None:
        """Defer step reads by one step only on a GPU, and only when every callback is one of
        rnnkit's (which accept it); a user's on_batch_end/on_after_backward sees each step at
        once. ``trainer._reads_override = True/False`` forces a choice (tests)."""
        custom = [
            cb
            for cb in self.callbacks
            if not getattr(cb, "deferrable", False)
            and (_overrides(cb, "on_batch_end") or _overrides(cb, "on_after_backward"))
        ]
        self._after_backward = [cb for cb in self.callbacks if _overrides(cb, "on_after_backward")]
        if self._reads_override is None:
            self.defer_reads = self.device.type == "cuda" and not custom
        else:
            self.defer_reads = self._reads_override
        # A checkpoint can be written while a step is in flight only by on_interrupt (Ctrl+C
        # inside a step) or by a deferred on_batch_end; only then is the state at each step's
        # start worth taking (the generators' state costs ~40 us to read).
        self._keep_boundary = self.defer_reads or any(
            _overrides(cb, "on_interrupt") for cb in self.callbacks
        )

    def _epoch_logs(self, val_loader, seconds: float) -> dict:
        totals = self._sums.read(self.device, self._env is not None)
        logs = {"epoch": self.epoch, "loss": totals["loss"]}
        metrics = dict(totals["metrics"])
        if val_loader is not None:
            result = self.evaluate(val_loader)
            logs["val_loss"] = result["loss"]
            metrics.update({f"val_{k}": v for k, v in result["metrics"].items()})
        logs.update(
            metrics=metrics,
            lr=self.lr,
            time=seconds,
            steps=self.batch_in_epoch,
            skipped=totals["skipped"],
        )
        return logs

    @torch.no_grad()
    def evaluate(self, data, batch_size: int = 32) -> dict:
        """Mean loss and metrics over ``data`` (a DataLoader, batch source or tensors), in eval
        mode; weighted as in training, every sample counted once over all ranks. A stateful
        model starts from a reset state and carries it through the data in order. The global
        random generators are left as they were, so validating does not change training.

        Returns ``{"loss": float, "metrics": {name: float}}``.
        """
        if self.device is None:
            self._prepare_run()
        if isinstance(data, (tuple, list)) or loaders.is_batch_source(data):
            data = self._make_loader(data, batch_size, False, False, "val")
        elif self._env is not None:
            data = ddp.shard_loader_for_eval(data, self._env)
        model = ddp.unwrap(self._net)  # no collectives: ranks may have unequal shares
        was_training = model.training
        model.eval()
        rng = get_rng_state()  # iterating a DataLoader draws from it: keep training's draws
        sums = EpochSums(self._sums.metrics)
        state = None
        try:
            for raw in data:
                batch = self.batch_fn(raw)
                batch = Batch(to_device(batch.x, self.device), batch.y, batch.lengths)
                with self._autocast():
                    if self.stateful:
                        output, state = self.forward_fn(model, batch, state)
                    else:
                        output = self.forward_fn(model, batch)
                    target = self._target(batch.y, output, "val")
                    loss = self.loss.fn(output, target)
                sums.add(self._stats(output, target, batch.size, loss), None)
        finally:
            model.train(was_training)
            set_rng_state(rng)
        result = sums.read(self.device, self._env is not None)
        return {"loss": result["loss"], "metrics": result["metrics"]}

    # ---- step boundaries ------------------------------------------------------------------

    def _at_step_boundary(self) -> bool:
        """Apply requests from other threads; True when the run must end here."""
        if self.requests.pause and not self.requests.ending:
            self._resolve_pending()
            self.status = "paused"
            self.requests.wait_while_paused(self._copy)
            self.status = "running"
        self._apply_pending_lr()
        self.requests.answer_copies(self._copy)
        return self._end_requested()

    def _end_requested(self, at_once: bool = False) -> bool:
        """Whether the run ends here. Under DDP every rank must end at the same boundary: the
        ranks agree on the flags one boundary late (no wait per step), or ``at_once`` (between
        epochs) with a blocking all-reduce."""
        req = self.requests
        flags = [req.stop, req.sigint, self.stop_training]
        if self._flags is not None:
            agreed = self._flags.agree(flags) if at_once else self._flags.exchange(flags)
            if not any(agreed):
                return False
            flags = [a or f for a, f in zip(agreed, flags, strict=True)]
            req.stop, req.sigint, self.stop_training = flags
        if any(flags):
            self._resolve_pending()
        return any(flags)

    def _apply_pending_lr(self) -> None:
        lr = self.requests.take_lr()
        if lr is None:
            return
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        event = {"event": "set_lr", "step": self.step, "lr": lr}
        if self.scheduler_active:
            self.scheduler_active = False
            event["scheduler"] = "stopped"
        self.history.events.append(event)

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
            self._flags = ddp.FlagExchange(self.device)
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

    def _make_loader(self, data, batch_size, shuffle: bool, drop_last: bool, role: str):
        return loaders.trainer_loader(
            self, data, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, role=role
        )

    # ---- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything a checkpoint holds (see :mod:`rnnkit.resume`)."""
        return resume.trainer_state(self)

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write a checkpoint atomically (rank 0 only, between barriers when distributed)."""
        ddp.barrier()
        if self.is_main_process:
            resume.save(self, path)
        ddp.barrier()
        return Path(path)

    def _restore(self, checkpoint, loader) -> dict | None:
        return resume.restore(self, checkpoint, loader)

    def _emit(self, event: str, *args, only: list[Callback] | None = None) -> None:
        for cb in self.callbacks if only is None else only:
            getattr(cb, event)(self, *args)


def _overrides(callback: Callback, event: str) -> bool:
    return getattr(type(callback), event) is not getattr(Callback, event)


def _trained_parameters(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The optimizer's parameters (each once); an error when none belongs to ``model``."""
    params, seen = [], set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    own = {id(p) for p in model.parameters()}
    if own and not own & seen:
        raise ValueError(
            f"the optimizer holds none of the {type(model).__name__}'s parameters, so training "
            "would change nothing; build it from model.parameters() (parameters outside the "
            "model may be added beside them)"
        )
    return params
