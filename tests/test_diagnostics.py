import pytest
import torch
from torch import nn

import rnnkit


def last_step_loss(output, target):
    out = output[0] if isinstance(output, tuple) else output
    return ((out[-1] - target) ** 2).sum()


def unrolled_step_grads(layer, x, target):
    """dL/dh_t norms from a hand-written unroll of a one-layer nn.RNN/LSTM with retain_grad."""
    kind = type(layer).__name__
    cell = {"RNN": nn.RNNCell, "LSTM": nn.LSTMCell, "GRU": nn.GRUCell}[kind](
        layer.input_size, layer.hidden_size, dtype=x.dtype
    )
    cell.load_state_dict({k[:-3]: v for k, v in layer.state_dict().items()})
    h = x.new_zeros(x.shape[1], layer.hidden_size)
    state = (h, h) if kind == "LSTM" else h
    hs = []
    for t in range(x.shape[0]):
        state = cell(x[t], state)
        h = state[0] if kind == "LSTM" else state
        h.retain_grad()
        hs.append(h)
    ((torch.stack(hs)[-1] - target) ** 2).sum().backward()
    return torch.stack([h.grad.norm() for h in hs]).double()


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_gradient_flow_matches_a_hand_unroll(kind):
    layer = getattr(nn, kind)(3, 4, dtype=torch.float64)
    x = torch.randn(9, 2, 3, dtype=torch.float64)
    target = torch.randn(2, 4, dtype=torch.float64)
    flow = rnnkit.gradient_flow(layer, x, target, last_step_loss)
    assert list(flow.per_step) == ["l0"]
    torch.testing.assert_close(
        flow.per_step["l0"], unrolled_step_grads(layer, x, target), atol=1e-10, rtol=1e-10
    )
    layer(x)[0][-1].sum()  # untouched layer still works as a torch.nn layer
    reference = getattr(nn, kind)(3, 4, dtype=torch.float64)
    reference.load_state_dict(layer.state_dict())
    loss = last_step_loss(reference(x), target)
    loss.backward()
    assert flow.loss == pytest.approx(loss.item())
    for name, p in reference.named_parameters():
        assert flow.parameters[name] == pytest.approx(p.grad.norm().item(), rel=1e-10)


def test_gradient_flow_restores_layers_and_gradients():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(3, 4, num_layers=2, bidirectional=True)
            self.rec = rnnkit.Recurrent(rnnkit.LayerNormLSTMCell(8, 5))
            self.head = nn.Linear(5, 1)

        def forward(self, x):
            return self.head(self.rec(self.rnn(x)[0])[0])

    model = Model()
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    flow = rnnkit.gradient_flow(model, torch.randn(6, 2, 3), torch.zeros(6, 2, 1), nn.MSELoss())
    assert set(flow.per_step) == {"rnn.l0", "rnn.l0_reverse", "rnn.l1", "rnn.l1_reverse", "rec.l0"}
    assert all(v.shape == (6,) and (v > 0).all() for v in flow.per_step.values())
    assert set(flow.parameters) == {n for n, _ in model.named_parameters()}
    assert type(model.rnn) is nn.GRU and "engine" not in vars(model.rnn)
    assert "_observer" not in vars(model.rnn) and model.rec._observer is None
    assert all((p.grad == 3.0).all() for p in model.parameters())


def test_gradient_flow_restores_when_the_loss_fails():
    layer = nn.LSTM(3, 4)
    with pytest.raises(ValueError, match="loss_fn must return a scalar tensor, got \\(5, 2, 4\\)"):
        rnnkit.gradient_flow(layer, torch.randn(5, 2, 3), None, lambda out, y: out[0])
    assert type(layer) is nn.LSTM and not hasattr(layer, "_observer")
    assert all(p.grad is None for p in layer.parameters())


