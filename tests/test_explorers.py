"""The explorers, driven through their controls: each picture is the public API's answer."""

import pytest
import torch
from IPython.display import Image

import rnnkit
from rnnkit.widgets import GradientFlowExplorer, HiddenStateExplorer, PaddingExplorer

PNG = b"\x89PNG"

needs_diagnostics = pytest.mark.skipif(
    not hasattr(rnnkit, "gradient_flow"),
    reason="rnnkit.gradient_flow / init_recurrent (the diagnostics of branch tricks) not merged",
)


def test_padding_explorer_measures_with_padding_stats():
    explorer = PaddingExplorer(n=500, max_len=100, batch_size=16, seed=1)
    lengths = explorer.current_lengths()
    assert len(lengths) == 500 and 1 <= int(lengths.min()) and int(lengths.max()) <= 100
    order = torch.randperm(500, generator=torch.Generator().manual_seed(1))
    expected = rnnkit.padding_stats(lengths, order.split(16))
    assert explorer.result == expected
    assert f"{expected.useful_fraction:.1%}" in explorer.info.value
    assert explorer.png.startswith(PNG) and explorer.image.value == explorer.png
    assert explorer.pool_batches.disabled

    explorer.bucketing.value = True  # the control recomputes
    sampler = rnnkit.BucketBatchSampler(lengths, 16, seed=1, pool_batches=50)
    assert explorer.result == rnnkit.padding_stats(lengths, sampler)
    assert explorer.result.useful_fraction > expected.useful_fraction + 0.2
    assert not explorer.pool_batches.disabled

    explorer.batch_size.value = 1  # one sequence per batch: nothing is padded
    assert explorer.result.useful_fraction == 1.0


@pytest.mark.parametrize("distribution", PaddingExplorer.DISTRIBUTIONS)
def test_padding_explorer_distributions(distribution):
    explorer = PaddingExplorer(distribution=distribution, n=300, max_len=60)
    lengths = explorer.current_lengths()
    assert lengths.dtype == torch.int64 and int(lengths.min()) >= 1 and int(lengths.max()) <= 60
    explorer.max_len.value = 20
    assert int(explorer.current_lengths().max()) <= 20
    assert explorer.result.real_steps == int(explorer.current_lengths().sum())


def test_padding_explorer_with_given_lengths():
    lengths = [5, 50, 6, 49, 7, 48, 8, 47]
    explorer = PaddingExplorer(lengths, batch_size=2, bucketing=True, pool_batches=4)
    assert explorer.distribution.disabled and explorer.max_len.disabled
    assert explorer.result.real_steps == sum(lengths)
    assert explorer.result.padded_steps == 2 * (50 + 48 + 8 + 6)  # each pair of neighbours
    with pytest.raises(ValueError, match="distribution must be one of uniform"):
        PaddingExplorer(distribution="zipf")


def test_hidden_state_explorer_shows_trace_states():
    rnnkit.seed_everything(0)
    model = rnnkit.SequenceModel(1, 6, 3, cell="lstm", num_layers=2)
    x, _, lengths = rnnkit.tasks.variable_length(5, min_len=4, max_len=20)
    explorer = HiddenStateExplorer(model, x, lengths, units=4)
    assert list(explorer.layer.options) == ["rnn.l0", "rnn.l1"]
    assert explorer.layer.value == "rnn.l1"
    explorer.sample.value = 3
    expected = rnnkit.trace_states(model, x[3:4, : int(lengths[3])])
    torch.testing.assert_close(explorer.result["rnn.l1"].hidden, expected["rnn.l1"].hidden)
    assert set(explorer.result["rnn.l1"].gates) == {"i", "f", "g", "o", "c"}
    assert f"sequence 3, {int(lengths[3])} steps, 4 of 6 units shown" in explorer.info.value
    assert len(explorer.figure.axes) == 2 * 7  # input, h, 5 gates; each with a colour bar
    explorer.layer.value = "rnn.l0"
    assert explorer.info.value.startswith("rnn.l0 (LSTM)")
    snapshot = explorer.snapshot()
    assert isinstance(snapshot, Image) and snapshot.data == explorer.png


