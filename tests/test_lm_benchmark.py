"""benchmarks/lm.py runs (at toy sizes) and stays out of the quick suite."""

import json

import torch

from benchmarks import lm
from benchmarks.__main__ import discover


def test_lm_benchmark_is_on_demand_only():
    assert "lm" not in discover()
    assert {"generate", "lm_training"} <= set(discover())


def test_lm_benchmark_runs_and_reports_nats_per_char(tmp_path, one_thread):
    path = tmp_path / "lm.json"
    lm.main(
        [
            "--seconds",
            "0.5",
            "--hidden",
            "8",
            "--streams",
            "4",
            "--seq-len",
            "8",
            "--only",
            "lstm,torch",
            "--json",
            str(path),
        ]
    )
    data = json.loads(path.read_text())
    assert [r["model"].split()[0] for r in data["rows"]] == ["rnnkit", "torch.nn"]
    for row in data["rows"]:
        assert row["steps"] >= 1 and 0 < row["val_nats_per_char"] < 10
        assert abs(row["val_bits_per_char"] * 0.6931471805599453 - row["val_nats_per_char"]) < 1e-3
    assert 3.0 < data["meta"]["unigram_nats_per_char"] < 3.5


def test_the_transformer_is_causal_and_scored_once_per_character():
    torch.manual_seed(0)
    model = lm.CausalTransformer(11, 16, 2, 2, context=8)
    ids = torch.randint(11, (40,))
    logits = model(ids[None, :8])
    changed = ids.clone()
    changed[5] = (changed[5] + 1) % 11
    assert torch.allclose(model(changed[None, :8])[0, :5], logits[0, :5], atol=1e-6)
    # one window: the plain mean cross-entropy
    first = torch.nn.functional.cross_entropy(model(ids[None, :8])[0], ids[1:9])
    assert abs(lm.score_transformer(model, ids[:9]) - float(first)) < 1e-6


def test_lr_schedule_warms_up_and_anneals():
    assert lm.lr_at(0.0, 100, 1.0) == 0.01
    assert lm.lr_at(2.0, 100, 1.0) == 1.0
    assert abs(lm.lr_at(100, 100, 1.0) - 0.05) < 1e-12
    assert lm.lr_at(50, 100, 1.0) < lm.lr_at(30, 100, 1.0)
