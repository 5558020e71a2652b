"""Layers with lengths: equal to running each sequence alone, for every layer kind and engine."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit

INPUT, HIDDEN = 3, 4
LENGTHS = [6, 0, 3, 6, 1]  # a zero-length sequence, repeated lengths, max below the time axis
STEPS = 7


class PlainLSTMCell(rnnkit.LSTMCell):
    """An LSTM cell the fused kernel does not know (not the exact type): always the own loop."""


CELLS = {
    "RNNCell": lambda: rnnkit.RNNCell(INPUT, HIDDEN),
    "RNNCell-relu": lambda: rnnkit.RNNCell(INPUT, HIDDEN, nonlinearity="relu"),
    "LSTMCell": lambda: rnnkit.LSTMCell(INPUT, HIDDEN),
    "GRUCell": lambda: rnnkit.GRUCell(INPUT, HIDDEN),
    "torch.nn.GRUCell": lambda: nn.GRUCell(INPUT, HIDDEN),
    "PlainLSTMCell": lambda: PlainLSTMCell(INPUT, HIDDEN),
}
KINDS = ["RNN", "LSTM", "GRU", *(f"Recurrent({name})" for name in CELLS)]


def make_layer(kind, num_layers=1, bidirectional=False, batch_first=False, engine="auto", **kw):
    if kind in ("RNN", "LSTM", "GRU"):
        layer = getattr(rnnkit, kind)(
            INPUT,
            HIDDEN,
            num_layers=num_layers,
            bidirectional=bidirectional,
            batch_first=batch_first,
            **kw,
        )
    else:
        cell = CELLS[kind[len("Recurrent(") : -1]]()
        layer = rnnkit.Recurrent(cell, num_layers, bidirectional, batch_first)
    layer.engine = engine
    return layer.double()


def random_state_like(state):
    if isinstance(state, tuple):
        return tuple(torch.randn_like(s) for s in state)
    return torch.randn_like(state)


def rows(state, b):
    """Sequence ``b``'s part of a ``(L*D, B, H)`` state (or tuple of them), batch kept."""
    if isinstance(state, tuple):
        return tuple(s[:, b : b + 1] for s in state)
    return state[:, b : b + 1]


def assert_states_close(actual, expected, atol):
    actual = actual if isinstance(actual, tuple) else (actual,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=atol)


def sequence(x, b, n, batch_first):
    return x[b : b + 1, :n] if batch_first else x[:n, b : b + 1]


def output_of(out, b, batch_first):
    return out[b] if batch_first else out[:, b]


def check_against_alone(layer, x, lengths, hx, batch_first, atol):
    """The batched run with lengths equals each sequence run alone; padding gives zeros."""
    out, state = layer(x, hx, lengths=torch.tensor(lengths))
    for b, n in enumerate(lengths):
        row_out = output_of(out, b, batch_first)
        assert bool((row_out[n:] == 0).all()), "outputs past a sequence's end must be zero"
        if n == 0:  # documented policy: zero outputs, the initial state returned
            assert_states_close(rows(state, b), rows(hx, b), atol=0)
            continue
        alone_out, alone_state = layer(sequence(x, b, n, batch_first), rows(hx, b))
        torch.testing.assert_close(
            row_out[:n], output_of(alone_out, 0, batch_first), rtol=0, atol=atol
        )
        assert_states_close(rows(state, b), alone_state, atol)
    return out, state


@pytest.mark.parametrize("engine", ["auto", "loop"])
@pytest.mark.parametrize(
    "num_layers, bidirectional, batch_first",
    list(itertools.product([1, 2], [False, True], [False, True])),
)
@pytest.mark.parametrize("kind", KINDS)
def test_lengths_equal_running_each_sequence_alone(
    kind, num_layers, bidirectional, batch_first, engine
):
    layer = make_layer(kind, num_layers, bidirectional, batch_first, engine)
    shape = (len(LENGTHS), STEPS, INPUT) if batch_first else (STEPS, len(LENGTHS), INPUT)
    x = torch.randn(*shape, dtype=torch.float64)
    hx = random_state_like(layer(x)[1])
    check_against_alone(layer, x, LENGTHS, hx, batch_first, atol=1e-10)


