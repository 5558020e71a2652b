"""Every ```python block of README.md runs, and prints what the README says it prints.

How it runs: the blocks run in README order, in this one process, each in a fresh namespace (so
each block must import and define what it uses: a reader copies one block, not the page), in an
empty temporary working folder, with one torch thread (the examples are small). No kernel: a
widget built at the end of a block is only constructed.

How a block states its result: a comment line ``# -> TEXT`` states a line the block prints. The
block's printed lines are searched, in order, for a line that says the same as TEXT: the same
words once numbers are set aside, and numbers that agree, where

* an integer (no ``.``, no exponent) must be equal,
* any other number must be within a factor of 2 of the stated one (same sign),

so ``# -> val_loss 0.0012 (predicting the mean: 0.1689)`` holds for a run that ends at 0.0009 or
0.002 and fails for one that learned nothing (0.16). Several ``# ->`` lines are matched in
order. A training example states its final loss this way; this test then fails when the example
stops learning (a changed default, a slower optimiser, a broken layer).
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
EXPECT = "# -> "


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, source)`` of every ```python fenced block."""
    blocks, source, start = [], None, 0
    for number, line in enumerate(text.splitlines(), start=1):
        if source is None and line.strip() == "```python":
            source, start = [], number + 1
        elif source is not None and line.strip() == "```":
            blocks.append((start, "\n".join(source) + "\n"))
            source = None
        elif source is not None:
            source.append(line)
    if source is not None:
        raise ValueError(f"README.md: the ```python block at line {start} is never closed")
    return blocks


def expected_lines(source: str) -> list[str]:
    return [
        line.strip()[len(EXPECT) :]
        for line in source.splitlines()
        if line.strip().startswith(EXPECT)
    ]


def _numbers_agree(stated: str, printed: str) -> bool:
    a, b = float(stated), float(printed)
    if not re.search(r"[.eE]", stated):
        return a == b
    if a == 0 or b == 0:
        return a == b
    return (a > 0) == (b > 0) and 0.5 <= b / a <= 2.0


def says_the_same(stated: str, printed: str) -> bool:
    """``printed`` has ``stated``'s words and numbers agreeing as the module doc defines."""
    if NUMBER.sub("#", stated).split() != NUMBER.sub("#", printed).split():
        return False
    pairs = zip(NUMBER.findall(stated), NUMBER.findall(printed), strict=True)
    return all(_numbers_agree(a, b) for a, b in pairs)


def check_output(expected: list[str], printed: list[str]) -> str | None:
    """None if every expected line is found, in order; else what is missing."""
    position = 0
    for line in expected:
        found = next(
            (i for i in range(position, len(printed)) if says_the_same(line, printed[i])), None
        )
        if found is None:
            return f"expected a printed line like {line!r}"
        position = found + 1
    return None


def test_the_convention_catches_a_run_that_did_not_learn():
    stated = ["val_loss 0.0012 (predicting the mean: 0.1689)"]
    assert check_output(stated, ["val_loss 0.0009 (predicting the mean: 0.1689)"]) is None
    assert (
        check_output(stated, ["epoch 5", "val_loss 0.0020 (predicting the mean: 0.1700)"]) is None
    )
    assert check_output(stated, ["val_loss 0.1612 (predicting the mean: 0.1689)"])
    assert check_output(stated, ["val_loss 0.0012 (predicting the median: 0.1689)"])
    assert check_output(["5 epochs"], ["6 epochs"]) and check_output(["x 1.0"], ["x -1.0"])
    assert check_output(["a 1", "b 2"], ["b 2", "a 1"])  # in order
    assert math.isclose(float(NUMBER.findall("loss 3e-4")[0]), 3e-4)


def test_the_readme_has_checked_training_examples():
    blocks = python_blocks(README.read_text())
    checked = [source for _, source in blocks if expected_lines(source)]
    assert any("rnnkit.fit(" in source for source in checked), "the Training example states no loss"


@pytest.mark.slow
def test_every_python_block_runs_and_prints_what_it_says(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(README.read_text())
    assert blocks, "README.md has no ```python block"
    for line, source in blocks:
        out = io.StringIO()
        namespace = {"__name__": "__readme__"}
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(source, f"README.md, block at line {line}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"README.md block at line {line} raised {exc!r}") from exc
        printed = [text.strip() for text in out.getvalue().splitlines()]
        problem = check_output(expected_lines(source), printed)
        assert problem is None, f"README.md block at line {line}: {problem}; it printed:\n" + (
            out.getvalue()
        )
