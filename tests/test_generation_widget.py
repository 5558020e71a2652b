"""The generation widget, the attention heatmap and %rnnkit generate."""

import threading

import pytest
import torch
from IPython.core.error import UsageError
from IPython.testing import globalipapp
from IPython.utils.capture import capture_output

import rnnkit
from rnnkit.widgets import AttentionHeatmap, GenerationWidget, TrainingPanel, attention_figure

VOCAB = rnnkit.CharVocab("abcdefgh \n")
pytestmark = pytest.mark.usefixtures("one_thread")


def _model() -> rnnkit.LanguageModel:
    torch.manual_seed(0)
    return rnnkit.LanguageModel(VOCAB, 6, 12)


def test_each_click_is_one_sample_call_with_the_controls_values():
    model = _model().eval()
    widget = GenerationWidget(model, prompt="ab", steps=30, temperature=0.7, top_k=4, seed=2)
    widget.button.click()
    expected = rnnkit.sample(model, VOCAB, "ab", 30, temperature=0.7, top_k=4, seed=2)
    assert widget.text == expected
    assert expected in widget.output.value
    widget.temperature.value, widget.top_k.value, widget.seed.value = 1.5, 0, 5
    widget.button.click()
    assert widget.text == rnnkit.sample(model, VOCAB, "ab", 30, temperature=1.5, seed=5)
    assert not model.training


def test_errors_are_shown_and_kept():
    widget = GenerationWidget(_model(), prompt="abz", steps=5)
    assert widget.generate() == ""
    assert isinstance(widget.error, ValueError) and "'z'" in str(widget.error)
    assert "color:#c62828" in widget.output.value
    assert "ValueError" in repr(widget)
    with pytest.raises(ValueError, match="a model, a Trainer or a TrainingPanel"):
        GenerationWidget("model")


def _panel_run(sample_during_run: bool):
    torch.manual_seed(0)
    model = rnnkit.LanguageModel(VOCAB, 6, 12)
    ids = torch.randint(len(VOCAB), (4 * 200,))
    started = threading.Event()

    class Started(rnnkit.Callback):
        def on_batch_end(self, trainer, logs):
            started.set()

    trainer = rnnkit.Trainer(
        model,
        torch.optim.Adam(model.parameters(), lr=1e-2),
        "cross_entropy",
        stateful=True,
        callbacks=[Started()],
    )
    panel = TrainingPanel(trainer, rnnkit.bptt_batches(rnnkit.lm_streams(ids, 4), 10), epochs=3)
    widget = GenerationWidget(panel, prompt="a", steps=10, seed=1)
    panel.fit(block=False)
    assert started.wait(timeout=60)  # the run is in progress: copies wait for step boundaries
    texts = [widget.generate() for _ in range(3)] if sample_during_run else []
    assert panel.wait(timeout=120)
    assert trainer.status == "finished"
    return model, texts, widget


def test_sampling_a_panel_in_training_leaves_its_run_exact():
    plain, _, _ = _panel_run(sample_during_run=False)
    sampled, texts, widget = _panel_run(sample_during_run=True)
    assert all(len(t) == 10 for t in texts) and widget.error is None
    for (name, a), b in zip(plain.state_dict().items(), sampled.state_dict().values(), strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name
    assert sampled.training  # the trainer's model was never switched to eval by sampling
    assert widget.generate() == rnnkit.sample(sampled.eval(), VOCAB, "a", 10, seed=1)


def test_front_ends_without_a_kernel_get_the_text():
    widget = GenerationWidget(_model(), prompt="ab", steps=20, seed=0)
    bundle = widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "press Generate" in bundle["text/plain"]
    text = widget.generate()
    bundle = widget._repr_mimebundle_()
    assert bundle["text/plain"] == "ab" + text
    assert "<b>ab</b>" in bundle["text/html"]


def _seq2seq():
    source = rnnkit.Vocab(["zero one two three four five six seven eight nine"])
    target = rnnkit.CharVocab("0123456789", specials=("pad", "bos", "eos"))
    torch.manual_seed(0)
    return rnnkit.Seq2Seq(source, target, 8, 12, attention="luong_general")


def test_attention_heatmap_draws_the_alignment():
    model = _seq2seq()
    view = AttentionHeatmap(model, "one two three", beam_size=2)
    alignment = model.align("one two three", beam_size=2)
    assert view.alignment.source == ["one", "two", "three"] == alignment.source
    assert view.alignment.output == alignment.output
    assert torch.equal(view.alignment.weights, alignment.weights)
    assert view.png.startswith(b"\x89PNG")
    assert "data:image/png;base64" in view._repr_mimebundle_()["text/html"]
    view.source.value = "one banana"
    assert view.error is None  # Vocab has unk: the unknown word is <unk>
    assert view.alignment.source == ["one", "<unk>"]
    figure = attention_figure(alignment, title="t")
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == alignment.source
    with pytest.raises(ValueError, match="needs an rnnkit.Seq2Seq"):
        AttentionHeatmap(_model(), "a")
    plain = rnnkit.Seq2Seq(model.source_vocab, model.target_vocab, 8, 12, attention=None)
    assert isinstance(AttentionHeatmap(plain, "one").error, ValueError)


@pytest.fixture(scope="module")
def ip():
    shell = globalipapp.get_ipython()
    shell.run_line_magic("load_ext", "rnnkit")
    return shell


def test_magic_generate_shows_the_widget_with_one_sample(ip):
    model = _model().eval()
    ip.user_ns["lm"] = model
    try:
        with capture_output() as captured:
            ip.run_line_magic("rnnkit", 'generate lm --prompt "ab c" --steps 15 --seed 3 --top-k 5')
        expected = rnnkit.sample(model, VOCAB, "ab c", 15, top_k=5, seed=3)
        shown = [o.data.get("text/plain", "") for o in captured.outputs]
        assert "ab c" + expected in shown
        with pytest.raises(UsageError, match="temperature must be a finite number > 0"):
            ip.run_line_magic("rnnkit", "generate lm --temperature 0")
        with pytest.raises(UsageError, match="no variable 'nothing'"):
            ip.run_line_magic("rnnkit", "generate nothing")
        with pytest.raises(UsageError, match="argument --steps: invalid int value"):
            ip.run_line_magic("rnnkit", "generate lm --steps many")
    finally:
        ip.user_ns.pop("lm", None)
