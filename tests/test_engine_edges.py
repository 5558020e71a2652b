"""Every engine agrees on the edge cases: NaN/inf padding, empty time axes, empty batches.

* NaN or inf in padded positions must reach neither the outputs nor any gradient (input, initial
  state, every parameter): the gradients equal those of the same batch padded with zeros.
* An empty time axis raises without ``lengths=`` (as ``torch.nn`` does); with ``lengths=`` (all
  zero) the layer returns zero outputs and the initial state.
* An empty batch works, as in ``torch.nn``: empty outputs and states of the right shapes.
"""

import pytest
import torch
from torch import nn

import rnnkit

IN, H = 3, 4
DOUBLE = torch.float64


class UnknownLSTMCell(rnnkit.LSTMCell):
    """Not the exact type: no fused kernel, always the own loop."""


CELLS = {
    "RNNCell": lambda i: rnnkit.RNNCell(i, H),
    "RNNCell-relu": lambda i: rnnkit.RNNCell(i, H, nonlinearity="relu"),
    "LSTMCell": lambda i: rnnkit.LSTMCell(i, H),
    "GRUCell": lambda i: rnnkit.GRUCell(i, H),
    "nn.GRUCell": lambda i: nn.GRUCell(i, H),
    "nn.LSTMCell": lambda i: nn.LSTMCell(i, H),
    "UnknownLSTMCell": lambda i: UnknownLSTMCell(i, H),
    "LayerNormLSTMCell": lambda i: rnnkit.LayerNormLSTMCell(i, H),
    "LayerNormGRUCell": lambda i: rnnkit.LayerNormGRUCell(i, H),
    "IndRNNCell": lambda i: rnnkit.IndRNNCell(i, H),
    "Zoneout(LSTMCell)": lambda i: rnnkit.Zoneout(rnnkit.LSTMCell(i, H), 0.2, 0.5),
}
FUSABLE = {"RNNCell", "RNNCell-relu", "LSTMCell", "GRUCell", "nn.GRUCell", "nn.LSTMCell"}


SCAN_LAYERS = ("MinGRU", "MinLSTM", "MinRNNStack")
STACKS = [(1, False), (2, False), (1, True), (2, True)]


def _layer_grid(stacked: bool) -> list:
    """``(kind, engine)``, or with ``stacked`` ``(kind, engine, num_layers, bidirectional)`` for
    every stack the layer has (the scan layers have one direction; MinGRU/MinLSTM one layer)."""
    grid = []
    for kind in ("RNN", "RNN-relu", "LSTM", "GRU", "LSTM-proj"):
        for engine in ("fused", "loop"):
            grid.append((kind, engine))
    for name in CELLS:
        for engine in ("fused", "loop") if name in FUSABLE else ("loop",):
            grid.append((f"Recurrent({name})", engine))
    for kind in SCAN_LAYERS:
        for engine in ("scan", "loop"):
            grid.append((kind, engine))
    if not stacked:
        return grid
    return [
        (kind, engine, layers, bidirectional)
        for kind, engine in grid
        for layers, bidirectional in STACKS
        if kind not in SCAN_LAYERS or (not bidirectional and (layers == 1 or kind == "MinRNNStack"))
    ]


LAYERS = _layer_grid(stacked=False)
STACKED = _layer_grid(stacked=True)


def make(kind, engine, num_layers=1, bidirectional=False):
    kw = {"num_layers": num_layers, "bidirectional": bidirectional, "batch_first": True}
    if kind.startswith("Recurrent("):
        cell = CELLS[kind[len("Recurrent(") : -1]](IN)
        layer = rnnkit.Recurrent(cell, **kw, engine=engine)
    elif kind.startswith("RNN"):
        nonlinearity = "relu" if kind.endswith("relu") else "tanh"
        layer = rnnkit.RNN(IN, H, nonlinearity=nonlinearity, **kw, engine=engine)
    elif kind.startswith("LSTM"):
        layer = rnnkit.LSTM(IN, H, proj_size=2 if "proj" in kind else 0, **kw, engine=engine)
    elif kind == "GRU":
        layer = rnnkit.GRU(IN, H, **kw, engine=engine)
    elif kind == "MinRNNStack":
        layer = rnnkit.MinRNNStack(IN, H, num_layers, batch_first=True, engine=engine)
    else:
        layer = getattr(rnnkit, kind)(IN, H, batch_first=True, engine=engine)
    return layer.to(DOUBLE)


def parts(state):
    return state if isinstance(state, tuple) else (state,)


def like(state, fill=None):
    made = tuple(
        torch.randn_like(s) if fill is None else torch.full_like(s, fill) for s in parts(state)
    )
    return made if isinstance(state, tuple) else made[0]


