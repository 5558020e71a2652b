"""Trainer overhead: one epoch with rnnkit.Trainer (progress bar, history, gradient clipping,
the non-finite guard that undoes a non-finite update, epoch sums) against a bare PyTorch loop
doing the same work (zero_grad, forward, loss, backward, clip_grad_norm_, step) on the same model,
data and DataLoader. The bare loop adds its losses on the device and reads the sum once at the
end, so it does not wait for the device at every step either (on a GPU a ``loss.item()`` per
step would make the baseline slow, not the Trainer fast).

The two are timed alternately in one run (median of the repeats); target <= 1.05x. On a machine
with CUDA a row runs there too.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import rnnkit
from benchmarks.common import markdown_table, row, write_json


def _bare_epoch(model, optimizer, loader, device) -> float:
    total = torch.zeros((), device=device)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        total += loss.detach()
    return float(total)


def _case(
    name: str, batches: int, batch: int, seq_len: int, hidden: int, repeat: int, device="cpu"
) -> dict:
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x, y = rnnkit.tasks.multi_sine(batches * batch, seq_len, horizon=1, seed=0)
    x = x.expand(-1, -1, 8).contiguous()
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)
    torch.manual_seed(0)
    model = rnnkit.SequenceModel(8, hidden, 1, cell="lstm").to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    trainer = rnnkit.Trainer(model, optimizer, "mse", device=device, grad_clip=1.0, progress=True)
    run_trainer = lambda: trainer.fit(loader, epochs=1)
    run_bare = lambda: _bare_epoch(model, optimizer, loader, device)
    timings: dict[str, list[float]] = {"trainer": [], "bare": []}
    for i in range(repeat + 1):  # the first round warms up both
        for label, fn in (("bare", run_bare), ("trainer", run_trainer)):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if i:
                timings[label].append((time.perf_counter() - start) * 1e3)
    return row(
        "trainer_overhead",
        name,
        statistics.median(timings["trainer"]),
        "bare PyTorch loop",
        statistics.median(timings["bare"]),
        "<= 1.05x",
        device=str(device),
        steps_per_epoch=batches,
    )


def run(quick: bool = False) -> list[dict]:
    if quick:
        return [_case("LSTM T=10 B=8 H=16, 3 steps", 3, 8, 10, 16, repeat=1)]
    rows = [
        _case("LSTM T=50 B=32 H=64, 50 steps", 50, 32, 50, 64, repeat=7),
        _case("LSTM T=100 B=64 H=256, 20 steps", 20, 64, 100, 256, repeat=5),
    ]
    if torch.cuda.is_available():
        rows.append(_case("CUDA: LSTM T=50 B=32 H=64, 200 steps", 200, 32, 50, 64, 7, "cuda"))
    return rows


if __name__ == "__main__":
    rows = run()
    print(markdown_table(rows))
    write_json(rows, "benchmarks/results/trainer_overhead.json")
