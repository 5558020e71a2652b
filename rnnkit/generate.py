r"""Generation from stateful models: sampling and beam search, the state carried step by step.

(Not to be confused with :mod:`rnnkit.sampling`, the length-bucketing *batch samplers* for
DataLoaders: :func:`sample` here draws *text* from a model.)

What it promises:

* :func:`sample` feeds the prompt once, then one token at a time with the state the previous
  call returned (``model.step(tokens, state)`` when the model has one, as
  :class:`rnnkit.LanguageModel` does, else ``model(tokens[:, None], state)``), so ``steps``
  tokens cost ``steps`` one-token forwards, never a re-run of the prefix; token ``k`` is drawn
  from exactly the logits a full forward over prompt and tokens ``< k`` gives at that position
  (tested). It draws from its own ``torch.Generator`` and never touches the global RNG, and it
  never changes the caller's model: a model in training mode is copied and the copy run in
  evaluation mode;
* :func:`beam_search` keeps ``beam_size`` hypotheses per source for a batch of sources at once:
  one ``step_fn`` call per step for all beams of all sources, the state (any nesting of tuples,
  lists and dicts of tensors) reordered along its batch dimension as beams are chosen, and
  finished hypotheses ranked with GNMT's length penalty (Wu et al. 2016). ``beam_size=1`` is
  greedy decoding (:func:`greedy_search`), and with a large enough beam the result is the
  exact best sequence (tested against brute force).

The step protocol shared by the language model and the seq2seq decoder::

    log_probs, state = step_fn(tokens, state)   # tokens (N,) -> log_probs (N, V); N = B * beams

rows ``b * beams .. b * beams + beams - 1`` hold source ``b``'s beams.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.language_model import vocab_of
from rnnkit.text import Vocabulary

__all__ = [
    "BeamSearchResult",
    "beam_search",
    "filter_logits",
    "greedy_search",
    "length_penalty",
    "sample",
    "sample_ids",
    "stateful_step",
]

StepFn = Callable[[Tensor, Any], tuple[Tensor, Any]]


# --------------------------------------------------------------------------------------------
# Sampling.


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise a ``ValueError`` naming a bad temperature (must be finite and > 0), top_k (an int
    >= 1 or None) or top_p (in (0, 1] or None)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(
            f"temperature must be a finite number > 0, got {temperature!r} "
            "(for the most likely token every step, use a small temperature such as 1e-3)"
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1
    ):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def filter_logits(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    r"""The logits to draw from: ``logits / temperature``, then only the ``top_k`` largest kept
    (Fan, Lewis & Dauphin 2018), then only the nucleus (Holtzman et al. 2020): the fewest most
    likely tokens whose probabilities sum to at least ``top_p``. Removed tokens get ``-inf``.

    .. math::
        p_i \propto \exp(z_i / \tau)

    ``tau < 1`` sharpens the distribution toward the most likely token, ``tau > 1`` flattens it
    toward uniform. ``logits`` is ``(..., V)``.
    """
    check_sampling(temperature, top_k, top_p)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens before it already reach top_p (the first always stays)
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _forward(model: nn.Module, x: Tensor, state) -> tuple[Tensor, Any]:
    try:
        result = model(x, state)
    except TypeError as err:
        raise ValueError(
            f"generation needs a stateful model, forward(x, state=None) -> (logits, state); "
            f"calling {type(model).__name__}(x, state) failed: {err}"
        ) from err
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], Tensor)):
        raise ValueError(
            f"generation needs a stateful model, forward(x, state=None) -> (logits, state); "
            f"{type(model).__name__} returned {type(result).__name__} (wrap a torch.nn layer in "
            "rnnkit.Stateful, or use rnnkit.LanguageModel)"
        )
    logits = result[0]
    if logits.dim() != 3 or logits.shape[:2] != x.shape:
        raise ValueError(
            f"generation expects logits of shape (batch, time, vocab) = {(*x.shape, 'V')}, "
            f"got {tuple(logits.shape)}"
        )
    return result


def _one_token(model: nn.Module, tokens: Tensor, state) -> tuple[Tensor, Any]:
    """One token per sequence: ``model.step(tokens, state)`` where the model has it (rnnkit's
    :class:`LanguageModel`), else ``model(tokens[:, None], state)``; logits ``(B, V)``."""
    step = getattr(model, "step", None)
    if callable(step):
        return step(tokens, state)
    logits, state = _forward(model, tokens[:, None], state)
    return logits[:, -1], state


def _widened(logits: Tensor) -> Tensor:
    """float16/bfloat16 logits in float32 (softmax and sums need the range); others as they are."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _generation_model(model) -> nn.Module:
    """The module to run: a Trainer's copy taken at a step boundary, or the model itself
    (a copy in eval mode when it is in training mode, so the caller's mode never changes)."""
    if not isinstance(model, nn.Module) and callable(getattr(model, "copy_model", None)):
        return model.copy_model().eval()
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"expected a model (torch.nn.Module) or a Trainer, got {type(model).__name__}"
        )
    return copy.deepcopy(model).eval() if model.training else model


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def sample_ids(
    model: nn.Module,
    prompt: Tensor,
    steps: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw ``steps`` tokens after ``prompt`` (ids ``(P,)`` or ``(B, P)``, ``P >= 1``) from a
    stateful model, as the module docstring says. Returns ``(ids (B, steps), logits (B, steps,
    V))``: ``logits[:, k]`` are the model's raw logits that token ``k`` was drawn from. The model
    is run as it is (its mode untouched; use :func:`sample` for the copy in eval mode)."""
    check_sampling(temperature, top_k, top_p)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not isinstance(prompt, Tensor) or prompt.dim() not in (1, 2) or prompt.shape[-1] < 1:
        got = (
            f"shape {tuple(prompt.shape)}" if isinstance(prompt, Tensor) else type(prompt).__name__
        )
        raise ValueError(f"the prompt must be ids of shape (P,) or (B, P) with P >= 1, got {got}")
    device = _device(model)
    x = (prompt if prompt.dim() == 2 else prompt[None]).to(device)
    ids, kept = [], []
    with torch.no_grad():
        logits, state = _forward(model, x, None)
        last = logits[:, -1]
        for k in range(steps):
            probs = filter_logits(_widened(last), temperature, top_k, top_p).softmax(dim=-1)
            token = torch.multinomial(probs, 1, generator=generator)
            ids.append(token)
            kept.append(last)
            if k + 1 < steps:
                last, state = _one_token(model, token[:, 0], state)
    vocab_size = logits.shape[-1]
    if not ids:
        return x.new_zeros(x.shape[0], 0), logits.new_zeros(x.shape[0], 0, vocab_size)
    return torch.cat(ids, dim=1), torch.stack(kept, dim=1)


def sample(
    model,
    vocab: Vocabulary | None = None,
    prompt: str = "",
    steps: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> str:
    """Text drawn from a language model after ``prompt``: the ``steps`` new tokens, decoded.

    ``model`` is a stateful model (:class:`rnnkit.LanguageModel`, :class:`rnnkit.Stateful`, any
    ``forward(x, state=None) -> (logits, state)``) or a Trainer, in which case the sample comes
    from ``trainer.copy_model()``, a copy taken at a step boundary, so that a run training the
    same model in the background is left exact. ``vocab`` defaults to ``model.vocab``. The
    prompt is fed once, then one token at a time with the state carried (:func:`sample_ids`);
    each token is drawn from ``filter_logits(logits, temperature, top_k, top_p)``. ``seed``
    seeds the sampler's own ``torch.Generator`` (None: a fresh random seed; the global RNG is
    never used). An empty prompt starts from the vocabulary's bos token, which it must have.

    Bad arguments are ``ValueError``: ``temperature <= 0``, ``top_k < 1``, ``top_p`` outside
    ``(0, 1]``, and a prompt with a character the vocabulary does not have (and no unk token),
    named with its position.
    """
    check_sampling(temperature, top_k, top_p)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be an int >= 0 or None, got {seed!r}")
    if not isinstance(prompt, str):
        raise ValueError(f"the prompt must be a str, got {type(prompt).__name__}")
    module = _generation_model(model)
    vocab = vocab if vocab is not None else vocab_of(module)
    if not isinstance(vocab, Vocabulary):
        raise ValueError(
            "rnnkit.sample needs the vocabulary: pass vocab=, or build the model with it "
            f"(rnnkit.LanguageModel(vocab, ...)); got {type(vocab).__name__}"
        )
    if prompt:
        try:
            ids = vocab.encode(prompt)
        except ValueError as err:
            raise ValueError(f"rnnkit.sample: the prompt cannot be encoded: {err}") from None
    elif vocab.bos_id is not None:
        ids = torch.tensor([vocab.bos_id])
    else:
        raise ValueError(
            "rnnkit.sample: the prompt is empty and the vocabulary has no bos token to start "
            "from; give a prompt of at least one character"
        )
    size = getattr(module, "vocab_size", len(vocab))
    if size != len(vocab):
        raise ValueError(f"rnnkit.sample: the vocabulary has {len(vocab)} ids, the model {size}")
    generator = torch.Generator(device=_device(module))
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    tokens, _ = sample_ids(module, ids, steps, temperature, top_k, top_p, generator)
    return vocab.decode(tokens[0], keep_specials=True)


# --------------------------------------------------------------------------------------------
# Greedy and beam search.


def length_penalty(length: int | Tensor, alpha: float) -> float | Tensor:
    r"""GNMT's length normalisation (Wu et al. 2016, eq. 14):
    :math:`lp(Y) = ((5 + |Y|) / 6)^\alpha`; a hypothesis scores :math:`\log P(Y) / lp(Y)`.
    ``alpha = 0`` gives ``lp = 1``, pure log-probability; larger ``alpha`` favours longer output."""
    return ((5 + length) / 6) ** alpha


def _map_state(fn: Callable[[Tensor, int], Tensor], state, dims):
    """Apply ``fn(tensor, batch_dim)`` to every tensor of a nested state; ``dims`` is one int for
    all of them or the same nesting with an int (or None: leave alone) at each leaf."""
    if isinstance(state, Tensor):
        if isinstance(dims, (dict, list, tuple)):
            raise ValueError(f"batch_dim {dims!r} is nested where the state has a tensor")
        return state if dims is None else fn(state, dims)
    if state is None:
        return None
    if isinstance(state, dict):
        sub = dims if isinstance(dims, dict) else dict.fromkeys(state, dims)
        missing = set(state) - set(sub)
        if missing:
            raise ValueError(f"batch_dim gives no dimension for the state's keys {sorted(missing)}")
        return {k: _map_state(fn, v, sub[k]) for k, v in state.items()}
    if isinstance(state, (tuple, list)):
        sub = dims if isinstance(dims, (tuple, list)) else [dims] * len(state)
        if len(sub) != len(state):
            raise ValueError(f"batch_dim {dims!r} does not match a state of {len(state)} parts")
        parts = [_map_state(fn, v, d) for v, d in zip(state, sub, strict=True)]
        if hasattr(state, "_fields"):
            return type(state)(*parts)
        return type(state)(parts)
    raise ValueError(
        f"the state may hold tensors, tuples, lists and dicts, got {type(state).__name__}"
    )


def _check_search(start_tokens: Tensor, max_len: int, eos: int) -> None:
    if not isinstance(start_tokens, Tensor) or start_tokens.dim() != 1:
        got = (
            f"shape {tuple(start_tokens.shape)}"
            if isinstance(start_tokens, Tensor)
            else type(start_tokens).__name__
        )
        raise ValueError(f"start_tokens must be a 1-D tensor of ids (one per source), got {got}")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be an int >= 1, got {max_len!r}")
    if isinstance(eos, bool) or not isinstance(eos, int) or eos < 0:
        raise ValueError(f"eos must be a token id (an int >= 0), got {eos!r}")


def _step(step_fn: StepFn, tokens: Tensor, state) -> tuple[Tensor, Any]:
    result = step_fn(tokens, state)
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], Tensor)):
        raise ValueError("step_fn must return (log_probs (N, V), state)")
    log_probs = result[0]
    if log_probs.dim() != 2 or log_probs.shape[0] != tokens.shape[0]:
        raise ValueError(
            f"step_fn must return log_probs of shape (N, V) with N = {tokens.shape[0]}, "
            f"got {tuple(log_probs.shape)}"
        )
    return result


def greedy_search(
    step_fn: StepFn, start_tokens: Tensor, state, max_len: int, eos: int, *, pad: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The most likely token at every step, for a batch of sources at once.

    Returns ``(tokens (B, T), lengths (B,), log_probs (B,))``: each output up to and including
    its ``eos`` (or ``max_len`` tokens), then ``pad`` (default ``eos``); ``log_probs`` sums the
    chosen tokens' log-probabilities (float64). Stops when every output has ended."""
    _check_search(start_tokens, max_len, eos)
    pad = eos if pad is None else pad
    batch = start_tokens.shape[0]
    tokens, done = start_tokens, torch.zeros(batch, dtype=torch.bool, device=start_tokens.device)
    lengths = torch.full((batch,), max_len, dtype=torch.long, device=start_tokens.device)
    total = torch.zeros(batch, dtype=torch.float64, device=start_tokens.device)
    out = []
    for t in range(max_len):
        log_probs, state = _step(step_fn, tokens, state)
        best, tokens = log_probs.max(dim=-1)
        total = total + torch.where(done, 0.0, best.double())
        out.append(torch.where(done, pad, tokens))
        ended = ~done & (tokens == eos)
        lengths = torch.where(ended, t + 1, lengths)
        done = done | ended
        if bool(done.all()):
            break
    return torch.stack(out, dim=1), lengths, total


