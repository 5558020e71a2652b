import json

import pytest
import torch

import rnnkit
from rnnkit.text import Vocabulary

# ---- vocabularies ------------------------------------------------------------------------------


def test_char_vocab_sorts_characters_after_the_specials_in_their_fixed_order():
    vocab = rnnkit.CharVocab("banana!", specials=("eos", "pad", "bos", "unk"))
    assert (vocab.pad_id, vocab.unk_id, vocab.bos_id, vocab.eos_id) == (0, 1, 2, 3)
    assert vocab.tokens == ["<pad>", "<unk>", "<bos>", "<eos>", "!", "a", "b", "n"]
    assert len(vocab) == 8
    plain = rnnkit.CharVocab(["ba", "nc"])
    assert plain.tokens == ["a", "b", "c", "n"]
    assert (plain.pad_id, plain.unk_id, plain.bos_id, plain.eos_id) == (None,) * 4
    only_eos = rnnkit.CharVocab("ab", specials=("eos",))
    assert only_eos.eos_id == 0 and only_eos.stoi["a"] == 1


def test_char_vocab_round_trips_the_shakespeare_corpus():
    text = rnnkit.tasks.shakespeare("val")
    vocab = rnnkit.CharVocab(rnnkit.tasks.shakespeare("all"))
    assert len(vocab) == 65
    ids = vocab.encode(text)
    assert ids.dtype == torch.long and ids.shape == (len(text),)
    assert vocab.decode(ids) == text
    assert ids[:5].tolist() == [vocab.stoi[c] for c in text[:5]]


def test_unknown_characters_become_unk_or_a_named_error():
    with_unk = rnnkit.CharVocab("abc", specials=("unk",))
    assert with_unk.encode("abz").tolist() == [1, 2, with_unk.unk_id]
    assert with_unk.decode(with_unk.encode("azb")) == "a<unk>b"
    without = rnnkit.CharVocab("ab\n")
    with pytest.raises(ValueError) as err:
        without.encode("ab\nabé\nb€")
    message = str(err.value)
    assert "'é' (U+00E9) at position 5" in message
    assert "line 2, column 3" in message
    assert "1 more unknown characters follow" in message
    assert "specials=('unk',)" in message


def test_word_vocab_min_count_order_and_unknown_words():
    texts = ["the cat sat", "the dog sat", "the end"]
    vocab = rnnkit.Vocab(texts, min_count=2)
    assert vocab.tokens == ["<pad>", "<unk>", "the", "sat"]
    assert vocab.encode("the cat sat").tolist() == [2, 1, 3]
    assert vocab.encode(["sat", "the"]).tolist() == [3, 2]
    assert vocab.decode([2, 1, 3, 0]) == "the <unk> sat"
    assert rnnkit.Vocab(texts, max_size=1).tokens == ["<pad>", "<unk>", "the"]
    strict = rnnkit.Vocab(texts, specials=())
    with pytest.raises(ValueError, match=r"word 'bird' \(token 2 of the input, after 'the end'\)"):
        strict.encode("the end bird")
    assert rnnkit.Vocab(["a <unk> b"]).encode("<unk>").tolist() == [1]


def test_bos_eos_and_padded_batches():
    vocab = rnnkit.CharVocab("0123", specials=("pad", "bos", "eos"))
    assert vocab.encode("12", bos=True, eos=True).tolist() == [1, 4, 5, 2]
    ids, lengths = vocab.encode_batch(["0", "123"], bos=True, eos=True)
    assert ids.tolist() == [[1, 3, 2, 0, 0], [1, 4, 5, 6, 2]]
    assert lengths.tolist() == [3, 5]
    assert vocab.decode(ids) == ["0", "123"]
    assert vocab.decode(ids[0], keep_specials=True) == "<bos>0<eos><pad><pad>"
    with pytest.raises(ValueError, match="this vocabulary has none; build it with .pad."):
        rnnkit.CharVocab("ab").encode_batch(["a"])
    with pytest.raises(ValueError, match="eos=True needs a <eos> token"):
        rnnkit.CharVocab("ab").encode("a", eos=True)
    with pytest.raises(ValueError, match="expected a list of texts"):
        vocab.encode_batch("0123")


