import pytest
import torch

import rnnkit

CELLS = {
    "ln_lstm": lambda i, h: rnnkit.LayerNormLSTMCell(i, h, dtype=torch.float64),
    "ln_gru": lambda i, h: rnnkit.LayerNormGRUCell(i, h, dtype=torch.float64),
    "indrnn": lambda i, h: rnnkit.IndRNNCell(i, h, dtype=torch.float64),
}


def layer_norm(z, gain, shift, eps):
    mean = z.mean(-1, keepdim=True)
    var = ((z - mean) ** 2).mean(-1, keepdim=True)
    out = (z - mean) / torch.sqrt(var + eps) * gain
    return out if shift is None else out + shift


def randomize(cell):
    with torch.no_grad():
        for p in cell.parameters():
            p.normal_(0, 0.5)
    return cell


def test_layer_norm_lstm_step_follows_the_equations():
    cell = randomize(rnnkit.LayerNormLSTMCell(3, 4, dtype=torch.float64))
    x, h, c = (torch.randn(5, n, dtype=torch.float64) for n in (3, 4, 4))
    h1, c1 = cell(x, (h, c))
    a = layer_norm(x @ cell.weight_ih.T, cell.norm_ih.weight, cell.norm_ih.bias, 1e-5)
    a = a + layer_norm(h @ cell.weight_hh.T, cell.norm_hh.weight, cell.norm_hh.bias, 1e-5)
    i, f, g, o = a[:, :4].sigmoid(), a[:, 4:8].sigmoid(), a[:, 8:12].tanh(), a[:, 12:].sigmoid()
    c_ref = f * c + i * g
    h_ref = o * layer_norm(c_ref, cell.norm_c.weight, cell.norm_c.bias, 1e-5).tanh()
    torch.testing.assert_close(c1, c_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(h1, h_ref, atol=1e-10, rtol=1e-10)


def test_layer_norm_gru_step_follows_the_equations():
    cell = randomize(rnnkit.LayerNormGRUCell(3, 4, dtype=torch.float64))
    x, h = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    a = layer_norm(x @ cell.weight_ih.T, cell.norm_ih.weight, cell.norm_ih.bias, 1e-5)
    b = layer_norm(h @ cell.weight_hh.T, cell.norm_hh.weight, cell.norm_hh.bias, 1e-5)
    r, z = (a[:, :4] + b[:, :4]).sigmoid(), (a[:, 4:8] + b[:, 4:8]).sigmoid()
    n = (a[:, 8:] + r * b[:, 8:]).tanh()
    torch.testing.assert_close(cell(x, h), (1 - z) * n + z * h, atol=1e-10, rtol=1e-10)


def test_layer_norm_cells_without_bias_have_no_shifts():
    cell = rnnkit.LayerNormLSTMCell(3, 4, bias=False)
    assert cell.norm_ih.bias is None and cell.norm_hh.bias is None and cell.norm_c.bias is None
    assert sorted(dict(cell.named_parameters())) == [
        "norm_c.weight",
        "norm_hh.weight",
        "norm_ih.weight",
        "weight_hh",
        "weight_ih",
    ]


def test_indrnn_step_and_recurrent_clamp():
    cell = randomize(rnnkit.IndRNNCell(3, 4, dtype=torch.float64))
    x, h = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    expected = torch.relu(x @ cell.weight_ih.T + cell.bias_ih + cell.weight_hh * h)
    torch.testing.assert_close(cell(x, h), expected, atol=1e-10, rtol=1e-10)
    clamped = rnnkit.IndRNNCell(3, 4, recurrent_max_abs=0.1, dtype=torch.float64)
    clamped.load_state_dict(cell.state_dict())
    u = cell.weight_hh.clamp(-0.1, 0.1)
    expected = torch.relu(x @ cell.weight_ih.T + cell.bias_ih + u * h)
    torch.testing.assert_close(clamped(x, h), expected, atol=1e-10, rtol=1e-10)
    tanh = rnnkit.IndRNNCell(3, 4, nonlinearity="tanh", dtype=torch.float64)
    tanh.load_state_dict(cell.state_dict())
    expected = torch.tanh(x @ cell.weight_ih.T + cell.bias_ih + cell.weight_hh * h)
    torch.testing.assert_close(tanh(x, h), expected, atol=1e-10, rtol=1e-10)


def test_indrnn_init_range():
    cell = rnnkit.IndRNNCell(3, 1000, recurrent_max_abs=0.5)
    assert 0 <= cell.weight_hh.min() and cell.weight_hh.max() <= 0.5
    assert rnnkit.IndRNNCell(3, 1000).weight_hh.max() > 0.9


@pytest.mark.parametrize("kwargs", [{"nonlinearity": "sigmoid"}, {"recurrent_max_abs": 0.0}])
def test_indrnn_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="nonlinearity|recurrent_max_abs"):
        rnnkit.IndRNNCell(3, 4, **kwargs)


