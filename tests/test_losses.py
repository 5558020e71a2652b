import math

import pytest
import torch
import torch.nn.functional as F

import rnnkit
from rnnkit.names import LOSSES, METRICS

# ---- class_balanced_weights ------------------------------------------------------------------


def _cb_reference(counts, beta):
    """Cui et al.'s weights from the sum E_n = 1 + beta + ... + beta^(n-1), in Python floats."""
    inverse = [1 / sum(beta**j for j in range(n)) for n in counts]
    return [w / sum(inverse) * len(counts) for w in inverse]


@pytest.mark.parametrize("beta", [0.5, 0.9, 0.99, 0.999])
def test_class_balanced_weights_match_the_effective_number_formula(beta):
    counts = [500, 120, 30, 7, 1]
    w = rnnkit.class_balanced_weights(torch.tensor(counts), beta)
    assert w.dtype == torch.get_default_dtype() and w.shape == (5,)
    torch.testing.assert_close(w, torch.tensor(_cb_reference(counts, beta)), rtol=1e-6, atol=0)
    assert w.sum().item() == pytest.approx(5, rel=1e-6)


def test_class_balanced_weights_limits_equal_and_inverse_frequency():
    counts = torch.tensor([800, 200, 50, 10, 2])
    assert torch.equal(rnnkit.class_balanced_weights(counts, 0.0), torch.ones(5))
    torch.testing.assert_close(
        rnnkit.class_balanced_weights(counts, 1e-12), torch.ones(5), rtol=1e-6, atol=0
    )
    inverse = 1 / counts.double()
    expected = (inverse / inverse.sum() * 5).float()
    torch.testing.assert_close(
        rnnkit.class_balanced_weights(counts, 1 - 1e-9), expected, rtol=1e-5, atol=0
    )
    # a list works like a tensor
    assert torch.equal(
        rnnkit.class_balanced_weights(counts.tolist()), rnnkit.class_balanced_weights(counts)
    )


def test_class_balanced_weights_zero_count_gets_weight_zero():
    w = rnnkit.class_balanced_weights(torch.tensor([100, 0, 10, 1]), 0.99)
    assert w[1] == 0
    # the other classes are weighted as if the empty class were not there
    torch.testing.assert_close(
        w[[0, 2, 3]], rnnkit.class_balanced_weights(torch.tensor([100, 10, 1]), 0.99)
    )
    assert w.sum().item() == pytest.approx(3, rel=1e-6)


@pytest.mark.parametrize(
    ("counts", "beta", "error", "match"),
    [
        (torch.ones(2, 3), 0.9, ValueError, r"1-D .* got shape \(2, 3\)"),
        (torch.ones(0), 0.9, ValueError, r"non-empty 1-D .* got shape \(0,\)"),
        (torch.tensor([5, -1]), 0.9, ValueError, r">= 0, got \[5, -1\]"),
        (torch.tensor([5.0, math.nan]), 0.9, ValueError, "finite"),
        (torch.tensor([0, 0]), 0.9, ValueError, "all zero"),
        (torch.tensor([True, False]), 0.9, TypeError, "torch.bool"),
        (torch.tensor([5, 1]), 1.0, ValueError, r"beta must be a number in \[0, 1\), got 1.0"),
        (torch.tensor([5, 1]), -0.1, ValueError, r"in \[0, 1\), got -0.1"),
        (torch.tensor([5, 1]), True, ValueError, r"in \[0, 1\), got True"),
        (torch.tensor([5, 1]), "0.9", ValueError, r"in \[0, 1\), got '0.9'"),
    ],
)
def test_class_balanced_weights_errors(counts, beta, error, match):
    with pytest.raises(error, match=match):
        rnnkit.class_balanced_weights(counts, beta)


# ---- focal_loss ------------------------------------------------------------------------------


