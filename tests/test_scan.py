import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit

DOUBLE = torch.float64
LAYERS = (rnnkit.MinGRU, rnnkit.MinLSTM)
ENGINES = ("scan", "loop")


def equations(layer: torch.nn.Module, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """The paper's equations step by step for a time-major batch; returns all states."""
    w, b = layer.weight_ih, layer.bias_ih
    hidden, h, states = layer.hidden_size, h0, []
    for x_t in x:
        pre = x_t @ w.T + (b if b is not None else 0)
        if isinstance(layer, rnnkit.MinGRU):
            z = torch.sigmoid(pre[:, :hidden])
            h = (1 - z) * h + z * pre[:, hidden:]
        else:
            f, i = torch.sigmoid(pre[:, :hidden]), torch.sigmoid(pre[:, hidden : 2 * hidden])
            h = f / (f + i) * h + i / (f + i) * pre[:, 2 * hidden :]
        states.append(h)
    return torch.stack(states)


def recurrence(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, reverse: bool = False):
    states, h = [], h0
    for t in reversed(range(len(a))) if reverse else range(len(a)):
        h = a[t] * h + b[t]
        states.append(h)
    if reverse:
        states.reverse()
    return torch.stack(states)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    reference = reference.detach()
    return float((value.detach().double() - reference).abs().max() / reference.abs().max())


# --------------------------------------------------------------------------------------------
# linear_scan


@pytest.mark.parametrize("steps", [1, 2, 5, 16, 17, 50])
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_matches_the_recurrence(steps, reverse):
    a = torch.rand(steps, 3, 4, dtype=DOUBLE)
    b = torch.randn(steps, 3, 4, dtype=DOUBLE)
    h0 = torch.randn(3, 4, dtype=DOUBLE)
    expected = recurrence(a, b, h0, reverse)
    torch.testing.assert_close(
        rnnkit.linear_scan(a, b, h0, reverse=reverse), expected, atol=1e-12, rtol=0
    )


def test_linear_scan_any_sign_of_a_and_empty_time():
    a, b, h0 = torch.randn(30, 5, dtype=DOUBLE), torch.randn(30, 5, dtype=DOUBLE), torch.ones(5)
    h0 = h0.double()
    torch.testing.assert_close(rnnkit.linear_scan(a, b, h0), recurrence(a, b, h0))
    empty = rnnkit.linear_scan(a[:0], b[:0], h0)
    assert empty.shape == (0, 5)


@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_gradcheck_and_gradgradcheck(reverse):
    args = (
        torch.rand(11, 2, 3, dtype=DOUBLE, requires_grad=True),
        torch.randn(11, 2, 3, dtype=DOUBLE, requires_grad=True),
        torch.randn(2, 3, dtype=DOUBLE, requires_grad=True),
    )
    scan = lambda a, b, h0: rnnkit.linear_scan(a, b, h0, reverse=reverse)
    assert torch.autograd.gradcheck(scan, args)
    assert torch.autograd.gradgradcheck(scan, args)


def test_linear_scan_errors():
    a, h0 = torch.rand(4, 3), torch.zeros(3)
    with pytest.raises(TypeError, match="b must be a Tensor, got list"):
        rnnkit.linear_scan(a, [1.0], h0)
    with pytest.raises(ValueError, match=r"a and b of one shape .* got \(4, 3\) and \(4, 2\)"):
        rnnkit.linear_scan(a, torch.rand(4, 2), h0)
    with pytest.raises(ValueError, match=r"a and b of one shape"):
        rnnkit.linear_scan(torch.tensor(1.0), torch.tensor(1.0), h0)
    with pytest.raises(ValueError, match=r"h0 of shape \(3,\) .* got \(2,\)"):
        rnnkit.linear_scan(a, a, torch.zeros(2))
    with pytest.raises(ValueError, match="share one dtype, got torch.float32, torch.float64"):
        rnnkit.linear_scan(a, a.double(), h0)


# --------------------------------------------------------------------------------------------
# MinGRU / MinLSTM: the equations, both engines


@pytest.mark.parametrize("layer_type", LAYERS)
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("bias", [True, False])
def test_layer_computes_the_equations(layer_type, engine, bias):
    layer = layer_type(4, 6, bias=bias, engine=engine).double()
    x = torch.randn(23, 3, 4, dtype=DOUBLE)
    h0 = torch.randn(1, 3, 6, dtype=DOUBLE)
    output, h_n = layer(x, h0)
    expected = equations(layer, x, h0[0])
    torch.testing.assert_close(output, expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(h_n, expected[-1:], atol=1e-10, rtol=0)


@pytest.mark.parametrize("layer_type", LAYERS)
def test_float32_engines_agree_with_float64_equations(layer_type):
    layer = layer_type(5, 8)
    x = torch.randn(40, 2, 5)
    reference = equations(layer.double(), x.double(), torch.zeros(2, 8, dtype=DOUBLE))
    layer.float()
    for engine in ENGINES:
        layer.engine = engine
        assert relative_error(layer(x)[0], reference) <= 1e-5


def test_minlstm_gates_stay_accurate_when_both_are_tiny():
    layer = rnnkit.MinLSTM(2, 3).double()
    with torch.no_grad():
        layer.bias_ih[:6] = -60.0  # sigmoid(k) ~ 1e-26 for f and i: f/(f+i) must stay finite
    x = torch.randn(7, 1, 2, dtype=DOUBLE)
    output, _ = layer(x)
    assert torch.isfinite(output).all()
    torch.testing.assert_close(output, equations(layer, x, torch.zeros(1, 3, dtype=DOUBLE)))


@pytest.mark.parametrize("layer_type", LAYERS)
@pytest.mark.parametrize("bias_shift", [0.0, -6.0])  # short and long memory (a_t near 1)
def test_scan_error_at_4096_steps_is_below_1e_5_of_the_float64_sequential(layer_type, bias_shift):
    layer = layer_type(8, 8)
    with torch.no_grad():
        layer.bias_ih[:8] += bias_shift
    x = torch.randn(4096, 2, 8)
    output, h_n = layer(x)
    reference = layer_type(8, 8, engine="loop").double()
    reference.load_state_dict(layer.state_dict())
    expected, expected_n = reference(x.double())
    assert relative_error(output, expected) <= 1e-5
    assert relative_error(h_n, expected_n) <= 1e-5


@pytest.mark.parametrize("layer_type", LAYERS)
def test_engines_give_the_same_outputs_and_gradients(layer_type):
    torch.manual_seed(1)
    results = []
    for engine in ENGINES:
        torch.manual_seed(1)
        layer = layer_type(3, 5, engine=engine).double()
        x = torch.randn(19, 4, 3, dtype=DOUBLE, requires_grad=True)
        h0 = torch.randn(1, 4, 5, dtype=DOUBLE, requires_grad=True)
        output, h_n = layer(x, h0, lengths=[19, 7, 1, 12])
        (output.sin().sum() + h_n.square().sum()).backward()
        grads = [x.grad, h0.grad] + [p.grad for p in layer.parameters()]
        results.append((output, h_n, grads))
    (out_s, hn_s, grads_s), (out_l, hn_l, grads_l) = results
    torch.testing.assert_close(out_s, out_l, atol=1e-12, rtol=0)
    torch.testing.assert_close(hn_s, hn_l, atol=1e-12, rtol=0)
    for g_s, g_l in zip(grads_s, grads_l, strict=True):
        torch.testing.assert_close(g_s, g_l, atol=1e-10, rtol=0)


@pytest.mark.parametrize("layer_type", LAYERS)
def test_layer_gradcheck(layer_type):
    layer = layer_type(2, 3).double()
    x = torch.randn(9, 2, 2, dtype=DOUBLE, requires_grad=True)
    h0 = torch.randn(1, 2, 3, dtype=DOUBLE, requires_grad=True)

    def run(x, h0, *params):
        out, h_n = torch.func.functional_call(
            layer, dict(zip(names, params, strict=True)), (x, h0), {"lengths": [9, 4]}
        )
        return out, h_n

    names = [n for n, _ in layer.named_parameters()]
    params = tuple(p.detach().requires_grad_() for p in layer.parameters())
    assert torch.autograd.gradcheck(run, (x, h0, *params), fast_mode=True)


@pytest.mark.parametrize("layer_type", LAYERS)
@pytest.mark.parametrize("engine", ENGINES)
def test_streaming_in_pieces_equals_one_call(layer_type, engine):
    layer = layer_type(4, 6, batch_first=True, engine=engine).double()
    x = torch.randn(2, 30, 4, dtype=DOUBLE)
    whole, h_whole = layer(x)
    first, h = layer(x[:, :13])
    pieces = [first]
    for t in range(13, 30):  # the rest one step at a time, as at inference
        out, h = layer(x[:, t : t + 1], h)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, atol=1e-12, rtol=0)
    torch.testing.assert_close(h, h_whole, atol=1e-12, rtol=0)


@pytest.mark.parametrize("layer_type", LAYERS)
@pytest.mark.parametrize("engine", ENGINES)
def test_lengths_equal_running_each_sequence_alone(layer_type, engine):
    layer = layer_type(3, 4, batch_first=True, engine=engine).double()
    lengths = [9, 3, 0, 6]
    x = torch.randn(4, 9, 3, dtype=DOUBLE)
    h0 = torch.randn(1, 4, 4, dtype=DOUBLE)
    output, h_n = layer(x, h0, lengths=torch.tensor(lengths))
    for row, length in enumerate(lengths):
        if length == 0:  # zero outputs and the initial state (alone, an empty sequence raises)
            assert (output[row] == 0).all() and torch.equal(h_n[:, row], h0[:, row])
            continue
        alone, h_alone = layer(x[row : row + 1, :length], h0[:, row : row + 1])
        torch.testing.assert_close(output[row, :length], alone[0], atol=1e-12, rtol=0)
        assert (output[row, length:] == 0).all()
        torch.testing.assert_close(h_n[:, row], h_alone[:, 0], atol=1e-12, rtol=0)
    mask = rnnkit.lengths_to_mask(lengths, 9)
    by_mask = layer(x, h0, mask=mask)
    torch.testing.assert_close(by_mask[0], output, atol=0, rtol=0)
    torch.testing.assert_close(by_mask[1], h_n, atol=0, rtol=0)


def test_unbatched_and_packed_inputs():
    layer = rnnkit.MinGRU(3, 4).double()
    x = torch.randn(6, 3, dtype=DOUBLE)
    h0 = torch.randn(1, 4, dtype=DOUBLE)
    output, h_n = layer(x, h0)
    batched, h_batched = layer(x[:, None], h0[:, None])
    assert output.shape == (6, 4) and h_n.shape == (1, 4)
    torch.testing.assert_close(output, batched[:, 0])
    torch.testing.assert_close(h_n, h_batched[:, 0])

    padded = torch.randn(5, 3, 3, dtype=DOUBLE)
    lengths = torch.tensor([5, 2, 4])
    packed = pack_padded_sequence(padded, lengths, enforce_sorted=False)
    out_packed, h_packed = layer(packed)
    out_lengths, h_lengths = layer(padded, lengths=lengths)
    torch.testing.assert_close(pad_packed_sequence(out_packed)[0], out_lengths)
    torch.testing.assert_close(h_packed, h_lengths)


def test_parameters_and_repr():
    assert [n for n, _ in rnnkit.MinGRU(3, 4).named_parameters()] == ["weight_ih", "bias_ih"]
    assert rnnkit.MinLSTM(3, 4).weight_ih.shape == (12, 3)
    assert [n for n, _ in rnnkit.MinGRU(3, 4, bias=False).named_parameters()] == ["weight_ih"]
    assert "engine='loop'" in repr(rnnkit.MinLSTM(3, 4, engine="loop"))


# --------------------------------------------------------------------------------------------
# MinRNNStack


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_stack_computes_residual_prenorm_blocks(kind):
    stack = rnnkit.MinRNNStack(3, 5, num_layers=3, kind=kind).double()
    x = torch.randn(8, 2, 3, dtype=DOUBLE)
    output, h_n = stack(x)
    u = x @ stack.input_proj.weight.T + stack.input_proj.bias
    finals = []
    for norm, layer in zip(stack.norms, stack.layers, strict=True):
        states = equations(layer, norm(u), torch.zeros(2, 5, dtype=DOUBLE))
        u = u + states
        finals.append(states[-1])
    expected = torch.nn.functional.layer_norm(u, (5,), stack.out_norm.weight, stack.out_norm.bias)
    torch.testing.assert_close(output, expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(h_n, torch.stack(finals), atol=1e-10, rtol=0)
    assert isinstance(rnnkit.MinRNNStack(5, 5).input_proj, torch.nn.Identity)


def test_stack_streaming_lengths_and_engine():
    stack = rnnkit.MinRNNStack(3, 4, num_layers=2, kind="lstm", batch_first=True).double()
    x = torch.randn(3, 12, 3, dtype=DOUBLE)
    whole, h_whole = stack(x)
    first, h = stack(x[:, :5])
    second, h = stack(x[:, 5:], h)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-12, rtol=0)
    torch.testing.assert_close(h, h_whole, atol=1e-12, rtol=0)

    lengths = [12, 4, 7]
    output, h_n = stack(x, lengths=lengths)
    for row, length in enumerate(lengths):
        alone, h_alone = stack(x[row : row + 1, :length])
        torch.testing.assert_close(output[row, :length], alone[0], atol=1e-12, rtol=0)
        assert (output[row, length:] == 0).all()
        torch.testing.assert_close(h_n[:, row], h_alone[:, 0], atol=1e-12, rtol=0)

    stack.engine = "loop"
    assert stack.engine == "loop" and all(layer.engine == "loop" for layer in stack.layers)
    torch.testing.assert_close(stack(x)[0], whole, atol=1e-12, rtol=0)

    unbatched, h_unbatched = stack(x[0], h_whole[:, 0])
    assert unbatched.shape == (12, 4) and h_unbatched.shape == (2, 4)


def test_stack_dropout_acts_in_training_only():
    stack = rnnkit.MinRNNStack(3, 4, num_layers=2, dropout=0.5)
    x = torch.randn(6, 2, 3)
    stack.eval()
    torch.testing.assert_close(stack(x)[0], stack(x)[0])
    stack.train()
    assert not torch.equal(stack(x)[0], stack(x)[0])


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_size": 0}, "input_size must be an int >= 1, got 0"),
        ({"hidden_size": 2.0}, "hidden_size must be an int >= 1, got 2.0"),
        ({"engine": "fused"}, "engine must be one of .*, got 'fused'"),
    ],
)
@pytest.mark.parametrize("layer_type", LAYERS)
def test_layer_constructor_errors(layer_type, kwargs, message):
    args = {"input_size": 3, "hidden_size": 4, **kwargs}
    with pytest.raises(ValueError, match=f"{layer_type.__name__}: {message}"):
        layer_type(**args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_layers": 0}, "num_layers must be an int >= 1, got 0"),
        ({"input_size": -1}, "input_size must be an int >= 1, got -1"),
        ({"hidden_size": None}, "hidden_size must be an int >= 1, got None"),
        ({"kind": "rnn"}, r"kind must be one of \('gru', 'lstm'\), got 'rnn'"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"engine": "auto"}, "engine must be one of .*, got 'auto'"),
    ],
)
def test_stack_constructor_errors(kwargs, message):
    args = {"input_size": 3, "hidden_size": 4, **kwargs}
    with pytest.raises(ValueError, match=f"MinRNNStack: {message}"):
        rnnkit.MinRNNStack(**args)


