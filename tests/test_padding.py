"""Padding utilities, collate and length-bucketing samplers: behaviour and bad input."""

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

import rnnkit
from rnnkit.padding import check_lengths


def random_sequences(lengths, *feature_shape, dtype=torch.float64):
    return [torch.randn(n, *feature_shape, dtype=dtype) for n in lengths]


def lognormal_lengths(n, median=20, sigma=0.9, maximum=200, seed=0):
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(math.log(median), sigma, size=n)
    return np.clip(np.round(raw), 1, maximum).astype(np.int64)


# --------------------------------------------------------------------------------------------
# lengths <-> mask


@pytest.mark.parametrize(
    "lengths",
    [[3, 0, 2], np.array([3, 0, 2]), torch.tensor([3, 0, 2], dtype=torch.int32), (3, 0, 2)],
    ids=["list", "numpy", "int32 tensor", "tuple"],
)
def test_check_lengths_accepts_ints_in_any_container(lengths):
    checked = check_lengths(lengths, 3, 3)
    assert checked.dtype == torch.int64 and checked.device.type == "cpu"
    assert checked.tolist() == [3, 0, 2]


def test_check_lengths_accepts_numpy_integer_scalars():
    assert check_lengths([np.int64(2), np.int32(1)], 2, 2).tolist() == [2, 1]


@pytest.mark.parametrize(
    "lengths, match",
    [
        (torch.tensor([1.0, 2.0]), "integers.*float32"),
        (torch.tensor([True, False]), "integers.*bool"),
        (np.array([1.5, 2.0]), "integers.*float64"),
        ([1, 2.5], r"integers, got 2.5 \(float\) at position 1"),
        ([True, 1], "integers, got True"),
        (torch.tensor([[1, 2]]), "1-D"),
        (torch.tensor(2), "1-D"),
        ([1, -1], ">= 0, got min -1"),
        ([1, 5], r"length \(5\) exceeds the time axis of the input \(4 steps\)"),
        ([1], r"one length per sequence \(2\), got 1"),
        (7, "sequence of ints, got int"),
    ],
)
def test_check_lengths_rejects_bad_lengths(lengths, match):
    with pytest.raises(ValueError, match=match):
        check_lengths(lengths, 2, 4)


@pytest.mark.parametrize("side", ["right", "left"])
def test_lengths_to_mask_matches_definition(side):
    lengths = [4, 0, 2, 5]
    mask = rnnkit.lengths_to_mask(lengths, 6, side=side)
    for b, n in enumerate(lengths):
        for t in range(6):
            real = t < n if side == "right" else t >= 6 - n
            assert bool(mask[b, t]) == real
    assert rnnkit.lengths_to_mask(torch.tensor(lengths), side=side).shape == (4, 5)
    assert rnnkit.mask_to_lengths(mask, side=side).tolist() == lengths


def test_lengths_to_mask_of_nothing():
    assert rnnkit.lengths_to_mask([]).shape == (0, 0)
    assert rnnkit.lengths_to_mask([0, 0]).shape == (2, 0)


@pytest.mark.parametrize("max_len", [-1, 2.0, True])
def test_lengths_to_mask_rejects_bad_max_len(max_len):
    with pytest.raises(ValueError, match="max_len must be an int >= 0"):
        rnnkit.lengths_to_mask([1, 2], max_len)


def test_lengths_to_mask_rejects_lengths_longer_than_max_len():
    with pytest.raises(ValueError, match="exceeds the time axis"):
        rnnkit.lengths_to_mask([1, 4], 3)


def test_bad_side_is_rejected_everywhere():
    x = torch.zeros(2, 3, 1)
    calls = [
        lambda: rnnkit.lengths_to_mask([1], side="top"),
        lambda: rnnkit.mask_to_lengths(torch.ones(1, 1, dtype=torch.bool), side="top"),
        lambda: rnnkit.pad([torch.zeros(1)], side="top"),
        lambda: rnnkit.unpad(x, [1, 2], side="top"),
        lambda: rnnkit.last_valid(x, [1, 2], side="top"),
        lambda: rnnkit.masked_sum(x, [1, 2], side="top"),
        lambda: rnnkit.masked_mean(x, [1, 2], side="top"),
        lambda: rnnkit.sequence_loss(nn.MSELoss(reduction="none"), x, x, [1, 2], side="top"),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="side must be 'right' or 'left', got 'top'"):
            call()