@pytest.mark.parametrize("engine", ["auto", "loop"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "Recurrent(LSTMCell)"])
def test_float32_lengths_within_1e_5(kind, engine):
    layer = make_layer(kind, 2, True, True, engine).float()
    x = torch.randn(len(LENGTHS), STEPS, INPUT)
    hx = random_state_like(layer(x)[1])
    check_against_alone(layer, x, LENGTHS, hx, True, atol=1e-5)


@pytest.mark.parametrize("engine", ["auto", "loop"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_projected_lstm_with_lengths(engine, bidirectional):
    layer = make_layer("LSTM", 2, bidirectional, False, engine, proj_size=2)
    x = torch.randn(STEPS, len(LENGTHS), INPUT, dtype=torch.float64)
    hx = random_state_like(layer(x)[1])
    assert hx[0].shape[-1] == 2 and hx[1].shape[-1] == HIDDEN
    out, _ = check_against_alone(layer, x, LENGTHS, hx, False, atol=1e-10)
    assert out.shape[-1] == 2 * (2 if bidirectional else 1)


@pytest.mark.parametrize("engine", ["auto", "loop"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "Recurrent(RNNCell)", "Recurrent(PlainLSTMCell)"])
def test_gradients_equal_running_each_sequence_alone(kind, engine):
    layer = make_layer(kind, 2, True, True, engine)
    x = torch.randn(len(LENGTHS), STEPS, INPUT, dtype=torch.float64, requires_grad=True)
    out, state = layer(x, lengths=LENGTHS)
    out_weight = torch.randn_like(out)
    state_weight = random_state_like(state)

    def objective(out, state, out_w, state_w):
        parts = zip(
            state if isinstance(state, tuple) else (state,),
            state_w if isinstance(state_w, tuple) else (state_w,),
            strict=True,
        )
        return (out * out_w).sum() + sum((s * w).sum() for s, w in parts)

    objective(out, state, out_weight, state_weight).backward()
    batched = [p.grad.clone() for p in layer.parameters()]
    batched_x = x.grad.clone()
    layer.zero_grad()
    x.grad = None
    for b, n in enumerate(LENGTHS):
        if n == 0:
            continue
        alone_out, alone_state = layer(x[b : b + 1, :n])
        objective(
            alone_out, alone_state, out_weight[b : b + 1, :n], rows(state_weight, b)
        ).backward()
    for got, want in zip(batched, (p.grad for p in layer.parameters()), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    torch.testing.assert_close(batched_x, x.grad, rtol=0, atol=1e-10)
    assert bool((batched_x[1] == 0).all()) and bool((batched_x[2, 3:] == 0).all())


@pytest.mark.parametrize("engine", ["auto", "loop"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "Recurrent(PlainLSTMCell)"])
def test_mask_equals_lengths(kind, batch_first, engine):
    layer = make_layer(kind, 2, True, batch_first, engine)
    shape = (len(LENGTHS), STEPS, INPUT) if batch_first else (STEPS, len(LENGTHS), INPUT)
    x = torch.randn(*shape, dtype=torch.float64)
    mask = rnnkit.lengths_to_mask(LENGTHS, STEPS)
    by_mask = layer(x, mask=mask if batch_first else mask.t())
    by_lengths = layer(x, lengths=LENGTHS)
    torch.testing.assert_close(by_mask[0], by_lengths[0], rtol=0, atol=0)
    assert_states_close(by_mask[1], by_lengths[1], atol=0)


@pytest.mark.parametrize("engine", ["auto", "loop"])
@pytest.mark.parametrize(
    "lengths",
    [LENGTHS, np.array(LENGTHS), torch.tensor(LENGTHS, dtype=torch.int32), tuple(LENGTHS)],
    ids=["list", "numpy", "int32 tensor", "tuple"],
)
def test_lengths_in_any_container_give_the_same_result(lengths, engine):
    layer = make_layer("GRU", 1, True, True, engine)
    x = torch.randn(len(LENGTHS), STEPS, INPUT, dtype=torch.float64)
    expected = layer(x, lengths=torch.tensor(LENGTHS))
    got = layer(x, lengths=lengths)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_lengths_on_the_gpu_with_a_cpu_layer():
    layer = make_layer("LSTM", 1, False, True)
    x = torch.randn(len(LENGTHS), STEPS, INPUT, dtype=torch.float64)
    expected = layer(x, lengths=LENGTHS)
    got = layer(x, lengths=torch.tensor(LENGTHS, device="cuda"))
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)


@pytest.mark.parametrize("engine", ["auto", "loop"])
@pytest.mark.parametrize("kind", ["LSTM", "Recurrent(GRUCell)", "Recurrent(PlainLSTMCell)"])
def test_zero_length_sequences_give_zeros_and_the_initial_state(kind, engine):
    layer = make_layer(kind, 2, True, True, engine)
    x = torch.randn(3, 4, INPUT, dtype=torch.float64)
    hx = random_state_like(layer(x)[1])
    out, state = layer(x, hx, lengths=[0, 0, 0])
    assert bool((out == 0).all()) and out.shape == (3, 4, 2 * HIDDEN)
    assert_states_close(state, hx, atol=0)
    out, state = layer(x, lengths=[0, 4, 0])  # default initial state: zeros
    zeros = random_state_like(state)
    zeros = tuple(z.zero_() for z in zeros) if isinstance(zeros, tuple) else zeros.zero_()
    assert_states_close(rows(state, 0), rows(zeros, 0), atol=0)
    assert bool((out[0] == 0).all()) and bool((out[2] == 0).all())


@pytest.mark.parametrize("engine", ["auto", "loop"])
def test_an_empty_time_axis_with_zero_lengths(engine):
    layer = make_layer("LSTM", 1, False, True, engine)
    hx = (torch.randn(1, 2, HIDDEN, dtype=torch.float64),) * 2
    out, state = layer(torch.zeros(2, 0, INPUT, dtype=torch.float64), hx, lengths=[0, 0])
    assert out.shape == (2, 0, HIDDEN)
    assert_states_close(state, hx, atol=0)


# --------------------------------------------------------------------------------------------
# PackedSequence input, against torch.nn


def torch_twin(layer):
    """The torch.nn layer with the same weights as an rnnkit layer or Recurrent of cells."""
    if isinstance(layer, nn.RNNBase):
        twin = getattr(nn, type(layer).__name__)(
            layer.input_size,
            layer.hidden_size,
            num_layers=layer.num_layers,
            bidirectional=layer.bidirectional,
            batch_first=layer.batch_first,
            **({"proj_size": layer.proj_size} if layer.proj_size else {}),
            **({"nonlinearity": layer.nonlinearity} if isinstance(layer, nn.RNN) else {}),
        )
        twin.load_state_dict(layer.state_dict())
        return twin.double()
    kind = {rnnkit.LSTMCell: nn.LSTM, rnnkit.GRUCell: nn.GRU, PlainLSTMCell: nn.LSTM}
    twin = kind[type(layer.cells[0])](
        INPUT,
        HIDDEN,
        num_layers=layer.num_layers,
        bidirectional=layer.bidirectional,
        batch_first=layer.batch_first,
    ).double()
    directions = 2 if layer.bidirectional else 1
    with torch.no_grad():
        for unit, cell in enumerate(layer.cells):
            suffix = f"_l{unit // directions}" + ("_reverse" if unit % directions else "")
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(twin, name + suffix).copy_(getattr(cell, name))
    return twin


@pytest.mark.parametrize("engine", ["auto", "loop"])
@pytest.mark.parametrize("enforce_sorted", [False, True])
@pytest.mark.parametrize(
    "kind, kw",
    [
        ("RNN", {}),
        ("LSTM", {}),
        ("GRU", {}),
        ("LSTM", {"proj_size": 2}),
        ("Recurrent(LSTMCell)", {}),
        ("Recurrent(PlainLSTMCell)", {}),
    ],
)
def test_packed_input_equals_torch_nn(kind, kw, enforce_sorted, engine):
    layer = make_layer(kind, 2, True, False, engine, **kw)
    reference = torch_twin(layer)
    lengths = [6, 4, 4, 1] if enforce_sorted else [4, 6, 1, 4]
    x = torch.randn(6, 4, INPUT, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=enforce_sorted)
    hx = random_state_like(reference(packed)[1])
    out, state = layer(packed, hx)
    ref_out, ref_state = reference(packed, hx)
    assert isinstance(out, nn.utils.rnn.PackedSequence)
    torch.testing.assert_close(out.data, ref_out.data, rtol=0, atol=1e-10)
    assert torch.equal(out.batch_sizes, ref_out.batch_sizes)
    for mine, theirs in [
        (out.sorted_indices, ref_out.sorted_indices),
        (out.unsorted_indices, ref_out.unsorted_indices),
    ]:
        assert (mine is None and theirs is None) or torch.equal(mine, theirs)
    assert_states_close(state, ref_state, atol=1e-10)
    by_lengths = layer(x, hx, lengths=lengths)
    assert_states_close(by_lengths[1], ref_state, atol=1e-10)


# --------------------------------------------------------------------------------------------
# Bad input, as the layers report it


@pytest.fixture(params=["LSTM", "Recurrent(GRUCell)"])
def layer_and_input(request):
    layer = make_layer(request.param, 1, False, True)
    return layer, torch.randn(3, 5, INPUT, dtype=torch.float64)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lengths": [5, 6, 1]}, r"a length \(6\) exceeds the time axis of the input \(5 steps\)"),
        ({"lengths": [5, -1, 1]}, "lengths must be >= 0, got min -1"),
        ({"lengths": [5, 1]}, r"expected one length per sequence \(3\), got 2 lengths"),
        ({"lengths": torch.tensor([5.0, 1.0, 1.0])}, "lengths must be integers.*float32"),
        ({"lengths": [5, 1.5, 1]}, "lengths must be integers, got 1.5"),
        ({"lengths": torch.tensor([[5, 1, 1]])}, "lengths must be 1-D"),
        ({"mask": torch.ones(3, 5)}, "mask must be a boolean tensor, got torch.float32"),
        ({"mask": torch.ones(5, 3, dtype=torch.bool)}, r"mask of shape \(batch, time\)"),
        (
            {"mask": torch.tensor([[True, False, True, False, False]] * 3)},
            "not contiguous on the right side.*right-padded",
        ),
        (
            {"mask": rnnkit.lengths_to_mask([5, 2, 1], side="left")},
            "not contiguous on the right side",
        ),
        (
            {"lengths": [5, 1, 1], "mask": torch.ones(3, 5, dtype=torch.bool)},
            "pass lengths or mask, not both",
        ),
    ],
)
def test_layers_reject_bad_lengths_and_masks(layer_and_input, kwargs, match):
    layer, x = layer_and_input
    with pytest.raises(ValueError, match=match) as info:
        layer(x, **kwargs)
    assert str(info.value).startswith(type(layer).__name__ + "(")