def _data(shape=(7,), classes=4, dtype=torch.float32):
    logits = torch.randn(*shape, classes, dtype=dtype) * 2
    target = torch.randint(classes, shape)
    return logits, target


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_focal_gamma_zero_is_cross_entropy(reduction, weighted):
    logits, target = _data((9,))
    target[[1, 4]] = -100
    weight = torch.rand(4) + 0.2 if weighted else None
    got = rnnkit.focal_loss(logits, target, 0.0, weight, reduction)
    expected = F.cross_entropy(logits, target, weight=weight, reduction=reduction)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_focal_gamma_zero_is_cross_entropy_per_step(weighted):
    logits, target = _data((3, 5))  # (B, T, C) against (B, T)
    target[0, 3:] = -100
    target[2, 1:] = -100
    weight = torch.rand(4) + 0.2 if weighted else None
    for reduction in ("mean", "sum", "none"):
        # torch's own K-dimensional form takes the classes on axis 1: (B, C, T)
        expected = F.cross_entropy(logits.transpose(1, 2), target, weight, reduction=reduction)
        got = rnnkit.focal_loss(logits, target, 0.0, weight, reduction)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    # and the loss named "cross_entropy" in rnnkit.names is the same as well
    torch.testing.assert_close(
        rnnkit.focal_loss(logits, target, gamma=0.0), LOSSES["cross_entropy"][0](logits, target)
    )


def _focal_by_hand(logits, target, gamma, weight):
    """Softmax, p_t and -(1 - p_t)^gamma log p_t with explicit loops over samples and classes."""
    total, weights = 0.0, 0.0
    for row, label in zip(logits.tolist(), target.tolist(), strict=True):
        if label == -100:
            continue
        z = [math.exp(v) for v in row]
        p = z[label] / sum(z)
        w = 1.0 if weight is None else weight[label]
        total += -w * (1 - p) ** gamma * math.log(p)
        weights += w
    return total / weights


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 3.5])
@pytest.mark.parametrize("weight", [None, [0.5, 2.0, 1.0, 0.1]])
def test_focal_matches_hand_computation_float64(gamma, weight):
    logits, target = _data((11,), dtype=torch.float64)
    target[3] = -100
    got = rnnkit.focal_loss(
        logits, target, gamma, None if weight is None else torch.tensor(weight, dtype=torch.float64)
    )
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_focal_by_hand(logits, target, gamma, weight), rel=1e-10)


def test_focal_per_step_is_the_flattened_loss_and_none_keeps_the_shape():
    logits, target = _data((2, 6), dtype=torch.float64)
    target[1, 4:] = -100
    per_step = rnnkit.focal_loss(logits, target, 2.0, reduction="none")
    assert per_step.shape == (2, 6) and torch.all(per_step[1, 4:] == 0)
    flat = rnnkit.focal_loss(logits.reshape(-1, 4), target.reshape(-1), 2.0, reduction="none")
    torch.testing.assert_close(per_step.reshape(-1), flat, rtol=1e-12, atol=0)
    assert rnnkit.focal_loss(logits, target, 2.0).item() == pytest.approx(
        _focal_by_hand(logits.reshape(-1, 4), target.reshape(-1), 2.0, None), rel=1e-10
    )


def test_focal_down_weights_easy_samples_and_has_finite_gradients():
    logits = torch.tensor([[40.0, 0.0, 0.0], [0.2, 0.0, 0.0]], requires_grad=True)
    target = torch.tensor([0, 0])
    for gamma in (0.5, 2.0):
        loss = rnnkit.focal_loss(logits, target, gamma, reduction="none")
        ce = F.cross_entropy(logits, target, reduction="none")
        assert torch.all(loss <= ce) and loss[1] < ce[1]
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        assert torch.isfinite(grad).all()
    # every label ignored: NaN, as in torch
    ignored = torch.full((2,), -100)
    assert math.isnan(rnnkit.focal_loss(logits, ignored).item())
    assert math.isnan(F.cross_entropy(logits, ignored).item())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"target": torch.zeros(3, dtype=torch.long)}, ValueError, r"\(3, 'C'\), got \(5, 4\)"),
        ({"target": torch.zeros(5)}, TypeError, "integer class labels, got torch.float32"),
        ({"logits": torch.zeros(5, 4, dtype=torch.long)}, TypeError, "floating-point"),
        ({"gamma": -1.0}, ValueError, "gamma must be a number >= 0, got -1.0"),
        ({"reduction": "batchmean"}, ValueError, "'mean', 'sum' or 'none', got 'batchmean'"),
        ({"weight": torch.ones(3)}, ValueError, r"shape \(4,\), got \(3,\)"),
        ({"target": torch.tensor([0, 1, 4, -1, 2])}, ValueError, r"\[0, 4\).*got \[-1, 4\]"),
    ],
)
def test_focal_errors(kwargs, error, match):
    args = {"logits": torch.randn(5, 4), "target": torch.tensor([0, 1, 2, 3, -100]), **kwargs}
    with pytest.raises(error, match=match):
        rnnkit.focal_loss(**args)


