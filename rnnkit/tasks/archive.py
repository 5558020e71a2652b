"""Sequence-classification benchmarks of the UEA/UCR archive that ship inside a PyPI package.

* :func:`japanese_vowels` — UEA ``JapaneseVowels``: 9 speakers, 12 LPC cepstrum coefficients
  per step, lengths 7-29, the archive's own 270 train / 370 test split.

The archive's ``.ts`` files are read from the installed ``sktime`` package (where its wheel
puts them, ``sktime/datasets/data/``) by a small parser here: sktime itself is not imported
(its dataset module also holds the archive downloaders, and nothing may be downloaded). Install
the extra with ``pip install "rnnkit[benchmarks]"``.

A ``.ts`` file (the format of Bagnall et al.'s archive) is ``#`` comment lines, ``@`` header
lines (``@dimensions 12``, ``@equalLength false``, ``@classLabel true 1 2 ...``), then after
``@data`` one case per line: each dimension's values separated by commas, the dimensions by
colons, the class label last.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from rnnkit.padding import pad

EXTRA = "benchmarks"


def _sktime_data() -> Path:
    spec = importlib.util.find_spec("sktime")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "rnnkit.tasks.japanese_vowels reads the UEA archive files bundled with sktime, which "
            f'is not installed; install it with pip install "rnnkit[{EXTRA}]" '
            "(or pip install sktime)"
        )
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


def _parse_ts(path: Path) -> tuple[list[Tensor], list[str], dict[str, str]]:
    """Cases (each ``(length, dimensions)`` float32), their labels and the header of a .ts file."""
    header: dict[str, str] = {}
    cases: list[Tensor] = []
    labels: list[str] = []
    in_data = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if line.lower() == "@data":
                in_data = True
            elif line.startswith("@"):
                key, _, value = line[1:].partition(" ")
                header[key.lower()] = value.strip()
            continue
        *dimensions, label = line.split(":")
        try:
            rows = [[float(v) for v in d.split(",")] for d in dimensions]
        except ValueError as err:
            raise ValueError(f"{path}:{number}: a value is not a number ({err})") from None
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"{path}:{number}: the dimensions of one case differ in length")
        cases.append(torch.tensor(rows, dtype=torch.float32).T)
        labels.append(label.strip())
    if not in_data:
        raise ValueError(f"{path} has no @data line: not a .ts file of the archive")
    return cases, labels, header


@cache
def _archive_split(name: str, split: str) -> tuple[tuple[Tensor, ...], tuple[str, ...]]:
    path = _sktime_data() / name / f"{name}_{split.upper()}.ts"
    if not path.is_file():
        raise ImportError(f"this sktime has no bundled {name} data ({path} is missing)")
    cases, labels, header = _parse_ts(path)
    dimensions = int(header.get("dimensions", cases[0].shape[1]))
    if any(c.shape[1] != dimensions for c in cases):
        raise ValueError(f"{path}: a case does not have the {dimensions} dimensions of its header")
    return tuple(cases), tuple(labels)


def japanese_vowels(split: str = "train") -> tuple[Tensor, Tensor, Tensor]:
    """UEA JapaneseVowels: which of 9 speakers says the vowel /ae/, from 12 LPC coefficients.

    Each case is one utterance, analysed into 12 LPC cepstrum coefficients per frame; the
    utterances last 7 to 29 frames. ``"train"`` is the archive's 270 cases (30 per speaker),
    ``"test"`` its 370 (24 to 88 per speaker) — the split of the original study, Kudo, Toyama &
    Shimbo (1999), *Multidimensional curve classification using passing-through regions*,
    Pattern Recognition Letters 20, and of the UEA archive (Bagnall et al. 2018). Source: the UCI
    Machine Learning Repository's *Japanese Vowels* data set, as bundled (``.ts`` files) in the
    ``sktime`` wheel (BSD 3-clause); read here without importing sktime.

    Returns ``(x, y, lengths)``: ``x`` of shape ``(cases, longest, 12)`` float32 (the longest
    utterance has 26 frames in train, 29 in test), right-padded with zeros past each utterance's
    end (batch first, ready for ``layer(x, lengths=lengths)``);
    ``y`` the speaker, int64 in 0..8 (the file's labels 1..9 minus one); ``lengths`` int64.
    The values are as in the file: standardise them with statistics of the training split.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    cases, labels = _archive_split("JapaneseVowels", split)
    x, lengths, _ = pad(list(cases), batch_first=True)
    y = torch.tensor([int(label) - 1 for label in labels], dtype=torch.int64)
    return x, y, lengths
