"""Bad input raises rnnkit.InputError (a ValueError and a RuntimeError), never a broadcast.

Cells, layers and scan layers are checked against the same mistakes ``torch.nn`` refuses: a state
of the wrong batch, size, rank, arity or dtype; an input of the wrong feature count or dtype.
Where a ``torch.nn`` twin exists, it is shown to refuse the same call.
"""

import pytest
import torch
from torch import nn

import rnnkit

IN, H, B = 5, 7, 3

ONE_STATE_CELLS = {
    "RNNCell": lambda: rnnkit.RNNCell(IN, H),
    "GRUCell": lambda: rnnkit.GRUCell(IN, H),
    "LayerNormGRUCell": lambda: rnnkit.LayerNormGRUCell(IN, H),
    "IndRNNCell": lambda: rnnkit.IndRNNCell(IN, H),
    "Zoneout(GRUCell)": lambda: rnnkit.Zoneout(rnnkit.GRUCell(IN, H), 0.1),
    "Zoneout(nn.GRUCell)": lambda: rnnkit.Zoneout(nn.GRUCell(IN, H), 0.1),
}
TWO_STATE_CELLS = {
    "LSTMCell": lambda: rnnkit.LSTMCell(IN, H),
    "LayerNormLSTMCell": lambda: rnnkit.LayerNormLSTMCell(IN, H),
    "Zoneout(LSTMCell)": lambda: rnnkit.Zoneout(rnnkit.LSTMCell(IN, H), 0.1, 0.5),
    "Zoneout(nn.LSTMCell)": lambda: rnnkit.Zoneout(nn.LSTMCell(IN, H), 0.1),
}
TWINS = {
    "RNNCell": nn.RNNCell,
    "GRUCell": nn.GRUCell,
    "LSTMCell": nn.LSTMCell,
}

x, x1 = torch.randn(B, IN), torch.randn(IN)
h = torch.randn(B, H)
ONE_STATE_BAD = {
    "batch of one broadcast": (x, torch.randn(1, H), r"expected h of shape \(3, 7\).*got \(1, 7\)"),
    "4-D state": (x, torch.randn(1, 1, B, H), r"expected h of shape \(3, 7\).*\(1, 1, 3, 7\)"),
    "wrong size": (x, torch.randn(B, H + 1), r"expected h of shape \(3, 7\).*got \(3, 8\)"),
    "unbatched input, batched state": (x1, h, r"expected h of shape \(7,\).*unbatched.*\(3, 7\)"),
    "batched input, unbatched state": (x, torch.randn(H), r"expected h of shape \(3, 7\).*\(7,\)"),
    "a tuple": (x, (h,), "expected the initial state as one tensor h, got a tuple of one"),
    "two tensors": (x, (h, h), "expected the initial state as one tensor h, got 2 tensors"),
    "not a tensor": (x, "h", "h must be a Tensor, got str"),
    "state dtype": (x, h.double(), "h dtype torch.float64 does not match torch.float32"),
    "input dtype": (x.double(), None, "input dtype torch.float64 does not match"),
    "input features": (torch.randn(B, IN + 1), None, "expected 5 input features, got 6"),
    "3-D input": (torch.randn(2, B, IN), None, r"expected input of shape \(batch, 5\) or \(5,\)"),
}
TWO_STATE_BAD = {
    "c of the wrong size": (x, (h, torch.randn(B, H + 1)), r"expected c of shape \(3, 7\).*8\)"),
    "c broadcast": (x, (h, torch.randn(1, H)), r"expected c of shape \(3, 7\).*got \(1, 7\)"),
    "h broadcast": (x, (torch.randn(1, H), h), r"expected h of shape \(3, 7\).*got \(1, 7\)"),
    "one tensor": (x, h, r"expected the initial state as a tuple \(h, c\), got one tensor"),
    "three tensors": (x, (h, h, h), r"tuple \(h, c\), got 3 tensors"),
    "unbatched input, batched state": (x1, (h, h), r"expected h of shape \(7,\)"),
    "c dtype": (x, (h, h.double()), "c dtype torch.float64 does not match torch.float32"),
}


def cases(cells, bad):
    return [
        pytest.param(name, *call, id=f"{name}: {label}")
        for name in cells
        for label, call in bad.items()
    ]


def assert_input_error(call, match):
    """``call()`` raises an InputError, caught alike by ``except RuntimeError`` and
    ``except ValueError``."""
    with pytest.raises(rnnkit.InputError, match=match):
        call()
    with pytest.raises(RuntimeError, match=match):
        call()
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(("name", "input", "state", "match"), cases(ONE_STATE_CELLS, ONE_STATE_BAD))
def test_one_state_cells_refuse_states_that_do_not_fit(name, input, state, match):
    cell = ONE_STATE_CELLS[name]()
    assert_input_error(lambda: cell(input, state), match)
    if name in TWINS:  # torch.nn refuses it too (with its own exception type)
        twin = TWINS[name](IN, H)
        with pytest.raises((RuntimeError, ValueError, AttributeError, TypeError)):
            twin(input, state)


@pytest.mark.parametrize(("name", "input", "state", "match"), cases(TWO_STATE_CELLS, TWO_STATE_BAD))
def test_lstm_cells_refuse_states_that_do_not_fit(name, input, state, match):
    cell = TWO_STATE_CELLS[name]()
    assert_input_error(lambda: cell(input, state), match)
    if name in TWINS and "dtype" not in match:  # torch.nn's LSTMCell promotes a float64 c
        twin = TWINS[name](IN, H)
        with pytest.raises((RuntimeError, ValueError, TypeError)):
            twin(input, state)


