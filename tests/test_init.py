import math

import pytest
import torch
from torch import nn

import rnnkit


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
        self.gru = rnnkit.GRU(8, 5)
        self.rec = rnnkit.Recurrent(rnnkit.LSTMCell(5, 4), num_layers=2)
        self.cell = nn.GRUCell(4, 6)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_orthogonal_every_gate_block_of_every_unit():
    model = Mixed()
    changed = rnnkit.init_recurrent(model, "orthogonal")
    expected = [n for n, _ in model.named_parameters() if "weight_hh" in n]
    assert changed == expected
    for unit in rnnkit.recurrent_units(model):
        weight = unit.get(unit.weight_hh)
        for block in weight.chunk(len(unit.gates)):
            eye = torch.eye(block.shape[0])
            torch.testing.assert_close(block @ block.T, eye, atol=1e-5, rtol=0)


def test_orthogonal_gain_and_untouched_rest():
    layer = nn.GRU(3, 4)
    before = snapshot(layer)
    rnnkit.init_recurrent(layer, "orthogonal", gain=2.0)
    block = layer.weight_hh_l0[:4]
    torch.testing.assert_close(block @ block.T, 4 * torch.eye(4), atol=1e-5, rtol=0)
    for name, value in before.items():
        if name != "weight_hh_l0":
            assert torch.equal(value, getattr(layer, name))


def test_irnn_on_relu_rnn_and_indrnn():
    layer = nn.RNN(3, 4, nonlinearity="relu", num_layers=2)
    changed = rnnkit.init_recurrent(layer, "irnn", scale=0.9)
    assert changed == [f"{n}_l{k}" for k in (0, 1) for n in ("weight_hh", "bias_ih", "bias_hh")]
    torch.testing.assert_close(layer.weight_hh_l1, 0.9 * torch.eye(4))
    assert (layer.bias_ih_l0 == 0).all() and (layer.bias_hh_l1 == 0).all()
    cell = rnnkit.IndRNNCell(3, 4)
    assert rnnkit.init_recurrent(cell, "irnn") == ["weight_hh", "bias_ih"]
    assert (cell.weight_hh == 1).all() and (cell.bias_ih == 0).all()


@pytest.mark.parametrize(
    "model",
    [nn.RNN(3, 4), nn.LSTM(3, 4), rnnkit.Recurrent(rnnkit.RNNCell(3, 4)), nn.GRUCell(3, 4)],
    ids=["tanh_rnn", "lstm", "recurrent_tanh", "gru_cell"],
)
def test_irnn_refuses_non_relu_units_and_changes_nothing(model):
    before = snapshot(model)
    with pytest.raises(ValueError, match="ReLU.*nonlinearity='relu'"):
        rnnkit.init_recurrent(model, "irnn")
    assert all(torch.equal(v, dict(model.named_parameters())[n]) for n, v in before.items())


def effective_bias(unit, gate):
    index = unit.gates.index(gate)
    return sum(unit.get(b).chunk(len(unit.gates))[index] for b in unit.biases)


def test_forget_bias_sets_the_effective_bias_of_lstm_units_only():
    model = Mixed()
    before = snapshot(model)
    changed = rnnkit.init_recurrent(model, "forget_bias")
    lstm_units = ("lstm.bias", "rec.cells.0.bias", "rec.cells.1.bias")
    assert changed == [n for n, _ in model.named_parameters() if n.startswith(lstm_units)]
    for unit in rnnkit.recurrent_units(model):
        if unit.kind == "LSTM":
            torch.testing.assert_close(effective_bias(unit, "f"), torch.ones(4))
    after = snapshot(model)
    for name, value in before.items():
        keep = torch.ones_like(value, dtype=torch.bool)
        if name in changed:
            keep[4:8] = False  # the forget block; the other gates stay as they were
        assert torch.equal(value[keep], after[name][keep]), name


def test_forget_bias_gives_gate_value_on_zero_input():
    layer = nn.LSTMCell(3, 4)
    rnnkit.init_recurrent(layer, "forget_bias", value=2.0)
    with torch.no_grad():
        layer.weight_ih.zero_()
        layer.weight_hh.zero_()
        c0 = torch.ones(1, 4)
        layer.bias_ih[:4].fill_(-100)  # input gate shut: c1 = f * c0
        _, c1 = layer(torch.zeros(1, 3), (torch.zeros(1, 4), c0))
    torch.testing.assert_close(c1, torch.sigmoid(torch.tensor(2.0)).expand(1, 4))


def test_forget_bias_on_layer_norm_lstm():
    cell = rnnkit.LayerNormLSTMCell(3, 4)
    with torch.no_grad():
        cell.norm_hh.bias.fill_(0.3)
    assert rnnkit.init_recurrent(cell, "forget_bias") == ["norm_ih.bias", "norm_hh.bias"]
    unit = rnnkit.recurrent_units(cell)[0]
    torch.testing.assert_close(effective_bias(unit, "f"), torch.ones(4))
    torch.testing.assert_close(effective_bias(unit, "i"), torch.full((4,), 0.3))