def test_layers_reject_lengths_with_unbatched_or_packed_input(layer_and_input):
    layer, x = layer_and_input
    with pytest.raises(ValueError, match="lengths/mask need a batched 3-D input"):
        layer(x[0], lengths=[5])
    packed = pack_padded_sequence(x, [5, 3, 1], batch_first=True)
    with pytest.raises(ValueError, match="a PackedSequence carries its lengths"):
        layer(packed, lengths=[5, 3, 1])


def test_time_major_mask_must_be_time_by_batch():
    layer = make_layer("GRU", 1, False, False)
    x = torch.randn(5, 3, INPUT, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"mask of shape \(time, batch\) = \(5, 3\)"):
        layer(x, mask=torch.ones(3, 5, dtype=torch.bool))


# --------------------------------------------------------------------------------------------
# The fused engine's padded path (GRU and RNN: one padded call per layer and direction)

PADDED_KINDS = {
    "GRU": lambda **kw: rnnkit.GRU(INPUT, HIDDEN, **kw),
    "RNN-tanh": lambda **kw: rnnkit.RNN(INPUT, HIDDEN, **kw),
    "RNN-relu": lambda **kw: rnnkit.RNN(INPUT, HIDDEN, nonlinearity="relu", **kw),
    "Recurrent(GRUCell)": lambda **kw: rnnkit.Recurrent(rnnkit.GRUCell(INPUT, HIDDEN), **kw),
}
UNSORTED = [3, 7, 0, 5, 7, 1]  # unsorted, a zero length, the full time axis twice


