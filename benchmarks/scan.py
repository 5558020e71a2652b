"""minGRU's parallel scan against torch.nn.GRU, forward + backward, and its error.

``rnnkit.MinGRU`` (``engine="scan"``) and ``torch.nn.GRU`` (cuDNN on GPU) of the same input and
hidden sizes over sequences of several lengths ``T``. Targets: faster than ``torch.nn.GRU`` on
CPU from ``T = 512``; >= 10x faster at ``T = 4096, B = 64, H = 256`` on GPU.

A second row per length times the same MinGRU with ``engine="loop"`` (step by step) against
the scan: most of MinGRU's lead over the GRU comes from the cheaper model (its gates see only
the input), and this row shows how much of it is the scan's.

Each scan row also reports the scan's error: max |float32 scan - float64 sequential| / max |float64
sequential| over all outputs (target <= 1e-5), and, for comparison, the same error of the naive
float32 log-space scan of Feng et al. 2024 (``log h_t = a*_t + logcumsumexp(log b - a*)_t``, on
the paper's positive candidates ``g(h~)``) against its own float64 sequential recurrence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import rnnkit
from benchmarks.common import markdown_table, row, time_pair, write_json


def _forward_backward(layer: nn.Module, x: torch.Tensor):
    def run() -> None:
        output, _ = layer(x)
        torch.autograd.grad(output.sum(), [x, *layer.parameters()])

    return run


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.double() - reference).abs().max() / reference.abs().max())


@torch.no_grad()
def scan_error(layer: rnnkit.MinGRU, x: torch.Tensor) -> float:
    """The float32 scan's error against the float64 sequential recurrence (same weights)."""
    reference = rnnkit.MinGRU(layer.input_size, layer.hidden_size, engine="loop")
    reference = reference.to(x.device, torch.float64)
    reference.load_state_dict(layer.state_dict())
    return _relative_error(layer(x)[0], reference(x.double())[0])


@torch.no_grad()
def naive_logspace_error(layer: rnnkit.MinGRU, x: torch.Tensor) -> float:
    """The error of the paper's float32 log-space scan against its float64 recurrence."""
    gate, candidate = F.linear(x, layer.weight_ih, layer.bias_ih).chunk(2, dim=-1)
    positive = torch.where(candidate >= 0, candidate + 0.5, torch.sigmoid(candidate))  # g
    log_a, log_b = -F.softplus(gate), -F.softplus(-gate) + positive.log()
    a_star = log_a.cumsum(dim=0)
    naive = (a_star + torch.logcumsumexp(log_b - a_star, dim=0)).exp()
    a, b = log_a.double().exp(), log_b.double().exp()
    states, h = [], torch.zeros_like(a[0])
    for t in range(x.shape[0]):
        h = a[t] * h + b[t]
        states.append(h)
    return _relative_error(naive, torch.stack(states))


def run(quick: bool = False) -> list[dict]:
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if quick:
        lengths, batch, size, repeat, warmup = (16, 64), 2, 8, 2, 1
    elif cuda:
        lengths, batch, size, repeat, warmup = (512, 1024, 4096), 64, 256, 10, 2
    else:
        lengths, batch, size, repeat, warmup = (128, 512, 1024, 4096), 16, 128, 3, 1
    rows = []
    for steps in lengths:
        torch.manual_seed(0)
        ours = rnnkit.MinGRU(size, size).to(device)
        gru = nn.GRU(size, size).to(device)
        x = torch.randn(steps, batch, size, device=device, requires_grad=True)
        ours_ms, gru_ms = time_pair(
            _forward_backward(ours, x), _forward_backward(gru, x), repeat=repeat, warmup=warmup
        )
        error, naive = scan_error(ours, x.detach()), naive_logspace_error(ours, x.detach())
        if cuda:
            target = ">= 10x faster (<= 0.1x)" if steps == 4096 else "-"
        else:
            target = "faster (< 1x)" if steps >= 512 else "-"
        rows.append(
            row(
                "scan",
                f"MinGRU scan T={steps} B={batch} I=H={size}, fwd+bwd; "
                f"error {error:.1e} (naive log-space {naive:.1e})",
                ours_ms,
                "torch.nn.GRU" + (" (cuDNN)" if cuda else ""),
                gru_ms,
                target,
                device=device,
                error=error,
                naive_logspace_error=naive,
                error_target=1e-5,
            )
        )
        loop = rnnkit.MinGRU(size, size, engine="loop").to(device)
        loop.load_state_dict(ours.state_dict())
        ours_ms, loop_ms = time_pair(
            _forward_backward(ours, x), _forward_backward(loop, x), repeat=repeat, warmup=warmup
        )
        rows.append(
            row(
                "scan",
                f"MinGRU scan vs the same MinGRU step by step, T={steps}, fwd+bwd",
                ours_ms,
                'rnnkit.MinGRU(engine="loop")',
                loop_ms,
                "-",
                device=device,
            )
        )
    return rows


if __name__ == "__main__":
    results = run()
    print(markdown_table(results))
    write_json(results, "benchmarks/results/scan.json")
