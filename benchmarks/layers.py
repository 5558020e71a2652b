"""rnnkit's layers against torch.nn's, forward + backward, same weights, same run.

* fused path: ``rnnkit.LSTM``/``rnnkit.GRU`` (subclasses of ``torch.nn.LSTM``/``GRU`` that call
  the same kernel) against ``torch.nn.LSTM``/``GRU``: the overhead of rnnkit's wrapper, target
  <= 1.03x;
* own loop: ``rnnkit.LSTM(engine="loop")``, the engine custom cells run on, against
  ``torch.nn.LSTM`` (cuDNN on GPU): target <= 1.5x on CPU, <= 2x on GPU.

Full sizes T=100, B=64, I=H=512 (the design document's); ``quick`` shrinks them.
"""

from __future__ import annotations

import torch
from torch import nn

import rnnkit
from benchmarks.common import markdown_table, row, time_pair, write_json


def _forward_backward(layer: nn.Module, x: torch.Tensor):
    def run() -> None:
        output, _ = layer(x)
        torch.autograd.grad(output.sum(), [x, *layer.parameters()])

    return run


def run(quick: bool = False) -> list[dict]:
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    steps, batch, size = (10, 4, 16) if quick else (100, 64, 512)
    repeat, warmup = (2, 1) if quick else ((20, 3) if cuda else (5, 1))
    shape = f"T={steps} B={batch} I=H={size}, fwd+bwd"
    torch.manual_seed(0)
    x = torch.randn(steps, batch, size, device=device, requires_grad=True)
    cases = [
        ("LSTM fused", rnnkit.LSTM(size, size), nn.LSTM(size, size), "<= 1.03x"),
        ("GRU fused", rnnkit.GRU(size, size), nn.GRU(size, size), "<= 1.03x"),
        (
            "LSTM own loop (engine='loop')",
            rnnkit.LSTM(size, size, engine="loop"),
            nn.LSTM(size, size),
            "<= 2x (GPU)" if cuda else "<= 1.5x (CPU)",
        ),
    ]
    rows = []
    for label, ours, reference, target in cases:
        ours, reference = ours.to(device), reference.to(device)
        reference.load_state_dict(ours.state_dict())
        ours_ms, reference_ms = time_pair(
            _forward_backward(ours, x),
            _forward_backward(reference, x),
            repeat=repeat,
            warmup=warmup,
        )
        baseline = f"torch.nn.{type(reference).__name__}" + (" (cuDNN)" if cuda else "")
        rows.append(
            row(
                "layers",
                f"{label}, {shape}",
                ours_ms,
                baseline,
                reference_ms,
                target,
                device=device,
            )
        )
    return rows


if __name__ == "__main__":
    results = run()
    print(markdown_table(results))
    write_json(results, "benchmarks/results/layers.json")
