"""Layers against torch.nn's: both engines, same weights, same outputs and gradients."""

import itertools

import pytest
import torch
from torch import nn

import rnnkit

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")

MODES = {
    "rnn_tanh": (rnnkit.RNN, nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (rnnkit.RNN, nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (rnnkit.LSTM, nn.LSTM, {}),
    "lstm_proj": (rnnkit.LSTM, nn.LSTM, {"proj_size": 3}),
    "gru": (rnnkit.GRU, nn.GRU, {}),
}
GRID = list(
    itertools.product(
        MODES,
        [1, 2, 3],
        [False, True],
        [False, True],
        [True, False],
        [torch.float32, torch.float64],
    )
)


def _parts(state):
    return state if isinstance(state, tuple) else (state,)


def _compare(ours, reference, x, hx, dtype):
    """Outputs, final states and gradients (input, initial state, every parameter) agree."""
    tol = TOL[dtype]
    x = x.detach().requires_grad_()
    hx_ours = tuple(h.detach().requires_grad_() for h in _parts(hx)) if hx is not None else None
    hx_ref = tuple(h.detach().requires_grad_() for h in hx_ours) if hx is not None else None
    unpack = (lambda h: h) if isinstance(hx, tuple) else (lambda h: h[0])
    out, state = ours(x, unpack(hx_ours) if hx is not None else None)
    ref_out, ref_state = reference(x, unpack(hx_ref) if hx is not None else None)
    results = (out, *_parts(state))
    expected = (ref_out, *_parts(ref_state))
    for a, b in zip(results, expected, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    weights = [torch.randn_like(r) for r in results]
    inputs = [x, *(hx_ours or ()), *ours.parameters()]
    ref_inputs = [x, *(hx_ref or ()), *reference.parameters()]
    grads = torch.autograd.grad(results, inputs, weights)
    ref_grads = torch.autograd.grad(expected, ref_inputs, weights)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def _state(mode, units, batch, hidden, proj, dtype):
    h = torch.randn(units, batch, proj or hidden, dtype=dtype)
    if mode.startswith("lstm"):
        return h, torch.randn(units, batch, hidden, dtype=dtype)
    return h


@pytest.mark.parametrize("engine", ["auto", "loop"])
@pytest.mark.parametrize(("mode", "layers", "bidir", "batch_first", "bias", "dtype"), GRID)
def test_layer_matches_torch(engine, mode, layers, bidir, batch_first, bias, dtype):
    ours_cls, ref_cls, kw = MODES[mode]
    ours = ours_cls(
        4, 5, layers, bias=bias, batch_first=batch_first, bidirectional=bidir, engine=engine, **kw
    ).to(dtype)
    reference = ref_cls(
        4, 5, layers, bias=bias, batch_first=batch_first, bidirectional=bidir, **kw
    ).to(dtype)
    assert list(ours.state_dict()) == list(reference.state_dict())
    reference.load_state_dict(ours.state_dict())
    x = torch.randn((3, 6, 4) if batch_first else (6, 3, 4), dtype=dtype)
    units = layers * (2 if bidir else 1)
    hx = _state(mode, units, 3, 5, kw.get("proj_size", 0), dtype)
    _compare(ours, reference, x, hx, dtype)
    _compare(ours, reference, x, None, dtype)
    expected_engine = "loop" if engine == "loop" else "fused"
    assert rnnkit.explain_fast_path(ours)[0].engine == expected_engine


@pytest.mark.parametrize("engine", ["auto", "loop"])
@pytest.mark.parametrize("mode", list(MODES))
def test_unbatched_input(engine, mode):
    ours_cls, ref_cls, kw = MODES[mode]
    ours = ours_cls(4, 5, 2, bidirectional=True, engine=engine, **kw).double()
    reference = ref_cls(4, 5, 2, bidirectional=True, **kw).double()
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(6, 4, dtype=torch.float64)
    hx = _state(mode, 4, 1, 5, kw.get("proj_size", 0), torch.float64)
    hx = tuple(h[:, 0] for h in hx) if isinstance(hx, tuple) else hx[:, 0]
    _compare(ours, reference, x, hx, torch.float64)
    _compare(ours, reference, x, None, torch.float64)


@pytest.mark.parametrize("engine", ["auto", "loop"])
@pytest.mark.parametrize("mode", ["rnn_tanh", "lstm", "lstm_proj", "gru"])
def test_gradcheck(engine, mode):
    ours_cls, _, kw = MODES[mode]
    layer = ours_cls(2, 4, 2, bidirectional=True, engine=engine, **kw).double()
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 2])
    assert torch.autograd.gradcheck(lambda x: layer(x)[0], (x,))
    assert torch.autograd.gradcheck(lambda x: layer(x, lengths=lengths)[0], (x,))


def _recurrent_pair(kind, layers, bidir, batch_first, bias, engine, torch_cells=False):
    """A Recurrent of cells and the torch.nn layer holding the same weights."""
    cell_cls = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn_tanh": nn.RNNCell}[kind]
    if not torch_cells:
        cell_cls = {"lstm": rnnkit.LSTMCell, "gru": rnnkit.GRUCell, "rnn_tanh": rnnkit.RNNCell}[
            kind
        ]
    ours = rnnkit.Recurrent(
        cell_cls(4, 5, bias=bias),
        num_layers=layers,
        bidirectional=bidir,
        batch_first=batch_first,
        engine=engine,
    )
    ref_cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN}[kind]
    reference = ref_cls(4, 5, layers, bias=bias, batch_first=batch_first, bidirectional=bidir)
    directions = 2 if bidir else 1
    with torch.no_grad():
        for unit, cell in enumerate(ours.cells):
            suffix = f"_l{unit // directions}" + ("_reverse" if unit % directions else "")
            for name, param in cell.named_parameters():
                getattr(
                    reference, name.replace("_ih", "_ih" + suffix).replace("_hh", "_hh" + suffix)
                ).copy_(param)
    return ours, reference