def gradients(layer, x, h0, lengths):
    """Gradients of a fixed random objective of the outputs and final states, for the input,
    the initial state and every parameter."""
    x = x.clone().requires_grad_(True)
    h0 = tuple(h.clone().requires_grad_(True) for h in parts(h0))
    layer.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same zoneout masks for both calls
    out, state = layer(x, h0 if len(h0) == 2 else h0[0], lengths=lengths)
    generator = torch.Generator().manual_seed(2)
    loss = (out * torch.randn(out.shape, generator=generator, dtype=DOUBLE)).sum()
    for s in parts(state):
        loss = loss + (s * torch.randn(s.shape, generator=generator, dtype=DOUBLE)).sum()
    loss.backward()
    return [x.grad, *(h.grad for h in h0), *(p.grad for p in layer.parameters())], out, state


@pytest.mark.parametrize(("kind", "engine", "num_layers", "bidirectional"), STACKED)
def test_nan_and_inf_padding_reach_no_gradient(kind, engine, num_layers, bidirectional):
    layer = make(kind, engine, num_layers, bidirectional)
    lengths = torch.tensor([6, 2, 0, 4, 6])
    x = torch.randn(5, 6, IN, dtype=DOUBLE)
    clean, dirty = x.clone(), x.clone()
    for row, n in enumerate(lengths.tolist()):
        clean[row, n:] = 0.0
        dirty[row, n:] = float("nan")
    dirty[1, 4, 0] = float("inf")
    dirty[3, 5, 1] = -float("inf")
    h0 = like(layer(clean, lengths=lengths)[1])
    want, want_out, want_state = gradients(layer, clean, h0, lengths)
    got, got_out, got_state = gradients(layer, dirty, h0, lengths)
    assert torch.equal(got_out, want_out)
    for g, w in zip(parts(got_state), parts(want_state), strict=True):
        assert torch.equal(g, w)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g is not None and bool(torch.isfinite(g).all())
        assert torch.equal(g, w)
    assert bool((got[0][2] == 0).all()) and bool((got[0][1, 2:] == 0).all())


@pytest.mark.parametrize("unbatched", [False, True])
@pytest.mark.parametrize(("kind", "engine"), LAYERS)
def test_an_empty_time_axis_raises_without_lengths_as_torch_does(kind, engine, unbatched):
    layer = make(kind, engine)
    x = torch.randn(0, IN, dtype=DOUBLE) if unbatched else torch.randn(2, 0, IN, dtype=DOUBLE)
    with pytest.raises(rnnkit.InputError, match="at least one step"):
        layer(x)
    reference = nn.GRU(IN, H, batch_first=True).double()
    with pytest.raises(RuntimeError):
        reference(x)


@pytest.mark.parametrize(("kind", "engine", "num_layers", "bidirectional"), STACKED)
def test_all_zero_lengths_give_zero_outputs_and_the_initial_state(
    kind, engine, num_layers, bidirectional
):
    layer = make(kind, engine, num_layers, bidirectional)
    reference_state = layer(torch.randn(3, 2, IN, dtype=DOUBLE))[1]
    h0 = like(reference_state)
    for steps in (0, 5):
        x = torch.randn(3, steps, IN, dtype=DOUBLE)
        out, state = layer(x, h0, lengths=[0, 0, 0])
        assert out.shape[:2] == (3, steps) and bool((out == 0).all())
        for s, h in zip(parts(state), parts(h0), strict=True):
            assert torch.equal(s, h)
        out, state = layer(x, lengths=[0, 0, 0])
        for s in parts(state):
            assert bool((s == 0).all())


@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize(("kind", "engine", "num_layers", "bidirectional"), STACKED)
def test_an_empty_batch_works_on_every_engine(
    kind, engine, num_layers, bidirectional, with_lengths
):
    layer = make(kind, engine, num_layers, bidirectional)
    full = layer(torch.randn(2, 5, IN, dtype=DOUBLE))
    x = torch.randn(0, 5, IN, dtype=DOUBLE, requires_grad=True)
    lengths = torch.zeros(0, dtype=torch.long) if with_lengths else None
    out, state = layer(x, lengths=lengths)
    assert out.shape == (0, 5, full[0].shape[-1])
    for s, f in zip(parts(state), parts(full[1]), strict=True):
        assert s.shape == (f.shape[0], 0, *f.shape[2:])
    (out.sum() + sum(s.sum() for s in parts(state))).backward()
    assert x.grad.shape == x.shape
    h0 = like(state)
    out, state = layer(x, h0, lengths=lengths)
    assert out.shape == (0, 5, full[0].shape[-1])


@pytest.mark.parametrize("cell", ["GRUCell", "LSTMCell", "nn.GRUCell"])
def test_recurrent_of_cells_with_an_empty_batch_matches_torch(cell):
    layer = rnnkit.Recurrent(CELLS[cell](IN), engine="fused").double()
    reference = (nn.LSTM if "LSTM" in cell else nn.GRU)(IN, H).double()
    out, state = layer(torch.randn(5, 0, IN, dtype=DOUBLE))
    ref_out, ref_state = reference(torch.randn(5, 0, IN, dtype=DOUBLE))
    assert out.shape == ref_out.shape
    for s, r in zip(parts(state), parts(ref_state), strict=True):
        assert s.shape == r.shape
