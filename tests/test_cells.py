"""Cells against torch.nn's: same parameters, same outputs and gradients."""

import pytest
import torch
from torch import nn

import rnnkit

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
PAIRS = [
    (rnnkit.RNNCell, nn.RNNCell, {"nonlinearity": "tanh"}),
    (rnnkit.RNNCell, nn.RNNCell, {"nonlinearity": "relu"}),
    (rnnkit.LSTMCell, nn.LSTMCell, {}),
    (rnnkit.GRUCell, nn.GRUCell, {}),
]
IDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def _flat(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize(("ours", "theirs", "kw"), PAIRS, ids=IDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
def test_cell_matches_torch(ours, theirs, kw, bias, dtype, batched, with_state):
    cell = ours(5, 7, bias=bias, **kw).to(dtype)
    reference = theirs(5, 7, bias=bias, **kw).to(dtype)
    reference.load_state_dict(cell.state_dict())
    shape = (3, 5) if batched else (5,)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    state = None
    if with_state:
        hshape = (3, 7) if batched else (7,)
        state = torch.randn(hshape, dtype=dtype)
        if ours is rnnkit.LSTMCell:
            state = (state, torch.randn(hshape, dtype=dtype))
    out = _flat(cell(x, state))
    ref = _flat(reference(x, state))
    tol = TOL[dtype]
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    weights = [torch.randn_like(o) for o in out]
    grads = torch.autograd.grad(out, [x, *cell.parameters()], weights)
    ref_grads = torch.autograd.grad(ref, [x, *reference.parameters()], weights)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize(("ours", "theirs", "kw"), PAIRS, ids=IDS)
def test_state_dict_moves_both_ways(ours, theirs, kw):
    cell, reference = ours(4, 6, **kw), theirs(4, 6, **kw)
    assert cell.state_dict().keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert cell.state_dict()[key].shape == value.shape
    cell.load_state_dict(reference.state_dict())
    reference.load_state_dict(cell.state_dict())


@pytest.mark.parametrize(("ours", "theirs", "kw"), PAIRS, ids=IDS)
def test_gradcheck(ours, theirs, kw):
    cell = ours(3, 4, **kw).double()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: _flat(cell(x))[0], (x,))


def test_replicate_gives_a_fresh_cell_of_the_same_kind():
    cell = rnnkit.RNNCell(3, 4, bias=False, nonlinearity="relu")
    twin = cell.replicate(8)
    assert type(twin) is rnnkit.RNNCell
    assert (twin.input_size, twin.hidden_size, twin.nonlinearity) == (8, 4, "relu")
    assert twin.bias_ih is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c(torch.randn(2, 3, 5)), "expected input of shape"),
        (lambda c: c(torch.randn(2, 4)), "expected 5 input features, got 4"),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call(rnnkit.LSTMCell(5, 3))


def test_unknown_nonlinearity():
    with pytest.raises(ValueError, match="'tanh' or 'relu', got 'gelu'"):
        rnnkit.RNNCell(2, 2, nonlinearity="gelu")
