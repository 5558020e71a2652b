"""Variable-length epoch: ``lengths=`` against a naive padded call on the same batches, and
length bucketing against packing.

One epoch of forward+backward over ``n`` sequences with lognormal lengths. The methods:

* ``naive``: each batch padded to its longest member, ``torch.nn`` without lengths (the common
  mistake: padded steps run through the layer and into the final state). The floor of any exact
  method on the same batches: one padded kernel call.
* ``packed``: ``pack_padded_sequence`` through ``torch.nn`` (the reference for correctness).
* ``lengths=``: ``rnnkit.LSTM/GRU/RNN(x, lengths=...)``, exact (zeros past each end, ``h_n`` at
  each own end).

Rows, each a ratio measured in one run with both sides alternated (:func:`time_pair`):

* ``lengths=`` vs ``naive`` on the SAME bucketed batches (``rnnkit.BucketBatchSampler``), for the
  LSTM, the GRU (one and two layers) and the tanh RNN: what exactness costs over one padded
  call. Target for the GRU and RNN: <= 1.2x. The LSTM has to return ``c_n`` at each own end,
  which no padded call gives: it runs in segments cut at the distinct lengths (reported).
* bucketed ``lengths=`` vs ``packed`` on random batches, LSTM: bucketing plus the fused path
  against packing. Target: >= 3x faster, same outputs (<= 1e-5).
* random batches with ``lengths=`` vs ``packed`` on the same random batches (information).

Each row also gives the useful-step fraction of its batching (``rnnkit.padding_stats``) and the
largest difference from the packed run of any sequence's outputs (at its real steps) and final
state ``h_n``.

``python benchmarks/varlen.py [quick|cpu|gpu]`` (default: gpu with CUDA, else cpu).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from benchmarks.common import markdown_table, row, time_pair, write_json

SIZES = {
    "gpu": {"n": 512, "median": 120, "max_len": 1000, "input": 128, "hidden": 256, "batch": 64},
    "cpu": {"n": 128, "median": 24, "max_len": 160, "input": 16, "hidden": 32, "batch": 16},
    "quick": {"n": 16, "median": 6, "max_len": 20, "input": 4, "hidden": 8, "batch": 4},
}
REPEATS = {"gpu": (9, 2), "cpu": (9, 1), "quick": (1, 0)}  # (repeat, warmup) epochs per side
SIGMA = 0.8  # lognormal spread of the lengths
# (kind, num_layers) compared with the naive padded call on the same bucketed batches
SAME_BATCHES = [("LSTM", 1), ("GRU", 1), ("GRU", 2), ("RNN", 1)]
TARGETS = {"LSTM": "report (c_n at own ends: segments)", "GRU": "<= 1.2x", "RNN": "<= 1.2x"}


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


def _last_h(state):
    return (state[0] if isinstance(state, tuple) else state)[-1]


def _methods(kind: str, num_layers: int, cfg: dict, device) -> tuple[dict, list]:
    """The three methods for one layer kind, sharing one set of weights."""
    reference = getattr(torch.nn, kind)(
        cfg["input"], cfg["hidden"], num_layers, batch_first=True
    ).to(device)
    layer = getattr(rnnkit, kind)(cfg["input"], cfg["hidden"], num_layers, batch_first=True)
    layer = layer.to(device)
    layer.load_state_dict(reference.state_dict())

    def naive(x, lengths):
        out, state = reference(x)
        return out, _last_h(state)

    def packed(x, lengths):
        seqs = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, state = reference(seqs)
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0], _last_h(
            state
        )

    def with_lengths(x, lengths):
        out, state = layer(x, lengths=lengths)
        return out, _last_h(state)

    methods = {"naive": naive, "packed": packed, "lengths=": with_lengths}
    return methods, [list(reference.parameters()), list(layer.parameters())]


def run(quick: bool = False, size: str | None = None) -> list[dict]:
    size = size or ("quick" if quick else "gpu" if torch.cuda.is_available() else "cpu")
    cfg = SIZES[size]
    repeat, warmup = REPEATS[size]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    lengths = make_lengths(cfg["n"], cfg["median"], cfg["max_len"])
    sequences = [torch.randn(int(n), cfg["input"]) for n in lengths]
    random_index = torch.randperm(cfg["n"], generator=torch.Generator().manual_seed(0))
    index_batches = {
        "random": [b.tolist() for b in random_index.split(cfg["batch"])],
        "bucketed": list(rnnkit.BucketBatchSampler(lengths, cfg["batch"], seed=0)),
    }
    batches = {name: _batches_of(sequences, ib, device) for name, ib in index_batches.items()}
    useful = {
        name: rnnkit.padding_stats(lengths, ib).useful_fraction
        for name, ib in index_batches.items()
    }

    def compare(case, kind, num_layers, mine, baseline, target):
        """``mine`` and ``baseline`` are (method, batching); a row with their ratio."""
        methods, params = _methods(kind, num_layers, cfg, device)
        params = params[0] + params[1]
        steps = {key: methods[key[0]] for key in (mine, baseline)}
        ms_mine, ms_base = time_pair(
            _epoch(steps[mine], batches[mine[1]], params),
            _epoch(steps[baseline], batches[baseline[1]], params),
            repeat=repeat,
            warmup=warmup,
        )
        ref_out, ref_state = _per_sequence(methods["packed"], batches["random"], cfg["n"])
        diffs = {}
        for key in (mine, baseline):
            outs, states = _per_sequence(steps[key], batches[key[1]], cfg["n"])
            diffs[key] = (_max_diff(outs, ref_out), _max_diff(states, ref_state))
        layers = f"{num_layers} layers" if num_layers > 1 else "1 layer"
        return row(
            "varlen",
            f"{case}, {kind} {layers} [{size}]",
            ms_mine,
            f"{baseline[0]} (torch.nn.{kind}, {baseline[1]} batches)",
            ms_base,
            target,
            useful_fraction=round(useful[mine[1]], 4),
            baseline_useful_fraction=round(useful[baseline[1]], 4),
            max_output_diff=diffs[mine][0],
            max_state_diff=diffs[mine][1],
            baseline_max_output_diff=diffs[baseline][0],
            baseline_max_state_diff=diffs[baseline][1],
            **cfg,
        )

    rows = [
        compare(
            "bucketed lengths= vs naive padded, same batches",
            kind,
            num_layers,
            ("lengths=", "bucketed"),
            ("naive", "bucketed"),
            TARGETS[kind],
        )
        for kind, num_layers in SAME_BATCHES
    ]
    rows.append(
        compare(
            "bucketed lengths= vs packed random batches",
            "LSTM",
            1,
            ("lengths=", "bucketed"),
            ("packed", "random"),
            ">= 3x faster, <= 1e-5",
        )
    )
    rows.append(
        compare(
            "random batches lengths= vs packed",
            "LSTM",
            1,
            ("lengths=", "random"),
            ("packed", "random"),
            "info",
        )
    )
    return rows


if __name__ == "__main__":
    rows = run(size=sys.argv[1] if len(sys.argv) > 1 else None)
    print(markdown_table(rows))
    write_json(rows, "benchmarks/results/varlen.json")
