"""The Triton engine's parity grid, shared by the interpreter tests and the GPU tests.

Each case builds a layer, runs it on ``engine="triton"`` and on the own loop with the same
weights and input, and returns every output, final state and gradient of both.
"""

from __future__ import annotations

import torch
from torch import nn

import rnnkit

INPUT, HIDDEN = 3, 4

CELLS = (
    "rnn_tanh",
    "rnn_relu",
    "lstm",
    "lstm_proj",
    "gru",
    "layernorm_lstm",
    "layernorm_gru",
    "indrnn",
)


def make_layer(kind: str, *, bias: bool = True, **kw) -> nn.Module:
    """A layer of ``kind`` (an rnnkit layer, or a Recurrent of an rnnkit cell)."""
    if kind == "rnn_tanh":
        return rnnkit.RNN(INPUT, HIDDEN, bias=bias, **kw)
    if kind == "rnn_relu":
        return rnnkit.RNN(INPUT, HIDDEN, nonlinearity="relu", bias=bias, **kw)
    if kind == "lstm":
        return rnnkit.LSTM(INPUT, HIDDEN, bias=bias, **kw)
    if kind == "lstm_proj":
        return rnnkit.LSTM(INPUT, HIDDEN, proj_size=2, bias=bias, **kw)
    if kind == "gru":
        return rnnkit.GRU(INPUT, HIDDEN, bias=bias, **kw)
    cell = {
        "layernorm_lstm": rnnkit.LayerNormLSTMCell,
        "layernorm_gru": rnnkit.LayerNormGRUCell,
        "indrnn": rnnkit.IndRNNCell,
    }[kind](INPUT, HIDDEN, bias=bias)
    layer = rnnkit.Recurrent(cell, **kw)
    if kind == "indrnn":  # recurrent weights of both signs, and some above 1
        for c in layer.cells:
            nn.init.uniform_(c.weight_hh, -1.2, 1.2)
    return layer


def outputs_and_gradients(
    layer: nn.Module, x: torch.Tensor, lengths, hx=None, seed: int = 1
) -> dict[str, torch.Tensor]:
    """Output, final state and the gradients of a random projection of both, with respect to
    the input, the initial state (when given) and every parameter, by name."""
    output, final = layer(x, hx, lengths=lengths)
    finals = final if isinstance(final, tuple) else (final,)
    generator = torch.Generator().manual_seed(seed)

    def weights(t):
        return torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)

    loss = (output * weights(output)).sum() + sum((f * weights(f)).sum() for f in finals)
    states = () if hx is None else (hx if isinstance(hx, tuple) else (hx,))
    named = {"input": x, **{f"h_0[{i}]": s for i, s in enumerate(states)}}
    named.update(layer.named_parameters())
    gradients = torch.autograd.grad(loss, list(named.values()))
    values = {"output": output, **{f"final[{i}]": f for i, f in enumerate(finals)}}
    values.update({f"gradient of {n}": g for n, g in zip(named, gradients, strict=True)})
    return values


def assert_parity(
    kind: str,
    *,
    dtype: torch.dtype,
    tolerance: float,
    device: str = "cpu",
    lengths=None,
    steps: int = 5,
    batch: int = 3,
    with_state: bool = False,
    **kw,
) -> None:
    """The Triton engine equals the own loop on everything, elementwise within ``tolerance``
    (absolute and relative, as ``torch.testing.assert_close``)."""
    torch.manual_seed(0)
    layer = make_layer(kind, **kw).to(device, dtype)
    x = torch.randn(steps, batch, INPUT, dtype=dtype, device=device, requires_grad=True)
    hx = None
    if with_state:
        _, final = layer(x.detach())
        parts = final if isinstance(final, tuple) else (final,)
        made = tuple(torch.randn_like(p).requires_grad_() for p in parts)
        hx = made if isinstance(final, tuple) else made[0]
    layer.engine = "triton"
    ours = outputs_and_gradients(layer, x, lengths, hx)
    layer.engine = "loop"
    reference = outputs_and_gradients(layer, x, lengths, hx)
    assert ours.keys() == reference.keys()
    for name, value in ours.items():
        torch.testing.assert_close(
            value,
            reference[name],
            atol=tolerance,
            rtol=tolerance,
            msg=lambda message, name=name: f"{kind}, {name}: {message}",
        )
