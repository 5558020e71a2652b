"""CUDA graphs of the Triton engine's loops: captured once, replayed, cached within a memory budget.

A unit's forward loop (and, at its first backward, its backward loop) is ``T`` matrix products
and ``T`` kernel launches; launching them from Python costs more than they compute at the sizes
RNNs train at. :class:`Graphed` captures each loop once in a ``torch.cuda.CUDAGraph`` and replays
it, which launches the whole loop at once.

What a capture depends on is its cache key: the driver (cell kind, options, matrix-product
dtype), direction, whether it saves for backward, batch size, the input width and dtype, the
device, inference mode, the state's shapes and dtypes, and each recurrent weight's address,
shape, strides and dtype. ``T`` is rounded up to one of eight sizes per octave (``T <= 16``
exactly), so that length-bucketed batches share graphs: the extra steps are masked (``t >=
length`` for every row) and change nothing. The weights' *values* are not in the key: an
optimiser updates them in place and a replay reads them where they are (a new tensor has a new
address, hence a new key). Train/eval is not in the key either: it changes only the dropout
between layers, which runs outside the graphs.

Replays read and write static buffers, so nothing handed out may alias them: the inputs are
copied in; the outputs, final states and saved tensors are copied out; before a backward replay
the call's own saved tensors are copied back in. A layer called twice before one backward, or
windows whose outputs are kept, get their own values.

Captures are kept in least-recently-used order within a memory budget (what the captures and
their buffers hold on the device, measured when they are made); :func:`set_memory_budget` sets
it, :func:`clear` empties the cache. Where a capture fails, that configuration runs uncaptured
and :func:`rnnkit.explain_fast_path` shows the error.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor, nn

from rnnkit.engines.triton.driver import Backward, Forward

_state = {"enabled": True, "budget": None}
_cache: OrderedDict[tuple, Graphed] = OrderedDict()
_failures: OrderedDict[tuple, str] = OrderedDict()
_MAX_FAILURES = 64


def set_graphs(enabled: bool) -> None:
    """Capture the Triton engine's loops in CUDA graphs (default) or run them uncaptured."""
    _state["enabled"] = bool(enabled)


def set_memory_budget(nbytes: int | None) -> None:
    """The device memory the cached graphs may hold (None: the default, min(2 GiB, 1/8 of the
    device's memory)). Least recently used captures go first."""
    if nbytes is not None and nbytes < 0:
        raise ValueError(f"set_memory_budget: expected bytes >= 0 or None, got {nbytes}")
    _state["budget"] = nbytes
    _evict()


def clear() -> None:
    """Drop every captured graph (and the record of failed captures)."""
    _cache.clear()
    _failures.clear()


def cached() -> int:
    """How many captures the cache holds (forward and backward of one unit count as one)."""
    return len(_cache)


def held_bytes() -> int:
    """Device memory the cached captures hold, as measured when they were made."""
    return sum(entry.nbytes for entry in _cache.values())


def last_failure() -> str | None:
    """The error of the most recent capture that failed, if any."""
    return next(reversed(_failures.values()), None)


