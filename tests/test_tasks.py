import importlib.util
import math

import numpy as np
import pytest
import torch

from rnnkit import tasks


def _flat(result):
    out = []
    for part in result:
        out += list(part.values()) if isinstance(part, dict) else [part]
    return out


GENERATORS = {
    "adding_problem": lambda seed: tasks.adding_problem(50, 20, seed=seed),
    "copy_task": lambda seed: tasks.copy_task(50, delay=6, copy_len=4, seed=seed),
    "multi_sine": lambda seed: tasks.multi_sine(50, 20, horizon=3, seed=seed),
    "variable_length": lambda seed: tasks.variable_length(50, 3, 12, seed=seed),
    "irregular_series": lambda seed: tasks.irregular_series(50, 5, 12, seed=seed),
    "multimodal": lambda seed: tasks.multimodal(50, 12, 3, seed=seed),
    "heterogeneous": lambda seed: tasks.heterogeneous(50, 10, seed=seed),
    "multi_task": lambda seed: tasks.multi_task(50, 10, seed=seed),
    "long_tail": lambda seed: tasks.long_tail(200, 10, seed=seed),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_seeded_and_untouched_global_rng(name):
    make = GENERATORS[name]
    state = torch.get_rng_state()
    first, again, other = make(0), make(0), make(1)
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(_flat(first), _flat(again), strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(_flat(first), _flat(other), strict=True))
    for t in _flat(first):
        assert t.shape[0] == _flat(first)[0].shape[0]
        assert t.dtype in (torch.float32, torch.int64)


def test_adding_problem():
    x, y = tasks.adding_problem(64, 30, seed=0)
    assert x.shape == (64, 30, 2) and y.shape == (64, 1)
    markers = x[..., 1]
    assert torch.equal(markers.sum(1), torch.full((64,), 2.0))
    assert (markers[:, :15].sum(1) == 1).all() and (markers[:, 15:].sum(1) == 1).all()
    torch.testing.assert_close((x[..., 0] * markers).sum(1, keepdim=True), y)
    assert tasks.adding_accuracy(y + 0.03, y) == 1.0 and tasks.adding_accuracy(y + 0.05, y) == 0.0


def test_copy_task():
    x, y = tasks.copy_task(8, delay=5, copy_len=3, num_symbols=4, seed=0)
    assert x.shape == (8, 11, 6) and y.shape == (8, 11)
    tokens = x.argmax(-1)
    assert torch.equal(y[:, -3:], tokens[:, :3])  # the recalled symbols are the shown ones
    assert (y[:, :-3] == 4).all() and (tokens[:, 7] == 5).all()  # blanks, go marker at 3+5-1
    assert (tokens[:, 3:7] == 4).all() and (tokens[:, 8:] == 4).all()
    assert torch.equal(x.sum(-1), torch.ones(8, 11))


def test_multi_sine_forecast_continues_the_series():
    x, y = tasks.multi_sine(4, 30, horizon=5, noise=0.0, seed=0)
    assert x.shape == (4, 30, 1) and y.shape == (4, 5)
    a, _ = tasks.multi_sine(4, 35, horizon=1, noise=0.0, seed=0)
    torch.testing.assert_close(a[:, :30, 0], x[..., 0])  # same series, longer window
    torch.testing.assert_close(a[:, 30:, 0], y)


def test_variable_length_padding_and_classes():
    x, y, lengths = tasks.variable_length(100, 4, 20, num_classes=4, seed=0)
    assert x.shape == (100, 20, 1) and lengths.dtype == torch.int64
    assert lengths.min() >= 4 and lengths.max() <= 20 and set(y.tolist()) == {0, 1, 2, 3}
    mask = torch.arange(20)[None] < lengths[:, None]
    assert (x[..., 0][~mask] == 0).all() and (x[..., 0][mask] != 0).all()


def test_irregular_series():
    x, y, lengths = tasks.irregular_series(40, 5, 15, features=2, missing=0.5, seed=0)
    values, observed, times, gaps = x["values"], x["observed"], x["times"], x["gaps"]
    assert values.shape == observed.shape == (40, 15, 2) and times.shape == gaps.shape == (40, 15)
    valid = torch.arange(15)[None] < lengths[:, None]
    assert (observed[~valid] == 0).all() and (values[observed == 0] == 0).all()
    assert 0.35 < float(observed[valid].mean()) < 0.65  # about half missing
    assert (gaps[:, 0] == 0).all() and (gaps[valid][1:] >= 0).all()
    torch.testing.assert_close(times * valid, gaps.cumsum(1) * valid)
    assert not torch.allclose(gaps[:, 1:], gaps[:, 1:2].expand(-1, 14))  # irregular


def test_multimodal_label_is_the_xor_of_both_modalities():
    x, y = tasks.multimodal(400, fast_len=20, rate=4, seed=0)
    assert x["fast"].shape == (400, 20, 2) and x["slow"].shape == (400, 5, 3)
    rises = x["fast"][:, -5:, 0].mean(1) > x["fast"][:, :5, 0].mean(1)
    positive = x["slow"][..., 0].mean(1) > 0
    assert float(((rises ^ positive).long() == y).float().mean()) > 0.95
    assert abs(float((rises.long() == y).float().mean()) - 0.5) < 0.1  # one modality: chance


def test_heterogeneous_target_needs_both_parts():
    x, y = tasks.heterogeneous(500, 20, num_categories=4, numeric=2, seed=0)
    assert x["categorical"].dtype == torch.int64 and x["categorical"].max() < 4
    # least squares on per-category sums of numeric[0] recovers y up to the noise
    features = torch.stack(
        [((x["categorical"] == c) * x["numeric"][..., 0]).mean(1) for c in range(4)], 1
    )
    solution = torch.linalg.lstsq(features, y).solution
    residual = y - features @ solution
    assert float(residual.std()) < 0.06


def test_multi_task_targets():
    x, y = tasks.multi_task(200, 30, num_classes=3, seed=0)
    assert set(y) == {"class", "offset"} and y["offset"].shape == (200, 1)
    assert float((x.mean(dim=(1, 2)) - y["offset"][:, 0]).abs().mean()) < 0.1


def test_long_tail_profile():
    x, y = tasks.long_tail(2000, 8, num_classes=5, imbalance=50.0, seed=0)
    counts = torch.bincount(y, minlength=5)
    assert int(counts.sum()) == 2000 and (counts[:-1] >= counts[1:]).all()
    assert 40 < float(counts[0] / counts[-1]) < 60
    expected = [50 ** (-c / 4) for c in range(5)]
    share = [e / sum(expected) for e in expected]
    assert counts[1:].tolist() == [math.floor(s * 2000) for s in share[1:]]


@pytest.mark.skipif(importlib.util.find_spec("statsmodels") is None, reason="needs statsmodels")
def test_sunspots_real_series():
    years, values = tasks.sunspots()
    assert years.shape == values.shape == (309,)
    assert years[0] == 1700 and years[-1] == 2008
    assert values[0] == 5.0 and values.max() == pytest.approx(190.2)


def test_sunspots_missing_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"rnnkit\[data\]"):
        tasks.sunspots()


