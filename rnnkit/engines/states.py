"""State layout helpers shared by the engines.

Layers exchange states in ``torch.nn``'s layout: one tensor ``(L*D, B, H)`` or a tuple of them
(the LSTM's ``(h, c)``). The engines work on one state per (layer, direction) unit: a tensor
``(B, H)`` or a tuple of them, whose first element is the unit's output.
"""

from __future__ import annotations

import torch
from torch import Tensor

State = Tensor | tuple[Tensor, ...]


def split_state(hx: State, units: int) -> list[State]:
    """``(L*D, B, H)`` (or a tuple of such) -> one state per unit."""
    if isinstance(hx, tuple):
        return [tuple(part[u] for part in hx) for u in range(units)]
    return [hx[u] for u in range(units)]


def stack_states(states: list[State]) -> State:
    """One state per unit -> ``(L*D, B, H)`` (or a tuple of such): :func:`split_state` undone."""
    if isinstance(states[0], tuple):
        return tuple(torch.stack(parts) for parts in zip(*states, strict=True))
    return torch.stack(states)


def state_output(state: State) -> Tensor:
    """The part of a state that a step emits: ``h`` of ``(h, c)``, or the state itself."""
    return state[0] if isinstance(state, tuple) else state


def where(keep: Tensor, new: State, old: State) -> State:
    """``new`` where ``keep`` is True, else ``old``, part by part."""
    if isinstance(new, tuple):
        return tuple(torch.where(keep, n, o) for n, o in zip(new, old, strict=True))
    return torch.where(keep, new, old)