@pytest.mark.parametrize("engine", ["auto", "loop"])
@pytest.mark.parametrize("torch_cells", [False, True])
@pytest.mark.parametrize(
    ("kind", "layers", "bidir", "batch_first", "bias"),
    list(
        itertools.product(
            ["lstm", "gru", "rnn_tanh"], [1, 2], [False, True], [False, True], [True, False]
        )
    ),
)
def test_recurrent_matches_torch(engine, torch_cells, kind, layers, bidir, batch_first, bias):
    ours, reference = _recurrent_pair(kind, layers, bidir, batch_first, bias, engine, torch_cells)
    x = torch.randn((3, 6, 4) if batch_first else (6, 3, 4))
    hx = _state(kind, layers * (2 if bidir else 1), 3, 5, 0, torch.float32)
    # parameters are compared in the order of the torch layer, so only inputs and states here
    out, state = ours(x, hx)
    ref_out, ref_state = reference(x, hx)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for a, b in zip(_parts(state), _parts(ref_state), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    expected = "loop" if engine == "loop" else "fused"
    assert rnnkit.explain_fast_path(ours)[0].engine == expected


def test_recurrent_gradients_reach_every_cell():
    ours, reference = _recurrent_pair("lstm", 2, True, False, True, "auto")
    x = torch.randn(6, 3, 4)
    ours(x)[0].square().sum().backward()
    reference(x)[0].square().sum().backward()
    directions = 2
    for unit, cell in enumerate(ours.cells):
        suffix = f"_l{unit // directions}" + ("_reverse" if unit % directions else "")
        for name, param in cell.named_parameters():
            ref = getattr(
                reference, name.replace("_ih", "_ih" + suffix).replace("_hh", "_hh" + suffix)
            )
            torch.testing.assert_close(param.grad, ref.grad, atol=1e-5, rtol=1e-5)


class PeepholeFreeLSTM(rnnkit.LSTMCell):
    """A user's subclass: the same step, but not an exact LSTMCell, so it runs in the loop."""


class MinimalCell(nn.Module):
    """A user's cell with only forward(x, state) and hidden_size."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.linear = nn.Linear(input_size + hidden_size, hidden_size)

    def forward(self, x, state=None):
        if state is None:
            state = x.new_zeros(*x.shape[:-1], self.hidden_size)
        return torch.tanh(self.linear(torch.cat([x, state], dim=-1)))

    def replicate(self, input_size):
        return MinimalCell(input_size, self.hidden_size)


def test_user_cells_run_in_the_loop_with_their_reasons():
    layer = rnnkit.Recurrent(PeepholeFreeLSTM(4, 5), num_layers=2, bidirectional=True)
    report = rnnkit.explain_fast_path(layer)[0]
    assert report.engine == "loop"
    assert "PeepholeFreeLSTM" in report.reasons[0]
    assert report.fixes and "rnnkit.LSTM" in report.fixes[0]
    reference = nn.LSTM(4, 5, 2, bidirectional=True)
    for unit, cell in enumerate(layer.cells):
        suffix = f"_l{unit // 2}" + ("_reverse" if unit % 2 else "")
        for name, param in cell.named_parameters():
            getattr(
                reference, name.replace("_ih", "_ih" + suffix).replace("_hh", "_hh" + suffix)
            ).data.copy_(param)
    x = torch.randn(7, 2, 4)
    torch.testing.assert_close(layer(x)[0], reference(x)[0], atol=1e-5, rtol=1e-5)


def test_minimal_user_cell_stacks_and_takes_lengths():
    layer = rnnkit.Recurrent(MinimalCell(3, 4), num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(2, 5, 3)
    out, h_n = layer(x, lengths=torch.tensor([5, 2]))
    assert out.shape == (2, 5, 8) and h_n.shape == (4, 2, 4)
    alone, h_alone = layer(x[1:, :2])
    torch.testing.assert_close(out[1:, :2], alone)
    torch.testing.assert_close(h_n[:, 1:], h_alone)
    assert out[1, 2:].abs().max() == 0


def test_explain_fast_path_lists_every_recurrent_layer():
    model = nn.ModuleDict(
        {
            "encoder": rnnkit.LSTM(3, 4),
            "decoder": nn.GRU(4, 4),
            "custom": rnnkit.Recurrent(PeepholeFreeLSTM(4, 4)),
            "forced": rnnkit.GRU(4, 4, engine="loop"),
        }
    )
    reports = {r.name: r for r in rnnkit.explain_fast_path(model)}
    assert set(reports) == {"encoder", "decoder", "custom", "forced"}
    assert reports["encoder"].engine == reports["decoder"].engine == "fused"
    assert reports["forced"].engine == "loop"
    assert "engine='loop'" in reports["forced"].reasons[0]
    assert "layer.engine = 'auto'" in str(reports["forced"])


def test_dropout_between_layers_acts_in_training_only():
    for engine in ["auto", "loop"]:
        layer = rnnkit.GRU(4, 8, 3, dropout=0.5, engine=engine)
        x = torch.randn(5, 2, 4)
        layer.train()
        assert not torch.equal(layer(x)[0], layer(x)[0])
        layer.eval()
        torch.testing.assert_close(layer(x)[0], layer(x)[0])


def test_engine_fused_insists():
    layer = rnnkit.Recurrent(PeepholeFreeLSTM(3, 3), engine="fused")
    with pytest.raises(ValueError, match="engine='fused' is impossible"):
        layer(torch.randn(4, 2, 3))
    with pytest.raises(ValueError, match="engine must be one of"):
        rnnkit.LSTM(3, 3, engine="cudnn")


# ---- bad input: a ValueError naming the layer, what was expected and what came ----------

BAD = [
    ("rank", lambda m: m(torch.randn(2, 3, 4, 5)), r"LSTM\(4, 6.*expected a 3-D input"),
    (
        "features",
        lambda m: m(torch.randn(7, 2, 3)),
        r"LSTM\(4, 6.*expected 4 input features, got 3",
    ),
    (
        "dtype",
        lambda m: m(torch.randn(7, 2, 4, dtype=torch.float64)),
        "input dtype torch.float64 does not match the weights' dtype torch.float32",
    ),
    (
        "h shape",
        lambda m: m(torch.randn(7, 2, 4), (torch.zeros(2, 2, 6), torch.zeros(1, 2, 6))),
        r"expected h_0 of shape \(1, 2, 6\).*got \(2, 2, 6\)",
    ),
    (
        "batch mismatch",
        lambda m: m(torch.randn(7, 2, 4), (torch.zeros(1, 3, 6),) * 2),
        r"expected h_0 of shape \(1, 2, 6\).*got \(1, 3, 6\)",
    ),
    (
        "c shape",
        lambda m: m(torch.randn(7, 2, 4), (torch.zeros(1, 2, 6), torch.zeros(1, 2, 5))),
        r"expected c_0 of shape \(1, 2, 6\).*got \(1, 2, 5\)",
    ),
    (
        "state arity",
        lambda m: m(torch.randn(7, 2, 4), torch.zeros(1, 2, 6)),
        r"expected the initial state as a tuple \(h_0, c_0\)",
    ),
    (
        "state dtype",
        lambda m: m(torch.randn(7, 2, 4), (torch.zeros(1, 2, 6, dtype=torch.float64),) * 2),
        "h_0 dtype torch.float64 does not match",
    ),
    (
        "unbatched h",
        lambda m: m(torch.randn(7, 4), (torch.zeros(1, 2, 6),) * 2),
        r"expected h_0 of shape \(1, 6\)",
    ),
    ("not a tensor", lambda m: m([[1.0] * 4]), "expected a Tensor or PackedSequence, got list"),
]


@pytest.mark.parametrize("engine", ["auto", "loop"])
@pytest.mark.parametrize(("label", "call", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_named(engine, label, call, message):
    with pytest.raises(ValueError, match=message):
        call(rnnkit.LSTM(4, 6, engine=engine))


def test_recurrent_bad_input_is_named():
    layer = rnnkit.Recurrent(rnnkit.GRUCell(4, 6), num_layers=2)
    with pytest.raises(ValueError, match=r"Recurrent\(.*expected 4 input features, got 5"):
        layer(torch.randn(3, 2, 5))
    with pytest.raises(ValueError, match=r"expected h_0 of shape \(2, 2, 6\)"):
        layer(torch.randn(3, 2, 4), torch.zeros(1, 2, 6))
    with pytest.raises(ValueError, match="expected a cell module"):
        rnnkit.Recurrent("lstm")
    with pytest.raises(ValueError, match="num_layers must be an int >= 1, got 0"):
        rnnkit.Recurrent(rnnkit.GRUCell(4, 6), num_layers=0)
