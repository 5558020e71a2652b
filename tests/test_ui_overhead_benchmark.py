"""The UI-overhead benchmark runs, and the panel leaves the training itself unchanged."""

import pytest

from benchmarks import ui_overhead


@pytest.mark.slow
def test_ui_overhead_quick(one_thread):
    rows = ui_overhead.run(quick=True)
    assert [r["case"].rsplit(", ", 1)[1] for r in rows] == ["panel.fit(block=True)", "Start button"]
    for r in rows:
        assert r["benchmark"] == "ui_overhead" and r["baseline"] == "Trainer without panel"
        assert r["rnnkit_ms"] > 0 and r["baseline_ms"] > 0 and r["steps"] == 3
        assert r["redraws_per_run"] >= 1  # at least the final chart of each run
        assert r["same_losses"], "training with a panel gave other losses than without"
        assert 0 < r["watcher_cpu_fraction"] < 1