@pytest.mark.parametrize(
    "mask, match",
    [
        (torch.ones(2, 3), "boolean tensor, got torch.float32"),
        ([[True]], "boolean tensor, got list"),
        (torch.ones(2, 3, 1, dtype=torch.bool), r"shape \(batch, time\)"),
        (torch.tensor([[True, False, True]]), "not contiguous on the right side"),
        (torch.tensor([[False, True, True]]), "not contiguous on the right side"),
    ],
)
def test_mask_to_lengths_rejects_bad_masks(mask, match):
    with pytest.raises(ValueError, match=match):
        rnnkit.mask_to_lengths(mask)


def test_mask_to_lengths_left_side_rejects_right_padding():
    with pytest.raises(ValueError, match="not contiguous on the left side"):
        rnnkit.mask_to_lengths(torch.tensor([[True, False]]), side="left")


# --------------------------------------------------------------------------------------------
# pad / unpad


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_unpad_inverts_pad(side, batch_first, seed):
    gen = torch.Generator().manual_seed(seed)
    count = int(torch.randint(1, 7, (1,), generator=gen))
    lengths = torch.randint(0, 9, (count,), generator=gen).tolist()
    feature_shape = [(), (3,), (2, 2)][seed % 3]
    sequences = random_sequences(lengths, *feature_shape)
    data, lens, mask = rnnkit.pad(sequences, batch_first, padding_value=-7.0, side=side)
    steps = max(lengths)
    expected = (count, steps) if batch_first else (steps, count)
    assert data.shape == (*expected, *feature_shape) and mask.shape == expected
    assert data.is_contiguous() and mask.is_contiguous()
    assert lens.tolist() == lengths
    expected_mask = rnnkit.lengths_to_mask(lengths, steps, side=side)
    assert torch.equal(mask, expected_mask if batch_first else expected_mask.t())
    assert bool((data[~mask] == -7.0).all())
    back = rnnkit.unpad(data, lens, batch_first=batch_first, side=side)
    assert len(back) == count
    for got, want in zip(back, sequences, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_matches_torch_pad_sequence(side):
    sequences = random_sequences([3, 6, 1, 4], 5, dtype=torch.float32)
    for batch_first in (True, False):
        ours = rnnkit.pad(sequences, batch_first, 1.5, side).data
        theirs = pad_sequence(sequences, batch_first, 1.5, padding_side=side)
        assert torch.equal(ours, theirs)


def test_pad_token_ids_and_zero_length_sequences():
    tokens = [torch.tensor([5, 6, 7]), torch.tensor([], dtype=torch.int64), torch.tensor([9])]
    data, lengths, mask = rnnkit.pad(tokens, padding_value=0)
    assert data.dtype == torch.int64
    assert data.tolist() == [[5, 6, 7], [0, 0, 0], [9, 0, 0]]
    assert lengths.tolist() == [3, 0, 1] and not mask[1].any()
    empty = rnnkit.pad([torch.zeros(0, 2), torch.zeros(0, 2)])
    assert empty.data.shape == (2, 0, 2) and empty.lengths.tolist() == [0, 0]


def test_pad_passes_gradients_to_the_sequences():
    sequences = [s.requires_grad_() for s in random_sequences([2, 4], 3)]
    data = rnnkit.pad(sequences, side="left").data
    (data * torch.arange(data.numel(), dtype=data.dtype).view_as(data)).sum().backward()
    weights = torch.arange(data.numel(), dtype=data.dtype).view_as(data)
    assert torch.equal(sequences[0].grad, weights[0, 2:])
    assert torch.equal(sequences[1].grad, weights[1])


def test_padded_batch_unpacks_and_moves():
    batch = rnnkit.pad(random_sequences([2, 3], 4, dtype=torch.float32))
    x, lengths, mask = batch
    assert x is batch.data and lengths is batch.lengths and mask is batch.mask
    moved = batch.to(torch.float64)
    assert isinstance(moved, rnnkit.PaddedBatch)
    assert moved.data.dtype == torch.float64 and torch.equal(moved.data, x.double())
    assert moved.lengths.dtype == torch.int64 and moved.mask.dtype == torch.bool
    same_device = batch.to("cpu", non_blocking=True)
    assert same_device.lengths.device.type == "cpu" and same_device.mask.device.type == "cpu"


@pytest.mark.parametrize(
    "sequences, error, match",
    [
        ([], ValueError, "at least one sequence"),
        (torch.zeros(2, 3), TypeError, "list or tuple of tensors"),
        ([torch.zeros(2), [1.0, 2.0]], TypeError, "sequence 1 is a list"),
        ([torch.tensor(1.0)], ValueError, "sequence 0 is a 0-d tensor"),
        ([torch.zeros(2, 3), torch.zeros(2, 4)], ValueError, r"trailing shape.*\(2, 4\)"),
        ([torch.zeros(2), torch.zeros(2, dtype=torch.int64)], ValueError, "dtype and device"),
    ],
)
def test_pad_rejects_bad_input(sequences, error, match):
    with pytest.raises(error, match=match):
        rnnkit.pad(sequences)


def test_unpad_rejects_bad_input():
    with pytest.raises(ValueError, match=r"at least 2 axes, got shape \(3,\)"):
        rnnkit.unpad(torch.zeros(3), [1, 2, 3])
    with pytest.raises(TypeError, match="data must be a Tensor"):
        rnnkit.unpad([[1.0]], [1])
    with pytest.raises(ValueError, match="exceeds the time axis"):
        rnnkit.unpad(torch.zeros(2, 3), [1, 4])
    with pytest.raises(ValueError, match="one length per sequence"):
        rnnkit.unpad(torch.zeros(2, 3), [1, 2], batch_first=False)


# --------------------------------------------------------------------------------------------
# last_valid, masked reductions


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_last_valid_picks_each_last_real_step(side, batch_first):
    sequences = random_sequences([4, 1, 0, 6], 3)
    data, lengths, _ = rnnkit.pad(sequences, batch_first, padding_value=99.0, side=side)
    last = rnnkit.last_valid(data, lengths, batch_first, side)
    assert last.shape == (4, 3)
    for b, seq in enumerate(sequences):
        expected = seq[-1] if len(seq) else torch.zeros(3, dtype=seq.dtype)
        assert torch.equal(last[b], expected)


def test_last_valid_is_the_lstm_final_state():
    lstm = rnnkit.LSTM(3, 5, num_layers=2, batch_first=True).double()
    data, lengths, _ = rnnkit.pad(random_sequences([5, 2, 7], 3))
    output, (h_n, _) = lstm(data, lengths=lengths)
    torch.testing.assert_close(rnnkit.last_valid(output, lengths), h_n[-1], rtol=0, atol=1e-12)


def test_last_valid_with_more_feature_axes_and_bad_lengths():
    data = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).view(2, 3, 2, 2)
    assert torch.equal(rnnkit.last_valid(data, [2, 3]), torch.stack([data[0, 1], data[1, 2]]))
    with pytest.raises(ValueError, match="exceeds the time axis"):
        rnnkit.last_valid(data, [2, 4])
    with pytest.raises(ValueError, match=">= 0"):
        rnnkit.last_valid(data, [2, -1])