# ---- UncertaintyWeighting --------------------------------------------------------------------

KINDS = {"label": "classification", "level": "regression", "rate": "regression"}


def test_uncertainty_weighting_starts_at_weight_one():
    uw = rnnkit.UncertaintyWeighting(KINDS)
    assert uw.weights() == pytest.approx({k: 1.0 for k in KINDS})
    assert uw.sigmas() == pytest.approx({"label": 1.0, "level": 0.5**0.5, "rate": 0.5**0.5})
    assert set(uw.state_dict()) == {f"log_var.{k}" for k in KINDS}
    assert "classification" in repr(uw)


def test_uncertainty_weighting_value_and_gradients_are_analytic():
    uw = rnnkit.UncertaintyWeighting(KINDS).double()
    s = {"label": 0.3, "level": -1.2, "rate": 0.7}
    with torch.no_grad():
        for k, v in s.items():
            uw.log_var[k].fill_(v)
    losses = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in
              {"label": 1.7, "level": 0.04, "rate": 0.9}.items()}  # fmt: skip
    c = {"label": 1.0, "level": 0.5, "rate": 0.5}
    total = uw(losses)
    expected = sum(c[k] * math.exp(-s[k]) * losses[k].item() + s[k] / 2 for k in KINDS)
    assert total.item() == pytest.approx(expected, rel=1e-12)
    total.backward()
    for k in KINDS:
        # dL/ds_k = -c_k exp(-s_k) L_k + 1/2, dL/dL_k = c_k exp(-s_k)
        analytic = -c[k] * math.exp(-s[k]) * losses[k].item() + 0.5
        assert uw.log_var[k].grad.item() == pytest.approx(analytic, rel=1e-12)
        assert losses[k].grad.item() == pytest.approx(c[k] * math.exp(-s[k]), rel=1e-12)
        assert uw.weights()[k] == pytest.approx(c[k] * math.exp(-s[k]), rel=1e-12)
        assert uw.sigmas()[k] == pytest.approx(math.exp(s[k] / 2), rel=1e-12)


def test_uncertainty_weighting_stationary_point_is_sigma_squared_equals_2c_loss():
    uw = rnnkit.UncertaintyWeighting({"y": "regression", "k": "classification"}).double()
    losses = {
        "y": torch.tensor(0.25, dtype=torch.float64),
        "k": torch.tensor(0.8, dtype=torch.float64),
    }
    with torch.no_grad():
        uw.log_var["y"].fill_(math.log(0.25))  # regression: sigma^2 = L
        uw.log_var["k"].fill_(math.log(1.6))  # classification: sigma^2 = 2 L
    uw(losses).backward()
    for p in uw.parameters():
        assert abs(p.grad.item()) < 1e-12


@pytest.mark.parametrize(
    ("kinds", "match"),
    [
        ({"a": "regresion"}, r"unknown task kind\(s\) \{'a': 'regresion'\}; expected 'regression'"),
        ({}, "non-empty dict"),
        (["a", "b"], r"non-empty dict .* got \['a', 'b'\]"),
    ],
)
def test_uncertainty_weighting_bad_kinds(kinds, match):
    with pytest.raises(ValueError, match=match):
        rnnkit.UncertaintyWeighting(kinds)


def test_uncertainty_weighting_bad_losses():
    uw = rnnkit.UncertaintyWeighting(KINDS)
    one = torch.tensor(1.0)
    with pytest.raises(ValueError, match=r"missing \['rate'\], extra \['speed'\]"):
        uw({"label": one, "level": one, "speed": one})
    with pytest.raises(ValueError, match=r"missing \['level'\], extra \[\]"):
        uw({"label": one, "rate": one})
    with pytest.raises(ValueError, match=r"loss 'rate' must be a scalar tensor, got \(3,\)"):
        uw({"label": one, "level": one, "rate": torch.ones(3)})
    with pytest.raises(ValueError, match="loss 'rate' must be a scalar tensor, got float"):
        uw({"label": one, "level": one, "rate": 1.0})
    with pytest.raises(TypeError, match="losses must be a dict"):
        uw([one, one, one])


