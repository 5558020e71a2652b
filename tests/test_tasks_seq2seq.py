import pytest

import rnnkit
from rnnkit.tasks.seq2seq import WORDS, _in_test


def test_sources_spell_the_targets_digit_by_digit():
    sources, targets = rnnkit.tasks.spelled_digits(300, 2, 7, seed=0)
    assert len(sources) == len(targets) == 300
    for source, target in zip(sources, targets, strict=True):
        words = source.split()
        assert 2 <= len(words) <= 7
        assert "".join(str(WORDS.index(w)) for w in words) == target
    assert {len(t) for t in targets} == set(range(2, 8))


def test_seeded_and_train_and_test_share_no_input():
    assert rnnkit.tasks.spelled_digits(50, seed=3) == rnnkit.tasks.spelled_digits(50, seed=3)
    assert rnnkit.tasks.spelled_digits(50, seed=3) != rnnkit.tasks.spelled_digits(50, seed=4)
    train = set(rnnkit.tasks.spelled_digits(3000, 1, 4, seed=0)[0])
    test = set()
    for seed in range(3):
        test |= set(rnnkit.tasks.spelled_digits(1000, 1, 4, "test", seed=seed)[0])
    assert train and test and not train & test
    in_test = [_in_test(f"{k:04d}", 0.2) for k in range(10_000)]
    assert 0.18 < sum(in_test) / len(in_test) < 0.22  # test_fraction of all inputs


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="need min_len <= max_len, got 5 > 2"):
        rnnkit.tasks.spelled_digits(10, 5, 2)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        rnnkit.tasks.spelled_digits(10, split="val")
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        rnnkit.tasks.spelled_digits(0)
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\)"):
        rnnkit.tasks.spelled_digits(10, test_fraction=1.0)
