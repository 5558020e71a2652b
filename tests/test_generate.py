import itertools
import math

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.generate import (
    filter_logits,
    greedy_search,
    length_penalty,
    sample_ids,
    stateful_step,
)

VOCAB = rnnkit.CharVocab("abcdefgh \n")


def _model(**kwargs) -> rnnkit.LanguageModel:
    torch.manual_seed(0)
    return rnnkit.LanguageModel(VOCAB, 6, 12, num_layers=2, **kwargs)


# ---- sampling ----------------------------------------------------------------------------------


def test_each_token_is_drawn_from_the_logits_of_a_full_forward():
    model = _model().double().eval()
    prompt = VOCAB.encode("abc de")
    generator = torch.Generator().manual_seed(1)
    ids, logits = sample_ids(model, prompt, 20, temperature=0.8, generator=generator)
    assert ids.shape == (1, 20) and logits.shape == (1, 20, len(VOCAB))
    whole = torch.cat([prompt[None], ids[:, :-1]], dim=1)
    full, _ = model(whole)
    assert torch.allclose(logits, full[:, len(prompt) - 1 :], atol=1e-10)


def test_the_prompt_is_fed_once_then_one_token_per_step():
    model = _model().eval()
    widths = []
    model.embedding.register_forward_hook(lambda m, args, out: widths.append(args[0].numel()))
    rnnkit.sample(model, prompt="abcdefg", steps=30, seed=0)
    assert widths == [7] + [1] * 29  # cost linear in steps: the prefix is never re-run