@pytest.mark.parametrize("recipe", ["forget_bias", "chrono"])
def test_gate_bias_recipes_need_lstm_units_with_bias(recipe):
    with pytest.raises(ValueError, match="needs LSTM units, found only \\['GRU'\\]"):
        rnnkit.init_recurrent(nn.GRU(3, 4), recipe, **({"t_max": 10} if recipe == "chrono" else {}))
    with pytest.raises(ValueError, match="bias=False"):
        rnnkit.init_recurrent(
            nn.LSTM(3, 4, bias=False), recipe, **({"t_max": 10} if recipe == "chrono" else {})
        )


def test_chrono_spreads_forget_biases_and_mirrors_the_input_gate():
    layer = rnnkit.LSTM(3, 500, bidirectional=True)
    changed = rnnkit.init_recurrent(layer, "chrono", t_max=20)
    assert changed == [n for n, _ in layer.named_parameters() if "bias" in n]
    for unit in rnnkit.recurrent_units(layer):
        forget = effective_bias(unit, "f")
        assert forget.min() >= 0 and forget.max() <= math.log(19)
        assert forget.max() > math.log(15) and forget.min() < math.log(2)
        torch.testing.assert_close(effective_bias(unit, "i"), -forget)
        # bias_hh carries zeros in the two gates, so the sum is exactly bias_ih's block
        assert (unit.get(unit.biases[1]).chunk(4)[1] == 0).all()


@pytest.mark.parametrize("t_max", [None, 2, "100", True])
def test_chrono_needs_t_max(t_max):
    options = {} if t_max is None else {"t_max": t_max}
    with pytest.raises(ValueError, match="t_max"):
        rnnkit.init_recurrent(nn.LSTM(3, 4), "chrono", **options)


def test_xavier_and_kaiming_per_gate_block():
    layer = nn.LSTM(30, 20)
    before = layer.weight_hh_l0.detach().clone()
    assert rnnkit.init_recurrent(layer, "xavier") == ["weight_ih_l0"]
    bound = math.sqrt(6 / (30 + 20))
    assert layer.weight_ih_l0.abs().max() <= bound and layer.weight_ih_l0.abs().max() > 0.9 * bound
    assert torch.equal(before, layer.weight_hh_l0)
    relu = nn.RNN(30, 20, nonlinearity="relu")
    rnnkit.init_recurrent(relu, "kaiming")
    bound = math.sqrt(2) * math.sqrt(3 / 30)
    assert relu.weight_ih_l0.abs().max() <= bound and relu.weight_ih_l0.abs().max() > 0.9 * bound


def test_errors_name_what_is_known():
    with pytest.raises(ValueError, match="unknown init recipe 'glorot'; known recipes: orthogonal"):
        rnnkit.init_recurrent(nn.LSTM(3, 4), "glorot")
    with pytest.raises(ValueError, match=r"takes the options \['gain'\], got \['scale'\]"):
        rnnkit.init_recurrent(nn.LSTM(3, 4), "orthogonal", scale=2)
    with pytest.raises(ValueError, match="found no recurrent layer or cell in Linear"):
        rnnkit.init_recurrent(nn.Linear(3, 4), "orthogonal")
    with pytest.raises(ValueError, match="IndRNN's recurrent weight is a vector"):
        rnnkit.init_recurrent(rnnkit.IndRNNCell(3, 4), "orthogonal")


def test_reaches_cells_through_zoneout_and_weight_drop():
    rec = rnnkit.Recurrent(rnnkit.Zoneout(rnnkit.LSTMCell(3, 4), 0.1), num_layers=2)
    changed = rnnkit.init_recurrent(rec, "orthogonal")
    assert changed == ["cells.0.cell.weight_hh", "cells.1.cell.weight_hh"]
    dropped = rnnkit.WeightDrop(nn.LSTM(3, 4), 0.5)
    assert rnnkit.init_recurrent(dropped, "orthogonal") == ["module.weight_hh_l0_raw"]
    raw = dropped.module.weight_hh_l0_raw
    torch.testing.assert_close(raw[:4] @ raw[:4].T, torch.eye(4), atol=1e-5, rtol=0)


def test_recurrent_units_names_and_kinds():
    units = rnnkit.recurrent_units(Mixed())
    assert [(u.name, u.kind) for u in units] == [
        ("lstm.l0", "LSTM"),
        ("lstm.l0_reverse", "LSTM"),
        ("lstm.l1", "LSTM"),
        ("lstm.l1_reverse", "LSTM"),
        ("gru.l0", "GRU"),
        ("rec.l0", "LSTM"),
        ("rec.l1", "LSTM"),
        ("cell", "GRU"),
    ]
    assert units[1].direction == 1 and units[2].layer == 1 and units[6].layer == 1
