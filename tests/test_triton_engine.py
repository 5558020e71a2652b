"""The Triton engine on a CPU: kernels in Triton's interpreter against the own loop.

Triton decides at the definition of a kernel (the import of rnnkit's kernel modules) whether it
runs in the interpreter, from ``TRITON_INTERPRET``; the ``interpreted`` fixture sets it and
imports them, so this module runs the kernels interpreted wherever it runs first. With a CUDA
device, ``tests/test_triton_gpu.py`` runs the same grid compiled instead, and the interpreted
tests are skipped (interpreted kernels would then serve the GPU tests too).

The tests that need no kernel (what blocks the engine, the import of rnnkit) run without triton.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from triton_parity import CELLS, INPUT, assert_parity, make_layer

import rnnkit
from rnnkit.engines.triton import graphs, support

ROOT = Path(__file__).resolve().parent.parent
needs_triton = pytest.mark.skipif(not support.triton_installed(), reason="triton not installed")


@pytest.fixture(scope="module")
def interpreted():
    """Triton's CPU interpreter for this module's kernels (see the module docstring)."""
    if not support.triton_installed():
        pytest.skip("triton not installed (pip install triton; Linux)")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: tests/test_triton_gpu.py runs the kernels")
    patch = pytest.MonkeyPatch()
    patch.setenv("TRITON_INTERPRET", "1")
    from rnnkit.engines.triton import jit, layers  # noqa: F401  (defines the kernels)

    if not jit.INTERPRETED:
        patch.undo()
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set (tests/conftest.py)")
    yield
    patch.undo()


@pytest.fixture
def kernels(interpreted, one_thread):
    """Interpreted kernels and one thread (the interpreter is numpy, op by op)."""


# --------------------------------------------------------------------------------------------
# Parity with the own loop: every cell, with and without lengths, stacked and bidirectional.


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize(
    "layout",
    [
        {},
        {"lengths": torch.tensor([5, 2, 0])},
        {"num_layers": 2, "bidirectional": True, "lengths": torch.tensor([3, 5, 1])},
    ],
    ids=["plain", "lengths", "stacked-bidirectional-lengths"],
)
def test_float64_equals_the_own_loop(kernels, kind, layout):
    assert_parity(kind, dtype=torch.float64, tolerance=1e-10, **layout)


@pytest.mark.parametrize("kind", CELLS)
def test_float32_equals_the_own_loop(kernels, kind):
    assert_parity(
        kind,
        dtype=torch.float32,
        tolerance=1e-5,
        num_layers=2,
        bidirectional=True,
        lengths=[4, 5, 2],
    )


@pytest.mark.parametrize("kind", ["lstm", "lstm_proj", "layernorm_lstm", "layernorm_gru"])
def test_without_bias_and_from_a_given_state(kernels, kind):
    assert_parity(
        kind, dtype=torch.float64, tolerance=1e-10, bias=False, with_state=True, lengths=[5, 1, 3]
    )


@pytest.mark.parametrize(
    ("kind", "bidirectional"), [("lstm_proj", True), ("layernorm_lstm", False), ("indrnn", True)]
)
def test_gradcheck(kernels, kind, bidirectional):
    torch.manual_seed(0)
    layer = make_layer(kind, bidirectional=bidirectional).double()
    layer.engine = "triton"
    x = torch.randn(3, 2, INPUT, dtype=torch.float64, requires_grad=True)
    names, params = zip(*layer.named_parameters(), strict=True)

    def run(x, *weights):
        parameters = dict(zip(names, weights, strict=True))
        output, final = torch.func.functional_call(layer, parameters, (x,), {"lengths": [3, 2]})
        return (output, *(final if isinstance(final, tuple) else (final,)))

    assert torch.autograd.gradcheck(run, (x, *params), eps=1e-6, atol=1e-7, fast_mode=True)


def test_torch_cells_batch_first_and_unbatched(kernels):
    torch.manual_seed(0)
    layer = rnnkit.Recurrent(nn.LSTMCell(INPUT, 4), num_layers=2, batch_first=True).double()
    x = torch.randn(2, 5, INPUT, dtype=torch.float64)
    layer.engine = "triton"
    ours = layer(x, lengths=[5, 3])
    unbatched = layer(x[0])
    layer.engine = "loop"
    reference = layer(x, lengths=[5, 3])
    torch.testing.assert_close(ours[0], reference[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(ours[1], reference[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(unbatched[0], layer(x[0])[0], rtol=0, atol=1e-12)


def test_clamped_indrnn_weight_gets_its_gradient_through_the_clamp(kernels):
    torch.manual_seed(0)
    cell = rnnkit.IndRNNCell(INPUT, 4, recurrent_max_abs=0.5).double()
    nn.init.uniform_(cell.weight_hh, -1.0, 1.0)  # some beyond the clamp: zero gradient there
    layer = rnnkit.Recurrent(cell, engine="triton")
    x = torch.randn(4, 2, INPUT, dtype=torch.float64)
    layer(x)[0].square().sum().backward()
    ours = cell.weight_hh.grad.clone()
    cell.weight_hh.grad = None
    layer.engine = "loop"
    layer(x)[0].square().sum().backward()
    torch.testing.assert_close(ours, cell.weight_hh.grad, rtol=0, atol=1e-12)
    assert (ours[cell.weight_hh.abs() > 0.5] == 0).all()


def test_called_twice_before_one_backward_and_kept_windows(kernels):
    """Each call keeps its own outputs and saved tensors (on a GPU the graphs are replayed)."""
    torch.manual_seed(0)
    layer = rnnkit.LSTM(INPUT, 4).double()
    windows = torch.randn(3, 4, 2, INPUT, dtype=torch.float64).unbind(0)

    def run(engine):
        layer.engine = engine
        layer.zero_grad()
        state, outputs = None, []
        for window in windows:
            output, state = layer(window, state)
            outputs.append(output)
            state = tuple(s.detach() for s in state)
        twice = layer(windows[0])[0] + layer(windows[1])[0]
        (sum(o.sum() for o in outputs) + twice.square().sum()).backward()
        return outputs + [twice] + [p.grad.clone() for p in layer.parameters()]

    for ours, reference in zip(run("triton"), run("loop"), strict=True):
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)


def test_no_grad_and_frozen_calls_save_nothing(kernels, monkeypatch):
    from rnnkit.engines.triton import function

    saves = []
    forward = function.Direct.forward
    monkeypatch.setattr(
        function.Direct,
        "forward",
        lambda self, *args, save: saves.append(save) or forward(self, *args, save=save),
    )
    layer = rnnkit.GRU(INPUT, 4, engine="triton")
    x = torch.randn(3, 2, INPUT)
    with torch.no_grad():
        assert layer(x)[0].grad_fn is None
    layer.eval().requires_grad_(False)
    assert layer(x)[0].grad_fn is None
    layer.train().requires_grad_(True)
    assert layer(x)[0].grad_fn is not None
    assert saves == [False, False, True]


def test_double_backward_names_the_engine_to_use(kernels):
    layer = rnnkit.GRU(INPUT, 4, engine="triton")
    x = torch.randn(3, 2, INPUT, requires_grad=True)
    with pytest.raises(rnnkit.InputError, match="no double backward.*engine='loop'"):
        torch.autograd.grad(layer(x)[0].sum(), x, create_graph=True)


def test_nan_in_padding_reaches_no_state(kernels):
    layer = rnnkit.Recurrent(rnnkit.LayerNormGRUCell(INPUT, 4), engine="triton")
    x = torch.randn(4, 2, INPUT)
    x[2:, 1] = float("nan")
    output, h_n = layer(x, lengths=[4, 2])
    assert torch.isfinite(h_n).all() and (output[2:, 1] == 0).all()


# --------------------------------------------------------------------------------------------
# The minimal RNNs' scan.


@pytest.mark.parametrize("steps", [1, 2, 7, 30])
@pytest.mark.parametrize("reverse", [False, True])
def test_triton_scan_equals_the_torch_scan(kernels, steps, reverse):
    from rnnkit.engines.triton.scan import chunked_scan
    from rnnkit.scan import _chunked_scan

    for dtype, tolerance in ((torch.float32, 1e-6), (torch.float64, 1e-14)):
        a = torch.rand(steps, 2, 3, dtype=dtype)
        b, h0 = torch.randn(steps, 2, 3, dtype=dtype), torch.randn(2, 3, dtype=dtype)
        torch.testing.assert_close(
            chunked_scan(a, b, h0, reverse),
            _chunked_scan(a, b, h0, reverse),
            rtol=0,
            atol=tolerance,
        )


@pytest.mark.parametrize("layer_type", [rnnkit.MinGRU, rnnkit.MinLSTM])
def test_min_rnns_on_the_triton_scan_with_lengths(kernels, monkeypatch, layer_type):
    import rnnkit.engines.triton.scan as triton_scan
    import rnnkit.scan

    calls = []
    scan = triton_scan.chunked_scan
    monkeypatch.setattr(triton_scan, "chunked_scan", lambda *a: calls.append(1) or scan(*a))
    torch.manual_seed(0)
    layer = layer_type(INPUT, 4).double()
    x = torch.randn(9, 3, INPUT, dtype=torch.float64, requires_grad=True)

    def run():
        output, h_n = layer(x, lengths=[9, 4, 0])
        loss = (output * torch.linspace(-1, 1, output.numel()).view_as(output)).sum() + h_n.sum()
        return [output, h_n, *torch.autograd.grad(loss, [x, *layer.parameters()])]

    reference = run()
    monkeypatch.setattr(rnnkit.scan, "_on_triton", lambda a: True)
    ours = run()
    assert calls  # forward and backward scans ran as Triton kernels
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Choice and reasons (no kernel runs).


def test_import_rnnkit_and_a_cpu_forward_do_not_import_triton():
    probe = (
        "import sys, torch, rnnkit; "
        "layer = rnnkit.Recurrent(rnnkit.LayerNormLSTMCell(3, 4)); layer(torch.randn(2, 1, 3)); "
        "print(*rnnkit.explain_fast_path(layer)); rnnkit.MinGRU(3, 4)(torch.randn(5, 1, 3)); "
        "assert 'triton' not in sys.modules, [m for m in sys.modules if m == 'triton']"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "-> loop" in result.stdout


@needs_triton
def test_interpreter_set_after_torch_imported_triton_is_a_clear_error():
    probe = (
        "import os, torch, rnnkit; torch.optim.Adam(torch.nn.Linear(2, 2).parameters()); "
        "os.environ['TRITON_INTERPRET'] = '1'; layer = rnnkit.LSTM(3, 4, engine='triton')\n"
        "try:\n    layer(torch.randn(2, 1, 3))\nexcept rnnkit.InputError as e:\n    print(e)\n"
        "try:\n    import rnnkit.engines.triton.jit\nexcept ImportError as e:\n    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert result.returncode == 0, result.stderr
    blocked, refused = result.stdout.strip().splitlines()
    assert "set before torch imports triton" in blocked
    assert "was off when triton was imported" in refused
    assert "before the first import of torch" in refused


def test_auto_never_picks_triton_on_a_cpu(monkeypatch):
    monkeypatch.setattr(support, "interpreter_on", lambda: True)
    layer = rnnkit.Recurrent(rnnkit.LayerNormLSTMCell(3, 4))
    (report,) = rnnkit.explain_fast_path(layer)
    assert report.engine == "loop"
    assert any("on the CPU" in reason for reason in report.reasons)


def test_triton_on_a_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(support, "interpreter_on", lambda: False)
    layer = rnnkit.LSTM(3, 4, engine="triton")
    with pytest.raises(rnnkit.InputError, match="engine='triton' is impossible: .*CPU.*"):
        layer(torch.randn(2, 1, 3))


@pytest.mark.parametrize(
    ("layer", "words"),
    [
        (rnnkit.Recurrent(nn.LSTMCell(3, 4)), None),
        (rnnkit.LSTM(3, 4, proj_size=2), None),
        (rnnkit.LSTM(3, 4).to(torch.bfloat16), "float32 or float64"),
    ],
)
@needs_triton
def test_what_blocks_triton(monkeypatch, layer, words):
    monkeypatch.setattr(support, "interpreter_on", lambda: True)
    layer.engine = "triton"
    reasons = support.blockers(layer)
    if words is None:
        assert reasons == []
    else:
        assert any(words in r for r, _ in reasons)


def test_unknown_and_hooked_cells_stay_on_the_loop(monkeypatch):
    monkeypatch.setattr(support, "interpreter_on", lambda: True)

    class Twisted(rnnkit.GRUCell):
        pass

    layer = rnnkit.Recurrent(Twisted(3, 4), engine="triton")
    assert any("Twisted" in r for r, _ in support.blockers(layer))
    hooked = rnnkit.Recurrent(nn.GRUCell(3, 4), engine="triton")
    hooked.cells[0].register_forward_hook(lambda *args: None)
    assert any("hooks" in r for r, _ in support.blockers(hooked))
    observed = rnnkit.GRU(3, 4, engine="triton")
    observed._observer = lambda *args: None
    assert any("observer" in r for r, _ in observed.engine_blockers()["triton"])


def test_graph_sizes_and_reasons():
    assert [graphs.rounded_steps(t) for t in (1, 16, 17, 100, 104, 105, 1000, 1024)] == [
        1,
        16,
        18,
        104,
        104,
        112,
        1024,
        1024,
    ]
    assert all(graphs.rounded_steps(t) <= 1.125 * t for t in range(17, 5000))
    weights = (nn.Parameter(torch.ones(2)),)
    assert "CUDA device" in graphs.usable(True, weights, torch.device("cpu"))
    with pytest.raises(ValueError, match="bytes >= 0"):
        graphs.set_memory_budget(-1)


# --------------------------------------------------------------------------------------------
# The CUDA-graph cache's bookkeeping, on a CPU: a stand-in "graph" whose replay reruns the
# captured loop and writes its results into the capture's own (static) buffers, as a CUDA
# graph replay does. What the cache copies in and out is then checked for real.


def _write_into(static, fresh) -> None:
    if isinstance(static, torch.Tensor):
        static.copy_(fresh)
    elif isinstance(static, tuple):
        for s, f in zip(static, fresh, strict=True):
            _write_into(s, f)
    elif static is not None:
        for name in vars(static):
            _write_into(getattr(static, name), getattr(fresh, name))


class _ReplayedGraph:
    def __init__(self, fn, static) -> None:
        self.fn, self.static, self.replays = fn, static, 0

    def replay(self) -> None:
        self.replays += 1
        _write_into(self.static, self.fn())


@pytest.fixture
def cpu_graphs(kernels, monkeypatch):
    import contextlib

    captures = []

    def capture(fn):
        static = fn()
        captures.append(_ReplayedGraph(fn, static))
        return captures[-1], static

    monkeypatch.setattr(graphs, "_capture", capture)
    monkeypatch.setattr(graphs, "usable", lambda graphable, weights, device: None)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    graphs.clear()
    graphs.set_memory_budget(1 << 30)
    yield captures
    graphs.clear()
    graphs.set_memory_budget(None)


def test_graph_replays_keep_every_call_its_own_values(cpu_graphs):
    torch.manual_seed(0)
    layer = rnnkit.GRU(INPUT, 4, bidirectional=True).double()
    windows = torch.randn(3, 18, 2, INPUT, dtype=torch.float64).unbind(0)

    def run(engine):
        layer.engine = engine
        layer.zero_grad()
        state, outputs = None, []
        for window in windows:  # kept windows, the state carried
            output, state = layer(window, state, lengths=[18, 9])
            outputs.append(output)
            state = state.detach()
        first, second = layer(windows[0])[0], layer(windows[1][:17])[0]  # twice, one backward
        (sum(o.sum() for o in outputs) + (first * second[:, :1].sum()).sum()).backward()
        return outputs + [first, second] + [p.grad.clone() for p in layer.parameters()]

    ours = run("triton")
    assert graphs.cached() == 2  # two directions; T=17 runs the T=18 captures, masked
    assert len(cpu_graphs) == 4  # per direction a forward and (at the first backward) a backward
    assert all(graph.replays for graph in cpu_graphs)
    for a, b in zip(ours, run("loop"), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_graph_cache_stays_within_its_memory_budget(cpu_graphs, monkeypatch):
    allocated = iter(range(0, 10**6, 100))  # each capture "holds" 100 bytes
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: next(allocated))
    graphs.set_memory_budget(250)
    layer = rnnkit.RNN(INPUT, 4, engine="triton")
    with torch.no_grad():
        for steps in (2, 3, 4, 5):  # four shapes, four captures
            layer(torch.randn(steps, 1, INPUT))
    assert graphs.cached() == 2 and graphs.held_bytes() == 200  # the two most recent
    graphs.set_memory_budget(0)
    assert graphs.cached() == 1  # the newest always stays


def test_gradient_flow_runs_a_triton_layer_on_the_loop():
    layer = rnnkit.Recurrent(rnnkit.LayerNormGRUCell(INPUT, 4), engine="triton")
    flow = rnnkit.gradient_flow(layer, torch.randn(5, 2, INPUT), None, lambda out, y: out[0].sum())
    assert [steps.shape for steps in flow.per_step.values()] == [(5,)]
    assert layer.engine == "triton" and layer._observer is None  # restored after the call
