import copy

import pytest
import torch
from torch import nn

import rnnkit


def model_with_grads(scale=10.0):
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * scale
    return model


def grads(model):
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def twin_of(model):
    twin = copy.deepcopy(model)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        q.grad = p.grad.clone()
    return twin


def test_norm_mode_matches_clip_grad_norm():
    model = model_with_grads()
    twin = twin_of(model)
    norm = rnnkit.clip_gradients(model, max_norm=1.5)
    expected = nn.utils.clip_grad_norm_(twin.parameters(), 1.5)
    torch.testing.assert_close(norm, expected)
    for a, b in zip(grads(model), grads(twin), strict=True):
        torch.testing.assert_close(a, b)
    total = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads(model)]))
    torch.testing.assert_close(total, torch.tensor(1.5), atol=1e-4, rtol=0)


def test_norm_mode_leaves_small_gradients_alone():
    model = model_with_grads(scale=1e-3)
    before = grads(model)
    rnnkit.clip_gradients(model, max_norm=1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, grads(model), strict=True))


def test_value_mode_matches_clip_grad_value_and_returns_norm_before():
    model = model_with_grads()
    twin = twin_of(model)
    before = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads(model)]))
    norm = rnnkit.clip_gradients(model.named_parameters(), max_value=0.5, mode="value")
    nn.utils.clip_grad_value_(twin.parameters(), 0.5)
    torch.testing.assert_close(norm, before)
    for a, b in zip(grads(model), grads(twin), strict=True):
        assert torch.equal(a, b)


def test_agc_clips_each_unit_to_its_weight_norm_ratio():
    weight = nn.Parameter(torch.randn(5, 4, dtype=torch.float64))
    bias = nn.Parameter(torch.randn(5, dtype=torch.float64))
    weight.grad = torch.randn(5, 4, dtype=torch.float64)
    weight.grad[0] *= 1e-4  # this row stays below the ratio
    bias.grad = torch.randn(5, dtype=torch.float64)
    g_w, g_b = weight.grad.clone(), bias.grad.clone()
    rnnkit.clip_gradients({"w": weight, "b": bias}, max_norm=0.05, mode="agc")
    w_rows, g_rows = weight.detach().norm(dim=1), g_w.norm(dim=1)
    for i in range(5):
        if g_rows[i] > 0.05 * w_rows[i]:
            expected = g_w[i] * 0.05 * w_rows[i] / g_rows[i]
        else:
            expected = g_w[i]
        torch.testing.assert_close(weight.grad[i], expected, atol=1e-12, rtol=1e-12)
    assert torch.equal(weight.grad[0], g_w[0])
    torch.testing.assert_close(bias.grad.norm(), 0.05 * bias.detach().norm())
    torch.testing.assert_close(bias.grad / bias.grad.norm(), g_b / g_b.norm())


def test_agc_eps_protects_zero_weights():
    weight = nn.Parameter(torch.zeros(2, 3))
    weight.grad = torch.ones(2, 3)
    rnnkit.clip_gradients([weight], max_norm=0.1, mode="agc", agc_eps=1e-2)
    torch.testing.assert_close(weight.grad.norm(dim=1), torch.full((2,), 1e-3))


@pytest.mark.parametrize(
    "as_input, name",
    [
        (lambda m: m, "2.weight"),
        (lambda m: m.named_parameters(), "2.weight"),
        (lambda m: dict(m.named_parameters()), "2.weight"),
        (lambda m: list(m.parameters()), "parameter 2"),
    ],
    ids=["module", "named", "dict", "plain"],
)
def test_nonfinite_raises_naming_the_first_parameter(as_input, name):
    model = model_with_grads()
    model[2].weight.grad[0, 0] = float("nan")
    model[2].bias.grad[0] = float("inf")
    before = grads(model)
    with pytest.raises(rnnkit.NonFiniteGradientError, match=f"gradient of '{name}'") as info:
        rnnkit.clip_gradients(as_input(model), max_norm=1.0)
    assert info.value.name == name
    for a, b in zip(before, grads(model), strict=True):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())


def test_nonfinite_report_returns_the_norm_and_changes_nothing():
    model = model_with_grads()
    model[0].bias.grad[1] = float("inf")
    before = grads(model)
    norm = rnnkit.clip_gradients(model, max_norm=1.0, on_nonfinite="report")
    assert not torch.isfinite(norm)
    for a, b in zip(before, grads(model), strict=True):
        assert torch.equal(a, b)


def test_overflowing_norm_of_finite_gradients():
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.full((2,), 3e38)
    with pytest.raises(rnnkit.NonFiniteGradientError, match="overflowed") as info:
        rnnkit.clip_gradients([p], max_norm=1.0)
    assert info.value.name is None


def test_parameters_without_gradients_are_ignored():
    model = model_with_grads()
    model[0].weight.grad = None
    expected = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads(model)]))
    torch.testing.assert_close(rnnkit.clip_gradients(model, max_norm=1.0), expected)
    assert model[0].weight.grad is None
    assert rnnkit.clip_gradients(nn.Linear(2, 2), max_norm=1.0).item() == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_norm": 1.0, "mode": "global"}, "mode must be one of"),
        ({"max_norm": 1.0, "on_nonfinite": "skip"}, "on_nonfinite must be one of"),
        ({}, "mode='norm' needs max_norm > 0, got None"),
        ({"max_norm": 0.0}, "needs max_norm > 0"),
        ({"max_norm": -1.0, "mode": "agc"}, "mode='agc' needs max_norm > 0"),
        ({"max_norm": 1.0, "mode": "value"}, "mode='value' takes max_value, not max_norm"),
        ({"max_value": 1.0}, "mode='norm' takes max_norm, not max_value"),
        ({"max_value": True, "mode": "value"}, "needs max_value > 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rnnkit.clip_gradients(model_with_grads(), **kwargs)


def test_non_tensor_parameters_are_rejected():
    with pytest.raises(TypeError, match="got str for 'parameter 0'"):
        rnnkit.clip_gradients(["weight"], max_norm=1.0)


def test_a_nonfinite_gradient_error_is_a_nonfinite_error():
    """One ``except rnnkit.NonFiniteError`` catches the trainer's guard and clip_gradients."""
    layer = nn.Linear(2, 2)
    layer(torch.tensor([[float("nan"), 1.0]])).sum().backward()
    assert rnnkit.first_nonfinite_gradient(layer) == "weight"
    with pytest.raises(rnnkit.NonFiniteError) as info:
        rnnkit.clip_gradients(layer, max_norm=1.0)
    assert isinstance(info.value, RuntimeError) and info.value.name == "weight"