def test_decode_names_bad_ids():
    vocab = rnnkit.CharVocab("ab")
    with pytest.raises(
        ValueError, match=r"id 7 at position 1 is outside the vocabulary's \[0, 2\)"
    ):
        vocab.decode([0, 7])
    with pytest.raises(ValueError, match="expected integer ids, got torch.float32"):
        vocab.decode(torch.zeros(3))
    with pytest.raises(ValueError, match="got shape"):
        vocab.decode(torch.zeros(1, 1, 1, dtype=torch.long))


def test_json_round_trip_and_refusals():
    for vocab in (
        rnnkit.CharVocab("héllo wörld", specials=("pad", "eos")),
        rnnkit.Vocab(["a b b c"], min_count=2),
    ):
        text = vocab.to_json()
        data = json.loads(text)  # plain JSON, readable by anything
        assert data["kind"] == vocab.kind and data["specials"] == list(vocab.specials)
        again = Vocabulary.from_json(text)
        assert type(again) is type(vocab) and again == vocab
        assert type(vocab).from_json(text) == vocab
    with pytest.raises(ValueError, match="holds a CharVocab"):
        rnnkit.Vocab.from_json(rnnkit.CharVocab("a").to_json())
    with pytest.raises(ValueError, match="not JSON"):
        Vocabulary.from_json("{oops")
    with pytest.raises(ValueError, match="written by to_json"):
        Vocabulary.from_json('{"tokens": []}')
    with pytest.raises(ValueError, match="unknown special"):
        rnnkit.CharVocab("a", specials=("mask",))


# ---- streams and windows -----------------------------------------------------------------------


def test_lm_streams_are_a_view_with_the_tail_dropped():
    ids = torch.arange(23)
    streams = rnnkit.lm_streams(ids, 4)
    assert streams.shape == (4, 5)
    assert streams.data_ptr() == ids.data_ptr()
    assert streams[1].tolist() == [5, 6, 7, 8, 9]
    assert streams[-1, -1] == 19  # 20, 21, 22 fill no stream
    with pytest.raises(ValueError, match="cannot fill 12 streams"):
        rnnkit.lm_streams(ids, 12)
    with pytest.raises(ValueError, match="1-D tensor of ids"):
        rnnkit.lm_streams(ids.view(1, -1), 2)
    with pytest.raises(ValueError, match="integer ids"):
        rnnkit.lm_streams(ids.float(), 2)


def test_windows_are_views_that_walk_the_streams_in_order():
    streams = rnnkit.lm_streams(torch.arange(100), 4)  # 4 x 25
    batches = rnnkit.bptt_batches(streams, 7)
    windows = list(batches)
    assert len(batches) == len(windows) == 4  # 24 positions with a next token: 7 + 7 + 7 + 3
    assert [x.shape[1] for x, _ in windows] == [7, 7, 7, 3]
    assert torch.equal(torch.cat([x for x, _ in windows], dim=1), streams[:, :-1])
    assert torch.equal(torch.cat([y for _, y in windows], dim=1), streams[:, 1:])
    for x, y in windows:
        assert x.untyped_storage().data_ptr() == streams.untyped_storage().data_ptr()
        assert y.untyped_storage().data_ptr() == streams.untyped_storage().data_ptr()
    assert [torch.equal(a[0], b[0]) for (a, _), (b, _) in zip(windows, batches, strict=True)] == [
        True
    ] * 4
    assert batches.seq_len == 7 and batches.variable is False and batches.tokens == 100


def test_variable_windows_follow_awd_lstm_and_depend_only_on_seed_and_epoch():
    streams = rnnkit.lm_streams(torch.arange(400_000), 4)
    batches = rnnkit.bptt_batches(streams, 70, variable=True, seed=3)
    lengths = torch.tensor(batches.window_lengths()[:-1], dtype=torch.float)
    assert lengths.min() >= 5
    half = (lengths < 52).float().mean()  # the seq_len / 2 draws (35 +- 5)
    assert 0.03 < half < 0.07
    full = lengths[lengths >= 52]
    assert abs(full.mean() - 70) < 0.5 and abs(full.std() - 5) < 0.5
    assert sum(batches.window_lengths()) == streams.shape[1] - 1
    again = rnnkit.bptt_batches(streams, 70, variable=True, seed=3)
    assert again.window_lengths() == batches.window_lengths()
    batches.set_epoch(1)
    assert batches.window_lengths() != again.window_lengths()
    again.set_epoch(1)
    assert again.window_lengths() == batches.window_lengths()
    assert len(batches) == len(batches.window_lengths())
    other_seed = rnnkit.bptt_batches(streams, 70, variable=True, seed=4)
    assert other_seed.window_lengths() != again.window_lengths()


