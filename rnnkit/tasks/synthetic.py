"""Seeded synthetic sequence problems, and sliding windows over a series.

Every generator takes a ``seed`` and draws from its own ``torch.Generator`` (the global RNG is
untouched), so the same call gives the same tensors. Inputs are batch first ``(N, T, F)``
float32; variable-length sets are right-padded with zeros and come with ``lengths``. Results are
tuples ``(x, y)`` or ``(x, y, lengths)`` that :func:`rnnkit.fit` and ``Trainer.fit`` take as
they are; ``x`` or ``y`` is a dict of tensors where a task has several parts.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _generator(seed: int) -> torch.Generator:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _lengths(n: int, min_len: int, max_len: int, gen: torch.Generator) -> Tensor:
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    return torch.randint(min_len, max_len + 1, (n,), generator=gen)


def _pad_mask(lengths: Tensor, max_len: int) -> Tensor:
    return torch.arange(max_len)[None, :] < lengths[:, None]


def adding_problem(n: int = 1000, seq_len: int = 100, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The adding problem (Hochreiter & Schmidhuber, 1997; as in Le, Jaitly & Hinton, 2015).

    ``x (n, seq_len, 2)``: channel 0 holds values uniform in [0, 1), channel 1 marks two steps,
    one in each half of the sequence. ``y (n, 1)`` is the sum of the two marked values. Always
    predicting the mean 1.0 gives MSE ~ 1/6; solving the task means remembering across
    ``seq_len`` steps. A prediction counts as correct when within 0.04 (:func:`adding_accuracy`).
    """
    _check_positive(n=n, seq_len=seq_len)
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 for two markers, got {seq_len}")
    gen = _generator(seed)
    values = torch.rand(n, seq_len, generator=gen)
    half = seq_len // 2
    first = torch.randint(0, half, (n,), generator=gen)
    second = torch.randint(half, seq_len, (n,), generator=gen)
    markers = torch.zeros(n, seq_len)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    y = (values[rows, first] + values[rows, second]).unsqueeze(1)
    return torch.stack([values, markers], dim=-1), y


def adding_accuracy(output: Tensor, target: Tensor) -> Tensor:
    """Fraction of adding-problem predictions within 0.04 of the target."""
    return ((output - target).abs() < 0.04).float().mean()