def reference_masked_sum(values, step_mask):
    rows = [values[b][step_mask[b]].sum(dim=0) for b in range(values.shape[0])]
    return torch.stack(rows)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_masked_sum_and_mean_match_a_loop(side, batch_first):
    sequences = random_sequences([3, 0, 5, 1], 2)
    data, lengths, mask = rnnkit.pad(sequences, batch_first, padding_value=1e6, side=side)
    total = rnnkit.masked_sum(data, lengths, batch_first=batch_first, side=side)
    mean = rnnkit.masked_mean(data, lengths, batch_first=batch_first, side=side)
    for b, seq in enumerate(sequences):
        torch.testing.assert_close(total[b], seq.sum(0), rtol=0, atol=1e-12)
        expected = seq.mean(0) if len(seq) else torch.zeros(2, dtype=seq.dtype)
        torch.testing.assert_close(mean[b], expected, rtol=0, atol=1e-12)
    by_mask = rnnkit.masked_mean(data, mask=mask, batch_first=batch_first)
    torch.testing.assert_close(by_mask, mean, rtol=0, atol=0)


def test_masked_reductions_accept_masks_with_holes():
    values = torch.randn(3, 6, dtype=torch.float64)
    mask = torch.rand(3, 6) < 0.5
    mask[0] = False
    torch.testing.assert_close(
        rnnkit.masked_sum(values, mask=mask), reference_masked_sum(values, mask)
    )
    counts = mask.sum(1).clamp(min=1)
    torch.testing.assert_close(
        rnnkit.masked_mean(values, mask=mask), reference_masked_sum(values, mask) / counts
    )


def test_masked_reductions_keep_nan_padding_out_of_values_and_gradients():
    data = torch.randn(2, 4, 3, dtype=torch.float64)
    data[0, 2:] = float("nan")
    data[1, 3] = float("inf")
    data.requires_grad_()
    lengths = [2, 3]
    (rnnkit.masked_sum(data, lengths).sum() + rnnkit.masked_mean(data, lengths).sum()).backward()
    assert torch.isfinite(data.grad).all()
    expected = torch.zeros_like(data)
    expected[0, :2] = 1 + 1 / 2
    expected[1, :3] = 1 + 1 / 3
    torch.testing.assert_close(data.grad, expected)