def rounded_steps(steps: int) -> int:
    """``steps`` rounded up to one of eight sizes per octave (exact up to 16)."""
    if steps <= 16:
        return steps
    quantum = 1 << (steps.bit_length() - 4)
    return -(-steps // quantum) * quantum


def usable(graphable: bool, weights, device: torch.device) -> str | None:
    """Why a unit's loops cannot be captured now, or None when they can (``graphable``: its
    driver has loops worth capturing)."""
    if not _state["enabled"]:
        return "CUDA graphs are off (rnnkit.engines.triton.set_graphs(False))"
    if device.type != "cuda":
        return "not on a CUDA device (CUDA graphs need one)"
    if not graphable:
        return "one kernel runs the whole sequence: nothing to capture"
    if torch.is_autocast_enabled("cuda"):
        return "autocast casts the weights anew on every call"
    if any(w is not None and not isinstance(w, nn.Parameter) for w in weights):
        return "the recurrent weights are new tensors on every call (e.g. WeightDrop)"
    if torch.cuda.is_current_stream_capturing():
        return "a CUDA graph capture is already under way (the caller's)"
    return None


def _key(driver, xp: Tensor, tensors, reverse: bool, save: bool) -> tuple:
    steps, batch, width = xp.shape
    parts = driver.state_parts
    return (
        driver,
        reverse,
        save,
        rounded_steps(steps),
        batch,
        width,
        xp.dtype,
        xp.device,
        torch.is_inference_mode_enabled(),
        tuple((s.shape, s.dtype) for s in tensors[:parts]),
        tuple(
            None if w is None else (w.data_ptr(), w.shape, w.stride(), w.dtype)
            for w in tensors[parts:]
        ),
    )


def runner(driver, xp: Tensor, lengths: Tensor, tensors, reverse: bool, save: bool):
    """The cached capture for this call (made now if new), or None where capturing failed."""
    key = _key(driver, xp, tensors, reverse, save)
    entry = _cache.get(key)
    if entry is not None:
        _cache.move_to_end(key)
        return entry
    if key in _failures:
        return None
    parts = driver.state_parts
    try:
        with torch.no_grad():  # the loops write into buffers (out=), as in the autograd function
            entry = Graphed(driver, xp, lengths, tensors[:parts], tensors[parts:], reverse, save)
    except Exception as error:  # a capture that fails leaves the uncaptured loop, which works
        _failures[key] = f"{type(error).__name__}: {error}"
        while len(_failures) > _MAX_FAILURES:
            _failures.popitem(last=False)
        warnings.warn(
            f"rnnkit: capturing a CUDA graph failed ({_failures[key]}); running uncaptured",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    _cache[key] = entry
    _evict()
    return entry


def _budget(device: torch.device) -> int:
    if _state["budget"] is not None:
        return _state["budget"]
    total = torch.cuda.get_device_properties(device).total_memory
    return min(2 << 30, total // 8)


def _evict() -> None:
    """Drop least recently used captures until the rest fit the budget (the newest stays)."""
    while len(_cache) > 1:
        newest = next(reversed(_cache.values()))
        if held_bytes() <= _budget(newest.device):
            return
        _cache.popitem(last=False)


def _capture(fn: Callable[[], object]) -> tuple[torch.cuda.CUDAGraph, object]:
    """Run ``fn`` once on a side stream (compiles the kernels, sets up cuBLAS), then capture
    it; returns the graph and the capture's outputs (static buffers)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        result = fn()
    return graph, result


class Graphed:
    """One unit's forward loop captured (its backward loop at the first backward), with the
    static buffers the replays read and write (module docstring)."""

    def __init__(self, driver, xp, lengths, state0, weights, reverse: bool, save: bool) -> None:
        self.driver, self.reverse, self.device = driver, reverse, xp.device
        steps, batch, width = xp.shape
        with torch.cuda.device(self.device):
            before = torch.cuda.memory_allocated(self.device)
            self.xp = xp.new_zeros(rounded_steps(steps), batch, width)
            self.lengths = torch.zeros_like(lengths)
            self.state0 = tuple(torch.zeros_like(s) for s in state0)
            self.graph, self.result = _capture(
                lambda: driver.forward(
                    self.xp, self.lengths, self.state0, weights, reverse=reverse, save=save
                )
            )
            self.nbytes = torch.cuda.memory_allocated(self.device) - before
        self.backward_graph: torch.cuda.CUDAGraph | None = None

    def forward(self, xp, lengths, state0, weights, save: bool) -> Forward:
        self.xp[: xp.shape[0]].copy_(xp)
        self.lengths.copy_(lengths)
        for static, value in zip(self.state0, state0, strict=True):
            static.copy_(value)
        self.graph.replay()
        saved = tuple(t.clone() for t in self.result.saved)
        return Forward(self.result.states, self.result.finals, saved)

    def _capture_backward(self, weights) -> None:
        states = self.result.states
        with torch.cuda.device(self.device):
            before = torch.cuda.memory_allocated(self.device)
            self.go = states.new_zeros(states.shape[0] - 1, *states.shape[1:])
            self.grads = tuple(torch.zeros_like(f) for f in self.result.finals)
            self.backward_graph, self.gradients = _capture(
                lambda: self.driver.backward(
                    self.go,
                    self.grads,
                    self.lengths,
                    weights,
                    self.result.saved,
                    reverse=self.reverse,
                )
            )
            self.nbytes += torch.cuda.memory_allocated(self.device) - before
        _evict()

    def backward(self, go, grads, lengths, weights, saved) -> Backward:
        if self.backward_graph is None:
            self._capture_backward(weights)
        for static, value in zip(self.result.saved, saved, strict=True):
            static.copy_(value)
        self.lengths.copy_(lengths)
        self.go[: go.shape[0]].copy_(go)
        for static, value in zip(self.grads, grads, strict=True):
            static.copy_(value)
        self.backward_graph.replay()
        g = self.gradients
        return Backward(
            g.inputs[: go.shape[0]].clone(),
            tuple(s.clone() for s in g.state0),
            tuple(None if w is None else w.clone() for w in g.weights),
        )
