import math

import pytest
import torch

import rnnkit
from rnnkit.attention import masked_softmax
from rnnkit.seq2seq import encode_pairs, teacher_forcing_ratio

SOURCE = rnnkit.Vocab(["zero one two three four five six seven eight nine"])
TARGET = rnnkit.CharVocab("0123456789", specials=("pad", "bos", "eos"))
ATTENTIONS = ["bahdanau", "luong_general", "luong_dot", "none"]


def _model(attention="bahdanau", **kwargs) -> rnnkit.Seq2Seq:
    torch.manual_seed(0)
    bidirectional = attention != "luong_dot"
    return rnnkit.Seq2Seq(
        SOURCE, TARGET, 8, 12, attention=attention, bidirectional=bidirectional, **kwargs
    ).double()


def _batch(n=4, seed=0):
    sources, targets = rnnkit.tasks.spelled_digits(n, 1, 6, seed=seed)
    return encode_pairs(SOURCE, TARGET, sources, targets), sources, targets


def test_padded_source_steps_get_exactly_zero_weight():
    keys = torch.randn(3, 5, 4)
    mask = rnnkit.lengths_to_mask(torch.tensor([5, 2, 1]), 5)
    for attention in (
        rnnkit.BahdanauAttention(6, 4),
        rnnkit.LuongAttention(6, 4, "general"),
        rnnkit.LuongAttention(4, 4, "dot"),
    ):
        query = torch.randn(3, attention.query_size)
        context, weights = attention(query, keys, mask)
        assert torch.all(weights[~mask] == 0.0)
        assert torch.allclose(weights.sum(-1), torch.ones(3))
        assert torch.allclose(context, (weights[..., None] * keys).sum(1))
        # the padding's values do not matter at all
        noisy = keys.masked_fill(~mask[..., None], 1e6)
        assert torch.equal(attention(query, noisy, mask)[0], context)


def test_attention_by_hand():
    keys, query = torch.randn(2, 3, 4), torch.randn(2, 4)
    dot = rnnkit.LuongAttention(4, 4, "dot")
    _, weights = dot(query, keys)
    assert torch.allclose(weights, torch.einsum("bsk,bk->bs", keys, query).softmax(-1))
    additive = rnnkit.BahdanauAttention(4, 4, attention_size=5)
    _, weights = additive(query, keys)
    e = additive.v(torch.tanh(additive.query_proj(query)[:, None] + additive.key_proj(keys)))
    assert torch.allclose(weights, e.squeeze(-1).softmax(-1))


def test_attention_errors_name_sizes():
    with pytest.raises(ValueError, match=r"needs the query size \(6\) to equal the key size \(4\)"):
        rnnkit.LuongAttention(6, 4, "dot")
    with pytest.raises(ValueError, match="score must be 'dot' or 'general'"):
        rnnkit.LuongAttention(4, 4, "concat")
    with pytest.raises(ValueError, match="length 0"):
        masked_softmax(torch.zeros(2, 3), torch.tensor([[True, False, False], [False] * 3]))
    with pytest.raises(ValueError, match=r"expected keys of shape \(2, source, 4\)"):
        rnnkit.BahdanauAttention(4, 4)(torch.zeros(2, 4), torch.zeros(2, 3, 5))
    with pytest.raises(
        ValueError, match=r"needs the query size \(12\) to equal the key size \(24\)"
    ):
        rnnkit.Seq2Seq(SOURCE, TARGET, 8, 12, attention="luong_dot", bidirectional=True)


def test_encode_pairs_shifts_the_target_and_masks_the_padding():
    x, y = encode_pairs(SOURCE, TARGET, ["one two", "three"], ["12", "3"])
    bos, eos, pad = TARGET.bos_id, TARGET.eos_id, TARGET.pad_id
    assert x["source"].tolist() == [
        [SOURCE.stoi["one"], SOURCE.stoi["two"]],
        [SOURCE.stoi["three"], 0],
    ]
    assert x["source_lengths"].tolist() == [2, 1]
    one, two, three = (TARGET.stoi[c] for c in "123")
    assert x["target"].tolist() == [[bos, one, two], [bos, three, eos]]
    assert y.tolist() == [[one, two, eos], [three, eos, -100]]
    assert pad == 0


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_padding_in_the_batch_changes_no_output(attention):
    model = _model(attention).eval()
    (x, y), _, _ = _batch()
    logits, weights = model(x, return_attention=True)
    assert logits.shape == (*y.shape, len(TARGET))
    padded = dict(x, source=torch.nn.functional.pad(x["source"], (0, 3)))
    more, more_weights = model(padded, return_attention=True)
    assert torch.allclose(more, logits, atol=1e-10)
    if attention == "none":
        assert weights is None
    else:
        assert weights.shape == (*y.shape, x["source"].shape[1])
        mask = rnnkit.lengths_to_mask(x["source_lengths"], padded["source"].shape[1])
        assert torch.all(more_weights.masked_select(~mask[:, None, :]) == 0.0)
        assert torch.allclose(more_weights[..., : weights.shape[-1]], weights, atol=1e-10)


