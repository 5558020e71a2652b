"""Variable-length epoch: naive padding vs packing vs length bucketing on the lengths= fast path.

One epoch of forward+backward of a one-layer LSTM over ``n`` sequences with lognormal lengths,
four ways:

* ``naive``: random batches padded to their longest member, ``torch.nn.LSTM`` without lengths
  (the common mistake: padded steps run through the LSTM and into the final state);
* ``packed``: the same random batches through ``pack_padded_sequence`` and ``torch.nn.LSTM``
  (the reference for correctness);
* ``random + lengths=``: the same random batches through ``rnnkit.LSTM(x, lengths=...)``;
* ``bucketed``: ``rnnkit.BucketBatchSampler`` batches through ``rnnkit.LSTM(x, lengths=...)``.

For each: time per epoch (median of repeats), the useful-step fraction of its batching
(``rnnkit.padding_stats``), and the largest difference from the packed run of any sequence's
outputs (at its real steps) and final state ``h_n``. Target: bucketed >= 3x faster than packed
with the same outputs (<= 1e-5).

``python benchmarks/varlen.py [quick|cpu|gpu]`` (default: gpu with CUDA, else cpu).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from benchmarks.common import markdown_table, row, time_ms, write_json

SIZES = {
    "gpu": {"n": 512, "median": 120, "max_len": 1000, "input": 128, "hidden": 256, "batch": 64},
    "cpu": {"n": 128, "median": 24, "max_len": 160, "input": 16, "hidden": 32, "batch": 16},
    "quick": {"n": 16, "median": 6, "max_len": 20, "input": 4, "hidden": 8, "batch": 4},
}
REPEATS = {"gpu": (5, 2), "cpu": (3, 1), "quick": (1, 1)}  # (repeat, warmup) epochs
SIGMA = 0.8  # lognormal spread of the lengths


def make_lengths(n: int, median: int, max_len: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(math.log(median), SIGMA, size=n)
    return np.clip(np.round(raw), 1, max_len).astype(np.int64)


def _batches_of(sequences, index_batches, device):
    out = []
    for index in index_batches:
        data, lengths, _ = rnnkit.pad([sequences[i] for i in index]).to(device)
        out.append((list(index), data, lengths))
    return out


def _epoch(step, batches, params):
    def run_epoch():
        for _, x, lengths in batches:
            out, h_n = step(x, lengths)
            (out.sum() + h_n.sum()).backward()
        for p in params:
            p.grad = None

    return run_epoch


def _per_sequence(step, batches, count):
    """Each sequence's outputs at its real steps and its final h, by data set index."""
    outputs, states = [None] * count, [None] * count
    with torch.no_grad():
        for index, x, lengths in batches:
            out, h_n = step(x, lengths)
            for row_, i in enumerate(index):
                outputs[i] = out[row_, : int(lengths[row_])]
                states[i] = h_n[row_]
    return outputs, states


def _max_diff(a, b):
    return max(float((x - y).abs().max()) if x.numel() else 0.0 for x, y in zip(a, b, strict=True))


def run(quick: bool = False, size: str | None = None) -> list[dict]:
    size = size or ("quick" if quick else "gpu" if torch.cuda.is_available() else "cpu")
    cfg = SIZES[size]
    repeat, warmup = REPEATS[size]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    lengths = make_lengths(cfg["n"], cfg["median"], cfg["max_len"])
    sequences = [torch.randn(int(n), cfg["input"]) for n in lengths]

    reference = torch.nn.LSTM(cfg["input"], cfg["hidden"], batch_first=True).to(device)
    layer = rnnkit.LSTM(cfg["input"], cfg["hidden"], batch_first=True).to(device)
    layer.load_state_dict(reference.state_dict())

    def naive(x, lengths):
        out, (h_n, _) = reference(x)
        return out, h_n[-1]

    def packed(x, lengths):
        seqs = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, (h_n, _) = reference(seqs)
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0], h_n[-1]

    def with_lengths(x, lengths):
        out, (h_n, _) = layer(x, lengths=lengths)
        return out, h_n[-1]

    random_index = torch.randperm(cfg["n"], generator=torch.Generator().manual_seed(0))
    random_batches = [b.tolist() for b in random_index.split(cfg["batch"])]
    bucketed_batches = list(rnnkit.BucketBatchSampler(lengths, cfg["batch"], seed=0))
    methods = {
        "naive": (naive, random_batches, reference),
        "packed": (packed, random_batches, reference),
        "random + lengths=": (with_lengths, random_batches, layer),
        "bucketed": (with_lengths, bucketed_batches, layer),
    }
    results = {}
    for name, (step, index_batches, module) in methods.items():
        batches = _batches_of(sequences, index_batches, device)
        params = list(module.parameters())
        ms = time_ms(_epoch(step, batches, params), repeat=repeat, warmup=warmup)
        results[name] = {
            "ms": ms,
            "useful_fraction": rnnkit.padding_stats(lengths, index_batches).useful_fraction,
            "per_sequence": _per_sequence(step, batches, cfg["n"]),
        }
    ref_out, ref_state = results["packed"]["per_sequence"]
    for result in results.values():
        outs, states = result.pop("per_sequence")
        result["max_output_diff"] = _max_diff(outs, ref_out)
        result["max_state_diff"] = _max_diff(states, ref_state)

    def compare(case, mine, baseline, target):
        m, b = results[mine], results[baseline]
        return row(
            "varlen",
            f"{case} [{size}]",
            m["ms"],
            f"{baseline} (torch.nn.LSTM, random batches)",
            b["ms"],
            target,
            useful_fraction=round(m["useful_fraction"], 4),
            baseline_useful_fraction=round(b["useful_fraction"], 4),
            max_output_diff=m["max_output_diff"],
            max_state_diff=m["max_state_diff"],
            baseline_max_output_diff=b["max_output_diff"],
            baseline_max_state_diff=b["max_state_diff"],
            **cfg,
        )

    return [
        compare("bucketed, rnnkit.LSTM lengths=", "bucketed", "packed", ">= 3x faster, <= 1e-5"),
        compare("bucketed, rnnkit.LSTM lengths=", "bucketed", "naive", "faster, and h_n right"),
        compare("random batches, rnnkit.LSTM lengths=", "random + lengths=", "packed", "info"),
    ]


def methods_table(rows: list[dict]) -> str:
    """Per-method view of the rows: time per epoch, useful fraction, differences from packed."""
    seen = {}
    for r in rows:
        seen.setdefault(
            r["case"],
            (r["rnnkit_ms"], r["useful_fraction"], r["max_output_diff"], r["max_state_diff"]),
        )
        seen.setdefault(
            r["baseline"],
            (
                r["baseline_ms"],
                r["baseline_useful_fraction"],
                r["baseline_max_output_diff"],
                r["baseline_max_state_diff"],
            ),
        )
    lines = [
        "| method | ms / epoch | useful fraction | max output diff | max h_n diff |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, (ms, useful, out_diff, state_diff) in seen.items():
        lines.append(f"| {name} | {ms:.1f} | {useful:.3f} | {out_diff:.2e} | {state_diff:.2e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    rows = run(size=sys.argv[1] if len(sys.argv) > 1 else None)
    print(markdown_table(rows))
    print()
    print(methods_table(rows))
    write_json(rows, "benchmarks/results/varlen.json")
