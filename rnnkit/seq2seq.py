r"""Sequence to sequence: an encoder, a decoder and (optionally) attention between them.

What it promises:

* the encoder is any rnnkit recurrent layer or cell (bidirectional allowed) run with the source
  lengths, so its outputs past each source's end are zero and its final state is each source's
  own; the decoder starts from that state (through a linear bridge when the sizes differ);
* attention (:class:`rnnkit.BahdanauAttention`, :class:`rnnkit.LuongAttention` "dot" or
  "general", or none: the final-state bottleneck of Sutskever, Vinyals & Le 2014) masks the
  padded source steps, which get exactly zero weight;
* training is teacher-forced with a ratio: at each step, each sequence gets the true previous
  token with probability ``teacher_forcing`` and its own previous prediction otherwise;
  :class:`ScheduledSampling` lowers the ratio over training (Bengio et al. 2015);
* :meth:`Seq2Seq.decode` decodes greedily or by :func:`rnnkit.beam_search` through one step
  function, and returns the attention weights for plotting.

How, one decoder step (embedding ``e`` of the previous token, state ``s``, encoder outputs
``H``, masks from the lengths):

* Bahdanau: ``c, a = attend(s_{t-1}, H)``; ``s_t = RNN([e; c], s_{t-1})``;
  ``logits = W_o [s_t; c]``;
* Luong (with input feeding): ``s_t = RNN([e; h~_{t-1}], s_{t-1})``; ``c, a = attend(s_t, H)``;
  ``h~_t = tanh(W_c [c; s_t])``; ``logits = W_o h~_t``;
* none: ``s_t = RNN(e, s_{t-1})``; ``logits = W_o s_t``.
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from rnnkit.attention import BahdanauAttention, LuongAttention
from rnnkit.callbacks import Callback
from rnnkit.cells import GRUCell, LSTMCell, RNNCell
from rnnkit.generate import beam_search, greedy_search
from rnnkit.language_model import layer_output_size, recurrent_layer
from rnnkit.padding import check_lengths, lengths_to_mask
from rnnkit.recurrent import Recurrent, _replicate
from rnnkit.text import Vocabulary

__all__ = [
    "Alignment",
    "Decoded",
    "ScheduledSampling",
    "Seq2Seq",
    "encode_pairs",
    "teacher_forcing_ratio",
]

ATTENTION = ("bahdanau", "luong_dot", "luong_general", "none")
DECODER_CELLS = {"lstm": LSTMCell, "gru": GRUCell, "rnn": RNNCell}


class Decoded(NamedTuple):
    """The best output per source: ``tokens (B, T)`` up to and including eos (then eos
    padding), ``lengths (B,)``, ``log_probs (B,)`` (the sequence's log-probability) and
    ``attention (B, T, S)`` (None without attention); rows past an output's end are zero."""

    tokens: Tensor
    lengths: Tensor
    log_probs: Tensor
    attention: Tensor | None


class Alignment(NamedTuple):
    """One source and its output with the attention between them, for a heatmap:
    ``weights[t, j]`` is output token ``t``'s weight on source token ``j`` (rows sum to 1)."""

    source: list[str]
    output: list[str]
    weights: Tensor


def _size(vocab, owner: str, role: str) -> tuple[int, Vocabulary | None]:
    if isinstance(vocab, Vocabulary):
        return len(vocab), vocab
    if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab >= 1:
        return vocab, None
    raise ValueError(
        f"{owner}: {role} must be a vocabulary or its size (an int >= 1), got {vocab!r}"
    )


class Seq2Seq(nn.Module):
    r"""An encoder-decoder with attention (module docstring for the equations).

    Args:
        source_vocab, target_vocab: vocabularies (:class:`rnnkit.Vocab`, :class:`rnnkit.CharVocab`)
            or their sizes. The target's bos and eos ids start and end every output; they come
            from the target vocabulary, or ``bos_id``/``eos_id`` when sizes are given.
        embed_size, hidden_size, num_layers, dropout: sizes; dropout on the embeddings and
            between layers.
        cell: ``"lstm"``, ``"gru"``, ``"rnn"`` or a cell module (e.g. ``rnnkit.LayerNormLSTMCell
            (embed_size, hidden_size)``; the decoder gets a fresh one of the same kind).
        bidirectional: a bidirectional encoder (its outputs are ``2 * hidden_size`` wide and
            its final states are bridged to the decoder's size by ``tanh(W [h_fwd; h_bwd])``).
        attention: ``"bahdanau"``, ``"luong_general"``, ``"luong_dot"`` (needs a unidirectional
            encoder) or ``"none"``/None.
        teacher_forcing: the ratio used in training (1.0: always the true previous token).

    ``forward(source, source_lengths, target, *, teacher_forcing=None, return_attention=False)``:
    ``source (B, S)`` ids with their lengths, ``target (B, T)`` the decoder's inputs (bos, then
    the output shifted right) -> ``logits (B, T, V)`` (and ``attention (B, T, S)``). The Trainer
    can call it with one dict ``{"source", "source_lengths", "target"}`` (:func:`encode_pairs`).
    """

    def __init__(
        self,
        source_vocab: int | Vocabulary,
        target_vocab: int | Vocabulary,
        embed_size: int = 64,
        hidden_size: int = 128,
        num_layers: int = 1,
        cell: str | nn.Module = "lstm",
        bidirectional: bool = True,
        attention: str | None = "bahdanau",
        dropout: float = 0.0,
        teacher_forcing: float = 1.0,
        bos_id: int | None = None,
        eos_id: int | None = None,
        engine: str = "auto",
    ) -> None:
        super().__init__()
        source_size, self.source_vocab = _size(source_vocab, "Seq2Seq", "source_vocab")
        target_size, self.target_vocab = _size(target_vocab, "Seq2Seq", "target_vocab")
        if self.target_vocab is not None:
            bos_id = self.target_vocab.bos_id if bos_id is None else bos_id
            eos_id = self.target_vocab.eos_id if eos_id is None else eos_id
        for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
            if not isinstance(value, int) or not 0 <= value < target_size:
                raise ValueError(
                    f"Seq2Seq: {name} must be a target id in [0, {target_size}) (build the target "
                    f"vocabulary with specials including 'bos' and 'eos'), got {value!r}"
                )
        attention = "none" if attention is None else attention
        if attention not in ATTENTION:
            raise ValueError(
                f"Seq2Seq: attention must be one of {ATTENTION} or None, got {attention!r}"
            )
        self.bos_id, self.eos_id, self.attention_kind = bos_id, eos_id, attention
        self.teacher_forcing = teacher_forcing
        self.target_size = target_size
        self.source_embedding = nn.Embedding(source_size, embed_size)
        self.target_embedding = nn.Embedding(target_size, embed_size)
        self.drop = nn.Dropout(dropout)
        self.encoder = recurrent_layer(
            "Seq2Seq encoder",
            cell,
            embed_size,
            hidden_size,
            num_layers,
            dropout,
            bidirectional,
            engine,
        )
        memory = layer_output_size(self.encoder)
        self.directions = 2 if bidirectional else 1
        feed = {"bahdanau": memory, "luong_dot": hidden_size, "luong_general": hidden_size}
        decoder_input = embed_size + feed.get(attention, 0)
        if isinstance(cell, str):
            decoder_cell = DECODER_CELLS[cell](decoder_input, hidden_size)  # name checked above
        else:
            decoder_cell = _replicate(cell, decoder_input)
        # the decoder runs one step at a time (attention, teacher forcing, search): its cells
        # are called directly, which costs less per step than a layer call over one step
        self.decoder = Recurrent(decoder_cell, num_layers, batch_first=True, dropout=dropout)
        self.bridge = (
            nn.ModuleList([nn.Linear(memory, hidden_size) for _ in range(2)])
            if bidirectional
            else None
        )
        if attention == "bahdanau":
            self.attention = BahdanauAttention(hidden_size, memory)
            self.output = nn.Linear(hidden_size + memory, target_size)
        elif attention.startswith("luong"):
            self.attention = LuongAttention(hidden_size, memory, attention.removeprefix("luong_"))
            self.combine = nn.Linear(memory + hidden_size, hidden_size, bias=False)
            self.output = nn.Linear(hidden_size, target_size)
        else:
            self.attention = None
            self.output = nn.Linear(hidden_size, target_size)

    # ---- the encoder and one decoder step ---------------------------------------------------

    def encode(self, source: Tensor, source_lengths: Tensor | None = None) -> dict:
        """Run the encoder: the decoder's first state as a dict of tensors (see :meth:`step`).

        ``source (B, S)`` ids; ``source_lengths (B,)`` (None: all ``S``), each >= 1."""
        if not isinstance(source, Tensor) or source.dim() != 2 or source.is_floating_point():
            got = (
                f"{source.dtype} {tuple(source.shape)}"
                if isinstance(source, Tensor)
                else type(source).__name__
            )
            raise ValueError(
                f"Seq2Seq: expected source ids of shape (batch, source_len), got {got}"
            )
        batch, steps = source.shape
        if source_lengths is None:
            source_lengths = torch.full((batch,), steps, dtype=torch.long)
        try:
            source_lengths = check_lengths(source_lengths, batch, steps)
        except ValueError as err:
            raise ValueError(f"Seq2Seq: source_lengths: {err}") from None
        if batch and int(source_lengths.min()) < 1:
            raise ValueError("Seq2Seq: every source needs at least one token (a length >= 1)")
        memory, final = self.encoder(
            self.drop(self.source_embedding(source)), lengths=source_lengths
        )
        mask = lengths_to_mask(source_lengths, steps).to(source.device)
        state = {"hidden": self._bridge(final), "memory": memory, "mask": mask}
        if self.attention is not None:
            state["keys"] = self.attention.prepare(memory)
        if self.attention_kind.startswith("luong"):
            state["feed"] = memory.new_zeros(batch, self.decoder.hidden_size)
        return state

    def _bridge(self, final):
        parts = final if isinstance(final, tuple) else (final,)
        if self.bridge is not None:
            bridged = []
            for index, part in enumerate(parts):
                layers = part.shape[0] // 2
                both = part.view(layers, 2, *part.shape[1:]).transpose(1, 2)
                both = both.reshape(layers, part.shape[1], -1)
                mapped = self.bridge[min(index, 1)](both)
                bridged.append(torch.tanh(mapped) if index == 0 else mapped)
            parts = tuple(bridged)
        return parts if isinstance(final, tuple) else parts[0]

    #: where the batch is in each part of the decoder state (for beam search)
    STATE_BATCH_DIM = {"hidden": 1, "memory": 0, "mask": 0, "keys": 0, "feed": 0}

    def step(self, tokens: Tensor, state: dict) -> tuple[Tensor, dict, Tensor | None]:
        """One decoder step: previous tokens ``(N,)`` and the state -> ``(logits (N, V), state,
        attention weights (N, S) or None)``."""
        embedded = self.drop(self.target_embedding(tokens))
        state = dict(state)
        weights = None
        if self.attention_kind == "bahdanau":
            hidden = state["hidden"]
            query = (hidden[0] if isinstance(hidden, tuple) else hidden)[-1]
            context, weights = self.attention(query, state["memory"], state["mask"], state["keys"])
            output, state["hidden"] = self._decoder_step(
                torch.cat([embedded, context], dim=-1), hidden
            )
            logits = self.output(torch.cat([output, context], dim=-1))
        elif self.attention is not None:
            output, state["hidden"] = self._decoder_step(
                torch.cat([embedded, state["feed"]], dim=-1), state["hidden"]
            )
            context, weights = self.attention(output, state["memory"], state["mask"], state["keys"])
            state["feed"] = torch.tanh(self.combine(torch.cat([context, output], dim=-1)))
            logits = self.output(self.drop(state["feed"]))
        else:
            output, state["hidden"] = self._decoder_step(embedded, state["hidden"])
            logits = self.output(self.drop(output))
        return logits, state, weights

    def _decoder_step(self, x: Tensor, hidden):
        """The decoder's cells for one step: ``x (N, I)``, ``hidden`` in the layer layout
        (``(layers, N, H)``, a tuple for an LSTM) -> ``(output (N, H), hidden)``."""
        parts = hidden if isinstance(hidden, tuple) else (hidden,)
        cells = self.decoder.cells
        new = []
        for layer, cell in enumerate(cells):
            layer_state = tuple(p[layer] for p in parts) if len(parts) > 1 else parts[0][layer]
            layer_state = cell(x, layer_state)
            new.append(layer_state if isinstance(layer_state, tuple) else (layer_state,))
            x = new[-1][0]
            if layer + 1 < len(cells):
                x = self.drop(x)
        stacked = tuple(torch.stack([n[i] for n in new]) for i in range(len(parts)))
        return x, (stacked if isinstance(hidden, tuple) else stacked[0])

    # ---- training ---------------------------------------------------------------------------

    def forward(
        self,
        source,
        source_lengths: Tensor | None = None,
        target: Tensor | None = None,
        *,
        teacher_forcing: float | None = None,
        return_attention: bool = False,
    ):
        if isinstance(source, dict):
            if source_lengths is not None or target is not None:
                raise ValueError("Seq2Seq: pass one dict, or source, source_lengths and target")
            missing = {"source", "target"} - set(source)
            if missing:
                raise ValueError(f"Seq2Seq: the input dict lacks {sorted(missing)}")
            source, source_lengths, target = (
                source["source"],
                source.get("source_lengths"),
                source["target"],
            )
        if (
            not isinstance(target, Tensor)
            or target.dim() != 2
            or target.shape[0] != source.shape[0]
        ):
            got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
            raise ValueError(
                f"Seq2Seq: expected target inputs of shape ({source.shape[0]}, target_len), "
                f"got {got}"
            )
        ratio = self.teacher_forcing if teacher_forcing is None else teacher_forcing
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"Seq2Seq: teacher_forcing must be in [0, 1], got {ratio!r}")
        state = self.encode(source, source_lengths)
        logits, weights = [], []
        tokens = target[:, 0]
        for t in range(target.shape[1]):
            if t and ratio < 1.0:
                own = logits[-1].detach().argmax(dim=-1)
                forced = torch.rand(target.shape[0], device=target.device) < ratio
                tokens = torch.where(forced, target[:, t], own)
            elif t:
                tokens = target[:, t]
            step_logits, state, step_weights = self.step(tokens, state)
            logits.append(step_logits)
            weights.append(step_weights)
        logits = torch.stack(logits, dim=1)
        if not return_attention:
            return logits
        return logits, (torch.stack(weights, dim=1) if self.attention is not None else None)

    # ---- decoding ---------------------------------------------------------------------------

    def decode(
        self,
        source: Tensor,
        source_lengths: Tensor | None = None,
        max_len: int | None = None,
        beam_size: int = 1,
        length_penalty: float = 0.0,
    ) -> Decoded:
        """The best output for each source: greedy (``beam_size=1``) or by beam search with
        GNMT's length penalty, in evaluation mode (a model in training mode is copied; the
        caller's mode is left alone), without gradients. ``max_len`` defaults to twice the
        longest source plus 5. The attention weights are those of a teacher-forced pass over
        the chosen tokens (the same numbers the search saw)."""
        model = copy.deepcopy(self).eval() if self.training else self
        with torch.no_grad():
            return model._decode(source, source_lengths, max_len, beam_size, length_penalty)

    def _decode(self, source, source_lengths, max_len, beam_size, length_penalty) -> Decoded:
        state = self.encode(source, source_lengths)
        max_len = 2 * source.shape[1] + 5 if max_len is None else max_len
        start = torch.full((source.shape[0],), self.bos_id, dtype=torch.long, device=source.device)

        def step_fn(tokens: Tensor, state: dict):
            logits, state, _ = self.step(tokens, state)
            return logits.float().log_softmax(dim=-1), state

        if beam_size == 1:
            tokens, lengths, log_probs = greedy_search(step_fn, start, state, max_len, self.eos_id)
        else:
            found = beam_search(
                step_fn,
                start,
                state,
                beam_size,
                max_len,
                self.eos_id,
                length_penalty,
                batch_dim=self.STATE_BATCH_DIM,
            )
            tokens, lengths, log_probs = (
                found.tokens[:, 0],
                found.lengths[:, 0],
                found.log_probs[:, 0],
            )
        attention = None
        if self.attention is not None and tokens.shape[1]:
            inputs = torch.cat([start[:, None], tokens[:, :-1]], dim=1)
            _, attention = self.forward(
                source, source_lengths, inputs, teacher_forcing=1.0, return_attention=True
            )
            past = torch.arange(tokens.shape[1], device=tokens.device)[None, :] >= lengths[:, None]
            attention = attention.masked_fill(past[..., None], 0.0)
        return Decoded(tokens, lengths, log_probs, attention)

    def translate(
        self,
        sources: list[str],
        max_len: int | None = None,
        beam_size: int = 1,
        length_penalty: float = 0.0,
    ) -> list[str]:
        """Texts in, texts out, through the model's vocabularies (see :meth:`decode`)."""
        if self.source_vocab is None or self.target_vocab is None:
            raise ValueError("Seq2Seq.translate needs the model built with vocabularies, not sizes")
        ids, lengths = self.source_vocab.encode_batch(sources)
        device = self.source_embedding.weight.device
        found = self.decode(ids.to(device), lengths, max_len, beam_size, length_penalty)
        return [
            self.target_vocab.decode(row[: int(n)])
            for row, n in zip(found.tokens.cpu(), found.lengths, strict=True)
        ]

    def align(self, source: str, beam_size: int = 1, max_len: int | None = None) -> Alignment:
        """Decode one source text (:meth:`decode`) and return its tokens, the output's tokens
        (eos included) and the attention weights ``(output, source)`` between them."""
        if self.source_vocab is None or self.target_vocab is None:
            raise ValueError("Seq2Seq.align needs the model built with vocabularies, not sizes")
        if self.attention is None:
            raise ValueError("Seq2Seq.align: this model has no attention (attention='none')")
        ids = self.source_vocab.encode(source)
        device = self.source_embedding.weight.device
        found = self.decode(ids[None].to(device), None, max_len, beam_size)
        n = int(found.lengths[0])
        output = [self.target_vocab.tokens[i] for i in found.tokens[0, :n].tolist()]
        tokens = [self.source_vocab.tokens[i] for i in ids.tolist()]
        return Alignment(tokens, output, found.attention[0, :n].cpu())