@pytest.mark.parametrize("reduce", [rnnkit.masked_sum, rnnkit.masked_mean])
def test_masked_reductions_reject_bad_input(reduce):
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="exactly one of lengths= or mask="):
        reduce(x)
    with pytest.raises(ValueError, match="exactly one of lengths= or mask="):
        reduce(x, [1, 2], mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="boolean tensor, got torch.int64"):
        reduce(x, mask=torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\(2, 3\), got \(3, 2\)"):
        reduce(x, mask=torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="one length per sequence"):
        reduce(x, [1, 2], batch_first=False)
    with pytest.raises(ValueError, match="at least 2 axes"):
        reduce(torch.zeros(3), [1, 2, 3])


# --------------------------------------------------------------------------------------------
# sequence_loss


@pytest.fixture
def classification_batch():
    lengths = [4, 1, 0, 6]
    pred = rnnkit.pad(random_sequences(lengths, 5), padding_value=float("nan")).data
    target = rnnkit.pad([torch.randint(0, 5, (n,)) for n in lengths]).data
    return pred.requires_grad_(), target, lengths


def test_sequence_loss_mean_is_over_real_steps(classification_batch):
    pred, target, lengths = classification_batch
    loss_fn = nn.CrossEntropyLoss(reduction="none")
    loss = rnnkit.sequence_loss(loss_fn, pred, target, lengths)
    real_pred = torch.cat(rnnkit.unpad(pred, lengths))
    real_target = torch.cat(rnnkit.unpad(target, lengths))
    reference = F.cross_entropy(real_pred, real_target)
    torch.testing.assert_close(loss, reference, rtol=0, atol=1e-12)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert bool((pred.grad[~rnnkit.lengths_to_mask(lengths)] == 0).all())


def test_sequence_loss_sum_and_per_sequence(classification_batch):
    pred, target, lengths = classification_batch
    loss_fn = functools.partial(F.cross_entropy, reduction="none")
    total = rnnkit.sequence_loss(loss_fn, pred, target, lengths, reduction="sum")
    per_seq = rnnkit.sequence_loss(loss_fn, pred, target, lengths, reduction="per_sequence")
    assert per_seq.shape == (4,)
    expected_total = 0.0
    for b, n in enumerate(lengths):
        if n == 0:
            assert per_seq[b] == 0
            continue
        one = F.cross_entropy(pred[b, :n], target[b, :n], reduction="none")
        expected_total += one.sum()
        torch.testing.assert_close(per_seq[b], one.mean(), rtol=0, atol=1e-12)
    torch.testing.assert_close(total, expected_total, rtol=0, atol=1e-12)


@pytest.mark.parametrize("side", ["right", "left"])
def test_sequence_loss_with_feature_axes_time_major_and_a_mask(side):
    lengths = [3, 5, 2]
    pred_seqs = random_sequences(lengths, 2, 3)
    target_seqs = random_sequences(lengths, 2, 3)
    pred, _, mask = rnnkit.pad(pred_seqs, False, side=side)
    target = rnnkit.pad(target_seqs, False, side=side).data
    mse = nn.MSELoss(reduction="none")
    mean = rnnkit.sequence_loss(mse, pred, target, lengths, batch_first=False, side=side)
    reference = F.mse_loss(torch.cat(pred_seqs), torch.cat(target_seqs))
    torch.testing.assert_close(mean, reference, rtol=0, atol=1e-12)
    by_mask = rnnkit.sequence_loss(mse, pred, target, mask=mask, batch_first=False)
    torch.testing.assert_close(by_mask, mean, rtol=0, atol=0)
    per_seq = rnnkit.sequence_loss(
        mse, pred, target, lengths, reduction="per_sequence", batch_first=False, side=side
    )
    expected = torch.stack([F.mse_loss(p, t) for p, t in zip(pred_seqs, target_seqs, strict=True)])
    torch.testing.assert_close(per_seq, expected, rtol=0, atol=1e-12)


def test_sequence_loss_of_a_batch_without_real_steps_is_zero():
    pred = torch.randn(2, 3, 4, requires_grad=True)
    target = torch.zeros(2, 3, dtype=torch.int64)
    loss_fn = nn.CrossEntropyLoss(reduction="none")
    loss = rnnkit.sequence_loss(loss_fn, pred, target, [0, 0])
    assert loss.item() == 0.0
    loss.backward()
    assert bool((pred.grad == 0).all())
    per_seq = rnnkit.sequence_loss(loss_fn, pred, target, [0, 0], reduction="per_sequence")
    assert per_seq.tolist() == [0.0, 0.0]


def test_sequence_loss_rejects_bad_input():
    pred, target = torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.int64)
    ce = nn.CrossEntropyLoss(reduction="none")
    with pytest.raises(ValueError, match="reduction must be one of"):
        rnnkit.sequence_loss(ce, pred, target, [1, 2], reduction="max")
    with pytest.raises(ValueError, match="reduction='none', got reduction='mean'"):
        rnnkit.sequence_loss(nn.CrossEntropyLoss(), pred, target, [1, 2])
    with pytest.raises(ValueError, match=r"one loss per real step, shape \(3, \*\), got \(\)"):
        rnnkit.sequence_loss(F.cross_entropy, pred, target, [1, 2])
    with pytest.raises(ValueError, match="share their batch and time axes"):
        rnnkit.sequence_loss(ce, pred, target[:, :2], [1, 2])
    with pytest.raises(TypeError, match="target must be a Tensor"):
        rnnkit.sequence_loss(ce, pred, [[0]], [1, 2])
    with pytest.raises(ValueError, match="exceeds the time axis"):
        rnnkit.sequence_loss(ce, pred, target, [1, 4])


