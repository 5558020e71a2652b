import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnkit
from rnnkit.__main__ import main, parser
from rnnkit.compare import TASKS, baseline_loss, compare_cells
from rnnkit.info import format_environment

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--seq-len", "6", "--steps", "2", "--hidden", "4", "--batch-size", "8"]


def _table(out: str) -> dict[str, list[str]]:
    """Rows of the printed text table by their first cell."""
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] in ("rnn", "lstm", "gru", "baseline", "cell"):
            rows[cells[0]] = cells
    return rows


@pytest.mark.slow
def test_compare_prints_a_table_and_saves_a_plot(tmp_path, capsys, one_thread):
    plot = tmp_path / "curves.png"
    args = ["compare", "--task", "adding", "--seq-len", "8", "--cells", "rnn,gru", "--steps", "3"]
    assert main([*args, "--hidden", "4", "--batch-size", "8", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    assert " ".join(rows["cell"]) == "cell params held-out loss within 0.04 time (s)"
    assert rows["rnn"][1] == "37"  # RNN(2 -> 4): 4*2 + 4*4 + 4 + 4 = 32, head Linear(4, 1): 5
    for cell in ("rnn", "gru"):
        assert float(rows[cell][2]) > 0 and 0 <= float(rows[cell][3]) <= 1
    assert rows["baseline"][1:] == ["-", rows["baseline"][2], "-", "-"]
    assert "within 0.04: share of predictions within 0.04 of the target" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_task_without_a_metric_has_no_metric_column(capsys, one_thread):
    main(["compare", "--task", "sine", "--cells", "lstm", *TINY])
    rows = _table(capsys.readouterr().out)
    assert " ".join(rows["cell"]) == "cell params held-out loss time (s)"
    assert len(rows["lstm"]) == 4 and "accuracy" not in " ".join(rows["cell"])


@pytest.mark.parametrize(("task", "column"), [("copy", "recalled"), ("varlen", "accuracy")])
def test_compare_classification_tasks(task, column, capsys, one_thread):
    main(["compare", "--task", task, "--cells", "gru", *TINY])
    rows = _table(capsys.readouterr().out)
    assert rows["cell"][4] == column
    assert 0 <= float(rows["gru"][4]) <= 1


def test_compare_cells_is_the_cli_and_shows_rich_tables(one_thread):
    comparison = compare_cells(["rnn"], "adding", seq_len=6, steps=2, hidden=4, batch_size=8)
    assert rnnkit.compare_cells is compare_cells
    assert [r.cell for r in comparison.results] == ["rnn"]
    result = comparison.results[0]
    assert len(result.curve) == 2 and result.params == 37 and 0 <= result.metric <= 1
    markdown = comparison._repr_markdown_()
    assert "| cell | params | held-out loss | within 0.04 | time (s) |" in markdown
    assert f"| baseline | - | {comparison.baseline:.4f} | - | - |" in markdown
    page = comparison._repr_html_()
    assert page.count("<tr>") == 3 and "<th style='text-align:left'>cell</th>" in page
    assert str(comparison).splitlines()[0] == comparison.title


def test_the_baseline_is_the_best_input_free_prediction():
    train_y = torch.tensor([[1.0], [3.0]])  # mean 2
    assert baseline_loss(TASKS["adding"], train_y, torch.tensor([[2.0], [4.0]])) == 2.0
    # copy: per step class frequencies; blanks certain, 8 symbols uniform -> copy_len ln 8 / T
    _, y = TASKS["copy"].make(4000, 30, 0)
    expected = 10 * torch.log(torch.tensor(8.0)) / y.shape[1]
    assert baseline_loss(TASKS["copy"], y, y) == pytest.approx(float(expected), rel=0.01)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "chess"}, "task must be one of adding, copy, sine, varlen, got 'chess'"),
        ({"cells": []}, "cells must be a non-empty list"),
        ({"steps": 0}, "steps must be an int >= 1, got 0"),
        ({"lr": -1.0}, "lr and grad_clip must be > 0"),
    ],
)
def test_compare_cells_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compare_cells(**kwargs)


def test_info_prints_the_environment(capsys):
    assert main(["info"]) == 0
    assert capsys.readouterr().out.strip() == format_environment()


def test_help_lists_every_option_with_its_default_and_no_markup():
    top = parser().format_help()
    assert "``" not in top and "compare" in top and "info" in top
    compare = parser()._subparsers._group_actions[0].choices["compare"]
    text = compare.format_help()
    assert "``" not in text
    for action in compare._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{action.option_strings} has no help"
        assert "(default: " in action.help, f"{action.option_strings} states no default"
    for option, default in [("--seq-len", "40"), ("--steps", "800"), ("--cells", "rnn,lstm,gru")]:
        assert f"(default: {default})" in " ".join(text.split()), option


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["compare", "--cells", "rnn,transformer"], "comma-separated list of rnn, lstm, gru"),
        (["compare", "--steps", "0"], "expected an int >= 1"),
        (["compare", "--task", "chess"], "invalid choice: 'chess'"),
        (["compare", "--lr", "-1"], "expected a number > 0"),
        ([], "the following arguments are required: command"),
    ],
)
def test_bad_arguments(argv, match, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert match in capsys.readouterr().err


def test_grad_clip_off():
    assert parser().parse_args(["compare", "--grad-clip", "off"]).grad_clip is None


@pytest.mark.slow
def test_module_entry_point():
    done = subprocess.run(
        [sys.executable, "-m", "rnnkit", "info"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0 and done.stdout.startswith("rnnkit")
