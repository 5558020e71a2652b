"""Task data: seeded synthetic problems (:mod:`rnnkit.tasks.synthetic`), real data sets that ship
with rnnkit or inside a PyPI package (:mod:`rnnkit.tasks.real`), archive benchmarks read from
an installed package (:mod:`rnnkit.tasks.archive`), and a generated sequence-to-sequence task
(:mod:`rnnkit.tasks.seq2seq`). Nothing is downloaded.
"""

from rnnkit.tasks.archive import japanese_vowels
from rnnkit.tasks.real import shakespeare, sunspots
from rnnkit.tasks.seq2seq import spelled_digits
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
    "spelled_digits",
    "sunspots",
    "variable_length",
    "windows",
]