@pytest.mark.parametrize("name", CELLS)
def test_cell_unbatched_and_zero_state(name):
    cell = CELLS[name](3, 4)
    x = torch.randn(3, dtype=torch.float64)
    out = cell(x)
    batched = cell(x[None])
    out, batched = (s[0] if isinstance(s, tuple) else s for s in (out, batched))
    assert out.shape == (4,)
    torch.testing.assert_close(out, batched[0])


@pytest.mark.parametrize("name", CELLS)
def test_step_with_gates_matches_step(name):
    cell = randomize(CELLS[name](3, 4))
    x = cell.project_input(torch.randn(2, 3, dtype=torch.float64))
    state = cell.initial_state(2, dtype=torch.float64, device=torch.device("cpu"))
    new, gates = cell.step_with_gates(x, state)
    assert gates and all(g.shape == (2, 4) for g in gates.values())
    torch.testing.assert_close(new, cell.step(x, state))


@pytest.mark.parametrize("name", CELLS)
def test_replicate_keeps_configuration(name):
    cell = CELLS[name](3, 4)
    twin = cell.replicate(7)
    assert type(twin) is type(cell) and twin.input_size == 7 and twin.hidden_size == 4
    assert twin.weight_ih.dtype == torch.float64
    assert twin.extra_repr().replace("7", "3") == cell.extra_repr()


def run_alone(layer, x, lengths):
    outs, finals = [], []
    for b, n in enumerate(lengths):
        out, final = layer(x[:n, b : b + 1])
        outs.append(out[:, 0])
        finals.append(final)
    return outs, finals


@pytest.mark.parametrize("name", CELLS)
def test_in_recurrent_with_lengths_equals_each_sequence_alone(name):
    layer = rnnkit.Recurrent(randomize(CELLS[name](3, 4)), num_layers=2, bidirectional=True)
    randomize(layer)
    lengths = [6, 2, 4, 1]
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    out, final = layer(x, lengths=torch.tensor(lengths))
    assert out.shape == (6, 4, 8)
    outs, finals = run_alone(layer, x, lengths)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(out[:n, b], outs[b], atol=1e-10, rtol=1e-10)
        assert (out[n:, b] == 0).all()
        parts = final if isinstance(final, tuple) else (final,)
        alone = finals[b] if isinstance(finals[b], tuple) else (finals[b],)
        for part, ref in zip(parts, alone, strict=True):
            torch.testing.assert_close(part[:, b], ref[:, 0], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", CELLS)
def test_recurrent_batch_first_and_gradients(name):
    layer = rnnkit.Recurrent(CELLS[name](3, 4), num_layers=2, batch_first=True)
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    out, _ = layer(x)
    time_major = rnnkit.Recurrent(CELLS[name](3, 4), num_layers=2)
    time_major.load_state_dict(layer.state_dict())
    torch.testing.assert_close(out, time_major(x.transpose(0, 1))[0].transpose(0, 1))
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    assert [r.engine for r in rnnkit.explain_fast_path(layer)] == ["loop"]


def test_layer_norm_lstm_gradcheck():
    cell = rnnkit.LayerNormLSTMCell(2, 3, dtype=torch.float64)
    x = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h, c: cell(x, (h, c)), (x, h, c))
