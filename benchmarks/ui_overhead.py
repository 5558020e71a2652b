"""UI overhead: a training run driven by a live TrainingPanel against the same run with the
bare Trainer (no panel), same model, data and DataLoader.

Cases: the panel's blocking mode (``panel.fit(block=True)``, training in the calling thread) and
its Start button (``panel.start()`` then ``panel.wait()``, training in a background thread).
Either way the panel's watcher thread updates status and progress ten times a second, redraws
the live chart while all drawing of the run stays within 3% of its wall time, and draws the
final chart and summary when the run ends (a fixed cost of a few tens of milliseconds, so the
runs last seconds, as runs worth watching do).

How it is measured, so that a busy shared machine does not decide the answer: three trainers
over identically initialised models run in rounds (one warm-up round, then ``REPEAT``), and
within a round the three runs take turns at going first, second and third. Each round gives a
ratio (panel run / bare run of the same round); a row reports the median of those ratios and
their range (``ratio_median``, ``ratio_spread``; the ``ratio`` column is the ratio of the
median times). ``same_losses`` checks that the panel leaves the training unchanged, and
``watcher_cpu_fraction`` is the CPU time of the panel's thread over the run's wall time, and
``cpu_ratio_median`` the per-round ratio of the whole process's CPU time: the panel's cost in
figures that the load of a shared machine moves far less than wall times. Target <= 1.05x.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import rnnkit
from benchmarks.common import markdown_table, row, write_json
from rnnkit.widgets import TrainingPanel

REPEAT = 9  # rounds of the three runs, after one warm-up round


def _trainer(input_size: int, hidden: int, device: torch.device) -> rnnkit.Trainer:
    torch.manual_seed(0)
    model = rnnkit.SequenceModel(input_size, hidden, 1, cell="lstm").to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return rnnkit.Trainer(model, optimizer, "mse", device=device, grad_clip=1.0)


def _case(
    name: str, epochs: int, batches: int, batch: int, seq_len: int, hidden: int, repeat: int
) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x, y = rnnkit.tasks.multi_sine(batches * batch, seq_len, horizon=1, seed=0)
    x = x.expand(-1, -1, 8).contiguous()
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)
    bare = _trainer(8, hidden, device)
    blocking = TrainingPanel(_trainer(8, hidden, device), loader, epochs=epochs)
    background = TrainingPanel(_trainer(8, hidden, device), loader, epochs=epochs)

    def start_and_wait() -> None:
        background.start()
        background.wait()

    runs = {
        "bare": lambda: bare.fit(loader, epochs=epochs),
        "block": lambda: blocking.fit(block=True),
        "background": start_and_wait,
    }
    panels = {"block": blocking, "background": background}
    timings: dict[str, list[float]] = {label: [] for label in runs}
    cpu: dict[str, list[float]] = {label: [] for label in runs}  # CPU seconds of the process
    watcher: dict[str, list[float]] = {label: [] for label in panels}
    order = list(runs)
    for i in range(repeat + 1):  # round 0 warms up all three
        for label in order[i % 3 :] + order[: i % 3]:  # each run first, second, third in turn
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            runs[label]()
            sync()
            seconds = time.perf_counter() - start
            if i:
                timings[label].append(seconds * 1e3)
                cpu[label].append(time.process_time() - start_cpu)
                if label in panels:
                    watcher[label].append(panels[label].watcher_cpu / seconds)
    losses = [t.history.step_values("loss") for t in (bare, blocking.trainer, background.trainer)]
    cases = (
        ("panel.fit(block=True)", "block", blocking),
        ("Start button", "background", background),
    )
    rows = []
    for title, label, panel in cases:
        ratios = [p / b for p, b in zip(timings[label], timings["bare"], strict=True)]
        cpu_ratios = [p / b for p, b in zip(cpu[label], cpu["bare"], strict=True)]
        rows.append(
            row(
                "ui_overhead",
                f"{name}, {title}",
                statistics.median(timings[label]),
                "Trainer without panel",
                statistics.median(timings["bare"]),
                "<= 1.05x",
                device=str(device),
                steps=epochs * batches,
                rounds=repeat,
                round_ratios=[round(r, 4) for r in ratios],
                ratio_median=round(statistics.median(ratios), 4),
                ratio_spread=[round(min(ratios), 4), round(max(ratios), 4)],
                cpu_ratio_median=round(statistics.median(cpu_ratios), 4),
                redraws_per_run=round(panel.redraws / (repeat + 1), 1),
                watcher_cpu_fraction=round(statistics.median(watcher[label]), 4),
                same_losses=losses[0] == losses[1] == losses[2],
            )
        )
    return rows


def run(quick: bool = False) -> list[dict]:
    if quick:
        return _case("LSTM T=10 B=8 H=16, 3 steps", 1, 3, 8, 10, 16, repeat=1)
    return [
        *_case("LSTM T=50 B=32 H=64, 4 epochs of 100 steps", 4, 100, 32, 50, 64, repeat=REPEAT),
        *_case("LSTM T=100 B=64 H=256, 2 epochs of 20 steps", 2, 20, 64, 100, 256, repeat=REPEAT),
    ]


def spread_table(rows: list[dict]) -> str:
    """Per case: the median of the per-round ratios and their range."""
    lines = [
        "| case | ratio, median of rounds | min - max | rounds | process CPU ratio "
        "| watcher CPU / wall |"
    ]
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        low, high = r["ratio_spread"]
        lines.append(
            f"| {r['case']} | {r['ratio_median']:.3f}x | {low:.3f}x - {high:.3f}x | "
            f"{r['rounds']} | {r['cpu_ratio_median']:.3f}x | {r['watcher_cpu_fraction']:.1%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if "--threads" in sys.argv:
        torch.set_num_threads(int(sys.argv[sys.argv.index("--threads") + 1]))
    rows = run()
    print(markdown_table(rows))
    print()
    print(spread_table(rows))
    write_json(rows, "benchmarks/results/ui_overhead.json")
