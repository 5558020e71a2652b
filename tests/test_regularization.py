import pytest
import torch
from torch import nn

import rnnkit

# ---------------------------------------------------------------------------- locked dropout


@pytest.mark.parametrize("batch_first", [False, True])
def test_locked_dropout_one_mask_per_sequence(batch_first):
    drop = rnnkit.LockedDropout(0.5, batch_first=batch_first)
    x = torch.ones(2, 7, 100) if batch_first else torch.ones(7, 2, 100)
    x.requires_grad_(True)
    out = drop(x)
    steps = out.unbind(1 if batch_first else 0)
    assert all(torch.equal(s, steps[0]) for s in steps)
    assert set(out.unique().tolist()) == {0.0, 2.0}
    first, second = steps[0]
    assert not torch.equal(first, second)  # sequences get different masks
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())


def test_locked_dropout_unbatched_shares_the_mask_over_time():
    out = rnnkit.LockedDropout(0.3)(torch.ones(5, 50))
    assert all(torch.equal(row, out[0]) for row in out)


def test_locked_dropout_off_in_eval_and_at_zero():
    x = torch.randn(4, 3, 8)
    drop = rnnkit.LockedDropout(0.5).eval()
    assert drop(x) is x
    assert rnnkit.LockedDropout(0.0)(x) is x


@pytest.mark.parametrize("p", [1.0, -0.1, "0.5"])
def test_locked_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError, match="p must be a probability in \\[0, 1\\)"):
        rnnkit.LockedDropout(p)


def test_locked_dropout_needs_a_time_axis():
    with pytest.raises(ValueError, match="at least 2-D.*got shape \\(8,\\)"):
        rnnkit.LockedDropout(0.5)(torch.ones(8))


# ---------------------------------------------------------------------------- embedding dropout


def test_embedding_dropout_drops_whole_words():
    embedding = nn.Embedding(20, 6)
    words = torch.randint(0, 20, (30, 4))
    out = rnnkit.embedding_dropout(embedding, words, 0.5)
    dropped = {w: bool((out[words == w] == 0).all()) for w in words.unique().tolist()}
    assert any(dropped.values()) and not all(dropped.values())
    for w, gone in dropped.items():
        expected = torch.zeros(6) if gone else embedding.weight[w].detach() * 2
        torch.testing.assert_close(out[words == w], expected.expand((words == w).sum(), 6))


def test_embedding_dropout_off_in_eval_honours_padding_idx():
    embedding = nn.Embedding(10, 3, padding_idx=0)
    words = torch.tensor([[0, 1, 2], [3, 0, 4]])
    assert torch.equal(
        rnnkit.embedding_dropout(embedding, words, 0.5, training=False), embedding(words)
    )
    rnnkit.embedding_dropout(embedding, words, 0.5).sum().backward()
    assert (embedding.weight.grad[0] == 0).all()


def test_embedding_dropout_errors():
    with pytest.raises(ValueError, match="expected an nn.Embedding, got Linear"):
        rnnkit.embedding_dropout(nn.Linear(2, 2), torch.tensor([0]), 0.1)
    with pytest.raises(ValueError, match="p must be"):
        rnnkit.embedding_dropout(nn.Embedding(3, 2), torch.tensor([0]), 1.5)


# ---------------------------------------------------------------------------- AR / TAR


def test_activation_regularization_formula():
    h = torch.randn(6, 3, 4, dtype=torch.float64)
    dropped = h * (torch.rand_like(h) > 0.5)
    penalty = rnnkit.activation_regularization(h, 2.0, 1.5, dropped_output=dropped)
    expected = 2.0 * dropped.pow(2).mean() + 1.5 * (h[1:] - h[:-1]).pow(2).mean()
    torch.testing.assert_close(penalty, expected, atol=1e-12, rtol=1e-12)
    batch_first = rnnkit.activation_regularization(
        h.transpose(0, 1), 2.0, 1.5, dropped_output=dropped.transpose(0, 1), batch_first=True
    )
    torch.testing.assert_close(batch_first, expected, atol=1e-12, rtol=1e-12)


def test_activation_regularization_leaves_padding_out():
    h = torch.randn(5, 3, 4, dtype=torch.float64)
    lengths = [5, 2, 1]
    penalty = rnnkit.activation_regularization(h, 1.0, 1.0, lengths=lengths)
    ar = torch.cat([h[:n, b] for b, n in enumerate(lengths)]).pow(2).mean()
    diffs = torch.cat([h[1:n, b] - h[: n - 1, b] for b, n in enumerate(lengths)])
    torch.testing.assert_close(penalty, ar + diffs.pow(2).mean(), atol=1e-12, rtol=1e-12)


