"""Generation: carried state against re-running the prefix, batched beams against one forward
per beam.

* ``sample``: :func:`rnnkit.generate.sample_ids` (the prompt once, then one token per step with
  the state carried) against the naive loop that re-runs the model over the whole prefix for
  every new token, 500 tokens from a character LSTM. The naive loop costs O(n^2) tokens; the
  carried state O(n). Target: >= 10x faster (ratio <= 0.1).
* ``beam_search``: :meth:`rnnkit.Seq2Seq.decode` with beam 8 over 32 sources, the step function
  called once per step for all 256 beams, against the same search with the step function called
  once per beam (8 calls of 32 rows per step). Same hypotheses (checked); the ratio is the
  saving of batching the beams' matrix products.
"""

from __future__ import annotations

import torch

import rnnkit
from benchmarks.common import markdown_table, row, time_pair, write_json
from rnnkit.generate import beam_search, filter_logits, sample_ids


def _prefix_rerun(model, prompt: torch.Tensor, steps: int, generator) -> torch.Tensor:
    """The naive sampler: the whole sequence so far through the model for every token."""
    sequence = prompt[None]
    with torch.no_grad():
        for _ in range(steps):
            logits, _ = model(sequence)
            probs = filter_logits(logits[:, -1], 1.0).softmax(-1)
            token = torch.multinomial(probs, 1, generator=generator)
            sequence = torch.cat([sequence, token], dim=1)
    return sequence[:, prompt.numel() :]


def sample_case(quick: bool) -> dict:
    steps, hidden = (50, 32) if quick else (500, 256)
    text = rnnkit.tasks.shakespeare("val")
    vocab = rnnkit.CharVocab(text)
    torch.manual_seed(0)
    model = rnnkit.LanguageModel(vocab, 64, hidden).eval()
    prompt = vocab.encode("ROMEO:\n")
    generator = torch.Generator()
    carried = lambda: sample_ids(model, prompt, steps, generator=generator.manual_seed(0))[0]
    rerun = lambda: _prefix_rerun(model, prompt, steps, generator.manual_seed(0))
    same = bool(torch.equal(carried(), rerun()))
    ours, naive = time_pair(carried, rerun, repeat=2 if quick else 3, warmup=1)
    return row(
        "sample",
        f"{steps} tokens, LSTM {hidden}",
        ours,
        "re-run the prefix each step",
        naive,
        ">= 10x faster (<= 0.1x)",
        same_tokens=same,
    )


def _per_beam(step_fn, beams: int, batch_dim: dict):
    """``step_fn`` called once per beam: rows ``b * beams + k`` of each beam ``k`` together."""

    def step(tokens: torch.Tensor, state: dict):
        n = tokens.shape[0]
        groups = [torch.arange(k, n, beams) for k in range(beams)]
        outs = []
        for rows in groups:
            part = {key: _select(value, batch_dim[key], rows) for key, value in state.items()}
            outs.append(step_fn(tokens[rows], part))
        order = torch.cat(groups).argsort()
        log_probs = torch.cat([o[0] for o in outs])[order]
        merged = {
            key: _merge([o[1][key] for o in outs], batch_dim[key], order) for key in outs[0][1]
        }
        return log_probs, merged

    return step


def _select(value, dim: int, rows: torch.Tensor):
    if isinstance(value, tuple):
        return tuple(v.index_select(dim, rows) for v in value)
    return value.index_select(dim, rows)


def _merge(values: list, dim: int, order: torch.Tensor):
    if isinstance(values[0], tuple):
        return tuple(
            torch.cat(parts, dim).index_select(dim, order) for parts in zip(*values, strict=True)
        )
    return torch.cat(values, dim).index_select(dim, order)


def beam_case(quick: bool) -> dict:
    batch, beams, hidden = (4, 4, 16) if quick else (32, 8, 128)
    sources, _ = rnnkit.tasks.spelled_digits(batch, 5, 10, seed=0)
    source_vocab = rnnkit.Vocab(sources)
    target_vocab = rnnkit.CharVocab("0123456789", specials=("pad", "bos", "eos"))
    torch.manual_seed(0)
    model = rnnkit.Seq2Seq(source_vocab, target_vocab, 32, hidden).eval()
    ids, lengths = source_vocab.encode_batch(sources)
    start = torch.full((batch,), target_vocab.bos_id)

    def step_fn(tokens, state):
        logits, state, _ = model.step(tokens, state)
        return logits.log_softmax(-1), state

    dims = model.STATE_BATCH_DIM
    looped = _per_beam(step_fn, beams, dims)

    def search(fn):
        with torch.no_grad():
            state = model.encode(ids, lengths)
            return beam_search(fn, start, state, beams, 22, target_vocab.eos_id, batch_dim=dims)

    same = bool(torch.equal(search(step_fn).tokens, search(looped).tokens))
    ours, naive = time_pair(
        lambda: search(step_fn), lambda: search(looped), repeat=2 if quick else 5, warmup=1
    )
    return row(
        "beam_search",
        f"{batch} sources x {beams} beams, LSTM {hidden}",
        ours,
        "one step_fn call per beam",
        naive,
        "batched faster (< 1x)",
        same_tokens=same,
    )


def run(quick: bool = False) -> list[dict]:
    return [sample_case(quick), beam_case(quick)]


if __name__ == "__main__":
    rows = run()
    print(markdown_table(rows))
    write_json(rows, "benchmarks/results/generate.json")
