import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnkit


def wrapped_and_reference(make, p=0.5, weights=None):
    reference = make()
    layer = make()
    layer.load_state_dict(reference.state_dict())
    return rnnkit.WeightDrop(layer, p, weights), reference


LAYERS = {
    "nn.LSTM": lambda: nn.LSTM(3, 5, num_layers=2, bidirectional=True),
    "nn.GRU": lambda: nn.GRU(3, 5),
    "rnnkit.LSTM": lambda: rnnkit.LSTM(3, 5, num_layers=2),
    "rnnkit.RNN-loop": lambda: rnnkit.RNN(3, 5, engine="loop"),
    "Recurrent-fused": lambda: rnnkit.Recurrent(rnnkit.LSTMCell(3, 5), num_layers=2),
    "Recurrent-LN": lambda: rnnkit.Recurrent(rnnkit.LayerNormGRUCell(3, 5)),
}


def drop_names(module):
    return [n for n, _ in module.named_parameters() if n.rsplit(".", 1)[-1].startswith("weight_hh")]


@pytest.mark.parametrize("kind", LAYERS)
def test_eval_uses_the_raw_weights(kind):
    dropped, reference = wrapped_and_reference(LAYERS[kind])
    x = torch.randn(6, 2, 3)
    dropped.eval()
    torch.testing.assert_close(dropped(x)[0], reference(x)[0])


@pytest.mark.parametrize("kind", LAYERS)
def test_training_drops_hidden_to_hidden_weights_and_gradients_reach_raw(kind):
    names = drop_names(LAYERS[kind]())
    dropped, reference = wrapped_and_reference(LAYERS[kind], p=0.4)
    x = torch.randn(6, 2, 3)
    with torch.random.fork_rng():
        torch.manual_seed(7)
        out = dropped(x)[0]
    torch.manual_seed(7)
    raw = dict(reference.named_parameters())
    masks = {n: F.dropout(torch.ones_like(raw[n]), 0.4) for n in names}
    functional = {n: raw[n] * masks[n] if n in masks else raw[n] for n in raw}
    expected = torch.func.functional_call(reference, functional, (x,))[0]
    torch.testing.assert_close(out, expected)
    assert not torch.equal(out, reference(x)[0])
    out.pow(2).sum().backward()
    expected.pow(2).sum().backward()
    params = dict(dropped.module.named_parameters())
    for name in names:
        owner, _, attr = name.rpartition(".")
        grad = params[f"{owner}.{attr}_raw" if owner else f"{attr}_raw"].grad
        torch.testing.assert_close(grad, raw[name].grad)
        assert (grad[masks[name] == 0] == 0).all()


def test_parameters_clip_grad_norm_and_optimizer():
    dropped = rnnkit.WeightDrop(nn.LSTM(3, 5), 0.5)
    names = [n for n, _ in dropped.named_parameters()]
    assert "module.weight_hh_l0_raw" in names and "module.weight_hh_l0" not in names
    assert dropped.module.weight_hh_l0 is dropped.module.weight_hh_l0_raw
    optimizer = torch.optim.SGD(dropped.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dropped(torch.randn(4, 2, 3))[0].sum().backward()
        norm = nn.utils.clip_grad_norm_(dropped.parameters(), 0.1)
    assert torch.isfinite(norm) and norm > 0.1
    before = dropped.module.weight_hh_l0_raw.detach().clone()
    optimizer.step()
    assert not torch.equal(before, dropped.module.weight_hh_l0_raw)
    reference = nn.LSTM(3, 5)
    reference.load_state_dict(
        {k.replace("_raw", ""): v for k, v in dropped.module.state_dict().items()}
    )
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(dropped.eval()(x)[0], reference(x)[0])
    torch.testing.assert_close(dropped.module(x)[0], reference(x)[0])


def test_rnnkit_layer_with_lengths():
    dropped, reference = wrapped_and_reference(lambda: rnnkit.GRU(3, 4, bidirectional=True), 0.3)
    x, lengths = torch.randn(5, 3, 3), torch.tensor([5, 2, 3])
    with torch.random.fork_rng():
        torch.manual_seed(3)
        out, h = dropped(x, lengths=lengths)
    torch.manual_seed(3)
    params = dict(reference.named_parameters())
    for name in ("weight_hh_l0", "weight_hh_l0_reverse"):
        params[name] = F.dropout(params[name], 0.3)
    expected, h_ref = torch.func.functional_call(reference, params, (x,), {"lengths": lengths})
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(h, h_ref)


def test_copy_convert_and_state_dict():
    dropped = rnnkit.WeightDrop(nn.LSTM(3, 4), 0.5, weights=["weight_hh_l0"])
    twin = copy.deepcopy(dropped)
    assert twin.module.weight_hh_l0 is twin.module.weight_hh_l0_raw
    twin.load_state_dict(dropped.state_dict())
    twin.double()
    assert twin.module.weight_hh_l0.dtype == torch.float64
    out = twin(torch.randn(2, 1, 3, dtype=torch.float64))[0]
    assert out.dtype == torch.float64
    assert set(dropped.state_dict()) == {
        "module.weight_ih_l0",
        "module.weight_hh_l0_raw",
        "module.bias_ih_l0",
        "module.bias_hh_l0",
    }


def test_cell_and_selected_weights():
    cell = nn.GRUCell(3, 4)
    dropped = rnnkit.WeightDrop(cell, 0.9)
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    assert not torch.equal(dropped(x, h), dropped.eval()(x, h))
    rec = rnnkit.Recurrent(rnnkit.LSTMCell(3, 4), num_layers=2)
    one = rnnkit.WeightDrop(rec, 0.5, weights=["cells.1.weight_hh"])
    assert one.weights == ("cells.1.weight_hh",)
    assert isinstance(rec.cells[0].weight_hh, nn.Parameter)
    assert "cells.1.weight_hh_raw" in dict(rec.named_parameters())


def test_errors():
    with pytest.raises(ValueError, match="p must be a probability in \\[0, 1\\), got 1.0"):
        rnnkit.WeightDrop(nn.LSTM(3, 4), 1.0)
    with pytest.raises(ValueError, match="\\['weight_hh_l1'\\] to drop in LSTM.*weight_hh_l0"):
        rnnkit.WeightDrop(nn.LSTM(3, 4), 0.5, weights=["weight_hh_l1"])
    with pytest.raises(ValueError, match="sequence of names, got 'weight_hh_l0'"):
        rnnkit.WeightDrop(nn.LSTM(3, 4), 0.5, weights="weight_hh_l0")
    with pytest.raises(ValueError, match="no weights to drop in Linear"):
        rnnkit.WeightDrop(nn.Linear(3, 4), 0.5)
    with pytest.raises(ValueError, match="expected a module, got str"):
        rnnkit.WeightDrop("lstm", 0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (cuDNN)")
def test_cudnn_no_contiguity_warning_and_same_numbers():
    dropped, reference = wrapped_and_reference(
        lambda: nn.LSTM(8, 16, num_layers=2, bidirectional=True), 0.5
    )
    dropped.cuda()
    x = torch.randn(10, 4, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.random.fork_rng(devices=[0]):
            torch.cuda.manual_seed(1)
            out = dropped(x.cuda())[0]
        out.sum().backward()
    torch.cuda.manual_seed(1)
    params = {n: p.cuda() for n, p in reference.named_parameters()}
    for name in drop_names(reference):
        params[name] = F.dropout(params[name], 0.5)
    expected = torch.func.functional_call(reference.cuda(), params, (x.cuda(),))[0]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert dropped.module.weight_hh_l1_raw.grad.abs().sum() > 0