# --------------------------------------------------------------------------------------------
# collate_padded


def test_collate_tuples_pads_sequences_and_stacks_labels():
    samples = [(torch.randn(n, 3), n % 2, f"id{n}") for n in (4, 2, 5)]
    (x, lengths, mask), y, ids = rnnkit.collate_padded(samples)
    assert x.shape == (3, 5, 3) and lengths.tolist() == [4, 2, 5] and mask.shape == (3, 5)
    assert torch.equal(y, torch.tensor([0, 0, 1])) and ids == ["id4", "id2", "id5"]
    for b, (seq, _, _) in enumerate(samples):
        assert torch.equal(x[b, : len(seq)], seq)


def test_collate_dicts_lists_and_tensors():
    samples = [
        {"tokens": torch.arange(n), "tags": torch.ones(n), "label": torch.tensor([1.0, 2.0])}
        for n in (3, 1)
    ]
    batch = rnnkit.collate_padded(samples)
    assert list(batch) == ["tokens", "tags", "label"]
    assert isinstance(batch["tokens"], rnnkit.PaddedBatch)
    assert batch["tags"].data.tolist() == [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    assert batch["label"].shape == (2, 2)
    as_list = rnnkit.collate_padded([[torch.zeros(2), 1], [torch.zeros(1), 0]])
    assert isinstance(as_list, list) and isinstance(as_list[0], rnnkit.PaddedBatch)
    direct = rnnkit.collate_padded([torch.ones(2, 1), torch.ones(3, 1)], side="left")
    assert direct.mask.tolist() == [[False, True, True], [True, True, True]]


def test_collate_sequence_fields_decide_even_for_equal_lengths():
    samples = [(torch.randn(4, 2), torch.randn(4)) for _ in range(3)]
    auto = rnnkit.collate_padded(samples)
    assert isinstance(auto[0], torch.Tensor) and auto[0].shape == (3, 4, 2)
    explicit = rnnkit.collate_padded(samples, sequence_fields=[0])
    assert isinstance(explicit[0], rnnkit.PaddedBatch) and explicit[0].lengths.tolist() == [4] * 3
    assert isinstance(explicit[1], torch.Tensor) and explicit[1].shape == (3, 4)
    by_key = rnnkit.collate_padded(
        [{"x": torch.zeros(2), "y": torch.zeros(2)}], sequence_fields=["y"], batch_first=False
    )
    assert by_key["y"].data.shape == (2, 1) and by_key["x"].shape == (1, 2)


@pytest.mark.parametrize(
    "samples, kwargs, error, match",
    [
        ([], {}, ValueError, "at least one sample"),
        (torch.zeros(2, 3), {}, TypeError, "list of samples, got Tensor"),
        ([3, 4], {}, TypeError, "Tensor, tuple, list or dict, got int"),
        ([(torch.zeros(2), 1), (torch.zeros(1),)], {}, ValueError, "sample 1 has 1 fields"),
        ([(torch.zeros(2),), {"x": 1}], {}, ValueError, "sample 1 has dict"),
        ([{"x": 1}, {"y": 1}], {}, ValueError, r"sample 1 has fields \['y'\]"),
        ([{"x": 1}, 5], {}, ValueError, "sample 1 has fields int"),
        ([(torch.zeros(2),)], {"sequence_fields": [1]}, ValueError, r"fields of the samples"),
        ([{"x": torch.zeros(2)}], {"sequence_fields": "x"}, ValueError, "got 'x'"),
        ([torch.zeros(2)], {"sequence_fields": [0]}, ValueError, "tuple or dict samples"),
        ([torch.zeros(2), (1,)], {}, TypeError, "every sample must be a Tensor"),
        ([(1.0,), (2.0,)], {"sequence_fields": [0]}, TypeError, "sequence 0 is a float"),
    ],
)
def test_collate_rejects_bad_input(samples, kwargs, error, match):
    with pytest.raises(error, match=match):
        rnnkit.collate_padded(samples, **kwargs)


def test_collate_in_a_dataloader_with_the_bucket_sampler():
    lengths = lognormal_lengths(40, median=6, maximum=30)
    dataset = [(torch.full((int(n), 2), float(i)), i) for i, n in enumerate(lengths)]
    sampler = rnnkit.BucketBatchSampler(lengths, batch_size=8, seed=3)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=rnnkit.collate_padded)
    seen = []
    for (x, batch_lengths, mask), index in loader:
        assert x.shape[1] == int(batch_lengths.max())
        assert torch.equal(batch_lengths, torch.as_tensor(lengths)[index])
        assert torch.equal(x[mask][:, 0], torch.repeat_interleave(index.double(), batch_lengths))
        seen += index.tolist()
    assert sorted(seen) == list(range(40)) and len(seen) == 40