def copy_task(
    n: int = 1000, delay: int = 50, copy_len: int = 10, num_symbols: int = 8, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """The copy memory task (Arjovsky, Shah & Bengio, 2016): recall a sequence after a delay.

    Symbols ``0..K-1`` (``K = num_symbols``), blank ``K``, go marker ``K+1``. The input, of
    ``T = copy_len + delay + copy_len`` steps one-hot ``(n, T, K+2)``, shows ``copy_len`` random
    symbols, blanks, the go marker at step ``copy_len + delay - 1``, then blanks. The labels
    ``y (n, T)`` are blank except the last ``copy_len`` steps, which repeat the symbols: train
    with ``loss="cross_entropy"`` over ``K + 1`` classes. The memoryless baseline (blank, then
    uniform guesses) has loss ``copy_len * ln(K) / T``.
    """
    _check_positive(n=n, delay=delay, copy_len=copy_len, num_symbols=num_symbols)
    gen = _generator(seed)
    total = 2 * copy_len + delay
    blank, go = num_symbols, num_symbols + 1
    data = torch.randint(0, num_symbols, (n, copy_len), generator=gen)
    tokens = torch.full((n, total), blank)
    tokens[:, :copy_len] = data
    tokens[:, copy_len + delay - 1] = go
    y = torch.full((n, total), blank)
    y[:, -copy_len:] = data
    x = torch.nn.functional.one_hot(tokens, num_symbols + 2).float()
    return x, y


def multi_sine(
    n: int = 1000,
    seq_len: int = 50,
    horizon: int = 1,
    components: int = 3,
    noise: float = 0.1,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Noisy multi-sine forecasting: predict the next ``horizon`` values of a sum of sines.

    Each series is ``s(t) = sum_k a_k sin(2 pi f_k t + phi_k) + noise * eps_t`` with ``a_k`` in
    [0.5, 1], ``f_k`` in [0.01, 0.15] cycles per step and Gaussian ``eps``. ``x (n, seq_len, 1)``
    holds ``s`` over the window and ``y (n, horizon)`` the following values (noisy as well).
    """
    _check_positive(n=n, seq_len=seq_len, horizon=horizon, components=components)
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    gen = _generator(seed)
    t = torch.arange(seq_len + horizon, dtype=torch.float32)
    amp = 0.5 + 0.5 * torch.rand(n, components, 1, generator=gen)
    freq = 0.01 + 0.14 * torch.rand(n, components, 1, generator=gen)
    phase = 2 * math.pi * torch.rand(n, components, 1, generator=gen)
    series = (amp * torch.sin(2 * math.pi * freq * t + phase)).sum(dim=1)
    series = series + noise * torch.randn(series.shape, generator=gen)
    return series[:, :seq_len, None], series[:, seq_len:]


def _class_frequencies(num_classes: int) -> Tensor:
    return torch.linspace(0.04, 0.22, num_classes)


def variable_length(
    n: int = 1000,
    min_len: int = 5,
    max_len: int = 50,
    num_classes: int = 3,
    noise: float = 0.3,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Variable-length sequence classification: which frequency does a noisy sine have?

    Class ``c`` is a sine of frequency ``f_c`` (evenly spaced in [0.04, 0.22] cycles per step)
    with a random phase, plus Gaussian noise. Lengths are uniform in ``[min_len, max_len]``;
    ``x (n, max_len, 1)`` is zero past each length. Returns ``(x, y, lengths)``, ``y`` int64.
    """
    _check_positive(n=n, num_classes=num_classes)
    gen = _generator(seed)
    lengths = _lengths(n, min_len, max_len, gen)
    y = torch.randint(0, num_classes, (n,), generator=gen)
    t = torch.arange(max_len, dtype=torch.float32)
    phase = 2 * math.pi * torch.rand(n, 1, generator=gen)
    freq = _class_frequencies(num_classes)[y][:, None]
    x = torch.sin(2 * math.pi * freq * t + phase) + noise * torch.randn(n, max_len, generator=gen)
    x = x * _pad_mask(lengths, max_len)
    return x.unsqueeze(-1), y, lengths


def irregular_series(
    n: int = 1000,
    min_len: int = 10,
    max_len: int = 50,
    features: int = 3,
    num_classes: int = 2,
    missing: float = 0.3,
    seed: int = 0,
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Irregularly sampled multivariate series with missing values and time gaps.

    Observation times are cumulative sums of exponential gaps (mean 1); each feature ``j`` is
    ``sin(2 pi f_c t + phi_j)`` for the sequence's class ``c`` (``f_c`` in [0.04, 0.22]) plus
    noise, and each value is missing with probability ``missing``. ``x`` is a dict:
    ``values (n, T, F)`` (0 where missing or padded), ``observed (n, T, F)`` (1.0 where a value
    was seen), ``times (n, T)`` and ``gaps (n, T)`` (time since the previous observation, 0 at
    the first). Returns ``(x, y, lengths)``.
    """
    _check_positive(n=n, features=features, num_classes=num_classes)
    if not 0 <= missing < 1:
        raise ValueError(f"missing must be in [0, 1), got {missing}")
    gen = _generator(seed)
    lengths = _lengths(n, min_len, max_len, gen)
    y = torch.randint(0, num_classes, (n,), generator=gen)
    gaps = -torch.log1p(-torch.rand(n, max_len, generator=gen))  # Exp(1)
    gaps[:, 0] = 0.0
    times = gaps.cumsum(dim=1)
    phase = 2 * math.pi * torch.rand(n, 1, features, generator=gen)
    freq = _class_frequencies(num_classes)[y][:, None, None]
    values = torch.sin(2 * math.pi * freq * times[..., None] + phase)
    values = values + 0.1 * torch.randn(values.shape, generator=gen)
    valid = _pad_mask(lengths, max_len)
    observed = (torch.rand(values.shape, generator=gen) >= missing) & valid[..., None]
    x = {
        "values": values * observed,
        "observed": observed.float(),
        "times": times * valid,
        "gaps": gaps * valid,
    }
    return x, y, lengths


def multimodal(
    n: int = 1000, fast_len: int = 60, rate: int = 4, seed: int = 0
) -> tuple[dict[str, Tensor], Tensor]:
    """Two modalities sampled at different rates; the label needs both.

    ``x["fast"] (n, fast_len, 2)``: a noisy ramp (channel 0) and noise; ``x["slow"]
    (n, fast_len // rate, 3)``: a noisy level (channel 0) and noise, one step per ``rate`` fast
    steps. ``y (n,)`` is 1 when exactly one of "the ramp rises" and "the level is positive" holds
    (an XOR: neither modality alone predicts it above chance).
    """
    _check_positive(n=n, fast_len=fast_len, rate=rate)
    if fast_len < rate:
        raise ValueError(f"fast_len ({fast_len}) must be >= rate ({rate})")
    gen = _generator(seed)
    slow_len = fast_len // rate
    rises = torch.rand(n, generator=gen) < 0.5
    positive = torch.rand(n, generator=gen) < 0.5
    slope = torch.where(rises, 1.0, -1.0)[:, None] * (0.5 + torch.rand(n, 1, generator=gen))
    ramp = slope * torch.linspace(-1, 1, fast_len)
    fast = torch.randn(n, fast_len, 2, generator=gen) * 0.3
    fast[..., 0] += ramp
    level = torch.where(positive, 1.0, -1.0)[:, None] * (0.3 + torch.rand(n, 1, generator=gen))
    slow = torch.randn(n, slow_len, 3, generator=gen) * 0.3
    slow[..., 0] += level
    return {"fast": fast, "slow": slow}, (rises ^ positive).long()


def heterogeneous(
    n: int = 1000, seq_len: int = 30, num_categories: int = 5, numeric: int = 2, seed: int = 0
) -> tuple[dict[str, Tensor], Tensor]:
    """Heterogeneous features: a categorical code and numeric values at every step.

    ``x["categorical"] (n, seq_len)`` int64 in ``[0, num_categories)`` and ``x["numeric"]
    (n, seq_len, numeric)``. Each category has a hidden weight ``w_c``;
    ``y = mean_t w[c_t] * numeric_t[0] + 0.05 eps``, shape ``(n, 1)``: the model has to embed the
    categories and combine them with the numbers.
    """
    _check_positive(n=n, seq_len=seq_len, num_categories=num_categories, numeric=numeric)
    gen = _generator(seed)
    weights = torch.randn(num_categories, generator=gen)
    categories = torch.randint(0, num_categories, (n, seq_len), generator=gen)
    values = torch.randn(n, seq_len, numeric, generator=gen)
    y = (weights[categories] * values[..., 0]).mean(dim=1, keepdim=True)
    y = y + 0.05 * torch.randn(n, 1, generator=gen)
    return {"categorical": categories, "numeric": values}, y


def multi_task(
    n: int = 1000, seq_len: int = 40, num_classes: int = 3, seed: int = 0
) -> tuple[Tensor, dict[str, Tensor]]:
    """One input, two targets: classify a sine's frequency and regress its offset.

    ``x (n, seq_len, 1) = sin(2 pi f_c t + phi) + b + 0.2 eps``; ``y["class"] (n,)`` is ``c``
    (int64) and ``y["offset"] (n, 1)`` is ``b`` uniform in [-1, 1].
    """
    _check_positive(n=n, seq_len=seq_len, num_classes=num_classes)
    gen = _generator(seed)
    c = torch.randint(0, num_classes, (n,), generator=gen)
    offset = 2 * torch.rand(n, 1, generator=gen) - 1
    phase = 2 * math.pi * torch.rand(n, 1, generator=gen)
    t = torch.arange(seq_len, dtype=torch.float32)
    x = torch.sin(2 * math.pi * _class_frequencies(num_classes)[c][:, None] * t + phase) + offset
    x = x + 0.2 * torch.randn(n, seq_len, generator=gen)
    return x.unsqueeze(-1), {"class": c, "offset": offset}


def long_tail(
    n: int = 1000,
    seq_len: int = 30,
    num_classes: int = 10,
    imbalance: float = 100.0,
    features: int = 4,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Classification with a long-tailed class distribution.

    Class ``c`` has about ``n_0 * imbalance^(-c / (C - 1))`` samples (exponential profile, as in
    Cui et al., 2019, "Class-balanced loss"), at least one each, so the most frequent class has
    ``imbalance`` times as many as the rarest. Each class has a random prototype sequence
    ``(seq_len, features)``; samples add Gaussian noise. Returns ``(x, y)`` in random order.
    """
    _check_positive(n=n, seq_len=seq_len, num_classes=num_classes, features=features)
    if imbalance < 1:
        raise ValueError(f"imbalance must be >= 1, got {imbalance}")
    if n < num_classes:
        raise ValueError(f"n ({n}) must be >= num_classes ({num_classes})")
    gen = _generator(seed)
    profile = imbalance ** (-torch.arange(num_classes) / max(num_classes - 1, 1))
    counts = (profile / profile.sum() * n).floor().long().clamp(min=1)
    counts[0] += n - counts.sum()
    y = torch.repeat_interleave(torch.arange(num_classes), counts)
    y = y[torch.randperm(n, generator=gen)]
    prototypes = torch.randn(num_classes, seq_len, features, generator=gen)
    x = prototypes[y] + 0.8 * torch.randn(n, seq_len, features, generator=gen)
    return x, y


def windows(series: Tensor, input_len: int, horizon: int = 1) -> tuple[Tensor, Tensor]:
    """Sliding forecasting windows of a series ``(T,)`` or ``(T, F)``.

    Returns ``x (N, input_len, F)`` and ``y (N, horizon)`` (the next values of feature 0) for
    every start ``i`` with ``i + input_len + horizon <= T``, so ``N = T - input_len - horizon + 1``.
    """
    _check_positive(input_len=input_len, horizon=horizon)
    if not isinstance(series, Tensor) or series.dim() not in (1, 2):
        got = tuple(series.shape) if isinstance(series, Tensor) else type(series).__name__
        raise ValueError(f"series must be a tensor of shape (T,) or (T, F), got {got}")
    data = series[:, None] if series.dim() == 1 else series
    count = data.shape[0] - input_len - horizon + 1
    if count < 1:
        raise ValueError(
            f"a series of {data.shape[0]} steps is too short for windows of {input_len} inputs "
            f"and {horizon} targets"
        )
    x = data.unfold(0, input_len, 1)[:count].transpose(1, 2)
    y = data[input_len:, 0].unfold(0, horizon, 1)[:count]
    return x.contiguous(), y.contiguous()