def test_resume_at_a_window_and_refuse_other_streams():
    streams = rnnkit.lm_streams(torch.arange(1000), 4)
    batches = rnnkit.bptt_batches(streams, 10, variable=True, seed=1)
    batches.set_epoch(2)
    iterator = iter(batches)
    seen = [next(iterator) for _ in range(5)]
    state = batches.state_dict()
    assert state["position"] == 5 and state["epoch"] == 2 and state["streams"] == 4
    rest = list(iterator)
    assert batches.state_dict()["position"] == len(batches)

    fresh = rnnkit.bptt_batches(streams, 10, variable=True, seed=1)
    fresh.load_state_dict({**state, "position": 3})  # the trainer consumed 3 windows
    resumed = list(fresh)
    expected = seen[3:] + rest
    assert len(resumed) == len(expected)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(resumed, expected, strict=True)
    )
    assert len(list(fresh)) == len(fresh)  # the next walk starts at the epoch's beginning

    with pytest.raises(ValueError, match=r"streams \(batch size\) 4, this batch source has 8"):
        rnnkit.bptt_batches(rnnkit.lm_streams(torch.arange(1000), 8), 10, True, 1).load_state_dict(
            state
        )
    with pytest.raises(ValueError, match="tokens .* 1000, this batch source has 800"):
        rnnkit.bptt_batches(rnnkit.lm_streams(torch.arange(800), 4), 10, True, 1).load_state_dict(
            state
        )
    with pytest.raises(ValueError, match="seq_len 10, this batch source has 12"):
        rnnkit.bptt_batches(streams, 12, True, 1).load_state_dict(state)
    with pytest.raises(ValueError, match="position must be an int"):
        fresh.load_state_dict({**state, "position": 10_000})
    with pytest.raises(ValueError, match="lacks"):
        fresh.load_state_dict({"epoch": 0})


def test_shard_gives_each_rank_its_streams_with_the_same_windows():
    streams = rnnkit.lm_streams(torch.arange(1200), 6)
    batches = rnnkit.bptt_batches(streams, 9, variable=True, seed=2)
    batches.set_epoch(1)
    parts = [batches.shard(rank, 3) for rank in range(3)]
    assert all(p.window_lengths() == batches.window_lengths() for p in parts)
    for window, *shards in zip(batches, *parts, strict=True):
        assert torch.equal(torch.cat([s[0] for s in shards]), window[0])
    with pytest.raises(ValueError, match="6 streams cannot be split evenly over 4 processes"):
        batches.shard(0, 4)
    with pytest.raises(ValueError, match="rank must be in"):
        batches.shard(3, 3)


def test_bad_window_arguments_are_named():
    streams = rnnkit.lm_streams(torch.arange(100), 4)
    with pytest.raises(ValueError, match="seq_len must be an int >= 1, got 0"):
        rnnkit.bptt_batches(streams, 0)
    with pytest.raises(ValueError, match=r"from rnnkit.lm_streams\(ids, batch_size\), got shape"):
        rnnkit.bptt_batches(torch.arange(10), 5)
    with pytest.raises(ValueError, match="variable must be True or False"):
        rnnkit.bptt_batches(streams, 5, variable=1)
    with pytest.raises(ValueError, match="epoch must be an int"):
        rnnkit.bptt_batches(streams, 5).set_epoch(-1)


def test_carrying_the_state_across_windows_equals_one_pass_over_the_stream():
    torch.manual_seed(0)
    vocab_size = 11
    streams = rnnkit.lm_streams(torch.randint(vocab_size, (4 * 50,)), 4)
    model = rnnkit.LanguageModel(vocab_size, 8, 16, num_layers=2).double()
    state, pieces = None, []
    for x, _ in rnnkit.bptt_batches(streams, 8, variable=True, seed=0, min_len=2, std=2.0):
        logits, state = model(x, rnnkit.detach_state(state))
        pieces.append(logits)
    whole, _ = model(streams[:, :-1])
    assert torch.allclose(torch.cat(pieces, dim=1), whole, atol=1e-10)
