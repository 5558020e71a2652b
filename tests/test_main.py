import subprocess
import sys
from pathlib import Path

import pytest

from rnnkit.__main__ import main
from rnnkit.info import format_environment

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_compare_prints_a_table_and_saves_a_plot(tmp_path, capsys):
    plot = tmp_path / "curves.png"
    args = ["compare", "--task", "adding", "--seq-len", "8", "--cells", "rnn,gru", "--steps", "3"]
    assert main([*args, "--hidden", "4", "--batch-size", "8", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "| cell | params | final loss | accuracy | time (s) |" in out
    rows = [line for line in out.splitlines() if line.startswith(("| rnn ", "| gru "))]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2]) > 0 and 0 <= float(cells[3]) <= 1
    assert "| rnn | 37 |" in out  # RNN(2 -> 4): 4*2 + 4*4 + 4 + 4 = 32, head Linear(4, 1): 5
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_tasks_without_accuracy(capsys):
    main(
        [
            "compare",
            "--task",
            "sine",
            "--seq-len",
            "6",
            "--cells",
            "lstm",
            "--steps",
            "2",
            "--hidden",
            "4",
            "--batch-size",
            "8",
        ]
    )
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| lstm"))
    assert row.split("|")[4].strip() == "-"


@pytest.mark.parametrize("task", ["copy", "varlen"])
def test_compare_classification_tasks(task, capsys):
    main(
        [
            "compare",
            "--task",
            task,
            "--seq-len",
            "6",
            "--cells",
            "gru",
            "--steps",
            "2",
            "--hidden",
            "4",
            "--batch-size",
            "8",
        ]
    )
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| gru"))
    assert 0 <= float(row.split("|")[4]) <= 1


def test_info_prints_the_environment(capsys):
    assert main(["info"]) == 0
    assert capsys.readouterr().out.strip() == format_environment()


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