def _padded_layer(kind, num_layers, bidirectional, engine):
    layer = PADDED_KINDS[kind](num_layers=num_layers, bidirectional=bidirectional, engine=engine)
    return layer.double()


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("kind", PADDED_KINDS)
def test_padded_path_equals_the_loop_and_running_each_sequence_alone(
    kind, num_layers, bidirectional
):
    fused_layer = _padded_layer(kind, num_layers, bidirectional, "fused")
    loop_layer = _padded_layer(kind, num_layers, bidirectional, "loop")
    loop_layer.load_state_dict(fused_layer.state_dict())
    x = torch.randn(STEPS, len(UNSORTED), INPUT, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(num_layers * (1 + bidirectional), len(UNSORTED), HIDDEN, dtype=torch.float64)
    hx.requires_grad_(True)
    check_against_alone(fused_layer, x.detach(), UNSORTED, hx.detach(), False, atol=1e-10)
    results = []
    for layer in (fused_layer, loop_layer):
        out, h_n = layer(x, hx, lengths=UNSORTED)
        torch.manual_seed(3)
        w_out, w_h = torch.randn_like(out), torch.randn_like(h_n)
        grads = torch.autograd.grad(
            (out * w_out).sum() + (h_n * w_h).sum(), [x, hx, *layer.parameters()]
        )
        results.append((out, h_n, grads))
    (out, h_n, grads), (ref_out, ref_h, ref_grads) = results
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-10)
    torch.testing.assert_close(h_n, ref_h, rtol=0, atol=1e-10)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", ["GRU", "RNN-tanh", "RNN-relu"])