# --------------------------------------------------------------------------------------------
# BucketBatchSampler


@pytest.mark.parametrize(
    "n, batch_size, pool_batches, shuffle",
    [(1, 4, 100, True), (37, 5, 2, True), (64, 8, 1, True), (50, 7, 100, False), (9, 20, 3, True)],
)
def test_bucket_sampler_yields_every_index_once(n, batch_size, pool_batches, shuffle):
    lengths = lognormal_lengths(n)
    lengths[::5] = 0  # zero-length samples are batched like any other
    sampler = rnnkit.BucketBatchSampler(
        lengths, batch_size, shuffle=shuffle, seed=1, pool_batches=pool_batches
    )
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == math.ceil(n / batch_size)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(n))
        assert sum(len(b) < batch_size for b in batches) <= 1
        assert all(0 < len(b) <= batch_size for b in batches)
        for b in batches:  # longest first within a batch
            assert list(lengths[b]) == sorted(lengths[b], reverse=True)


def test_bucket_sampler_drop_last_drops_only_the_short_batch():
    lengths = lognormal_lengths(43)
    sampler = rnnkit.BucketBatchSampler(lengths, 8, drop_last=True, pool_batches=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 5
    flat = [i for b in batches for i in b]
    assert all(len(b) == 8 for b in batches) and len(set(flat)) == 40
    assert len(rnnkit.BucketBatchSampler(lengths[:5], 8, drop_last=True)) == 0


def test_bucket_sampler_is_deterministic_per_epoch_and_seed():
    lengths = lognormal_lengths(100)
    a = rnnkit.BucketBatchSampler(lengths, 10, seed=7)
    b = rnnkit.BucketBatchSampler(torch.as_tensor(lengths), 10, seed=7)
    epochs = []
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        first = list(a)
        assert first == list(b) == list(a)
        epochs.append(first)
    assert epochs[0] != epochs[1] != epochs[2]
    other_seed = rnnkit.BucketBatchSampler(lengths, 10, seed=8)
    assert list(other_seed) != epochs[0]


def test_bucket_sampler_without_shuffle_sorts_by_length():
    lengths = lognormal_lengths(30)
    sampler = rnnkit.BucketBatchSampler(lengths, 4, shuffle=False)
    flat = [i for b in sampler for i in b]
    assert flat == np.argsort(-lengths, kind="stable").tolist()
    sampler.set_epoch(5)
    assert [i for b in sampler for i in b] == flat


def test_bucketing_pads_far_less_than_random_batches():
    lengths = lognormal_lengths(2000, median=40, sigma=0.9, maximum=400)
    bucketed = rnnkit.padding_stats(lengths, rnnkit.BucketBatchSampler(lengths, 32))
    random = rnnkit.padding_stats(lengths, torch.randperm(2000).split(32))
    assert bucketed.real_steps == random.real_steps == int(lengths.sum())
    assert bucketed.useful_fraction > 0.9 > 0.6 > random.useful_fraction
    small_pools = rnnkit.BucketBatchSampler(lengths, 32, pool_batches=2)
    assert rnnkit.padding_stats(lengths, small_pools).useful_fraction < bucketed.useful_fraction


def test_bucket_sampler_resumes_mid_epoch_exactly():
    lengths = lognormal_lengths(60)
    sampler = rnnkit.BucketBatchSampler(lengths, 7, seed=2)
    sampler.set_epoch(4)
    full = list(sampler)
    iterator = iter(sampler)
    consumed = [next(iterator) for _ in range(3)]
    assert consumed == full[:3]
    state = sampler.state_dict()
    assert state["epoch"] == 4 and state["position"] == 3
    resumed = rnnkit.BucketBatchSampler(lengths, 7, seed=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # the training loop's usual call keeps the loaded position
    assert list(resumed) == full[3:]
    assert list(resumed) == full  # the next pass over the same epoch starts from its beginning
    resumed.load_state_dict(state)
    resumed.set_epoch(5)  # a new epoch starts from its first batch
    sampler.set_epoch(5)
    assert list(resumed) == list(sampler)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
        ({"batch_size": 2.0}, "batch_size must be an int >= 1, got 2.0"),
        ({"batch_size": 2, "pool_batches": 0}, "pool_batches must be an int >= 1"),
        ({"batch_size": 2, "seed": -1}, "seed must be an int >= 0"),
        ({"batch_size": 2, "seed": 1.5}, "seed must be an int >= 0"),
        ({"batch_size": 2, "lengths": [1, -2]}, ">= 0, got min -2"),
        ({"batch_size": 2, "lengths": [1.0, 2.0]}, "integers"),
        ({"batch_size": 2, "lengths": 5}, "1-D sequence of ints"),
    ],
)
def test_bucket_sampler_rejects_bad_arguments(kwargs, match):
    kwargs = {"lengths": [3, 1, 2], **kwargs}
    with pytest.raises(ValueError, match=match):
        rnnkit.BucketBatchSampler(**kwargs)