def test_windows():
    series = torch.arange(10.0)
    x, y = tasks.windows(series, 4, horizon=2)
    assert x.shape == (5, 4, 1) and y.shape == (5, 2)
    assert x[1, :, 0].tolist() == [1, 2, 3, 4] and y[1].tolist() == [5, 6]
    x2, y2 = tasks.windows(torch.stack([series, -series], 1), 3)
    assert x2.shape == (7, 3, 2) and x2[0, :, 1].tolist() == [0, -1, -2] and y2[-1].tolist() == [9]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: tasks.adding_problem(0), "n must be an int >= 1"),
        (lambda: tasks.adding_problem(5, seq_len=1), "seq_len must be >= 2"),
        (lambda: tasks.adding_problem(5, seed=1.5), "seed must be an int"),
        (lambda: tasks.copy_task(5, delay=0), "delay must be an int >= 1"),
        (lambda: tasks.multi_sine(5, noise=-1.0), "noise must be >= 0"),
        (lambda: tasks.variable_length(5, 10, 4), "min_len <= max_len"),
        (lambda: tasks.irregular_series(5, missing=1.0), r"missing must be in \[0, 1\)"),
        (lambda: tasks.multimodal(5, fast_len=2, rate=4), "fast_len .* must be >= rate"),
        (lambda: tasks.long_tail(5, num_classes=10), "n .* must be >= num_classes"),
        (lambda: tasks.long_tail(50, imbalance=0.5), "imbalance must be >= 1"),
        (lambda: tasks.windows(torch.zeros(3), 4), "too short"),
        (lambda: tasks.windows(torch.zeros(2, 2, 2), 1), r"shape \(T,\) or \(T, F\)"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_shakespeare_splits_are_contiguous_and_disjoint():
    text = tasks.shakespeare("all")
    assert len(text) == 1_115_394 and len(set(text)) == 65
    train, val, test = (tasks.shakespeare(s) for s in ("train", "val", "test"))
    assert train + val + test == text
    assert len(train) / len(text) == pytest.approx(0.9, abs=1e-6)
    assert len(val) == pytest.approx(len(test), abs=1)
    assert text.startswith(train) and text.endswith(test)


def test_shakespeare_refuses_an_unknown_split():
    with pytest.raises(ValueError, match="split must be one of"):
        tasks.shakespeare("validation")


def test_shakespeare_names_a_damaged_file(tmp_path, monkeypatch):
    import gzip

    from rnnkit.tasks import real

    (tmp_path / "tinyshakespeare.txt.gz").write_bytes(gzip.compress(b"not the corpus"))
    monkeypatch.setattr(real, "DATA", tmp_path)
    real._shakespeare_text.cache_clear()
    try:
        with pytest.raises(ValueError, match="damaged"):
            tasks.shakespeare()
    finally:
        real._shakespeare_text.cache_clear()


needs_sktime = pytest.mark.skipif(
    importlib.util.find_spec("sktime") is None, reason='needs sktime (pip install "rnnkit[test]")'
)


@needs_sktime
def test_japanese_vowels_archive_split():
    x, y, lengths = tasks.japanese_vowels("train")
    x_test, y_test, lengths_test = tasks.japanese_vowels("test")
    assert x.shape == (270, 26, 12) and x_test.shape == (370, 29, 12)
    assert x.dtype == torch.float32 and y.dtype == lengths.dtype == torch.int64
    assert torch.bincount(y).tolist() == [30] * 9  # 30 utterances per speaker
    assert torch.bincount(y_test).tolist() == [31, 35, 88, 44, 29, 24, 40, 50, 29]
    for lens in (lengths, lengths_test):
        assert int(lens.min()) == 7 and int(lens.max()) in (26, 29)
    # right-padded with zeros; every real frame has non-zero coefficients
    steps = torch.arange(x.shape[1])
    assert (x[steps >= lengths[:, None]] == 0).all()
    assert (x[steps < lengths[:, None]].abs().sum(-1) > 0).all()
    # the first case of the training file, as written there (label 1, 20 frames)
    assert int(lengths[0]) == 20 and int(y[0]) == 0
    assert x[0, 0, :3].tolist() == pytest.approx([1.860936, -0.207383, 0.261557])


@needs_sktime
def test_japanese_vowels_agrees_with_sktimes_own_reader():
    from sktime.datasets import load_from_tsfile

    from rnnkit.tasks.archive import _sktime_data

    path = _sktime_data() / "JapaneseVowels" / "JapaneseVowels_TEST.ts"
    frame, labels = load_from_tsfile(str(path), return_data_type="nested_univ")
    x, y, lengths = tasks.japanese_vowels("test")
    assert y.tolist() == [int(label) - 1 for label in labels]
    for i in (0, 100, 369):
        theirs = torch.from_numpy(np.stack([frame.iloc[i, d].to_numpy() for d in range(12)], 1))
        assert theirs.shape[0] == int(lengths[i])
        torch.testing.assert_close(x[i, : lengths[i]], theirs.float())


def test_japanese_vowels_missing_package(monkeypatch):
    from rnnkit.tasks import archive

    archive._archive_split.cache_clear()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"rnnkit\[benchmarks\]"):
        tasks.japanese_vowels("train")
    archive._archive_split.cache_clear()


def test_japanese_vowels_bad_split():
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        tasks.japanese_vowels("val")


def test_ts_parser_rejects_malformed_files(tmp_path):
    from rnnkit.tasks.archive import _parse_ts

    good = tmp_path / "good.ts"
    good.write_text("# comment\n@problemName X\n@dimensions 2\n@data\n1,2,3:4,5,6:a\n7:8:b\n")
    cases, labels, header = _parse_ts(good)
    assert [c.shape for c in cases] == [(3, 2), (1, 2)] and labels == ["a", "b"]
    assert cases[0][:, 1].tolist() == [4, 5, 6] and header["dimensions"] == "2"
    ragged = tmp_path / "ragged.ts"
    ragged.write_text("@data\n1,2:3:a\n")
    with pytest.raises(ValueError, match="differ in length"):
        _parse_ts(ragged)
    missing = tmp_path / "missing.ts"
    missing.write_text("@data\n1,?:3,4:a\n")
    with pytest.raises(ValueError, match="not a number"):
        _parse_ts(missing)
    with pytest.raises(ValueError, match="no @data line"):
        (tmp_path / "plain.ts").write_text("1,2:a\n")
        _parse_ts(tmp_path / "plain.ts")
