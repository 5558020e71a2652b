"""Named losses and metrics: outputs and targets checked (never a broadcast loss), and epoch
figures weighted by what the loss averages over (tokens), exact over the epoch."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnkit
from rnnkit import names


def _fit(model, x, y, loss="mse", **kw):
    kw.setdefault("progress", False)
    return rnnkit.fit(model, x, y, loss=loss, batch_size=4, **kw)


@pytest.mark.parametrize("shape", [(8,), (8, 2)])
def test_a_target_of_the_wrong_shape_is_an_error_naming_both(shape):
    model = nn.Linear(3, 1)
    with pytest.raises(rnnkit.InputError, match=r"output \(4, 1\) and target \(4,( 2)?\)"):
        _fit(model, torch.randn(8, 3), torch.randn(*shape))
    with pytest.raises(RuntimeError):  # InputError is a RuntimeError too, as torch raises
        _fit(model, torch.randn(8, 3), torch.randn(*shape))


def test_validation_targets_are_checked_too():
    model = nn.Linear(3, 1)
    with pytest.raises(rnnkit.InputError, match="val data: loss 'mse' compares"):
        _fit(
            model,
            torch.randn(8, 3),
            torch.randn(8, 1),
            validation_data=(torch.randn(4, 3), torch.randn(4)),
        )


def test_class_labels_outside_the_range_are_named_with_it():
    model = nn.Linear(3, 5)
    y = torch.tensor([0, 1, 7, 2, -100, 4, 3, 1])
    with pytest.raises(rnnkit.InputError, match=r"labels must be in \[0, 5\).*got \[7\]"):
        _fit(model, torch.randn(8, 3), y, loss="cross_entropy")
    _fit(model, torch.randn(8, 3), y.clamp(max=4), loss="cross_entropy")  # -100 is ignored


def test_class_targets_must_drop_the_class_axis():
    model = nn.Linear(3, 5)
    with pytest.raises(rnnkit.InputError, match=r"target must have shape \(4,\), got \(4, 1\)"):
        _fit(model, torch.randn(8, 3), torch.randint(0, 5, (8, 1)), loss="cross_entropy")


def test_a_language_models_layout_is_valid_and_weighted_by_tokens():
    class Logits(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(6, 6)

        def forward(self, x):
            return self.embed(x)  # (B, T, V)

    torch.manual_seed(0)
    model = Logits()
    x = torch.randint(0, 6, (8, 5))
    y = torch.randint(0, 6, (8, 5))
    y[0, 1:] = -100  # the first batch has 16 tokens, the second 20
    history = _fit(
        model,
        x,
        y,
        loss="cross_entropy",
        optimizer="sgd",
        lr=0.0,
        shuffle=False,
        metrics=["perplexity", "bits_per_char", "accuracy"],
        validation_data=(x, y),
    )
    with torch.no_grad():
        logits = model(x)
        expected = float(F.cross_entropy(logits.reshape(-1, 6), y.reshape(-1)))  # 36 tokens
        batch_means = [
            F.cross_entropy(logits[i : i + 4].reshape(-1, 6), y[i : i + 4].reshape(-1))
            for i in (0, 4)
        ]
    assert float(sum(batch_means) / 2) != pytest.approx(expected, abs=1e-4)
    epoch = history.epochs[0]
    assert epoch["loss"] == pytest.approx(expected, abs=1e-6)
    assert epoch["val_loss"] == pytest.approx(expected, abs=1e-6)
    assert epoch["metrics"]["perplexity"] == pytest.approx(math.exp(expected), rel=1e-6)
    assert epoch["metrics"]["bits_per_char"] == pytest.approx(expected / math.log(2), rel=1e-6)
    hits = ((logits.argmax(-1) == y) & (y != -100)).sum() / (y != -100).sum()
    assert epoch["metrics"]["val_accuracy"] == pytest.approx(float(hits), abs=1e-6)


def test_balanced_accuracy_over_an_epoch_is_exact():
    torch.manual_seed(1)
    model = nn.Linear(3, 3)
    x = torch.randn(12, 3)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 2, 0, 0, 0])  # batches of unlike class mixes
    history = _fit(
        model,
        x,
        y,
        loss="cross_entropy",
        lr=0.0,
        optimizer="sgd",
        shuffle=False,
        metrics=["balanced_accuracy"],
        validation_data=(x, y),
    )
    with torch.no_grad():
        whole = rnnkit.balanced_accuracy(model(x), y)
        per_batch = [rnnkit.balanced_accuracy(model(x[i : i + 4]), y[i : i + 4]) for i in (0, 4, 8)]
    assert float(sum(per_batch) / 3) != pytest.approx(float(whole), abs=1e-3)  # not a mean of
    assert history.epochs[0]["metrics"]["val_balanced_accuracy"] == pytest.approx(float(whole))


def test_an_elementwise_loss_averages_over_every_target_element():
    model = nn.Linear(3, 2)
    x, y = torch.randn(6, 3), torch.randn(6, 2)
    history = _fit(model, x, y, optimizer="sgd", lr=0.0, shuffle=False)  # batches 4 and 2
    with torch.no_grad():
        expected = F.mse_loss(model(x), y)
    assert history.epochs[0]["loss"] == pytest.approx(float(expected), abs=1e-6)


def test_torch_loss_modules_are_checked_as_torch_defines_them():
    model = nn.Conv1d(3, 4, 1)  # (N, C=4 classes, L) logits
    x, y = torch.randn(8, 3, 6), torch.randint(0, 4, (8, 6))
    _fit(model, x, y, loss=nn.CrossEntropyLoss())
    with pytest.raises(rnnkit.InputError, match=r"CrossEntropyLoss takes logits \(N, C, \.\.\.\)"):
        _fit(model, x, y[:, :5], loss=nn.CrossEntropyLoss())
    with pytest.raises(rnnkit.InputError, match="MSELoss compares output and target"):
        _fit(nn.Linear(3, 1), torch.randn(8, 3), torch.randn(8), loss=nn.MSELoss())


def test_a_custom_loss_callable_is_not_checked():
    seen = []

    def loss(output, target):
        seen.append((tuple(output.shape), tuple(target.shape)))
        return (output - target.unsqueeze(-1)).square().mean()

    _fit(nn.Linear(3, 1), torch.randn(8, 3), torch.randn(8), loss=loss)
    assert seen[0] == ((4, 1), (4,))


def test_class_weighted_cross_entropy_epoch_mean_is_the_weighted_mean():
    weight = torch.tensor([1.0, 3.0, 0.5])
    model = nn.Linear(3, 3)
    x, y = torch.randn(8, 3), torch.tensor([0, 1, 1, 1, 2, 2, 0, 1])
    history = _fit(
        model, x, y, loss=nn.CrossEntropyLoss(weight=weight), lr=0.0, optimizer="sgd", shuffle=False
    )
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y, weight=weight)
    assert history.epochs[0]["loss"] == pytest.approx(float(expected), abs=1e-6)


def test_a_learning_rate_given_as_text_is_a_clear_error():
    with pytest.raises(ValueError, match=r"got the string '1e-3'; write it without quotes"):
        rnnkit.fit(nn.Linear(3, 1), torch.randn(4, 3), torch.randn(4, 1), lr="1e-3")
    model = nn.Linear(3, 1)
    trainer = rnnkit.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "mse")
    with pytest.raises(ValueError, match="got the string '0.1'"):
        trainer.set_lr("0.1")
    with pytest.raises(ValueError, match="positive finite number"):
        names.check_lr(float("inf"))


def test_a_float64_model_logs_float64_losses():
    model = nn.Linear(3, 1).double()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    history = _fit(model, x, y, optimizer="sgd", lr=0.0)
    with torch.no_grad():
        exact = F.mse_loss(model(x), y).item()
    assert history.steps[0]["loss"] == pytest.approx(exact, rel=1e-14)  # float32 is off by 1e-8
    assert history.epochs[0]["loss"] == pytest.approx(exact, rel=1e-15)