def test_gradient_flow_backward_direction_in_time_order():
    layer = rnnkit.RNN(2, 3, bidirectional=True, dtype=torch.float64)
    flow = rnnkit.gradient_flow(
        layer, torch.randn(8, 1, 2, dtype=torch.float64), None, lambda o, y: o[0][0].sum()
    )
    # the loss reads step 0 only: the backward direction's h_0 is its last state (largest
    # gradient), the forward direction's gradient at step 0 comes from the loss directly
    reverse = flow.per_step["l0_reverse"]
    assert reverse.argmax() == 0 and reverse[1] > 0
    assert (flow.per_step["l0"][1:] == 0).all() and flow.per_step["l0"][0] > 0


def test_gradient_flow_errors():
    with pytest.raises(ValueError, match="no recurrent layer ran with gradients"):
        rnnkit.gradient_flow(nn.Linear(3, 1), torch.randn(2, 3), None, lambda o, y: o.sum())

    class Custom(nn.LSTM):
        pass

    with pytest.raises(ValueError, match="cannot observe the model \\(Custom\\)"):
        rnnkit.gradient_flow(Custom(3, 4), torch.randn(2, 1, 3), None, lambda o, y: o[0].sum())


def test_spectral_radius_per_gate():
    lstm = nn.LSTM(3, 4)
    with torch.no_grad():
        for k, scale in enumerate([0.1, 0.5, 2.0, 1.0]):
            q, _ = torch.linalg.qr(torch.randn(4, 4))
            lstm.weight_hh_l0[4 * k : 4 * k + 4] = scale * q
    radii = rnnkit.spectral_radius(lstm)["l0"]
    assert list(radii) == ["i", "f", "g", "o"]
    assert [round(v, 5) for v in radii.values()] == [0.1, 0.5, 2.0, 1.0]


def test_spectral_radius_projection_and_indrnn():
    lstm = nn.LSTM(3, 6, proj_size=2)
    block = lstm.weight_hh_l0[6:12].detach().double()
    expected = torch.linalg.eigvals(lstm.weight_hr_l0.detach().double() @ block).abs().max()
    assert rnnkit.spectral_radius(lstm)["l0"]["f"] == pytest.approx(expected.item())
    cell = rnnkit.IndRNNCell(2, 3, recurrent_max_abs=0.5)
    with torch.no_grad():
        cell.weight_hh.copy_(torch.tensor([0.2, -3.0, 0.1]))
    assert rnnkit.spectral_radius(cell) == {"cell": {"h": 0.5}}


def flat(values, threshold):
    return values < threshold


def test_saturation_of_a_tanh_rnn_is_read_from_its_output():
    layer = nn.RNN(3, 6, bidirectional=True)
    with torch.no_grad():
        layer.weight_ih_l0.mul_(8)
        layer.weight_ih_l0_reverse.mul_(8)
    x, lengths = torch.randn(7, 3, 3), [7, 4, 2]
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    result = rnnkit.saturation(layer, packed, threshold=0.2)
    out, _ = nn.utils.rnn.pad_packed_sequence(layer(packed)[0])
    valid = torch.cat([out[:n, b] for b, n in enumerate(lengths)])
    expected_fwd = flat(1 - valid[:, :6] ** 2, 0.2).float().mean().item()
    expected_bwd = flat(1 - valid[:, 6:] ** 2, 0.2).float().mean().item()
    assert result["l0"]["h"] == pytest.approx(expected_fwd, abs=1e-6)
    assert result["l0_reverse"]["h"] == pytest.approx(expected_bwd, abs=1e-6)
    assert 0.2 < expected_fwd < 0.95


