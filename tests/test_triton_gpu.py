"""The Triton engine on a CUDA device, compiled: the parity grid, graph reuse, fallbacks.

Skipped without CUDA (or triton). ``benchmarks/gpu_check.sh`` runs these on a GPU machine, in
a process of their own, so that no interpreted kernel (``tests/test_triton_engine.py``) can
stand in for the compiled ones.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from triton_parity import CELLS, INPUT, assert_parity, make_layer

import rnnkit
from rnnkit.engines.triton import graphs, support

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not support.triton_installed(), reason="triton not installed"),
]


@pytest.fixture(autouse=True)
def compiled():
    from rnnkit.engines.triton import jit

    if jit.INTERPRETED:
        pytest.skip("the kernels were imported under TRITON_INTERPRET=1")
    graphs.clear()
    graphs.set_graphs(True)
    yield
    graphs.set_graphs(True)


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("capture", [True, False], ids=["graphs", "uncaptured"])
@pytest.mark.parametrize(
    "layout",
    [
        {},
        {"lengths": torch.tensor([5, 2, 0])},
        {"num_layers": 2, "bidirectional": True, "lengths": torch.tensor([3, 5, 1])},
    ],
    ids=["plain", "lengths", "stacked-bidirectional-lengths"],
)
def test_parity_on_cuda(kind, capture, layout):
    graphs.set_graphs(capture)
    assert_parity(kind, dtype=torch.float32, tolerance=1e-5, device="cuda", **layout)
    assert_parity(kind, dtype=torch.float64, tolerance=1e-10, device="cuda", **layout)


@pytest.mark.parametrize("kind", ["lstm", "lstm_proj", "layernorm_lstm", "layernorm_gru"])
def test_parity_without_bias_from_a_given_state(kind):
    assert_parity(
        kind,
        dtype=torch.float64,
        tolerance=1e-10,
        device="cuda",
        bias=False,
        with_state=True,
        lengths=[5, 1, 3],
    )


def test_graphs_are_reused_across_calls_and_nearby_lengths():
    layer = rnnkit.Recurrent(rnnkit.LayerNormLSTMCell(8, 16), bidirectional=True).cuda()
    x = torch.randn(100, 4, 8, device="cuda", requires_grad=True)
    layer(x)[0].sum().backward()
    assert graphs.cached() == 2  # one per direction, forward and backward in each
    held = graphs.held_bytes()
    assert held > 0
    for steps in (100, 97, 104):  # all round up to 104 steps
        layer(x[:steps], lengths=torch.full((4,), steps))[0].sum().backward()
    assert graphs.cached() == 2 and graphs.held_bytes() == held
    with torch.no_grad():
        layer(x)
    assert graphs.cached() == 4  # no-grad captures save nothing, so they are others


def test_replays_never_overwrite_what_the_caller_holds():
    torch.manual_seed(0)
    layer = rnnkit.LSTM(INPUT, 8).cuda()
    windows = torch.randn(3, 5, 2, INPUT, device="cuda").unbind(0)

    def run(engine):
        layer.engine = engine
        layer.zero_grad()
        state, outputs = None, []
        for window in windows:  # kept windows, the state carried
            output, state = layer(window, state)
            outputs.append(output)
            state = tuple(s.detach() for s in state)
        first, second = layer(windows[0])[0], layer(windows[1])[0]  # two calls, one backward
        (sum(o.sum() for o in outputs) + (first * second).sum()).backward()
        return outputs + [first, second] + [p.grad.clone() for p in layer.parameters()]

    ours = run("triton")
    assert graphs.cached() >= 1
    for a, b in zip(ours, run("loop"), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_auto_on_cuda():
    ln = rnnkit.Recurrent(rnnkit.LayerNormLSTMCell(4, 8)).cuda()
    (report,) = rnnkit.explain_fast_path(ln)
    assert report.engine == "triton" and "in CUDA graphs" in report.kernel
    (report,) = rnnkit.explain_fast_path(rnnkit.LSTM(4, 8).cuda())
    assert report.engine == "fused"  # cuDNN first, with lengths too (segments)
    (report,) = rnnkit.explain_fast_path(rnnkit.Recurrent(rnnkit.IndRNNCell(4, 8)).cuda())
    assert "one Triton kernel over the whole sequence" in report.kernel


def test_fallbacks_say_why():
    layer = rnnkit.Recurrent(rnnkit.LayerNormGRUCell(4, 8)).cuda()
    graphs.set_graphs(False)
    assert "CUDA graphs are off" in rnnkit.explain_fast_path(layer)[0].kernel
    graphs.set_graphs(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert "autocast" in rnnkit.explain_fast_path(layer)[0].kernel
    dropped = rnnkit.WeightDrop(rnnkit.LSTM(4, 8, engine="triton"), 0.3).cuda()
    assert "WeightDrop" in rnnkit.explain_fast_path(dropped)[0].kernel
    dropped(torch.randn(5, 2, 4, device="cuda"))[0].sum().backward()
    assert graphs.cached() == 0  # new weights every call: never captured


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["lstm", "gru", "layernorm_lstm", "layernorm_gru", "indrnn"])
def test_autocast_lower_precision_products_float32_state(kind, dtype):
    torch.manual_seed(0)
    layer = make_layer(kind, num_layers=2).cuda()
    x = torch.randn(20, 4, INPUT, device="cuda", requires_grad=True)
    layer.engine = "loop"
    reference, _ = layer(x, lengths=[20, 11, 3, 1])
    (expected,) = torch.autograd.grad(reference.sum(), x)
    layer.engine = "triton"
    with torch.autocast("cuda", dtype=dtype):
        output, final = layer(x, lengths=[20, 11, 3, 1])
    assert output.dtype == dtype
    (got,) = torch.autograd.grad(output.float().sum(), x)
    torch.testing.assert_close(output.float(), reference, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(got, expected, atol=5e-2, rtol=5e-2)


def test_double_backward_is_refused_with_the_engine_to_use():
    layer = rnnkit.GRU(INPUT, 8, engine="triton").cuda()
    x = torch.randn(4, 2, INPUT, device="cuda", requires_grad=True)
    with pytest.raises(rnnkit.InputError, match="engine='loop'"):
        torch.autograd.grad(layer(x)[0].sum(), x, create_graph=True)


def test_min_gru_runs_the_triton_scan_on_cuda(monkeypatch):
    import rnnkit.engines.triton.scan as triton_scan

    calls = []
    scan = triton_scan.chunked_scan
    monkeypatch.setattr(triton_scan, "chunked_scan", lambda *a: calls.append(1) or scan(*a))
    torch.manual_seed(0)
    layer = rnnkit.MinGRU(INPUT, 8).double()
    x = torch.randn(300, 3, INPUT, dtype=torch.float64)
    reference = layer(x, lengths=[300, 120, 7])
    ours = layer.cuda()(x.cuda(), lengths=[300, 120, 7])
    assert calls
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a.cpu(), b, atol=1e-12, rtol=1e-12)


def test_torch_cell_with_hooks_is_refused():
    layer = rnnkit.Recurrent(nn.GRUCell(4, 8), engine="triton").cuda()
    x = torch.randn(3, 2, 4, device="cuda")
    layer(x)
    layer.cells[0].register_forward_hook(lambda *args: None)
    with pytest.raises(rnnkit.InputError, match="hooks"):
        layer(x)
