r"""Attention over an encoder's outputs: additive (Bahdanau) and multiplicative (Luong).

A decoder state (the *query* :math:`s`) scores every encoder output (the *keys* :math:`h_j`,
``j = 1..S``); the scores become weights by a softmax over the source, and the context is the
weighted sum of the keys:

.. math::
    \alpha_j = \frac{\exp e_j}{\sum_{k \in \text{real}} \exp e_k}, \qquad
    c = \sum_j \alpha_j h_j

Padded source steps are masked before the softmax (their score is :math:`-\infty`), so their
weight is exactly zero and a sequence's context does not depend on how much padding its batch
has. The part of the score that depends on the keys only is computed once per source
(:meth:`prepare`), not once per decoder step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BahdanauAttention", "LuongAttention", "masked_softmax"]


def masked_softmax(scores: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax over the last axis with ``mask == False`` positions at exactly zero weight.

    Every row must keep at least one position (a source of length 0 has nothing to attend to:
    that is a ``ValueError``)."""
    if mask is None:
        return scores.softmax(dim=-1)
    if mask.shape != scores.shape:
        raise ValueError(
            f"attention: the mask has shape {tuple(mask.shape)}, the scores {tuple(scores.shape)}"
        )
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("attention: a source has no real step (length 0); lengths must be >= 1")
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)


class _Attention(nn.Module):
    def prepare(self, keys: Tensor) -> Tensor:
        """The keys' share of the score, once per source: ``(B, S, *)``."""
        raise NotImplementedError

    def score(self, query: Tensor, prepared: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(
        self,
        query: Tensor,
        keys: Tensor,
        mask: Tensor | None = None,
        prepared: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``query (B, Q)``, ``keys (B, S, K)``, ``mask (B, S)`` (True at real steps) ->
        ``(context (B, K), weights (B, S))``; ``prepared`` is :meth:`prepare(keys)` if known."""
        name = type(self).__name__
        if query.dim() != 2 or query.shape[-1] != self.query_size:
            raise ValueError(
                f"{name}: expected a query of shape (batch, {self.query_size}), "
                f"got {tuple(query.shape)}"
            )
        if keys.dim() != 3 or keys.shape[-1] != self.key_size or keys.shape[0] != query.shape[0]:
            raise ValueError(
                f"{name}: expected keys of shape ({query.shape[0]}, source, {self.key_size}), "
                f"got {tuple(keys.shape)}"
            )
        prepared = self.prepare(keys) if prepared is None else prepared
        weights = masked_softmax(self.score(query, prepared), mask)
        context = torch.bmm(weights.unsqueeze(1), keys).squeeze(1)
        return context, weights


class BahdanauAttention(_Attention):
    r"""Additive attention (Bahdanau, Cho & Bengio 2015, "Neural Machine Translation by Jointly
    Learning to Align and Translate"):

    .. math::
        e_j = v^\top \tanh(W_q s + W_k h_j)

    with ``W_q (A, Q)``, ``W_k (A, K)`` (``prepare`` computes :math:`W_k h_j`) and ``v (A,)``;
    ``attention_size`` ``A`` defaults to ``query_size``. In :class:`rnnkit.Seq2Seq` the query is
    the decoder state *before* the step, and the context feeds the step, as in the paper.
    """

    def __init__(self, query_size: int, key_size: int, attention_size: int | None = None) -> None:
        super().__init__()
        self.query_size, self.key_size = query_size, key_size
        self.attention_size = attention_size or query_size
        self.query_proj = nn.Linear(query_size, self.attention_size, bias=False)
        self.key_proj = nn.Linear(key_size, self.attention_size)
        self.v = nn.Linear(self.attention_size, 1, bias=False)

    def prepare(self, keys: Tensor) -> Tensor:
        return self.key_proj(keys)

    def score(self, query: Tensor, prepared: Tensor) -> Tensor:
        return self.v(torch.tanh(prepared + self.query_proj(query).unsqueeze(1))).squeeze(-1)

    def extra_repr(self) -> str:
        sizes = (self.query_size, self.key_size, self.attention_size)
        return "query_size={}, key_size={}, attention_size={}".format(*sizes)


class LuongAttention(_Attention):
    r"""Multiplicative attention (Luong, Pham & Manning 2015, "Effective Approaches to
    Attention-based Neural Machine Translation"), global, with the scores

    .. math::
        \text{dot: } e_j = s^\top h_j \qquad \text{general: } e_j = s^\top W_a h_j

    ``"dot"`` needs ``query_size == key_size`` (a ``ValueError`` says so otherwise);
    ``"general"`` learns ``W_a (Q, K)`` (``prepare`` computes :math:`W_a h_j`). In
    :class:`rnnkit.Seq2Seq` the query is the decoder state *after* the step, as in the paper.
    """

    SCORES = ("dot", "general")

    def __init__(self, query_size: int, key_size: int, score: str = "general") -> None:
        super().__init__()
        if score not in self.SCORES:
            raise ValueError(f"LuongAttention: score must be 'dot' or 'general', got {score!r}")
        if score == "dot" and query_size != key_size:
            raise ValueError(
                f"LuongAttention('dot') needs the query size ({query_size}) to equal the key "
                f"size ({key_size}); use score='general', or sizes that match (a "
                "unidirectional encoder with the decoder's hidden size)"
            )
        self.query_size, self.key_size, self.kind = query_size, key_size, score
        self.weight = nn.Linear(key_size, query_size, bias=False) if score == "general" else None

    def prepare(self, keys: Tensor) -> Tensor:
        return keys if self.weight is None else self.weight(keys)

    def score(self, query: Tensor, prepared: Tensor) -> Tensor:
        return torch.bmm(prepared, query.unsqueeze(-1)).squeeze(-1)

    def extra_repr(self) -> str:
        return f"query_size={self.query_size}, key_size={self.key_size}, score={self.kind!r}"
