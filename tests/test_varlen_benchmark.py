"""The variable-length benchmark runs and its methods agree where they should."""

from benchmarks import varlen


def test_varlen_quick_runs_and_agrees_with_packing(one_thread):
    rows = varlen.run(quick=True)
    same_batches = rows[: len(varlen.SAME_BATCHES)]
    assert [r["baseline"].split()[0] for r in rows] == ["naive"] * len(same_batches) + [
        "packed",
        "packed",
    ]
    for r in rows:
        assert r["rnnkit_ms"] > 0 and r["baseline_ms"] > 0
        assert r["max_output_diff"] <= 1e-5 and r["max_state_diff"] <= 1e-5
    for r in same_batches:  # like with like: the same batches on both sides
        assert "bucketed batches" in r["baseline"]
        assert r["useful_fraction"] == r["baseline_useful_fraction"]
        assert r["baseline_max_state_diff"] > 1e-2  # naive h_n includes padding
    packed = rows[len(same_batches)]
    assert packed["useful_fraction"] > packed["baseline_useful_fraction"]
    assert packed["baseline_max_state_diff"] == 0.0  # packed against itself
