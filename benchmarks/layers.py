"""rnnkit's layers against torch.nn's, forward + backward, same weights, same run.

* fused path: ``rnnkit.LSTM``/``rnnkit.GRU`` (subclasses of ``torch.nn.LSTM``/``GRU`` that call
  the same kernel) against ``torch.nn.LSTM``/``GRU``: the overhead of rnnkit's wrapper, target
  <= 1.03x;
* own loop: ``rnnkit.LSTM(engine="loop")``, the engine custom cells run on, and a LayerNorm
  LSTM (``rnnkit.Recurrent(rnnkit.LayerNormLSTMCell(...))``, which has no fused kernel) against
  ``torch.nn.LSTM`` (cuDNN on GPU): target <= 1.5x on CPU, <= 2x on GPU.

* the floor: only the matrix products an LSTM's forward and backward pass cannot avoid (the
  input projection, one recurrent product per step each way, the weight gradients), timed
  against ``torch.nn.LSTM``. Near 1x it says the fused kernel costs little beyond its matrix
  products, so the time a loop engine spends above the floor is its gate arithmetic.

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


def _lstm_matrix_products(steps: int, batch: int, size: int, device: str):
    """The products of an LSTM layer's forward and backward pass, without anything else."""
    w_ih, w_hh = (torch.randn(4 * size, size, device=device) for _ in range(2))
    x, h = torch.randn(steps * batch, size, device=device), torch.randn(batch, size, device=device)
    d_gates = torch.randn(steps * batch, 4 * size, device=device)

    def run() -> None:
        x @ w_ih.t()  # forward: input projection for every step at once
        for _ in range(steps):
            h @ w_hh.t()  # forward: recurrent product, one per step
        for d in d_gates.split(batch):
            d @ w_hh  # backward: gradient to the previous state, one per step
        d_gates.t() @ x, d_gates.t() @ x, d_gates @ w_ih  # weight gradients, input gradient

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
        (
            "LayerNorm LSTM (own loop)",
            rnnkit.Recurrent(rnnkit.LayerNormLSTMCell(size, size)),
            nn.LSTM(size, size),
            "<= 2x (GPU)" if cuda else "<= 1.5x (CPU)",
        ),
    ]
    rows = []
    for label, ours, reference, target in cases:
        ours, reference = ours.to(device), reference.to(device)
        if not isinstance(ours, rnnkit.Recurrent):  # a LayerNorm LSTM has other parameters
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
    floor_ms, reference_ms = time_pair(
        _lstm_matrix_products(steps, batch, size, device),
        _forward_backward(nn.LSTM(size, size).to(device), x),
        repeat=repeat,
        warmup=warmup,
    )
    rows.append(
        row(
            "layers",
            f"LSTM matrix products alone (the floor of any loop), {shape}",
            floor_ms,
            "torch.nn.LSTM" + (" (cuDNN)" if cuda else ""),
            reference_ms,
            "reference",
            device=device,
        )
    )
    return rows


if __name__ == "__main__":
    results = run()
    print(markdown_table(results))
    write_json(results, "benchmarks/results/layers.json")
