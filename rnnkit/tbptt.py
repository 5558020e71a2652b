"""Truncated backpropagation through time: long sequences in chunks, the state carried over.

Backpropagation through a whole long sequence costs memory proportional to its length, and the
far-away gradients are mostly vanished anyway. Truncated BPTT (Williams & Peng 1990; Sutskever
2013, ch. 2 — here TBPTT(k, k): forward ``k`` steps, backward ``k`` steps) cuts the time axis
into chunks of ``k`` steps, runs the model over one chunk at a time starting from the state the
previous chunk ended with, and backpropagates within the chunk only: the carried state is
detached, so the graph (and memory) never spans more than ``k`` steps, while the forward pass
still sees the whole past. The same carrying makes stateful batches: batch ``n + 1`` continues
the sequences of batch ``n`` (language modelling on a long stream).

Two pieces, usable in a plain loop or by a training engine::

    state = None
    for chunk in rnnkit.tbptt(inputs, targets, k=50):
        output, state = model(chunk.x, rnnkit.detach_state(state))
        loss = loss_fn(output, chunk.y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from torch import Tensor

from rnnkit.padding import Lengths, check_lengths


class Chunk(NamedTuple):
    """One chunk of a batch: steps ``[start, stop)`` of the time axis.

    ``x`` and ``y`` keep the layout of the inputs (time-major, or batch-major with
    ``batch_first``); ``y`` is None without targets. ``lengths`` (with lengths given) is each
    sequence's number of real steps inside the chunk, ``clamp(length - start, 0, stop - start)``:
    0 for a sequence that has already ended, whose state an rnnkit layer then carries unchanged.
    ``index`` counts the chunks from 0; ``last`` marks the final one.
    """

    x: Tensor
    y: Tensor | None
    lengths: Tensor | None
    start: int
    stop: int
    index: int
    last: bool


def tbptt(
    inputs: Tensor,
    targets: Tensor | None = None,
    *,
    k: int,
    batch_first: bool = False,
    lengths: Lengths | None = None,
) -> Iterator[Chunk]:
    """Cut ``inputs`` (and ``targets``) along time into chunks of ``k`` steps, in order.

    ``inputs`` is ``(T, B, *)`` (``(B, T, *)`` with ``batch_first``); ``targets`` must have the
    same leading time and batch axes (per-step targets: a sequence-level target cannot be cut).
    The last chunk may be shorter. With ``lengths``, the time axis ends at the longest sequence
    (padding beyond it is never produced, so the last chunk stops there) and each chunk carries
    its own lengths (:class:`Chunk`).

    The chunks are views of the inputs; carry the state between them with
    :func:`detach_state` (module doc). Over all chunks, the carried forward state equals that of
    one pass over the whole sequence; gradients flow within each chunk only.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"tbptt: k must be an int >= 1 (steps per chunk), got {k!r}")
    if not isinstance(inputs, Tensor) or inputs.dim() < 2:
        got = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"tbptt: expected inputs with a time and a batch axis, got {got}")
    time_dim = 1 if batch_first else 0
    steps, batch = inputs.shape[time_dim], inputs.shape[1 - time_dim]
    if targets is not None and tuple(targets.shape[:2]) != tuple(inputs.shape[:2]):
        layout = "(batch, time)" if batch_first else "(time, batch)"
        raise ValueError(
            f"tbptt: targets must share the inputs' leading {layout} axes "
            f"{tuple(inputs.shape[:2])}, got shape {tuple(targets.shape)}"
        )
    if lengths is not None:
        try:
            lengths = check_lengths(lengths, batch, steps)
        except ValueError as err:
            raise ValueError(f"tbptt: {err}") from None
        steps = int(lengths.max()) if batch else 0
    starts = range(0, steps, k)
    for index, start in enumerate(starts):
        stop = min(start + k, steps)
        chunk_lengths = None
        if lengths is not None:
            chunk_lengths = (lengths - start).clamp(0, stop - start)
        yield Chunk(
            inputs.narrow(time_dim, start, stop - start),
            None if targets is None else targets.narrow(time_dim, start, stop - start),
            chunk_lengths,
            start,
            stop,
            index,
            index == len(starts) - 1,
        )


def detach_state(state: Any) -> Any:
    """``state`` cut from the graph: tensors detached inside tuples, lists and dicts; None and
    other leaves returned as they are.

    Use it on the state carried to the next chunk (or the next batch of a stateful stream): the
    values flow on, gradients stop at the cut.
    """
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*(detach_state(s) for s in state))
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    if isinstance(state, dict):
        return {key: detach_state(value) for key, value in state.items()}
    return state