def test_saturation_of_an_lstm_against_a_hand_unroll():
    layer = nn.LSTM(3, 5, batch_first=True)
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(6)
    x = torch.randn(2, 8, 3)
    result = rnnkit.saturation(layer, x)["l0"]
    cell = nn.LSTMCell(3, 5)
    cell.load_state_dict({k[:-3]: v for k, v in layer.state_dict().items()})
    h = c = torch.zeros(2, 5)
    seen = {g: [] for g in "ifgoc"}
    with torch.no_grad():
        for t in range(8):
            gates = x[:, t] @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
            i, f, g, o = gates.chunk(4, -1)
            i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
            c = f * c + i * g
            h = o * c.tanh()
            for name, value in zip("ifgoc", (i, f, g, o, c.tanh()), strict=True):
                seen[name].append(value)
    for name in "ifo":
        expected = flat(4 * torch.stack(seen[name]) * (1 - torch.stack(seen[name])), 0.1)
        assert result[name] == pytest.approx(expected.float().mean().item(), abs=1e-6)
    for name in "gc":
        expected = flat(1 - torch.stack(seen[name]) ** 2, 0.1)
        assert result[name] == pytest.approx(expected.float().mean().item(), abs=1e-6)
    assert 0 < result["i"] < 1


def test_saturation_dead_relu_units_and_modes_restored():
    model = nn.Sequential(nn.Dropout(0.5), nn.RNN(3, 50, nonlinearity="relu"))
    model.train()
    model[0].eval()
    x = torch.randn(6, 2, 3)
    result = rnnkit.saturation(model, x)["1.l0"]["h"]
    assert model.training and model[1].training and not model[0].training
    with torch.no_grad():
        out = model[1](x)[0]
    assert result == pytest.approx((out == 0).float().mean().item())


def test_saturation_cells_layer_norm_zoneout_and_unknown():
    class Plain(nn.Module):
        hidden_size = 3

        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 3)

        def forward(self, x, h):
            return torch.tanh(self.linear(x) + h)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = rnnkit.Recurrent(rnnkit.LayerNormLSTMCell(3, 4), num_layers=2)
            self.zoned = rnnkit.Recurrent(rnnkit.Zoneout(rnnkit.LSTMCell(4, 3), 0.2, 0.5))
            self.plain = rnnkit.Recurrent(Plain())

        def forward(self, x, lengths):
            out = self.ln(x, lengths=lengths)[0]
            return self.plain(self.zoned(out, lengths=lengths)[0])

    model = Model()
    with torch.no_grad():
        model.ln.cells[1].norm_ih.bias[4:8] = 50.0  # forget gate of layer 1 pinned open
        model.zoned.cells[0].cell.bias_ih[3:6] = -50.0  # forget gate shut
    result = rnnkit.saturation(model, (torch.randn(5, 2, 3), torch.tensor([5, 3])))
    assert set(result) == {"ln.l0", "ln.l1", "zoned.l0"}
    assert set(result["ln.l1"]) == {"i", "f", "g", "o", "c"}
    assert result["ln.l1"]["f"] == 1.0 and result["ln.l0"]["f"] < 1.0
    assert result["zoned.l0"]["f"] == 1.0


def test_saturation_errors():
    with pytest.raises(ValueError, match="threshold must be in \\(0, 1\\), got 1.5"):
        rnnkit.saturation(nn.LSTM(2, 3), torch.randn(2, 1, 2), threshold=1.5)
    with pytest.raises(ValueError, match="found no recurrent layer in Linear"):
        rnnkit.saturation(nn.Linear(2, 3), torch.randn(2, 2))


def test_gradient_flow_on_a_fused_only_layer_and_through_weight_drop():
    layer = rnnkit.LSTM(3, 4, engine="fused")
    x = torch.randn(5, 2, 3)
    flow = rnnkit.gradient_flow(layer, x, None, lambda out, _: out[0].sum())
    assert flow.per_step["l0"].shape == (5,) and layer.engine == "fused"
    assert layer._observer is None
    dropped = rnnkit.WeightDrop(nn.LSTM(3, 4), 0.5).eval()
    flow = rnnkit.gradient_flow(dropped, x, None, lambda out, _: out[0].sum())
    assert set(flow.parameters) == {n for n, _ in dropped.named_parameters()}
    assert type(dropped.module) is nn.LSTM
