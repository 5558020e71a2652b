"""Which engine runs a layer, and why not a faster one: one answer for the layer and the user.

A layer states, for each engine faster than the own loop (in order of preference), what keeps
that engine from computing the layer exactly right now: :meth:`engine_blockers` returns
``{engine: [(reason, fix), ...]}``. :func:`select` picks the first engine with no blocker (or
the one the layer's ``engine`` names, refusing it with the reason when it is blocked), and
:func:`explain_fast_path` reports the same choice to the user. The layer's forward calls
:func:`select` too, so the report and the run cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from rnnkit.engines import fused
from rnnkit.engines import triton as triton_engine
from rnnkit.errors import InputError

ENGINES = ("auto", "fused", "triton", "loop")

Blockers = dict[str, list[tuple[str, str]]]

_KERNELS = {
    "loop": "rnnkit loop, input projection hoisted; masked steps with lengths",
}


def check_engine(owner: str, engine: object) -> str:
    """``engine`` if it is one of :data:`ENGINES`, else a clear error."""
    if engine not in ENGINES:
        raise ValueError(f"{owner}: engine must be one of {ENGINES}, got {engine!r}")
    return engine


def select(owner: str, requested: str, blockers: Blockers) -> str:
    """The engine that runs: the first unblocked one for ``"auto"``, else ``requested``.

    A requested engine that is blocked raises an :class:`rnnkit.InputError` naming the reason.
    """
    if requested == "auto":
        return next((engine for engine, why in blockers.items() if not why), "loop")
    why = blockers.get(requested)
    if why:
        raise InputError(f"{owner}: engine={requested!r} is impossible: {why[0][0]}")
    return requested


def passed_over(requested: str, blockers: Blockers, chosen: str) -> list[tuple[str, str]]:
    """Why each engine faster than ``chosen`` does not run: ``[(reason, fix), ...]``."""
    reasons = []
    for engine, why in blockers.items():
        if engine == chosen:
            break
        if requested not in ("auto", engine) and not why:
            why = [(f"engine={requested!r} was requested", "set layer.engine = 'auto'")]
        reasons += why
    return reasons


@dataclass
class FastPath:
    """How one recurrent layer runs: ``engine`` is one of :data:`ENGINES` but ``"auto"``."""

    name: str
    layer: str
    engine: str
    kernel: str
    reasons: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        line = f"{self.name or '(module)'}: {self.layer} -> {self.engine} ({self.kernel})"
        for reason, fix in zip(self.reasons, self.fixes, strict=True):
            line += f"\n    because {reason}; to change: {fix}"
        return line


def describe(layer: nn.Module) -> str:
    """``LSTM(3, 4, ...)``: a layer's class and arguments, for messages."""
    return f"{type(layer).__name__}({layer.extra_repr()})"


def _kernel(engine: str, layer: nn.Module) -> str:
    if engine == "fused":
        mode = layer._fused_mode() if hasattr(layer, "_fused_mode") else layer.mode
        return f"{fused.kernel_name(layer)}; {fused.lengths_strategy(mode)}"
    if engine == "triton":
        return triton_engine.describe(layer)
    return _KERNELS[engine]


def explain_fast_path(module: nn.Module) -> list[FastPath]:
    """Say which engine each recurrent layer inside ``module`` uses and why.

    Returns one :class:`FastPath` per layer (rnnkit's layers, ``Recurrent`` and ``torch.nn``'s
    ``RNN/LSTM/GRU``); for a layer that does not run the fastest engine, every reason and the
    change that would enable it. ``print(*explain_fast_path(model), sep="\\n")`` reads well.
    """
    reports = []
    for name, sub in module.named_modules():
        if hasattr(sub, "engine_blockers"):
            blockers = sub.engine_blockers()
            chosen = select(describe(sub), "auto", blockers)
            if sub.engine != "auto" and not blockers.get(sub.engine):
                chosen = sub.engine
            reasons = passed_over(sub.engine, blockers, chosen)
            reports.append(
                FastPath(
                    name,
                    describe(sub),
                    chosen,
                    _kernel(chosen, sub),
                    [r for r, _ in reasons],
                    [f for _, f in reasons],
                )
            )
        elif isinstance(sub, nn.RNNBase):
            reports.append(FastPath(name, describe(sub), "fused", fused.kernel_name(sub)))
    return reports