def encode_pairs(
    source_vocab: Vocabulary, target_vocab: Vocabulary, sources: list[str], targets: list[str]
) -> tuple[dict, Tensor]:
    """Training pairs as tensors: ``(x, y)`` for ``rnnkit.fit`` / the Trainer.

    ``x = {"source": (N, S), "source_lengths": (N,), "target": (N, T)}`` with the decoder's
    inputs ``bos y_1 .. y_n`` (padded), and ``y (N, T)`` the labels ``y_1 .. y_n eos`` with
    ``-100`` at padding, which ``loss="cross_entropy"`` ignores."""
    if len(sources) != len(targets):
        raise ValueError(f"encode_pairs: {len(sources)} sources but {len(targets)} targets")
    source, source_lengths = source_vocab.encode_batch(sources)
    full, full_lengths = target_vocab.encode_batch(targets, bos=True, eos=True)
    labels = full[:, 1:].clone()
    steps = torch.arange(labels.shape[1])[None, :]
    labels[steps >= (full_lengths - 1)[:, None]] = -100
    return {"source": source, "source_lengths": source_lengths, "target": full[:, :-1]}, labels


def teacher_forcing_ratio(
    step: int, kind: str = "inverse_sigmoid", k: float = 1000.0, minimum: float = 0.0
) -> float:
    r"""Scheduled sampling's decay of the teacher-forcing ratio (Bengio, Vinyals, Jaitly &
    Shazeer 2015), at training step ``i``:

    * ``"inverse_sigmoid"``: :math:`\epsilon_i = k / (k + \exp(i / k))` (``k >= 1``);
    * ``"exponential"``: :math:`\epsilon_i = k^i` (``0 < k < 1``);
    * ``"linear"``: :math:`\epsilon_i = \max(\text{minimum}, 1 - i / k)` (to ``minimum`` after
      ``k`` steps).
    """
    if kind == "inverse_sigmoid":
        if k < 1:
            raise ValueError(f"teacher_forcing_ratio: inverse_sigmoid needs k >= 1, got {k!r}")
        ratio = k / (k + math.exp(min(step / k, 700.0)))
    elif kind == "exponential":
        if not 0 < k < 1:
            raise ValueError(f"teacher_forcing_ratio: exponential needs 0 < k < 1, got {k!r}")
        ratio = k**step
    elif kind == "linear":
        if k <= 0:
            raise ValueError(f"teacher_forcing_ratio: linear needs k > 0, got {k!r}")
        ratio = 1.0 - step / k
    else:
        raise ValueError(
            "teacher_forcing_ratio: kind must be inverse_sigmoid, exponential or linear, "
            f"got {kind!r}"
        )
    return max(minimum, min(1.0, ratio))


class ScheduledSampling(Callback):
    """A Trainer callback: before each step, ``model.teacher_forcing = teacher_forcing_ratio(
    trainer.step, kind, k, minimum)`` (Bengio et al. 2015); ``ratio`` holds the last one set."""

    def __init__(
        self, kind: str = "inverse_sigmoid", k: float = 1000.0, minimum: float = 0.0
    ) -> None:
        teacher_forcing_ratio(0, kind, k, minimum)  # check the arguments now
        self.kind, self.k, self.minimum = kind, k, minimum
        self.ratio = 1.0

    def _target(self, trainer) -> nn.Module:
        model = getattr(trainer.model, "module", trainer.model)  # under DDP
        if not hasattr(model, "teacher_forcing"):
            raise ValueError(
                f"ScheduledSampling needs a model with teacher_forcing, got {type(model).__name__}"
            )
        return model

    def on_batch_begin(self, trainer, batch_index: int) -> None:
        self.ratio = teacher_forcing_ratio(trainer.step, self.kind, self.k, self.minimum)
        self._target(trainer).teacher_forcing = self.ratio