@pytest.mark.parametrize("name", [*ONE_STATE_CELLS, *TWO_STATE_CELLS])
def test_cells_accept_the_states_that_fit(name):
    cell = {**ONE_STATE_CELLS, **TWO_STATE_CELLS}[name]()
    for input, batch in ((x, (B,)), (x1, ()), (torch.randn(0, IN), (0,))):
        state = tuple(torch.randn(*batch, H) for _ in range(2)) if name in TWO_STATE_CELLS else None
        if state is None:
            state = torch.randn(*batch, H)
        out = cell(input, state)
        first = out[0] if isinstance(out, tuple) else out
        assert first.shape == (*batch, H)
        zero_start = cell(input)
        first = zero_start[0] if isinstance(zero_start, tuple) else zero_start
        assert first.shape == (*batch, H)


LAYERS = {
    "rnnkit.GRU": lambda engine: rnnkit.GRU(IN, H, engine=engine),
    "rnnkit.LSTM": lambda engine: rnnkit.LSTM(IN, H, engine=engine),
    "Recurrent(GRUCell)": lambda engine: rnnkit.Recurrent(rnnkit.GRUCell(IN, H), engine=engine),
    "Recurrent(LayerNormLSTMCell)": lambda engine: rnnkit.Recurrent(
        rnnkit.LayerNormLSTMCell(IN, H), engine=engine
    ),
    "MinGRU": lambda engine: rnnkit.MinGRU(IN, H, engine="scan" if engine == "auto" else engine),
    "MinRNNStack": lambda engine: rnnkit.MinRNNStack(
        IN, H, 1, engine="scan" if engine == "auto" else engine
    ),
}
LSTM_STATE = ("rnnkit.LSTM", "Recurrent(LayerNormLSTMCell)")
TORCH_LAYERS = {"rnnkit.GRU": nn.GRU, "rnnkit.LSTM": nn.LSTM}


def _state(name, *shape, dtype=torch.float32):
    h = torch.zeros(*shape, dtype=dtype)
    return (h, torch.zeros(*shape)) if name in LSTM_STATE else h


LAYER_BAD = {
    "feature count": (lambda n: (torch.randn(4, B, IN + 1), None), "expected 5 input features"),
    "input dtype": (lambda n: (torch.randn(4, B, IN).double(), None), "input dtype torch.float64"),
    "4-D input": (lambda n: (torch.randn(4, B, IN, 1), None), "expected a 3-D input"),
    "state batch": (lambda n: (torch.randn(4, B, IN), _state(n, 1, 1, H)), r"h_0 of shape \(1, 3"),
    "state size": (lambda n: (torch.randn(4, B, IN), _state(n, 1, B, H + 1)), "expected h_0 of"),
    "unbatched input, batched state": (
        lambda n: (torch.randn(4, IN), _state(n, 1, B, H)),
        r"expected h_0 of shape \(1, 7\)",
    ),
    "batched input, unbatched state": (
        lambda n: (torch.randn(4, B, IN), _state(n, 1, H)),
        r"expected h_0 of shape \(1, 3, 7\)",
    ),
    "state dtype": (
        lambda n: (torch.randn(4, B, IN), _state(n, 1, B, H, dtype=torch.float64)),
        "h_0 dtype torch.float64 does not match",
    ),
    "empty time axis": (lambda n: (torch.randn(0, B, IN), None), "at least one step"),
}


@pytest.mark.parametrize("engine", ["auto", "loop"])
@pytest.mark.parametrize("label", LAYER_BAD)
@pytest.mark.parametrize("name", LAYERS)
def test_layers_raise_input_errors_where_torch_raises(name, label, engine):
    make, match = LAYER_BAD[label]
    layer = LAYERS[name](engine)
    input, state = make(name)
    assert_input_error(lambda: layer(input, state), match)
    if name in TORCH_LAYERS:
        with pytest.raises((RuntimeError, ValueError)):
            TORCH_LAYERS[name](IN, H)(input, state)


@pytest.mark.parametrize("name", ["rnnkit.GRU", "Recurrent(GRUCell)", "MinGRU"])
def test_layers_refuse_a_state_of_the_wrong_arity(name):
    layer = LAYERS[name]("auto")
    h = torch.zeros(1, B, H)
    assert_input_error(lambda: layer(torch.randn(4, B, IN), (h,)), "as one tensor h_0")
    lstm = LAYERS["rnnkit.LSTM"]("auto")
    assert_input_error(lambda: lstm(torch.randn(4, B, IN), h), r"as a tuple \(h_0, c_0\)")


def test_bad_lengths_are_input_errors_too():
    layer = rnnkit.GRU(IN, H)
    assert_input_error(lambda: layer(torch.randn(4, B, IN), lengths=[4, 5, 1]), "exceeds")


def test_linear_scan_shape_errors_are_input_errors():
    a = torch.rand(4, 2)
    assert_input_error(lambda: rnnkit.linear_scan(a, a[:, :1], a[0]), "of one shape")
    assert_input_error(lambda: rnnkit.linear_scan(a, a, a[0, :1]), "expected h0 of shape")