def test_hidden_state_explorer_bad_input():
    model = rnnkit.SequenceModel(1, 4, 1)
    with pytest.raises(ValueError, match=r"x must be a tensor \(N, T, features\), got \(3, 5\)"):
        HiddenStateExplorer(model, torch.randn(3, 5))
    with pytest.raises(ValueError, match="expected 3 lengths"):
        HiddenStateExplorer(model, torch.randn(3, 5, 1), lengths=[5, 5])
    with pytest.raises(ValueError, match="no RNN/LSTM/GRU layer"):
        HiddenStateExplorer(torch.nn.Linear(1, 1), torch.randn(3, 5, 1))


@needs_diagnostics
def test_gradient_flow_explorer_calls_gradient_flow():
    explorer = GradientFlowExplorer(cell="rnn", seq_len=30, recipe="orthogonal", gain=0.5)
    model, x, y = explorer.model_and_data()
    expected = rnnkit.gradient_flow(model, x, y, torch.nn.functional.mse_loss)
    torch.testing.assert_close(explorer.result.per_step["rnn.l0"], expected.per_step["rnn.l0"])
    assert rnnkit.spectral_radius(model)["rnn.l0"]["h"] == pytest.approx(0.5, abs=1e-5)
    assert "h=0.50" in explorer.info.value
    decaying = explorer.result.per_step["rnn.l0"]

    explorer.gain.value = 1.5  # the control recomputes
    model, _, _ = explorer.model_and_data()
    assert rnnkit.spectral_radius(model)["rnn.l0"]["h"] == pytest.approx(1.5, abs=1e-5)
    assert not torch.equal(explorer.result.per_step["rnn.l0"], decaying)

    explorer.recipe.value = "chrono"
    assert explorer.gain.disabled
    explorer.cell.value = "lstm"
    explorer.seq_len.value = 20
    assert len(explorer.result.per_step["rnn.l0"]) == 20
    assert explorer.png.startswith(PNG)
    with pytest.raises(ValueError, match="recipe must be one of default, orthogonal"):
        GradientFlowExplorer(recipe="magic")


def _fallback(explorer) -> dict:
    bundle = explorer._repr_mimebundle_()
    model_id = bundle["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert model_id == explorer.widget.model_id  # the live view where a kernel draws it
    assert "VBox(" not in bundle["text/plain"]
    assert "live controls in JupyterLab with a running kernel" in bundle["text/plain"]
    return bundle


def test_explorers_read_well_without_a_kernel():
    padding = PaddingExplorer(n=200, max_len=50, batch_size=8, bucketing=True, pool_batches=5)
    bundle = _fallback(padding)
    first, info, _ = bundle["text/plain"].splitlines()
    assert first == (
        "PaddingExplorer: lengths long-tailed, max len 50, batch size 8, bucketing True, "
        "pool (batches) 5"
    )
    assert info.startswith(f"useful-token fraction: {padding.result.useful_fraction:.1%}")
    assert "<" not in info and "&nbsp;" not in info
    page = bundle["text/html"]
    assert "<b>PaddingExplorer</b>" in page and padding.info.value in page
    assert "<img src='data:image/png;base64," in page  # its picture: no other output holds it

    hidden = HiddenStateExplorer(rnnkit.SequenceModel(1, 4, 1, cell="gru"), torch.randn(2, 6, 1))
    assert _fallback(hidden)["text/plain"].startswith("HiddenStateExplorer: sequence 0, layer rnn")


@needs_diagnostics
def test_gradient_flow_explorer_fallback_names_its_settings():
    flow = GradientFlowExplorer(cell="rnn", seq_len=20, recipe="chrono", hidden=4)
    text = _fallback(flow)["text/plain"]
    assert text.startswith("GradientFlowExplorer: cell rnn, init chrono, seq len 20, hidden 4")
    assert "gain" not in text.splitlines()[0]  # a disabled control is not a setting