class BeamSearchResult(NamedTuple):
    """Per source, ``beams`` hypotheses best first: ``tokens (B, beams, T)`` (each up to and
    including its eos, then padding), ``lengths (B, beams)`` (counting eos), ``scores`` (log P
    over the length penalty: what ranks them) and ``log_probs`` (log P itself), both float64."""

    tokens: Tensor
    lengths: Tensor
    scores: Tensor
    log_probs: Tensor


def beam_search(
    step_fn: StepFn,
    start_tokens: Tensor,
    state,
    beam_size: int,
    max_len: int,
    eos: int,
    length_penalty: float = 0.0,
    *,
    batch_dim=0,
    pad: int | None = None,
) -> BeamSearchResult:
    r"""Beam search for a batch of sources, one ``step_fn`` call per step for all beams.

    ``step_fn(tokens (N,), state) -> (log_probs (N, V), state)`` with ``N = B * beam_size``
    (module docstring); ``start_tokens (B,)`` are the first inputs (bos) and ``state`` the state
    for ``B`` sources, which is repeated for each beam. ``batch_dim`` says where the batch is in
    the state's tensors: one int for all (0), or the state's nesting with an int per tensor (an
    LSTM's ``(h, c)`` of shape ``(layers, B, H)`` has it at 1; None leaves a tensor alone).

    Each step extends every live beam by every token, keeps the ``2 * beam_size`` best by
    :math:`\log P`, moves those ending in ``eos`` among the first ``beam_size`` to the source's
    finished list, scored :math:`\log P(Y) / ((5 + |Y|) / 6)^\alpha` (``alpha =
    length_penalty``; GNMT, Wu et al. 2016), and continues with the ``beam_size`` best others.
    A source is done when no live beam can still beat its worst finished hypothesis (the bound
    uses the largest penalty any longer output could get, so stopping early never loses a
    better one); at ``max_len`` the live beams are finished as they are.
    """
    _check_search(start_tokens, max_len, eos)
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size must be an int >= 1, got {beam_size!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)):
        raise ValueError(f"length_penalty must be a number (GNMT's alpha), got {length_penalty!r}")
    pad = eos if pad is None else pad
    alpha, beams, batch = float(length_penalty), beam_size, start_tokens.shape[0]
    device = start_tokens.device
    lp = lambda n: ((5 + n) / 6) ** alpha
    state = _map_state(lambda s, d: s.repeat_interleave(beams, dim=d), state, batch_dim)
    tokens = start_tokens.repeat_interleave(beams)
    live = torch.full((batch, beams), float("-inf"), dtype=torch.float64, device=device)
    live[:, 0] = 0.0  # all beams start equal: expand one of them only
    live_seqs = torch.zeros(batch, beams, 0, dtype=torch.long, device=device)
    fin_scores = torch.full((batch, beams), float("-inf"), dtype=torch.float64, device=device)
    fin_logp = fin_scores.clone()
    fin_seqs = torch.full((batch, beams, max_len), pad, dtype=torch.long, device=device)
    fin_lengths = torch.zeros(batch, beams, dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device)[:, None]

    def finish(scores: Tensor, logp: Tensor, seqs: Tensor, length: int) -> None:
        nonlocal fin_scores, fin_logp, fin_seqs, fin_lengths
        padded = F.pad(seqs, (0, max_len - seqs.shape[-1]), value=pad)
        all_scores = torch.cat([fin_scores, scores], dim=1)
        fin_scores, pick = all_scores.topk(beams, dim=1)
        fin_logp = torch.cat([fin_logp, logp], dim=1).gather(1, pick)
        fin_seqs = torch.cat([fin_seqs, padded], dim=1)[rows, pick]
        new_lengths = torch.full_like(scores, length, dtype=torch.long)
        fin_lengths = torch.cat([fin_lengths, new_lengths], dim=1).gather(1, pick)

    ran_to_end = True
    for t in range(max_len):
        log_probs, state = _step(step_fn, tokens, state)
        vocab = log_probs.shape[-1]
        candidates = (live[:, :, None] + log_probs.double().view(batch, beams, vocab)).view(
            batch, -1
        )
        top, index = candidates.topk(min(2 * beams, beams * vocab), dim=1)
        source_beam, token = index // vocab, index % vocab
        seqs = torch.cat([live_seqs[rows, source_beam], token[..., None]], dim=-1)
        is_eos = token == eos
        rank = torch.arange(top.shape[1], device=device)[None, :]
        ends = is_eos & (rank < beams) & torch.isfinite(top)
        finish(torch.where(ends, top / lp(t + 1), float("-inf")), top, seqs, t + 1)
        live, pick = torch.where(is_eos, float("-inf"), top).topk(beams, dim=1)
        chosen = source_beam.gather(1, pick)
        live_seqs = seqs[rows, pick]
        tokens = token.gather(1, pick).view(-1)
        order = (rows * beams + chosen).view(-1)
        state = _map_state(lambda s, d, o=order: s.index_select(d, o), state, batch_dim)
        if t + 1 < max_len:
            bound = live.max(dim=1).values / max(lp(t + 2), lp(max_len))
            if bool((fin_scores.min(dim=1).values >= bound).all()):
                ran_to_end = False
                break
    if ran_to_end:
        finish(live / lp(max_len), live, live_seqs, max_len)
    longest = int(fin_lengths.max()) if fin_lengths.numel() else 0
    return BeamSearchResult(fin_seqs[..., :longest], fin_lengths, fin_scores, fin_logp)


def stateful_step(model: nn.Module) -> StepFn:
    """A ``step_fn`` for :func:`beam_search` / :func:`greedy_search` from a stateful model:
    ``tokens (N,) -> log_softmax(model(tokens[:, None], state) logits)``. rnnkit's layers keep
    the batch at dimension 1 of their state: pass ``batch_dim=1``."""

    def step(tokens: Tensor, state):
        logits, state = _one_token(model, tokens, state)
        return _widened(logits).log_softmax(dim=-1), state

    return step