def test_bucket_sampler_rejects_bad_epochs_and_states():
    sampler = rnnkit.BucketBatchSampler([3, 1, 2, 5], 2)
    with pytest.raises(ValueError, match="epoch must be an int >= 0, got -1"):
        sampler.set_epoch(-1)
    with pytest.raises(ValueError, match="expected a state dict, got list"):
        sampler.load_state_dict([])
    state = sampler.state_dict()
    with pytest.raises(ValueError, match=r"lacks \['position'\]"):
        sampler.load_state_dict({k: v for k, v in state.items() if k != "position"})
    for key, value in [("seed", 1), ("batch_size", 3), ("num_samples", 5), ("shuffle", False)]:
        with pytest.raises(ValueError, match=f"made with {key}={value!r}.*batches would differ"):
            sampler.load_state_dict({**state, key: value})
    with pytest.raises(ValueError, match=r"position must be an int in \[0, 2\], got 3"):
        sampler.load_state_dict({**state, "position": 3})
    with pytest.raises(ValueError, match="epoch must be an int >= 0"):
        sampler.load_state_dict({**state, "epoch": -2})


def test_bucket_sampler_of_an_empty_data_set():
    sampler = rnnkit.BucketBatchSampler([], 4)
    assert len(sampler) == 0 and list(sampler) == []


# --------------------------------------------------------------------------------------------
# DistributedBucketSampler


def rank_batches(lengths, replicas, epoch=0, **kwargs):
    samplers = [
        rnnkit.DistributedBucketSampler(lengths, num_replicas=replicas, rank=r, **kwargs)
        for r in range(replicas)
    ]
    for s in samplers:
        s.set_epoch(epoch)
    return samplers, [list(s) for s in samplers]


@pytest.mark.parametrize("n", [1, 5, 23, 64, 101])
@pytest.mark.parametrize("replicas", [1, 2, 3, 4])
def test_distributed_sampler_equal_batches_disjoint_ranks(n, replicas):
    lengths = lognormal_lengths(n)
    batch_size = 4
    samplers, batches = rank_batches(lengths, replicas, epoch=1, batch_size=batch_size, seed=5)
    steps = math.ceil(n / (batch_size * replicas))
    assert all(len(b) == len(s) == steps for b, s in zip(batches, samplers, strict=True))
    flat = [i for rank in batches for b in rank for i in b]
    assert sorted(set(flat)) == list(range(n))
    short = n - (steps - 1) * batch_size * replicas
    assert len(flat) - n == replicas * math.ceil(short / replicas) - short < replicas
    for step in range(steps):  # every rank's batch at a step has the same size
        assert len({len(rank[step]) for rank in batches}) == 1


