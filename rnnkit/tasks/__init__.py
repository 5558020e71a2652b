"""Task data: seeded synthetic problems (:mod:`rnnkit.tasks.synthetic`), real data sets that ship
with rnnkit or inside a PyPI package (:mod:`rnnkit.tasks.real`), and archive benchmarks read from
an installed package (:mod:`rnnkit.tasks.archive`). Nothing is downloaded.
"""

from rnnkit.tasks.archive import japanese_vowels
from rnnkit.tasks.real import shakespeare, sunspots
from rnnkit.tasks.synthetic import (
    adding_accuracy,
    adding_problem,
    copy_task,
    heterogeneous,
    irregular_series,
    long_tail,
    multi_sine,
    multi_task,
    multimodal,
    variable_length,
    windows,
)

__all__ = [
    "adding_accuracy",
    "adding_problem",
    "copy_task",
    "heterogeneous",
    "irregular_series",
    "japanese_vowels",
    "long_tail",
    "multi_sine",
    "multi_task",
    "multimodal",
    "shakespeare",
    "sunspots",
    "variable_length",
    "windows",
]