def test_sample_is_seeded_and_leaves_the_global_rng_and_the_model_alone():
    model = _model(dropout=0.5)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    rng = torch.get_rng_state()
    first = rnnkit.sample(model, prompt="ab", steps=40, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training  # the caller's mode is kept; the sample ran on an eval copy
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert rnnkit.sample(model, prompt="ab", steps=40, seed=3) == first
    assert rnnkit.sample(model.eval(), prompt="ab", steps=40, seed=3) == first  # dropout was off
    assert len(first) == 40 and set(first) <= set(VOCAB.tokens)
    assert rnnkit.sample(model, prompt="ab", steps=40, seed=4) != first
    assert len(rnnkit.sample(model, prompt="ab", steps=5)) == 5  # seed=None: a fresh seed


def test_a_trainer_is_sampled_through_its_copy_at_a_step_boundary():
    model = _model()

    class FakeTrainer:
        copies = 0

        def copy_model(self):
            FakeTrainer.copies += 1
            return _model().train()

    text = rnnkit.sample(FakeTrainer(), VOCAB, prompt="a", steps=10, seed=0)
    assert FakeTrainer.copies == 1
    assert text == rnnkit.sample(model.eval(), prompt="a", steps=10, seed=0)


def test_top_k_one_and_tiny_temperatures_are_greedy():
    model = _model().eval()
    greedy_ids, _, _ = greedy_search(
        stateful_step(model), VOCAB.encode("a")[:1], None, 15, eos=len(VOCAB) + 1, pad=0
    )
    expected = VOCAB.decode(greedy_ids[0])
    assert rnnkit.sample(model, prompt="a", steps=15, top_k=1, seed=0) == expected
    assert rnnkit.sample(model, prompt="a", steps=15, temperature=1e-4, seed=5) == expected


def test_filter_logits_by_hand():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.allclose(filter_logits(logits, 2.0).softmax(-1), (logits / 2).softmax(-1))
    kept = filter_logits(logits, top_k=2)
    assert torch.isinf(kept[2:]).all() and torch.isfinite(kept[:2]).all()
    nucleus = filter_logits(logits, top_p=0.8).softmax(-1)  # 0.5 + 0.3 reach 0.8
    assert torch.allclose(nucleus, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    assert torch.isfinite(filter_logits(logits, top_p=0.81)[:3]).all()
    assert (
        torch.isfinite(filter_logits(logits, top_p=0.1))[0]
        and torch.isinf(filter_logits(logits, top_p=0.1)[1:]).all()
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0}, "temperature must be a finite number > 0, got 0"),
        ({"temperature": -1.0}, "temperature must be a finite number > 0"),
        ({"temperature": float("nan")}, "temperature must be a finite number > 0"),
        ({"top_k": 0}, "top_k must be an int >= 1 or None, got 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\] or None, got 0.0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"steps": -1}, "steps must be an int >= 0"),
        ({"prompt": "abz"}, r"character 'z' \(U\+007A\) at position 2"),
        ({"prompt": ""}, "the prompt is empty and the vocabulary has no bos token"),
        ({"seed": -1}, "seed must be an int >= 0"),
    ],
)
def test_bad_sampling_arguments_are_named(kwargs, message):
    arguments = {"prompt": "ab", "steps": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        rnnkit.sample(_model(), **arguments)


def test_models_that_do_not_follow_the_stateful_contract_are_named():
    with pytest.raises(ValueError, match="needs the vocabulary"):
        rnnkit.sample(rnnkit.LanguageModel(len(VOCAB), 4, 4), prompt="a", steps=2)
    with pytest.raises(ValueError, match=r"forward\(x, state=None\) -> \(logits, state\)"):
        rnnkit.sample(nn.Embedding(len(VOCAB), 4), VOCAB, prompt="a", steps=2)
    with pytest.raises(ValueError, match="the vocabulary has 10 ids, the model 4"):
        rnnkit.sample(rnnkit.LanguageModel(4, 4, 4), VOCAB, prompt="a", steps=2)
    with pytest.raises(ValueError, match="expected a model"):
        rnnkit.sample("model", VOCAB, prompt="a", steps=2)


# ---- beam search -------------------------------------------------------------------------------


class Markov:
    """A tiny model: log P(next | previous two tokens) from a table ``(V, V, V)`` (a ``(V, V)``
    table ignores the older token). The state is the token fed one step earlier, so a state
    that did not follow its beam would give other probabilities. Counts its calls."""

    def __init__(self, table: torch.Tensor) -> None:
        if table.dim() == 2:
            table = table.expand(table.shape[0], *table.shape)
        self.log_table = table.log()
        self.calls: list[int] = []

    def __call__(self, tokens, state):
        self.calls.append(tokens.shape[0])
        return self.log_table[state, tokens], tokens.clone()

    def log_prob(self, start: int, sequence: list[int]) -> float:
        total, older, previous = 0.0, start, start
        for token in sequence:
            total += float(self.log_table[older, previous, token])
            older, previous = previous, token
        return total


def _trap() -> Markov:
    # tokens 0 (start), 1, 2, 3 = eos. Greedy takes 1 (0.6), then nothing is likely;
    # 2 (0.4) then eos (0.9) is the most probable sequence: 0.36 against 0.6 * 0.34.
    return Markov(
        torch.tensor(
            [
                [0.0, 0.6, 0.4, 0.0],
                [0.0, 0.33, 0.33, 0.34],
                [0.0, 0.05, 0.05, 0.9],
                [0.0, 0.0, 0.0, 1.0],
            ]
        ).clamp(min=1e-9)
    )


def test_beam_search_finds_the_sequence_greedy_decoding_misses():
    model = _trap()
    start = torch.tensor([0])
    greedy, lengths, log_p = greedy_search(model, start, start.clone(), 5, eos=3)
    assert greedy[0, :2].tolist() == [1, 3]
    assert math.isclose(float(log_p[0]), math.log(0.6 * 0.34), rel_tol=1e-5)
    found = rnnkit.beam_search(model, start, start.clone(), beam_size=2, max_len=5, eos=3)
    assert found.tokens[0, 0, : found.lengths[0, 0]].tolist() == [2, 3]
    assert math.isclose(float(found.log_probs[0, 0]), math.log(0.36), rel_tol=1e-5)
    assert found.log_probs[0, 0] > log_p[0]


def _random_markov(vocab: int, seed: int) -> Markov:
    generator = torch.Generator().manual_seed(seed)
    logits = 4 * torch.rand(vocab, vocab, vocab, generator=generator, dtype=torch.float64)
    return Markov(logits.softmax(-1))


@pytest.mark.parametrize("seed", range(5))
def test_beam_size_one_is_greedy_decoding(seed):
    model = _random_markov(6, seed)
    start = torch.arange(4) % 3
    greedy, lengths, log_p = greedy_search(model, start, start.clone(), 7, eos=5)
    found = rnnkit.beam_search(model, start, start.clone(), 1, 7, eos=5)
    assert torch.equal(found.lengths[:, 0], lengths)
    for b in range(4):
        n = int(lengths[b])
        assert found.tokens[b, 0, :n].tolist() == greedy[b, :n].tolist()
    assert torch.allclose(found.log_probs[:, 0], log_p.double(), atol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.7, -0.5])
