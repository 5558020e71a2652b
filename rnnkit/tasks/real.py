"""Real data that ships with rnnkit or inside a PyPI package: nothing is downloaded.

* :func:`shakespeare` — the Tiny Shakespeare corpus (1,115,394 characters, 65 distinct), shipped
  gzipped in ``rnnkit/tasks/data/`` (source and licence in ``data/README.md`` there);
* :func:`sunspots` — yearly sunspot numbers, read from the CSV inside ``statsmodels``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

DATA = Path(__file__).resolve().parent / "data"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SPLITS = {"train": (0.0, 0.9), "val": (0.9, 0.95), "test": (0.95, 1.0)}


@cache
def _shakespeare_text() -> str:
    path = DATA / "tinyshakespeare.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"the Shakespeare corpus is missing from this install ({path})")
    raw = gzip.decompress(path.read_bytes())
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise ValueError(
            f"{path} is damaged: its text has sha256 {digest}, expected {SHAKESPEARE_SHA256}; "
            "reinstall rnnkit"
        )
    return raw.decode("utf-8")


def shakespeare(split: str = "train") -> str:
    """The Tiny Shakespeare corpus (Karpathy's char-rnn ``input.txt``), or one split of it.

    The text is split contiguously, 90% / 5% / 5%: ``"train"`` is the first 90% of the
    characters, ``"val"`` the next 5% and ``"test"`` the last 5%, so no validation or test
    character is in the training text (the cut may fall inside a line). ``"all"`` is the whole
    text. Source: ``data/tinyshakespeare/input.txt`` of the public repository karpathy/char-rnn
    (MIT licence); the text is Shakespeare's, in the public domain. Shipped with rnnkit (gzip),
    verified against its sha256 on first use.
    """
    text = _shakespeare_text()
    if split == "all":
        return text
    if split not in SPLITS:
        raise ValueError(f"split must be one of {[*SPLITS, 'all']}, got {split!r}")
    start, stop = SPLITS[split]
    return text[round(start * len(text)) : round(stop * len(text))]


def sunspots() -> tuple[Tensor, Tensor]:
    """Yearly mean sunspot numbers 1700-2008 (309 values): a small real series.

    Read from the CSV that ships inside the ``statsmodels`` package
    (``statsmodels/datasets/sunspots``; source: NOAA National Geophysical Data Center; public
    domain); statsmodels itself is not imported. Install it with ``pip install "rnnkit[data]"``.
    Returns ``(years, values)``, float32; use :func:`windows` to make forecasting pairs.
    """
    spec = importlib.util.find_spec("statsmodels")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "rnnkit.tasks.sunspots reads the sunspot series bundled with statsmodels, which is "
            'not installed; install it with pip install "rnnkit[data]" (or pip install statsmodels)'
        )
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "sunspots" / "sunspots.csv"
    if not path.is_file():
        raise ImportError(f"this statsmodels has no bundled sunspots data ({path} is missing)")
    with path.open(newline="") as file:
        rows = [(float(year), float(value)) for year, value in list(csv.reader(file))[1:]]
    data = torch.tensor(rows, dtype=torch.float32)
    return data[:, 0], data[:, 1]