def test_activation_regularization_module_off_in_eval():
    reg = rnnkit.ActivationRegularization(alpha=2.0, beta=1.0)
    h = torch.randn(4, 2, 3, requires_grad=True)
    torch.testing.assert_close(reg(h), rnnkit.activation_regularization(h, 2.0, 1.0))
    assert reg(h) > 0
    assert reg.eval()(h).item() == 0.0


def test_activation_regularization_errors():
    h = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match="alpha must be >= 0, got -1"):
        rnnkit.activation_regularization(h, -1)
    with pytest.raises(ValueError, match="expected output \\(time, batch, features\\)"):
        rnnkit.activation_regularization(h[0], 1.0)
    with pytest.raises(ValueError, match="dropped_output has shape \\(4, 2\\)"):
        rnnkit.activation_regularization(h, 1.0, dropped_output=h[..., 0])
    with pytest.raises(ValueError, match="beta must be >= 0"):
        rnnkit.ActivationRegularization(1.0, -2.0)


# ---------------------------------------------------------------------------- zoneout


def test_zoneout_eval_is_the_expectation():
    cell = rnnkit.LSTMCell(3, 4, dtype=torch.float64)
    zoned = rnnkit.Zoneout(cell, 0.2, 0.6).eval()
    x = torch.randn(2, 3, dtype=torch.float64)
    h, c = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    new_h, new_c = cell(x, (h, c))
    out_h, out_c = zoned(x, (h, c))
    torch.testing.assert_close(out_h, 0.2 * h + 0.8 * new_h, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(out_c, 0.6 * c + 0.4 * new_c, atol=1e-12, rtol=1e-12)
    assert torch.equal(zoned(x, (h, c))[0], out_h)


def test_zoneout_training_keeps_or_replaces_each_unit():
    cell = nn.GRUCell(3, 400)
    zoned = rnnkit.Zoneout(cell, 0.3)
    x, h = torch.randn(5, 3), torch.randn(5, 400)
    new = cell(x, h)
    out = zoned(x, h)
    kept, replaced = out == h, out == new
    assert (kept | replaced).all()
    assert 0.25 < kept.float().mean() < 0.35
    assert not torch.equal(zoned(x, h), out)


def test_zoneout_rate_zero_passes_the_state_through():
    cell = nn.LSTMCell(3, 4)
    x, state = torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 4))
    h, c = rnnkit.Zoneout(cell, 0.0, 0.5).eval()(x, state)
    torch.testing.assert_close(h, cell(x, state)[0])


def test_zoneout_in_recurrent_with_lengths_stacked_bidirectional():
    cell = rnnkit.Zoneout(rnnkit.LSTMCell(3, 4, dtype=torch.float64), 0.1, 0.5)
    layer = rnnkit.Recurrent(cell, num_layers=2, bidirectional=True).eval()
    assert isinstance(layer.cells[3], rnnkit.Zoneout) and layer.cells[3].p_cell == 0.5
    assert layer.cells[2].input_size == 8
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    lengths = [5, 3, 1]
    out, (h_n, _) = layer(x, lengths=torch.tensor(lengths))
    for b, n in enumerate(lengths):
        alone, (h_alone, _) = layer(x[:n, b : b + 1])
        torch.testing.assert_close(out[:n, b], alone[:, 0], atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(h_n[:, b], h_alone[:, 0], atol=1e-10, rtol=1e-10)
    layer.train()
    first, second = layer(x)[0], layer(x)[0]
    assert not torch.equal(first, second)
    first.sum().backward()
    assert cell.cell.weight_hh.grad.abs().sum() > 0


def test_zoneout_errors():
    with pytest.raises(ValueError, match="p must be a probability"):
        rnnkit.Zoneout(nn.GRUCell(2, 3), 1.0)
    with pytest.raises(ValueError, match="p_cell is for cells with an \\(h, c\\) state"):
        rnnkit.Zoneout(rnnkit.GRUCell(2, 3), 0.1, 0.5)
    with pytest.raises(ValueError, match="expected a cell module, got int"):
        rnnkit.Zoneout(3, 0.1)
