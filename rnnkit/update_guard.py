r"""Undo an optimizer update that leaves a parameter non-finite, bit-exactly.

A step can overflow even when its loss and gradients are finite (a huge learning rate times a
finite gradient is inf), so checking the gradients is not enough to keep the weights finite.
:class:`UpdateGuard` copies the parameters and the optimizer's state before the update into
buffers allocated once (one ``torch._foreach_copy_``), and after it checks the update:

.. math::
    \mathrm{ok} = \mathrm{isfinite}(\text{loss}) \wedge \mathrm{isfinite}(\lVert g \rVert)
        \wedge \textstyle\bigwedge_p \mathrm{isfinite}(\lVert p \rVert_2)

with the parameters' norms taken in float64 in one ``torch._foreach_norm`` call: there they
cannot overflow for finite float32/float16/bfloat16 weights, so a norm is finite exactly when
every weight is (float64 weights beyond 1e154 would count as non-finite). When ``ok`` is False
the copies go back — the parameters and every optimizer state tensor are those before the step,
bit for bit — and the step counts as skipped. ``ok`` stays a device tensor:
:meth:`restore_on_device` applies the copy-back with ``torch.where`` (no host read; used when the
trainer defers its reads on a GPU), :meth:`restore` after a host read. State the optimizer keeps on
the host (``Adam``'s step counts are CPU tensors for CUDA parameters when it is neither fused
nor capturable; plain numbers) is copied too, and put back by :meth:`restore_host`, which needs
``ok`` on the host: the trainer reads it before the next update.

Measured on a CPU (LSTM T=50 B=32 H=64, Adam, about 3 ms per step): in isolation the snapshot
costs 20 us and the check 33 us; inside the Trainer's step, where the copies compete with the
step's own work for the cache, patching both out saved 100-170 us per step (3-6%, one-off
ablations of ``benchmarks/trainer_overhead.py``'s small case). No cheaper mechanism is exact for
every optimizer: checking the update before it is applied needs the optimizer's own arithmetic,
and a float32 norm first (float64 only when it overflows) saved 9 us in a micro-benchmark.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import Tensor


class UpdateGuard:
    """Snapshot before an optimizer step, check after it, restore if it went non-finite."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: Iterable[Tensor]) -> None:
        self.optimizer = optimizer
        self.params = list(params)
        self._tensors: list[Tensor] = []
        self._copies: list[Tensor] = []
        self._host: list[tuple[dict, str, object]] = []
        self._had_state: set[int] = set()

    def _live_tensors(self) -> tuple[list[Tensor], list[tuple[dict, str]]]:
        """The parameters and optimizer-state tensors on their devices, and the host-side state
        slots (CPU tensors of non-CPU parameters, and plain values)."""
        tensors, host = list(self.params), []
        for param, state in self.optimizer.state.items():
            for key, value in state.items():
                if isinstance(value, Tensor) and value.device == param.device:
                    tensors.append(value)
                else:
                    host.append((state, key))
        return tensors, host

    def snapshot(self) -> None:
        """Copy everything the update may change (call right before ``optimizer.step()``)."""
        tensors, host = self._live_tensors()
        if len(tensors) != len(self._tensors) or any(
            a is not b for a, b in zip(tensors, self._tensors, strict=True)
        ):  # first step, or the optimizer created its state: allocate the copies once
            self._tensors = tensors
            self._copies = [torch.empty_like(t) for t in tensors]
        with torch.no_grad():
            _copy(self._copies, self._tensors)
        self._host = [(state, key, _clone(state[key])) for state, key in host]
        self._had_state = {id(p) for p in self.optimizer.state}

    def check(self, loss: Tensor, grad_norm: Tensor) -> Tensor:
        """The device flag ``ok`` of the update just applied (see the module doc)."""
        with torch.no_grad():
            # the norm of a scalar is its magnitude: one call checks the loss and gradient too
            scalars = [loss.detach().reshape(1), grad_norm.reshape(1)]
            norms = torch._foreach_norm(scalars + self.params, 2, dtype=torch.float64)
            if any(n.device != norms[0].device for n in norms):
                norms = [n.to(norms[0].device) for n in norms]
            return torch.stack(norms).isfinite().all()

    def restore(self) -> None:
        """Put back everything :meth:`snapshot` copied (after ``ok`` was read as False)."""
        with torch.no_grad():
            _copy(self._tensors, self._copies)
        self.restore_host()

    def restore_on_device(self, ok: Tensor) -> None:
        """Keep the update where ``ok``, else put back the copies; no host read."""
        with torch.no_grad():
            for live, saved in zip(self._tensors, self._copies, strict=True):
                live.copy_(torch.where(ok.to(live.device), live, saved))

    def restore_host(self) -> None:
        """Put back the host-side optimizer state, and drop the state the update created (after
        ``ok`` was read as False)."""
        for param in [p for p in self.optimizer.state if id(p) not in self._had_state]:
            del self.optimizer.state[param]
        for state, key, value in self._host:
            if isinstance(value, Tensor) and isinstance(state.get(key), Tensor):
                state[key].copy_(value)
            else:
                state[key] = value


def _copy(destinations: list[Tensor], sources: list[Tensor]) -> None:
    if destinations:
        torch._foreach_copy_(destinations, sources)


def _clone(value: object) -> object:
    return value.clone() if isinstance(value, Tensor) else copy.deepcopy(value)
