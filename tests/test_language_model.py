import io

import pytest
import torch
from torch import nn

import rnnkit


def _torch_twin(model: rnnkit.LanguageModel, kind=nn.LSTM) -> rnnkit.Stateful:
    """The same model as plain torch.nn modules, with the same weights."""
    rnn = model.rnn
    twin = rnnkit.Stateful(
        kind(rnn.input_size, rnn.hidden_size, rnn.num_layers, batch_first=True),
        nn.Embedding(model.vocab_size, rnn.input_size),
        nn.Linear(rnn.hidden_size, model.vocab_size),
    ).to(model.decoder.weight.dtype)
    twin.embedding.load_state_dict(model.embedding.state_dict())
    twin.layer.load_state_dict(rnn.state_dict())
    twin.head.load_state_dict(model.decoder.state_dict())
    return twin


@pytest.mark.parametrize("cell, kind", [("lstm", nn.LSTM), ("gru", nn.GRU), ("rnn", nn.RNN)])
def test_language_model_equals_the_same_model_in_torch_nn(cell, kind):
    model = rnnkit.LanguageModel(13, 6, 10, num_layers=2, cell=cell).double()
    twin = _torch_twin(model, kind)
    x = torch.randint(13, (3, 9))
    logits, state = model(x)
    expected, expected_state = twin(x)
    assert logits.shape == (3, 9, 13)
    assert torch.allclose(logits, expected, atol=1e-10)
    more, _ = model(x, state)
    expected_more, _ = twin(x, expected_state)
    assert torch.allclose(more, expected_more, atol=1e-10)


def test_variant_cells_and_layers_run_through_the_same_contract():
    x = torch.randint(7, (2, 5))
    for cell in (
        rnnkit.LayerNormLSTMCell(4, 6),
        rnnkit.IndRNNCell(4, 6),
        nn.GRUCell(4, 6),
        rnnkit.MinRNNStack(4, 6, num_layers=2, batch_first=True),
    ):
        model = rnnkit.LanguageModel(7, 4, 6, num_layers=1, cell=cell)
        logits, state = model(x)
        assert logits.shape == (2, 5, 7)
        # carrying the state over two halves gives what one call gives
        first, mid = model(x[:, :2])
        second, _ = model(x[:, 2:], mid)
        assert torch.allclose(torch.cat([first, second], dim=1), logits, atol=1e-5)


def test_bad_models_and_inputs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="bidirectional=True, expected False"):
        rnnkit.LanguageModel(5, 4, 6, cell=rnnkit.LSTM(4, 6, bidirectional=True, batch_first=True))
    with pytest.raises(ValueError, match="must be batch first"):
        rnnkit.LanguageModel(5, 4, 6, cell=rnnkit.LSTM(4, 6))
    with pytest.raises(ValueError, match="the cell takes 3 inputs, but the embedding gives 4"):
        rnnkit.LanguageModel(5, 4, 6, cell=rnnkit.LSTMCell(3, 6))
    with pytest.raises(ValueError, match="cell must be one of rnn, lstm, gru"):
        rnnkit.LanguageModel(5, 4, 6, cell="transformer")
    model = rnnkit.LanguageModel(5, 4, 6)
    with pytest.raises(ValueError, match=r"token id 5 is outside the vocabulary's \[0, 5\)"):
        model(torch.tensor([[0, 5]]))
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"shape \(batch, time\)"):
        model(torch.zeros(2, dtype=torch.long))


def test_tied_weights_share_the_embedding_and_wrong_sizes_say_what_to_change():
    model = rnnkit.LanguageModel(20, 8, 8, tie_weights=True)
    assert model.decoder.weight is model.embedding.weight
    assert sum(p.numel() for p in model.parameters()) == (
        sum(p.numel() for p in rnnkit.LanguageModel(20, 8, 8).parameters()) - 20 * 8
    )
    projected = rnnkit.LanguageModel(
        20, 8, 16, cell=rnnkit.LSTM(8, 16, proj_size=8, batch_first=True), tie_weights=True
    )
    assert projected(torch.randint(20, (2, 3)))[0].shape == (2, 3, 20)
    with pytest.raises(ValueError) as err:
        rnnkit.LanguageModel(20, 8, 16, tie_weights=True)
    assert "recurrent output size (16) to equal embed_size (8)" in str(err.value)
    assert "proj_size=8" in str(err.value)