def test_a_wide_beam_finds_the_exact_best_sequence(alpha):
    vocab, eos, max_len = 4, 3, 4
    model = _random_markov(vocab, 11)
    starts = [0, 1, 2]
    found = rnnkit.beam_search(
        model, torch.tensor(starts), torch.tensor(starts), 40, max_len, eos, alpha
    )
    for b, start in enumerate(starts):
        best, best_score = None, -math.inf
        for n in range(1, max_len + 1):
            for body in itertools.product(range(vocab - 1), repeat=n - 1):
                for last in range(vocab):
                    if n < max_len and last != eos:
                        continue  # shorter outputs end with eos
                    seq = [*body, last]
                    score = model.log_prob(start, seq) / length_penalty(n, alpha)
                    if score > best_score:
                        best, best_score = seq, score
        n = int(found.lengths[b, 0])
        assert found.tokens[b, 0, :n].tolist() == best
        assert math.isclose(float(found.scores[b, 0]), best_score, rel_tol=1e-6)
        assert (found.scores[b, :-1] >= found.scores[b, 1:]).all()  # best first


def test_all_beams_of_all_sources_run_in_one_call_per_step():
    model = _random_markov(6, 0)
    start = torch.tensor([0, 1, 2])
    found = rnnkit.beam_search(model, start, start.clone(), 4, 6, eos=5)
    assert set(model.calls) == {12} and len(model.calls) <= 6
    assert found.tokens.shape[:2] == (3, 4)
    for b in range(3):
        for k in range(4):
            n = int(found.lengths[b, k])
            seq = found.tokens[b, k, :n].tolist()
            assert math.isclose(model.log_prob(b, seq), float(found.log_probs[b, k]), rel_tol=1e-6)


def test_beam_search_over_a_language_model_reorders_nested_states():
    model = _model().double().eval()
    prompt = VOCAB.encode("abc")
    with torch.no_grad():
        _, state = model(prompt[None, :-1])
        found = rnnkit.beam_search(
            stateful_step(model), prompt[-1:], state, 3, 6, eos=VOCAB.stoi["\n"], batch_dim=1
        )
        for k in range(3):
            n = int(found.lengths[0, k])
            seq = torch.cat([prompt, found.tokens[0, k, :n]])
            logits, _ = model(seq[None, :-1])
            chosen = (
                logits[0].log_softmax(-1)[len(prompt) - 1 :].gather(1, seq[len(prompt) :, None])
            )
            assert math.isclose(float(chosen.sum()), float(found.log_probs[0, k]), rel_tol=1e-8)


def test_states_of_tuples_and_dicts_follow_their_beams_along_their_own_batch_dims():
    inner = _random_markov(5, 2)

    def step(tokens, state):
        # the older token lives in three places with two batch layouts
        older = state["prev"]
        assert torch.equal(state["pair"][0][1], older) and torch.equal(state["pair"][1], older)
        log_probs, _ = inner(tokens, older)
        new = tokens.clone()
        return log_probs, {"prev": new, "pair": (torch.stack([new, new]), new), "note": None}

    start = torch.tensor([0, 1])
    state = {"prev": start, "pair": (torch.stack([start, start]), start), "note": None}
    dims = {"prev": 0, "pair": (1, 0), "note": None}
    found = rnnkit.beam_search(step, start, state, 3, 5, eos=4, batch_dim=dims)
    for b in range(2):
        for k in range(3):
            seq = found.tokens[b, k, : found.lengths[b, k]].tolist()
            assert math.isclose(inner.log_prob(b, seq), float(found.log_probs[b, k]), rel_tol=1e-9)
    with pytest.raises(ValueError, match="batch_dim gives no dimension"):
        rnnkit.beam_search(step, start, state, 3, 5, eos=4, batch_dim={"prev": 0})


def test_length_penalty_is_gnmts_formula():
    assert length_penalty(1, 0.0) == 1.0
    assert math.isclose(length_penalty(7, 0.6), (12 / 6) ** 0.6)


def test_bad_search_arguments_are_named():
    model = _random_markov(4, 0)
    start = torch.tensor([0])
    with pytest.raises(ValueError, match="beam_size must be an int >= 1, got 0"):
        rnnkit.beam_search(model, start, start, 0, 5, eos=3)
    with pytest.raises(ValueError, match="max_len must be an int >= 1"):
        rnnkit.beam_search(model, start, start, 2, 0, eos=3)
    with pytest.raises(ValueError, match="start_tokens must be a 1-D tensor"):
        rnnkit.beam_search(model, start[None], start, 2, 5, eos=3)
    with pytest.raises(ValueError, match=r"log_probs of shape \(N, V\) with N = 2"):
        rnnkit.beam_search(lambda t, s: (torch.zeros(1, 4), s), start, start, 2, 5, eos=3)
