"""A language model trained statefully by the Trainer on rnnkit.bptt_batches: the contract
between rnnkit.text / rnnkit.LanguageModel and the Trainer, end to end."""

import math

import pytest
import torch
from torch import nn

import rnnkit

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB_SIZE = 13


def _data(streams=4, tokens=4 * 60, seq_len=8, variable=False, seed=0):
    generator = torch.Generator().manual_seed(7)
    ids = torch.randint(VOCAB_SIZE, (tokens,), generator=generator)
    return rnnkit.bptt_batches(
        rnnkit.lm_streams(ids, streams), seq_len, variable, seed, min_len=2, std=2.0
    )


def _model(seed=0):
    torch.manual_seed(seed)
    return rnnkit.LanguageModel(VOCAB_SIZE, 6, 10).double()


def _trainer(model, lr=1e-2, **kwargs):
    return rnnkit.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=lr), "cross_entropy", stateful=True, **kwargs
    )


def test_the_trainer_carries_and_detaches_the_state_as_a_hand_loop_does():
    data = _data()
    model, twin = _model(), _model()
    history = _trainer(model).fit(data, epochs=2)
    optimizer = torch.optim.SGD(twin.parameters(), lr=1e-2)
    losses = []
    for epoch in range(2):
        data.set_epoch(epoch)
        state = None
        for x, y in data:
            logits, state = twin(x, rnnkit.detach_state(state))
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert history.step_values("loss") == pytest.approx(losses, rel=1e-6)  # logged in float32
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_evaluation_carries_the_state_through_the_validation_text():
    data = _data(streams=2, tokens=2 * 41, seq_len=8)
    model = _model()
    result = _trainer(model, metrics=["perplexity", "bits_per_char"]).evaluate(data)
    with torch.no_grad():
        logits, _ = model(data.streams[:, :-1])  # one pass over each whole stream
        expected = nn.functional.cross_entropy(logits.flatten(0, 1), data.streams[:, 1:].flatten())
    # (the Trainer sums losses in float32)
    assert result["loss"] == pytest.approx(float(expected), rel=1e-6)
    assert result["metrics"]["perplexity"] == pytest.approx(math.exp(float(expected)), rel=1e-6)
    assert result["metrics"]["bits_per_char"] == pytest.approx(float(expected) / math.log(2), 1e-6)


def test_variable_windows_weight_tokens_and_scale_the_learning_rate():
    data = _data(tokens=4 * 101, seq_len=8, variable=True, seed=3)
    lengths = data.window_lengths()
    assert len(set(lengths)) > 2
    model = _model()
    history = _trainer(model, lr=0.1).fit(data, epochs=1)
    assert history.step_values("lr") == pytest.approx([0.1 * t / 8 for t in lengths])
    per_window = history.step_values("loss")
    weighted = sum(loss * t for loss, t in zip(per_window, lengths, strict=True)) / sum(lengths)
    assert history["loss"][-1] == pytest.approx(weighted, rel=1e-6)  # tokens, not windows


def test_resuming_mid_epoch_gives_the_uninterrupted_run(tmp_path):
    whole = _model()
    reference = _trainer(whole).fit(_data(variable=True), epochs=2)
    first = _model()
    trainer = _trainer(first, checkpoint=tmp_path)
    steps = len(_data(variable=True))
    trainer.fit(_data(variable=True), epochs=2, max_steps=steps + 3)  # stops inside epoch 2
    trainer.save_checkpoint(tmp_path / "mid.pt")
    resumed_model = _model(seed=5)  # other initial weights: the checkpoint must restore them
    resumed = _trainer(resumed_model).fit(
        _data(variable=True), epochs=2, resume=tmp_path / "mid.pt"
    )
    assert resumed.step_values("loss") == pytest.approx(reference.step_values("loss"), abs=1e-12)
    for a, b in zip(whole.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_with_another_number_of_streams_is_refused(tmp_path):
    trainer = _trainer(_model())
    trainer.fit(_data(streams=4), epochs=1, max_steps=3)
    trainer.save_checkpoint(tmp_path / "four.pt")
    with pytest.raises(ValueError, match=r"4.*8|8.*4"):
        _trainer(_model()).fit(
            _data(streams=8, tokens=8 * 30), epochs=1, resume=tmp_path / "four.pt"
        )


def test_the_vocabulary_travels_in_trainer_checkpoints(tmp_path):
    vocab = rnnkit.CharVocab("abcdefghijklm")
    model = rnnkit.LanguageModel(vocab, 6, 10)
    trainer = rnnkit.Trainer(
        model, torch.optim.Adam(model.parameters()), "cross_entropy", stateful=True
    )
    trainer.fit(_data(), epochs=1, max_steps=2)
    trainer.save_checkpoint(tmp_path / "lm.pt")
    blank = rnnkit.LanguageModel(len(vocab), 6, 10)
    again = rnnkit.Trainer(
        blank, torch.optim.Adam(blank.parameters()), "cross_entropy", stateful=True
    )
    again.fit(_data(), epochs=1, resume=tmp_path / "lm.pt")
    assert blank.vocab == vocab


def test_stateful_training_refuses_shuffled_batches():
    x = torch.randint(VOCAB_SIZE, (16, 8))
    with pytest.raises(ValueError, match="shuffl"):
        _trainer(_model()).fit((x, x), epochs=1, shuffle=True)
