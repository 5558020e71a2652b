"""Weight drop: DropConnect on the hidden-to-hidden weights of a recurrent layer.

How it stays a normal module. Each dropped weight ``<name>`` is re-registered as the parameter
``<name>_raw`` (what optimisers, ``clip_grad_norm_`` and state dicts see) and deleted as a
parameter; ``<name>`` becomes a plain attribute. Before each forward the wrapper sets it to the
dropped tensor ``dropout(<name>_raw)`` (gradients reach the raw weight through it), and after the
forward back to the raw parameter, so between calls the layer reads as it did. For
``torch.nn.RNN/LSTM/GRU`` (and rnnkit's subclasses) the layer's ``_flat_weights`` list, which the
fused kernel reads, is refreshed too; on CUDA with cuDNN all weights are passed as views into one
buffer laid out as cuDNN expects, so the kernel takes them as they are instead of warning that
they are "not part of single contiguous chunk of memory" and copying them.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, last = name.split(".")
    for part in path:
        module = getattr(module, part)
    return module, last


def _default_weights(module: nn.Module) -> list[str]:
    return [
        name
        for name, _ in module.named_parameters()
        if name.rsplit(".", 1)[-1].startswith("weight_hh")
    ]


def _cudnn_layout(layer: nn.RNNBase) -> tuple[int, list[int]]:
    """Size of cuDNN's weight buffer for ``layer`` and the offset of each flat weight in it."""
    from torch.backends.cudnn import rnn as cudnn_rnn

    probes = [w.detach().clone() for w in layer._flat_weights]
    with torch.no_grad():
        buffer = torch._cudnn_rnn_flatten_weight(
            probes,
            (4 if layer.bias else 2) + (1 if getattr(layer, "proj_size", 0) else 0),
            layer.input_size,
            cudnn_rnn.get_cudnn_mode(layer.mode),
            layer.hidden_size,
            getattr(layer, "proj_size", 0),
            layer.num_layers,
            layer.batch_first,
            bool(layer.bidirectional),
        )
    return buffer.numel(), [p.storage_offset() for p in probes]


def _uses_cudnn(weights: Sequence[Tensor]) -> bool:
    first = weights[0]
    return (
        first.is_cuda
        and torch.backends.cudnn.enabled
        and torch.backends.cudnn.is_available()
        and all(w.is_cuda and w.dtype == first.dtype for w in weights)
        and torch.backends.cudnn.is_acceptable(first)
    )


def _as_one_buffer(weights: list[Tensor], size: int, offsets: list[int]) -> list[Tensor]:
    """``weights`` as views into one new buffer (differentiably) at the given offsets."""
    order = sorted(range(len(weights)), key=offsets.__getitem__)
    pieces, position = [], 0
    for i in order:
        if offsets[i] > position:
            pieces.append(weights[i].new_zeros(offsets[i] - position))
        pieces.append(weights[i].reshape(-1))
        position = offsets[i] + weights[i].numel()
    if size > position:
        pieces.append(weights[0].new_zeros(size - position))
    buffer = torch.cat(pieces)
    views = zip(weights, offsets, strict=True)
    return [buffer.narrow(0, o, w.numel()).view(w.shape) for w, o in views]


class WeightDrop(nn.Module):
    r"""DropConnect on a recurrent layer's hidden-to-hidden weights (Wan et al. 2013; Merity,
    Keskar & Socher 2017, "Regularizing and Optimizing LSTM Language Models").

    .. math::
        \tilde W_{hh} = M \odot W_{hh} / (1 - p), \quad M \sim \mathrm{Bernoulli}(1 - p)

    One mask per forward call, shared by every time step and sequence of the batch; the
    recurrence itself is untouched, so the fused kernel (cuDNN) still runs. In evaluation mode
    the raw weights are used.

    ``module``: a ``torch.nn.RNN/LSTM/GRU``, an rnnkit layer, an :class:`rnnkit.Recurrent` or a
    cell; ``weights``: the names of the parameters to drop, relative to ``module`` (default:
    every parameter whose name starts with ``weight_hh``, e.g. ``("weight_hh_l0",)`` or
    ``("cells.0.weight_hh", "cells.1.weight_hh")``). Each becomes the parameter
    ``<name>_raw`` (module doc); ``forward`` takes and returns what ``module`` does. Works with
    :func:`torch.nn.utils.clip_grad_norm_` and optimisers (they see only real parameters).
    """

    def __init__(self, module: nn.Module, p: float, weights: Sequence[str] | None = None) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise ValueError(f"WeightDrop: expected a module, got {type(module).__name__}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"WeightDrop: p must be a probability in [0, 1), got {p!r}")
        if isinstance(weights, str):
            raise ValueError(f"WeightDrop: weights must be a sequence of names, got {weights!r}")
        available = dict(module.named_parameters())
        names = _default_weights(module) if weights is None else list(weights)
        missing = [n for n in names if n not in available]
        if missing or not names:
            raise ValueError(
                f"WeightDrop: {missing or 'no weights'} to drop in {type(module).__name__}; "
                f"its parameters are {sorted(available)}"
            )
        self.module, self.p, self.weights = module, p, tuple(names)
        self._layouts: dict[tuple, tuple[int, list[int]]] = {}
        for name in names:
            owner, attr = _owner(module, name)
            raw = owner._parameters.pop(attr)
            owner.register_parameter(attr + "_raw", raw)
        self._install_raw()

    def _raw(self, name: str) -> nn.Parameter:
        owner, attr = _owner(self.module, name)
        return owner._parameters[attr + "_raw"]

    def _install_raw(self) -> None:
        self._install({n: self._raw(n) for n in self.weights}, one_buffer=False)

    def _install(self, tensors: dict[str, Tensor], one_buffer: bool) -> None:
        """Make each ``<name>`` read as the given tensor, in the layer's flat list too; with
        ``one_buffer``, the flat list becomes views into one cuDNN-layout buffer on CUDA."""
        layers = {}
        for name, tensor in tensors.items():
            owner, attr = _owner(self.module, name)
            owner.__dict__[attr] = tensor
            if isinstance(owner, nn.RNNBase):
                layers[id(owner)] = owner
        for layer in layers.values():
            flat = [getattr(layer, n) for n in layer._flat_weights_names]
            layer._flat_weight_refs = [weakref.ref(w) for w in flat]
            if one_buffer and _uses_cudnn(flat):
                key = (id(layer), flat[0].device, flat[0].dtype)
                if key not in self._layouts:
                    self._layouts[key] = _cudnn_layout(layer)
                flat = _as_one_buffer(flat, *self._layouts[key])
            layer._flat_weights = flat

    def forward(self, *args, **kwargs):
        if not self.training or self.p == 0:
            return self.module(*args, **kwargs)
        self._install({n: F.dropout(self._raw(n), self.p) for n in self.weights}, one_buffer=True)
        try:
            return self.module(*args, **kwargs)
        finally:
            self._install_raw()

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        self._layouts.clear()
        self._install_raw()
        return result

    def extra_repr(self) -> str:
        return f"p={self.p}, weights={self.weights}"