def test_teacher_forcing_ratio_decides_what_the_decoder_reads():
    model = _model().train()
    (x, _), _, _ = _batch()
    changed = dict(x, target=x["target"].clone())
    changed["target"][:, 1:] = (changed["target"][:, 1:] + 1) % len(TARGET)
    free = model(x, teacher_forcing=0.0)
    assert torch.equal(model(changed, teacher_forcing=0.0), free)  # never reads the target
    assert not torch.allclose(model(changed, teacher_forcing=1.0), model(x, teacher_forcing=1.0))
    # ratio 0 feeds the model's own argmax: the same as a greedy decode's first steps
    greedy = model.decode(x["source"], x["source_lengths"], max_len=free.shape[1])
    steps = min(free.shape[1], greedy.tokens.shape[1])
    first = free.argmax(-1)[:, :steps]
    for b in range(first.shape[0]):
        n = min(int(greedy.lengths[b]), steps)
        assert first[b, :n].tolist() == greedy.tokens[b, :n].tolist()
    with pytest.raises(ValueError, match=r"teacher_forcing must be in \[0, 1\]"):
        model(x, teacher_forcing=1.5)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_decode_greedy_and_beam_report_true_log_probabilities(attention):
    model = _model(attention)
    model.train()
    (x, _), _, _ = _batch(6)
    greedy = model.decode(x["source"], x["source_lengths"], max_len=8)
    assert model.training  # decode ran on an eval copy
    beam = model.decode(x["source"], x["source_lengths"], max_len=8, beam_size=4)
    one = model.decode(x["source"], x["source_lengths"], max_len=8, beam_size=1)
    assert torch.equal(one.tokens, greedy.tokens)
    assert (beam.log_probs >= greedy.log_probs - 1e-9).all()
    model.eval()
    for found in (greedy, beam):
        inputs = torch.cat([torch.full((6, 1), TARGET.bos_id), found.tokens[:, :-1]], dim=1)
        log_p = model(x["source"], x["source_lengths"], inputs).log_softmax(-1)
        chosen = log_p.gather(2, found.tokens[..., None]).squeeze(-1)
        real = torch.arange(found.tokens.shape[1])[None] < found.lengths[:, None]
        assert torch.allclose((chosen * real).sum(1), found.log_probs, atol=1e-8)
        if attention == "none":
            assert found.attention is None
        else:
            sums = found.attention.sum(-1)
            assert torch.allclose(sums[real], torch.ones(int(real.sum()), dtype=sums.dtype))
            assert torch.all(sums[~real] == 0)


def test_translate_turns_texts_into_texts_and_a_short_training_learns():
    torch.manual_seed(0)
    model = rnnkit.Seq2Seq(SOURCE, TARGET, 16, 32, attention="bahdanau")
    (x, y), sources, targets = _batch(256, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(60):
        rows = torch.arange(step * 32, step * 32 + 32) % 256
        logits = model({k: v[rows] for k, v in x.items()})
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y[rows].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    outputs = model.translate(sources[:20], beam_size=3)
    assert all(set(text) <= set("0123456789") for text in outputs)
    assert sum(out == t for out, t in zip(outputs, targets[:20], strict=True)) >= 5
    with pytest.raises(ValueError, match="built with vocabularies"):
        rnnkit.Seq2Seq(10, 13, bos_id=1, eos_id=2).translate(["one"])


def test_variant_cells_and_gru_encoders():
    (x, y), _, _ = _batch()
    for cell in ("gru", "rnn", rnnkit.LayerNormLSTMCell(8, 12)):
        model = rnnkit.Seq2Seq(SOURCE, TARGET, 8, 12, cell=cell, num_layers=2)
        assert model(x).shape == (*y.shape, len(TARGET))
        assert model.decode(x["source"], x["source_lengths"], beam_size=2).tokens.dim() == 2


def test_bad_seq2seq_inputs_are_named():
    model = _model()
    (x, _), _, _ = _batch()
    with pytest.raises(ValueError, match="at least one token"):
        model(x["source"], torch.zeros(4, dtype=torch.long), x["target"])
    with pytest.raises(ValueError, match="source_lengths"):
        model(x["source"], torch.tensor([99, 1, 1, 1]), x["target"])
    with pytest.raises(ValueError, match="lacks"):
        model({"source": x["source"]})
    with pytest.raises(ValueError, match="target inputs of shape"):
        model(x["source"], x["source_lengths"], x["target"][:2])
    with pytest.raises(ValueError, match="bos_id must be a target id"):
        rnnkit.Seq2Seq(10, 13)
    with pytest.raises(ValueError, match="attention must be one of"):
        rnnkit.Seq2Seq(SOURCE, TARGET, attention="concat")


def test_scheduled_sampling_schedules_and_callback():
    assert teacher_forcing_ratio(0, "inverse_sigmoid", 100) == pytest.approx(100 / 101)
    assert teacher_forcing_ratio(500, "inverse_sigmoid", 100) == pytest.approx(
        100 / (100 + math.exp(5))
    )
    assert teacher_forcing_ratio(3, "exponential", 0.9) == pytest.approx(0.729)
    assert teacher_forcing_ratio(250, "linear", 1000, minimum=0.1) == 0.75
    assert teacher_forcing_ratio(5000, "linear", 1000, minimum=0.1) == 0.1
    with pytest.raises(ValueError, match="kind must be"):
        teacher_forcing_ratio(0, "cosine")
    with pytest.raises(ValueError, match="exponential needs 0 < k < 1"):
        rnnkit.ScheduledSampling("exponential", k=2.0)

    class FakeTrainer:
        model = _model()
        step = 1000

    callback = rnnkit.ScheduledSampling("inverse_sigmoid", k=1000)
    callback.on_batch_begin(FakeTrainer, 0)
    assert FakeTrainer.model.teacher_forcing == pytest.approx(1000 / (1000 + math.e))
