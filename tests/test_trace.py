"""rnnkit.trace_states: per-step states and gates, against the layers' own outputs."""

import pytest
import torch
from torch import nn

import rnnkit

LAYERS = [rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU, nn.RNN, nn.LSTM, nn.GRU]


@pytest.mark.parametrize("layer_cls", LAYERS, ids=lambda c: f"{c.__module__}.{c.__name__}")
@pytest.mark.parametrize("batch_first", [True, False])
def test_hidden_equals_layer_output_float64(layer_cls, batch_first):
    layer = layer_cls(3, 5, num_layers=2, batch_first=batch_first).double()
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    if not batch_first:
        x = x.transpose(0, 1)
    output, state = layer(x)
    traces = rnnkit.trace_states(layer, x)
    assert list(traces) == ["l0", "l1"]
    top = traces["l1"].hidden
    expected = output if batch_first else output.transpose(0, 1)
    torch.testing.assert_close(top, expected, atol=1e-10, rtol=0)
    h_n = state[0] if isinstance(state, tuple) else state
    for k in range(2):
        torch.testing.assert_close(traces[f"l{k}"].hidden[:, -1], h_n[k], atol=1e-10, rtol=0)
    if isinstance(state, tuple):
        for k in range(2):
            torch.testing.assert_close(
                traces[f"l{k}"].gates["c"][:, -1], state[1][k], atol=1e-10, rtol=0
            )


def test_lstm_gates_satisfy_the_cell_equations():
    layer = rnnkit.LSTM(4, 6, batch_first=True)
    x = torch.randn(3, 9, 4)
    trace = rnnkit.trace_states(layer, x)["l0"]
    g = trace.gates
    assert trace.kind == "LSTM" and set(g) == {"i", "f", "g", "o", "c"}
    c_prev = torch.cat([torch.zeros(3, 1, 6), g["c"][:, :-1]], dim=1)
    torch.testing.assert_close(g["c"], g["f"] * c_prev + g["i"] * g["g"], atol=1e-6, rtol=0)
    torch.testing.assert_close(trace.hidden, g["o"] * g["c"].tanh(), atol=1e-6, rtol=0)
    for gate in "ifo":
        assert bool(((g[gate] > 0) & (g[gate] < 1)).all())


def test_gru_gates_satisfy_the_update_equation():
    layer = nn.GRU(2, 4, batch_first=True)
    x = torch.randn(2, 6, 2)
    trace = rnnkit.trace_states(layer, x)["l0"]
    h_prev = torch.cat([torch.zeros(2, 1, 4), trace.hidden[:, :-1]], dim=1)
    z, n = trace.gates["z"], trace.gates["n"]
    torch.testing.assert_close(trace.hidden, (1 - z) * n + z * h_prev, atol=1e-6, rtol=0)


def test_initial_state_unbatched_input_and_relu():
    layer = rnnkit.RNN(3, 4, nonlinearity="relu")
    x = torch.randn(5, 3)  # unbatched, time first
    h0 = torch.randn(1, 4)
    output, _ = layer(x, h0)
    trace = rnnkit.trace_states(layer, (x, h0))["l0"]
    assert trace.gates == {}
    torch.testing.assert_close(trace.hidden[0], output, atol=1e-6, rtol=0)


def test_inside_a_model_keys_and_modes_restored():
    model = rnnkit.SequenceModel(2, 8, 1, cell="gru", num_layers=2, dropout=0.5)
    model.train()
    traces = rnnkit.trace_states(model, torch.randn(1, 10, 2))
    assert list(traces) == ["rnn.l0", "rnn.l1"]
    assert traces["rnn.l1"].hidden.shape == (1, 10, 8)
    assert model.training and model.rnn.training


@pytest.mark.filterwarnings("ignore:LSTM with projections")
def test_errors():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        rnnkit.trace_states("model", torch.randn(1, 2, 3))
    with pytest.raises(ValueError, match="no RNN/LSTM/GRU layer"):
        rnnkit.trace_states(nn.Linear(3, 2), torch.randn(1, 3))
    with pytest.raises(ValueError, match="bidirectional"):
        rnnkit.trace_states(nn.LSTM(3, 4, bidirectional=True), torch.randn(5, 1, 3))
    with pytest.raises(ValueError, match="proj_size=2"):
        rnnkit.trace_states(nn.LSTM(3, 4, proj_size=2), torch.randn(5, 1, 3))
    model = rnnkit.SequenceModel(1, 4, 1)
    with pytest.raises(ValueError, match="lengths"):
        rnnkit.trace_states(model, (torch.randn(2, 5, 1), torch.tensor([5, 3])))