def test_engine_setter_errors():
    with pytest.raises(ValueError, match="MinGRU: engine must be one of .*, got 'cudnn'"):
        rnnkit.MinGRU(2, 3).engine = "cudnn"
    with pytest.raises(ValueError, match="MinRNNStack: engine must be one of .*, got None"):
        rnnkit.MinRNNStack(2, 3).engine = None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m(torch.randn(2, 3, 4, 3)), r"expected a 3-D input .* got shape \(2, 3, 4, 3\)"),
        (lambda m: m(torch.randn(5, 2, 4)), "expected 3 input features, got 4"),
        (lambda m: m(torch.randn(5, 2, 3).double()), "input dtype torch.float64 does not match"),
        (lambda m: m([1.0, 2.0]), "expected a Tensor or PackedSequence, got list"),
        (lambda m: m(torch.randn(5, 2, 3), torch.zeros(2, 4)), r"h_0 of shape \(1, 2, 4\)"),
        (lambda m: m(torch.randn(5, 3), torch.zeros(1, 1, 4)), r"h_0 of shape \(1, 4\)"),
        (lambda m: m(torch.randn(5, 2, 3), "h"), "h_0 must be a Tensor, got str"),
        (
            lambda m: m(torch.randn(5, 2, 3), torch.zeros(1, 2, 4).double()),
            "h_0 dtype torch.float64 does not match torch.float32",
        ),
        (
            lambda m: m(torch.randn(5, 2, 3), lengths=[5, 2], mask=torch.ones(5, 2).bool()),
            "pass lengths or mask, not both",
        ),
        (lambda m: m(torch.randn(5, 2, 3), lengths=[5, 6]), r"a length \(6\) exceeds"),
        (lambda m: m(torch.randn(5, 2, 3), lengths=[5]), "expected one length per sequence"),
        (lambda m: m(torch.randn(5, 2, 3), mask=torch.ones(2, 5).bool()), "expected a mask of"),
        (lambda m: m(torch.randn(5, 2, 3), mask=torch.ones(5, 2)), "mask must be a boolean"),
        (lambda m: m(torch.randn(5, 3), lengths=[5]), "lengths/mask need a batched 3-D input"),
        (
            lambda m: m(pack_padded_sequence(torch.randn(5, 2, 3), [5, 4]), lengths=[5, 4]),
            "a PackedSequence carries its lengths",
        ),
        (
            lambda m: m(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4))),
            "expected the initial state as one tensor h_0, got 2 tensors",
        ),
    ],
)
@pytest.mark.parametrize("layer_type", [rnnkit.MinGRU, rnnkit.MinLSTM, "stack"])
def test_forward_errors(layer_type, call, message):
    module = rnnkit.MinRNNStack(3, 4) if layer_type == "stack" else layer_type(3, 4)
    with pytest.raises(ValueError, match=message):
        call(module)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layer_type", LAYERS)
def test_cuda_scan_matches_cpu_loop(layer_type):
    layer = layer_type(16, 32)
    x = torch.randn(4096, 4, 16)
    reference = layer_type(16, 32, engine="loop").double()
    reference.load_state_dict(layer.state_dict())
    expected, _ = reference(x.double())
    output, _ = layer.cuda()(x.cuda())
    assert relative_error(output.cpu(), expected) <= 1e-5