def test_padded_path_matches_torch_nn_on_packed_sequences(kind, bidirectional):
    layer = _padded_layer(kind, 2, bidirectional, "fused")
    reference = torch_twin(layer)
    lengths = [4, 6, 1, 4]
    x = torch.randn(6, 4, INPUT, dtype=torch.float64)
    hx = torch.randn(2 * (1 + bidirectional), 4, HIDDEN, dtype=torch.float64)
    out, h_n = layer(x, hx, lengths=lengths)
    packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    ref_out, ref_h = reference(packed, hx)
    ref_out = nn.utils.rnn.pad_packed_sequence(ref_out, total_length=6)[0]
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-10)
    torch.testing.assert_close(h_n, ref_h, rtol=0, atol=1e-10)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", ["GRU", "RNN-relu"])
def test_padded_path_gradcheck(kind, bidirectional):
    layer = _padded_layer(kind, 2, bidirectional, "fused")
    lengths = [3, 0, 2]
    x = torch.randn(3, 3, INPUT, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(2 * (1 + bidirectional), 3, HIDDEN, dtype=torch.float64, requires_grad=True)

    def run(x, hx, *params):
        out, h_n = torch.func.functional_call(
            layer,
            dict(zip(dict(layer.named_parameters()), params, strict=True)),
            (x, hx),
            {"lengths": lengths},
        )
        return out, h_n

    assert torch.autograd.gradcheck(run, (x, hx, *layer.parameters()))


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("GRU", "one padded call per layer and direction"),
        ("RNN", "one padded call per layer and direction"),
        ("Recurrent(GRUCell)", "one padded call per layer and direction"),
        ("LSTM", "segments cut at the distinct lengths"),
        ("Recurrent(LSTMCell)", "segments cut at the distinct lengths"),
    ],
)
def test_explain_fast_path_names_the_lengths_strategy_that_runs(kind, expected):
    report = rnnkit.explain_fast_path(make_layer(kind))[0]
    assert report.engine == "fused" and expected in report.kernel
