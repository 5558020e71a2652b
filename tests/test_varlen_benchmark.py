"""The variable-length benchmark runs and its methods agree where they should."""

from benchmarks import varlen


def test_varlen_quick_runs_and_agrees_with_packing(one_thread):
    rows = varlen.run(quick=True)
    assert [r["baseline"].split()[0] for r in rows] == ["packed", "naive", "packed"]
    for r in rows:
        assert r["rnnkit_ms"] > 0 and r["baseline_ms"] > 0
        assert r["max_output_diff"] <= 1e-5 and r["max_state_diff"] <= 1e-5
    bucketed_vs_naive = rows[1]
    assert bucketed_vs_naive["useful_fraction"] > bucketed_vs_naive["baseline_useful_fraction"]
    assert bucketed_vs_naive["baseline_max_state_diff"] > 1e-2  # naive h_n includes padding
    assert rows[0]["baseline_max_state_diff"] == 0.0  # packed against itself
