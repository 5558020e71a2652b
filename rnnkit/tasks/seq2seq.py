"""A generated sequence-to-sequence task: spelled-out digits to digits.

The source is ``n`` digits written as words (``"three one four"``), the target the digits
(``"314"``), with ``n`` drawn between ``min_len`` and ``max_len``. Every output symbol depends
on its own source word, so the answer needs the whole input, and a decoder without attention
must carry all of it in one fixed-size state: the longer the input, the harder that is — the
setting where attention was introduced (Bahdanau, Cho & Bengio 2015; Cho et al. 2014 measured
the encoder-decoder degrading with sentence length). Texts, not tensors: build the source with
``rnnkit.Vocab`` (words) and the target with ``rnnkit.CharVocab`` (digits).
"""

from __future__ import annotations

import zlib

import torch

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _in_test(digits: str, test_fraction: float) -> bool:
    # A fixed hash of the input (not Python's salted hash) decides its split, whatever the seed:
    # the same input is always on the same side, so train and test never share one.
    return zlib.crc32(digits.encode("ascii")) % 10_000 < test_fraction * 10_000


def spelled_digits(
    n: int = 1000,
    min_len: int = 1,
    max_len: int = 10,
    split: str = "train",
    seed: int = 0,
    test_fraction: float = 0.2,
) -> tuple[list[str], list[str]]:
    """``n`` pairs ``(sources, targets)``: ``"seven two nine"`` -> ``"729"``.

    Each pair's length (number of digits) is uniform in ``[min_len, max_len]`` and its digits
    uniform, drawn from a generator seeded by ``seed`` (the global RNG is untouched). Which
    split an input belongs to is fixed by a hash of its digits (about ``test_fraction`` of all
    inputs are test inputs), so ``split="train"`` and ``split="test"`` never share an input,
    for any seeds; inputs may repeat within a split (there are only 10 of length 1).
    """
    for name, value in (("n", n), ("min_len", min_len), ("max_len", max_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"spelled_digits: {name} must be an int >= 1, got {value!r}")
    if min_len > max_len:
        raise ValueError(f"spelled_digits: need min_len <= max_len, got {min_len} > {max_len}")
    if split not in ("train", "test"):
        raise ValueError(f"spelled_digits: split must be 'train' or 'test', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"spelled_digits: test_fraction must be in (0, 1), got {test_fraction!r}")
    lengths = range(min_len, max_len + 1)
    side = split == "test"
    available = [
        length
        for length in lengths
        if length > 2
        or any(_in_test(f"{k:0{length}d}", test_fraction) == side for k in range(10**length))
    ]
    if not available:
        raise ValueError(
            f"spelled_digits: no {split} input has a length in [{min_len}, {max_len}]; "
            "allow longer inputs"
        )
    gen = torch.Generator().manual_seed(seed)
    sources, targets = [], []
    while len(targets) < n:
        length = available[int(torch.randint(len(available), (1,), generator=gen))]
        digits = "".join(str(d) for d in torch.randint(10, (length,), generator=gen).tolist())
        if _in_test(digits, test_fraction) != side:
            continue
        sources.append(" ".join(WORDS[int(d)] for d in digits))
        targets.append(digits)
    return sources, targets