# ---- recall_per_class, balanced_accuracy -----------------------------------------------------


def _recall_by_hand(pred, target, classes):
    recall = []
    for c in range(classes):
        hits = [p == c for p, t in zip(pred, target, strict=True) if t == c]
        recall.append(sum(hits) / len(hits) if hits else math.nan)
    return recall


def test_recall_per_class_and_balanced_accuracy_by_hand():
    logits = torch.randn(3, 8, 5)  # per step, class 4 never in the target
    target = torch.randint(4, (3, 8))
    target[0, 5:] = -100
    pred = logits.argmax(-1)
    kept = target != -100
    expected = _recall_by_hand(pred[kept].tolist(), target[kept].tolist(), 5)
    for output, n in ((logits, None), (logits, 5), (pred, 5)):
        recall = rnnkit.recall_per_class(output, target, n)
        assert recall.shape == (5,) and math.isnan(recall[4])
        torch.testing.assert_close(recall, torch.tensor(expected), equal_nan=True)
        balanced = rnnkit.balanced_accuracy(output, target, n)
        assert balanced.item() == pytest.approx(sum(expected[:4]) / 4, rel=1e-6)
    assert METRICS["balanced_accuracy"](logits, target) == balanced


def test_balanced_accuracy_of_a_majority_predictor_is_one_over_classes():
    target = torch.tensor([0] * 90 + [1] * 7 + [2] * 3)
    majority = torch.zeros(100, dtype=torch.long)
    assert rnnkit.balanced_accuracy(majority, target, 3).item() == pytest.approx(1 / 3)
    assert rnnkit.balanced_accuracy(target, target, 3).item() == 1.0
    assert math.isnan(rnnkit.balanced_accuracy(majority, torch.full((100,), -100), 3).item())


@pytest.mark.parametrize(
    ("output", "target", "n", "error", "match"),
    [
        (torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), None, ValueError,
         "integer predictions need num_classes, an int >= 1, got None"),
        (torch.randn(4, 3), torch.zeros(4, dtype=torch.long), 5, ValueError,
         "num_classes=5 but the logits have 3 classes"),
        (torch.randn(4, 3), torch.zeros(5, dtype=torch.long), None, ValueError,
         r"logits of shape \(5, 'C'\) or integer predictions of shape \(5,\)"),
        (torch.randn(4), torch.zeros(4, dtype=torch.long), None, ValueError,
         r"got torch.float32 \(4,\)"),
        (torch.randn(4, 3), torch.zeros(4), None, TypeError, "integer class labels"),
        (torch.randn(2, 3), torch.tensor([1, 3]), None, ValueError, r"\[0, 3\).*got \[3\]"),
        ([1, 2], torch.tensor([1, 2]), 3, TypeError, "must be tensors, got list"),
    ],
)  # fmt: skip
def test_recall_errors(output, target, n, error, match):
    with pytest.raises(error, match=match):
        rnnkit.recall_per_class(output, target, n)
    with pytest.raises(error, match=match):
        rnnkit.balanced_accuracy(output, target, n)


# ---- by name in rnnkit.fit -------------------------------------------------------------------


def test_fit_with_focal_loss_and_balanced_accuracy_by_name():
    x, y = torch.randn(48, 6, 2), torch.randint(3, (48,))
    x[:, :, 0] += y[:, None]  # learnable
    model = rnnkit.SequenceModel(2, 8, 3, cell="gru")
    history = rnnkit.fit(
        model,
        x[:32],
        y[:32],
        epochs=2,
        batch_size=16,
        loss="focal",
        metrics=["balanced_accuracy"],
        validation_data=(x[32:], y[32:]),
        progress=False,
        device="cpu",
        seed=0,
    )
    with torch.no_grad():
        out = model(x[32:])
    assert history["val_loss"][-1] == pytest.approx(rnnkit.focal_loss(out, y[32:]).item(), 1e-6)
    expected = rnnkit.balanced_accuracy(out, y[32:]).item()
    assert history["val_balanced_accuracy"][-1] == pytest.approx(expected, rel=1e-6)
    assert 0 <= history["balanced_accuracy"][-1] <= 1
    with pytest.raises(ValueError, match="loss 'focal' needs integer class labels"):
        rnnkit.fit(model, x, y.float(), loss="focal", progress=False, device="cpu")