def test_distributed_sampler_drop_last_is_disjoint_and_full():
    lengths = lognormal_lengths(50)
    _, batches = rank_batches(lengths, 3, batch_size=4, drop_last=True)
    flat = [i for rank in batches for b in rank for i in b]
    assert len(flat) == len(set(flat)) == 48
    assert all(len(rank) == 4 and all(len(b) == 4 for b in rank) for rank in batches)


def test_distributed_sampler_gives_ranks_neighbouring_lengths_at_each_step():
    lengths = lognormal_lengths(203, median=30, maximum=300)
    _, batches = rank_batches(lengths, 4, batch_size=16)
    for step in range(len(batches[0])):  # one sorted group per step, cut in contiguous shares
        for upper, lower in zip(batches, batches[1:], strict=False):
            assert lengths[upper[step]].min() >= lengths[lower[step]].max()


def test_distributed_sampler_with_one_replica_is_the_bucket_sampler():
    lengths = lognormal_lengths(77)
    one = rnnkit.DistributedBucketSampler(lengths, 6, num_replicas=1, rank=0, seed=4)
    plain = rnnkit.BucketBatchSampler(lengths, 6, seed=4)
    for epoch in (0, 3):
        one.set_epoch(epoch)
        plain.set_epoch(epoch)
        assert list(one) == list(plain)


def test_distributed_sampler_reads_the_process_group(monkeypatch):
    lengths = lognormal_lengths(20)
    alone = rnnkit.DistributedBucketSampler(lengths, 2)
    assert (alone.num_replicas, alone.rank) == (1, 0)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 4)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 3)
    grouped = rnnkit.DistributedBucketSampler(lengths, 2)
    assert (grouped.num_replicas, grouped.rank) == (4, 3)
    assert grouped.state_dict()["num_replicas"] == 4


def test_distributed_sampler_resumes_and_checks_replicas():
    lengths = lognormal_lengths(40)
    sampler = rnnkit.DistributedBucketSampler(lengths, 3, num_replicas=2, rank=1, seed=9)
    full = list(sampler)
    iterator = iter(sampler)
    next(iterator)
    state = sampler.state_dict()
    resumed = rnnkit.DistributedBucketSampler(lengths, 3, num_replicas=2, rank=1, seed=9)
    resumed.load_state_dict(state)
    assert list(resumed) == full[1:]
    other = rnnkit.DistributedBucketSampler(lengths, 3, num_replicas=4, rank=1, seed=9)
    with pytest.raises(ValueError, match="num_replicas=2"):
        other.load_state_dict(state)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_replicas": 2, "rank": 2}, r"rank must be in \[0, 1\], got 2"),
        ({"num_replicas": 2, "rank": -1}, r"rank must be in \[0, 1\], got -1"),
        ({"num_replicas": 0, "rank": 0}, "num_replicas must be an int >= 1, got 0"),
        ({"num_replicas": 2, "rank": 0.0}, "rank must be an int, got 0.0"),
    ],
)
def test_distributed_sampler_rejects_bad_ranks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rnnkit.DistributedBucketSampler([1, 2, 3], 2, **kwargs)


# --------------------------------------------------------------------------------------------
# padding_stats


def test_padding_stats_counts_real_and_padded_steps():
    lengths = [5, 1, 3, 0, 2]
    stats = rnnkit.padding_stats(lengths, [[0, 1], [2, 3, 4]])
    assert stats.real_steps == 11
    assert stats.padded_steps == 2 * 5 + 3 * 3
    assert stats.num_batches == 2
    assert stats.useful_fraction == pytest.approx(11 / 19)
    assert rnnkit.padding_stats(lengths, [[0], [1], [2], [3], [4]]).useful_fraction == 1.0
    assert rnnkit.padding_stats([0, 0], [[0, 1]]) == rnnkit.PaddingStats(1.0, 0, 0, 1)
    assert rnnkit.padding_stats(lengths, torch.tensor([[0, 2]])).padded_steps == 10


def test_padding_stats_rejects_indices_outside_the_lengths():
    with pytest.raises(ValueError, match="batch 1 holds index 5, outside the 3 lengths"):
        rnnkit.padding_stats([1, 2, 3], [[0], [5]])
    with pytest.raises(ValueError, match="batch 0 holds index -1"):
        rnnkit.padding_stats([1, 2, 3], [[-1]])