def test_lengths_give_each_sequence_its_own_final_state():
    model = rnnkit.LanguageModel(9, 4, 6).double()
    x = torch.randint(9, (2, 6))
    _, (h, _) = model(x, lengths=torch.tensor([6, 3]))
    _, (h_short, _) = model(x[1:, :3])
    assert torch.allclose(h[:, 1], h_short[:, 0], atol=1e-10)


def test_the_vocabulary_travels_in_the_state_dict():
    vocab = rnnkit.CharVocab("hello world")
    model = rnnkit.LanguageModel(vocab, 4, 6)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    blank = rnnkit.LanguageModel(len(vocab), 4, 6)
    assert blank.vocab is None
    blank.load_state_dict(state)
    assert blank.vocab == vocab
    assert torch.equal(blank.decoder.weight, model.decoder.weight)

    other = rnnkit.LanguageModel(rnnkit.CharVocab("HELLO WORLD"), 4, 6)
    with pytest.raises(ValueError, match="differs from this model's"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="saved vocabulary has 8 ids, this model 9"):
        rnnkit.LanguageModel(9, 4, 6).load_state_dict(state, strict=False)
    # a model without a vocabulary saves an empty entry and keeps the one it has on load
    assert rnnkit.LanguageModel(len(vocab), 4, 6).state_dict()["_extra_state"] == ""
    assert state["_extra_state"] == vocab.to_json()
    model.load_state_dict(rnnkit.LanguageModel(len(vocab), 4, 6).state_dict())
    assert model.vocab == vocab


def test_stateful_adapter_checks_the_layer():
    with pytest.raises(ValueError, match="batch_first=False"):
        rnnkit.Stateful(nn.LSTM(3, 4))
    with pytest.raises(ValueError, match="bidirectional"):
        rnnkit.Stateful(nn.GRU(3, 4, batch_first=True, bidirectional=True))

    class OutputOnly(nn.Module):
        def forward(self, x, hx=None):
            return x

    adapter = rnnkit.Stateful(OutputOnly())
    with pytest.raises(ValueError, match=r"must return \(output, state\)"):
        adapter(torch.randn(2, 3, 3))
    plain = rnnkit.Stateful(nn.GRU(3, 4, batch_first=True))
    output, state = plain(torch.randn(2, 5, 3))
    assert output.shape == (2, 5, 4) and state.shape == (1, 2, 4)


@pytest.mark.parametrize(
    "cell",
    ["lstm", "gru", "rnn", "layernorm", "proj", "minrnn"],
)
def test_one_token_step_equals_a_one_step_forward(cell):
    torch.manual_seed(0)
    layers = {
        "layernorm": rnnkit.LayerNormLSTMCell(4, 6),
        "proj": rnnkit.LSTM(4, 6, num_layers=2, proj_size=3, batch_first=True),
        "minrnn": rnnkit.MinRNNStack(4, 6, num_layers=2, batch_first=True),
    }
    model = rnnkit.LanguageModel(9, 4, 6, num_layers=2, cell=layers.get(cell, cell)).double()
    model.eval()
    x = torch.randint(9, (3, 5))
    _, state = model(x[:, :4])
    for start in (None, state):
        expected, expected_state = model(x[:, 4:], start)
        logits, new_state = model.step(x[:, 4], start)
        assert torch.allclose(logits, expected[:, 0], atol=1e-12)
        for a, b in zip(_leaves(new_state), _leaves(expected_state), strict=True):
            assert torch.allclose(a, b, atol=1e-12)


def _leaves(state):
    return list(state) if isinstance(state, tuple) else [state]


def test_a_language_models_vocabulary_travels_through_safetensors(tmp_path):
    vocab = rnnkit.CharVocab("to be or not")
    model = rnnkit.LanguageModel(vocab, 8, 16)
    rnnkit.export_safetensors(model, tmp_path / "lm.safetensors")
    twin = rnnkit.LanguageModel(len(vocab), 8, 16)
    rnnkit.import_safetensors(twin, tmp_path / "lm.safetensors")
    assert twin.vocab is not None and twin.vocab.to_json() == vocab.to_json()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
