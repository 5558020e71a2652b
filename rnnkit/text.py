"""Text as one int tensor: vocabularies, language-model streams and BPTT windows.

What it promises:

* a vocabulary (:class:`CharVocab`, :class:`Vocab` for words) maps text to a 1-D ``LongTensor``
  and back, with optional special tokens whose ids are fixed: the specials come first, always
  in the order pad, unk, bos, eos (those asked for), then the ordinary symbols. With all four,
  ``pad = 0, unk = 1, bos = 2, eos = 3``. A symbol the vocabulary has not seen becomes ``unk``
  when there is one, and is otherwise a ``ValueError`` naming it and where it occurs. It is saved
  as JSON (:meth:`Vocabulary.to_json`), never pickled;
* :func:`lm_streams` cuts the corpus into ``B`` parallel streams: a ``(B, L)`` view of the id
  tensor, stream ``b`` the ``b``-th contiguous ``L``-th of the text (char-rnn, Karpathy 2015;
  Zaremba et al. 2014; the tail that fills no stream is dropped);
* :func:`bptt_batches` walks the streams in windows, ``x = streams[:, i:i+T]`` and ``y =
  streams[:, i+1:i+1+T]``, in order: window ``k + 1`` continues every stream of window ``k``, so a
  model that carries its recurrent state from one window to the next (detached: truncated BPTT)
  sees the whole text. Every window is a view of the one id tensor — no copy per window, no
  one-hot. With ``variable=True`` the window lengths are AWD-LSTM's (Merity, Keskar & Socher 2017,
  "Regularizing and Optimizing LSTM Language Models", sec. 4.1), drawn per epoch from
  ``(seed, epoch)``, so that ``len()`` is known when an epoch starts and a resumed run draws the
  same windows.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["BPTTBatches", "CharVocab", "Vocab", "Vocabulary", "bptt_batches", "lm_streams"]

SPECIALS = {"pad": "<pad>", "unk": "<unk>", "bos": "<bos>", "eos": "<eos>"}
_FORMAT = "rnnkit.vocab"


# --------------------------------------------------------------------------------------------
# Vocabularies.


class Vocabulary:
    """What :class:`CharVocab` and :class:`Vocab` share: ids, specials, decoding, JSON.

    ``tokens`` lists every token by id (specials first, as the module docstring says); ``stoi``
    maps a token to its id. ``pad_id``, ``unk_id``, ``bos_id``, ``eos_id`` are the specials' ids,
    None where the vocabulary has no such token. ``len(vocab)`` is the number of ids.
    """

    kind: str  # "char" or "word", stored in the JSON

    def _setup(self, symbols: Sequence[str], specials: Sequence[str]) -> None:
        specials = _check_specials(type(self).__name__, specials)
        self.specials: tuple[str, ...] = specials
        self.tokens: list[str] = [SPECIALS[s] for s in specials] + list(symbols)
        self.stoi: dict[str, int] = {token: i for i, token in enumerate(self.tokens)}
        if len(self.stoi) != len(self.tokens):
            raise ValueError(f"{type(self).__name__}: the symbols repeat a token or a special")
        for name in SPECIALS:
            setattr(self, f"{name}_id", self.stoi[SPECIALS[name]] if name in specials else None)
        self._special_ids = {self.stoi[SPECIALS[s]] for s in specials}

    pad_id: int | None
    unk_id: int | None
    bos_id: int | None
    eos_id: int | None

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Vocabulary)
            and self.kind == other.kind
            and self.tokens == other.tokens
            and self.specials == other.specials
        )

    def __hash__(self) -> int:
        return hash((self.kind, tuple(self.tokens)))

    def __repr__(self) -> str:
        specials = ", ".join(f"{s}={getattr(self, s + '_id')}" for s in self.specials) or "none"
        return f"{type(self).__name__}({len(self)} ids, specials: {specials})"

    # ---- text -> ids ----------------------------------------------------------------------

    def _symbol_ids(self, text) -> Tensor:
        raise NotImplementedError

    def encode(self, text, *, bos: bool = False, eos: bool = False) -> Tensor:
        """The ids of ``text`` as a 1-D ``LongTensor``, with ``bos``/``eos`` around it if asked.

        A symbol the vocabulary has not seen is ``unk_id`` when the vocabulary has an unknown
        token; otherwise a ``ValueError`` names the symbol and where it occurs.
        """
        ids = self._symbol_ids(text)
        parts = [self._special_tensor("bos")] if bos else []
        parts.append(ids)
        if eos:
            parts.append(self._special_tensor("eos"))
        return torch.cat(parts) if len(parts) > 1 else ids

    def encode_batch(
        self, texts: Sequence, *, bos: bool = False, eos: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Several texts as one right-padded batch: ``(ids (B, T), lengths (B,))``, padded with
        ``pad_id`` (the vocabulary needs a pad token); ``lengths`` count ``bos``/``eos``."""
        if self.pad_id is None:
            raise ValueError(
                f"{type(self).__name__}.encode_batch pads with the pad token, and this vocabulary "
                "has none; build it with 'pad' among its specials"
            )
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ValueError(
                f"{type(self).__name__}.encode_batch: expected a list of texts, "
                f"got {type(texts).__name__}"
            )
        rows = [self.encode(t, bos=bos, eos=eos) for t in texts]
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        ids = torch.full((len(rows), int(lengths.max()) if rows else 0), self.pad_id)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
        return ids, lengths

    def _special_tensor(self, name: str) -> Tensor:
        token_id = getattr(self, f"{name}_id")
        if token_id is None:
            raise ValueError(
                f"{type(self).__name__}: {name}=True needs a {SPECIALS[name]} token, and this "
                f"vocabulary has none; build it with {name!r} among its specials"
            )
        return torch.tensor([token_id])

    # ---- ids -> text ----------------------------------------------------------------------

    def _join(self, tokens: list[str]) -> str:
        raise NotImplementedError

    def decode(self, ids, *, keep_specials: bool = False) -> str | list[str]:
        """The text of ``ids`` (a 1-D tensor or list of ints; a 2-D tensor gives one text per
        row). Pad, bos and eos are left out unless ``keep_specials``; unk is shown as
        ``<unk>``. An id outside ``[0, len(vocab))`` is a ``ValueError`` naming it."""
        if isinstance(ids, Tensor):
            if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
                raise ValueError(
                    f"{type(self).__name__}.decode: expected integer ids, got {ids.dtype}"
                )
            if ids.dim() == 2:
                return [self.decode(row, keep_specials=keep_specials) for row in ids]
            if ids.dim() != 1:
                raise ValueError(
                    f"{type(self).__name__}.decode: expected 1-D ids (or 2-D, one text per row), "
                    f"got shape {tuple(ids.shape)}"
                )
            ids = ids.tolist()
        tokens = []
        for position, i in enumerate(ids):
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise ValueError(
                    f"{type(self).__name__}.decode: expected integer ids, got {i!r} at "
                    f"position {position}"
                )
            if not 0 <= i < len(self.tokens):
                raise ValueError(
                    f"{type(self).__name__}.decode: id {i} at position {position} is outside "
                    f"the vocabulary's [0, {len(self.tokens)})"
                )
            if keep_specials or i not in self._special_ids or i == self.unk_id:
                tokens.append(self.tokens[i])
        return self._join(tokens)

    # ---- JSON -------------------------------------------------------------------------------

    def to_json(self) -> str:
        """The vocabulary as a JSON string: kind, specials and the ordinary symbols by id."""
        symbols = self.tokens[len(self.specials) :]
        return json.dumps(
            {
                "format": _FORMAT,
                "version": 1,
                "kind": self.kind,
                "specials": list(self.specials),
                "symbols": symbols,
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        """The vocabulary :meth:`to_json` wrote. Called on :class:`Vocabulary` it returns the
        kind stored; called on :class:`CharVocab` or :class:`Vocab` the kind must match."""
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"{cls.__name__}.from_json: not JSON: {err}") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(
                f"{cls.__name__}.from_json: expected a vocabulary written by to_json "
                f"(format {_FORMAT!r}), got {str(text)[:60]!r}"
            )
        kinds = {"char": CharVocab, "word": Vocab}
        kind = data.get("kind")
        if kind not in kinds:
            raise ValueError(f"{cls.__name__}.from_json: unknown kind {kind!r}")
        target = kinds[kind]
        if cls is not Vocabulary and cls is not target:
            raise ValueError(
                f"{cls.__name__}.from_json: the JSON holds a {target.__name__} ({kind!r})"
            )
        symbols = data.get("symbols")
        if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
            raise ValueError(f"{cls.__name__}.from_json: 'symbols' must be a list of strings")
        vocab = target.__new__(target)
        vocab._setup(symbols, data.get("specials", []))
        return vocab


def _check_specials(owner: str, specials: Sequence[str]) -> tuple[str, ...]:
    if isinstance(specials, str):
        specials = (specials,)
    unknown = [s for s in specials if s not in SPECIALS]
    if unknown:
        raise ValueError(
            f"{owner}: unknown special token(s) {unknown}; expected names from {list(SPECIALS)}"
        )
    return tuple(s for s in SPECIALS if s in specials)


def _texts(owner: str, text) -> Iterable:
    if isinstance(text, str):
        return [text]
    if isinstance(text, Iterable):
        return text
    raise ValueError(f"{owner}: expected a text or an iterable of texts, got {type(text).__name__}")


class CharVocab(Vocabulary):
    """A character vocabulary: one id per distinct character of ``text``.

    ``text`` is a string or an iterable of strings. The characters are sorted by code point
    after the specials (``specials`` names any of ``"pad"``, ``"unk"``, ``"bos"``, ``"eos"``;
    none by default, so a vocabulary built on the Shakespeare corpus has exactly its 65
    characters). ``encode(str)`` gives one id per character; ``decode`` joins characters.
    """

    kind = "char"

    def __init__(self, text: str | Iterable[str], specials: Sequence[str] = ()) -> None:
        chars: set[str] = set()
        for part in _texts("CharVocab", text):
            if not isinstance(part, str):
                raise ValueError(f"CharVocab: expected strings, got {type(part).__name__}")
            chars.update(part)
        self._setup(sorted(chars), specials)

    def _setup(self, symbols: Sequence[str], specials: Sequence[str]) -> None:
        if any(len(s) != 1 for s in symbols):
            raise ValueError("CharVocab: every symbol must be one character")
        super()._setup(symbols, specials)
        # A lookup table from code point to id (-1: not in the vocabulary) encodes a 1 MB text
        # in milliseconds.
        points = [ord(s) for s in symbols]
        self._table = np.full(max(points, default=0) + 1, -1, dtype=np.int64)
        offset = len(self.specials)
        self._table[points] = np.arange(offset, offset + len(points))

    def _symbol_ids(self, text) -> Tensor:
        if not isinstance(text, str):
            raise ValueError(f"CharVocab.encode: expected a str, got {type(text).__name__}")
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        inside = points < len(self._table)
        ids = np.full(points.shape, -1, dtype=np.int64)
        ids[inside] = self._table[points[inside]]
        missing = np.flatnonzero(ids < 0)
        if missing.size:
            if self.unk_id is None:
                raise ValueError(_unknown_char(text, int(missing[0]), len(missing), len(self)))
            ids[missing] = self.unk_id
        return torch.from_numpy(ids)

    def _join(self, tokens: list[str]) -> str:
        return "".join(tokens)


def _unknown_char(text: str, position: int, count: int, size: int) -> str:
    char = text[position]
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    context = text[max(0, position - 20) : position + 20]
    more = f" ({count - 1} more unknown characters follow)" if count > 1 else ""
    return (
        f"CharVocab.encode: character {char!r} (U+{ord(char):04X}) at position {position} "
        f"(line {line}, column {column}, in {context!r}) is not in the vocabulary of {size} ids, "
        f"which has no unknown token{more}; build the vocabulary with specials=('unk',) or "
        "remove the character"
    )


class Vocab(Vocabulary):
    """A word vocabulary: texts split on whitespace (or given as lists of tokens).

    Words seen fewer than ``min_count`` times are left out (they encode as ``unk``); the words
    are ordered by count, most frequent first, ties alphabetically, and ``max_size`` keeps only
    the most frequent ones. ``specials`` defaults to ``("pad", "unk")`` (ids 0 and 1). A word
    equal to a special token (``"<unk>"`` in the text) maps to that special. ``decode`` joins
    words with single spaces.
    """

    kind = "word"

    def __init__(
        self,
        texts: str | Iterable[str | Sequence[str]],
        min_count: int = 1,
        specials: Sequence[str] = ("pad", "unk"),
        max_size: int | None = None,
    ) -> None:
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"Vocab: min_count must be an int >= 1, got {min_count!r}")
        if max_size is not None and (not isinstance(max_size, int) or max_size < 1):
            raise ValueError(f"Vocab: max_size must be an int >= 1 or None, got {max_size!r}")
        counts: Counter[str] = Counter()
        for text in _texts("Vocab", texts):
            counts.update(_words("Vocab", text))
        for token in SPECIALS.values():
            counts.pop(token, None)
        words = sorted(
            (w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w)
        )
        self._setup(words[:max_size] if max_size else words, specials)

    def _symbol_ids(self, text) -> Tensor:
        words = _words("Vocab.encode", text)
        ids = []
        for position, word in enumerate(words):
            token_id = self.stoi.get(word, self.unk_id)
            if token_id is None:
                raise ValueError(
                    f"Vocab.encode: word {word!r} (token {position} of the input, after "
                    f"{' '.join(words[max(0, position - 5) : position])!r}) is not in the "
                    f"vocabulary of {len(self)} ids, which has no unknown token; build the "
                    "vocabulary with 'unk' among its specials"
                )
            ids.append(token_id)
        return torch.tensor(ids, dtype=torch.long)

    def _join(self, tokens: list[str]) -> str:
        return " ".join(tokens)


def _words(owner: str, text) -> list[str]:
    if isinstance(text, str):
        return text.split()
    if isinstance(text, Sequence) and all(isinstance(w, str) for w in text):
        return list(text)
    raise ValueError(
        f"{owner}: expected a str or a list of word strings, got {type(text).__name__}"
    )


# --------------------------------------------------------------------------------------------
# Language-model streams and windows.


def lm_streams(ids: Tensor, batch_size: int) -> Tensor:
    """Cut one long id tensor into ``batch_size`` parallel streams: a ``(batch_size, L)`` view.

    ``L = len(ids) // batch_size``; stream ``b`` is ``ids[b * L : (b + 1) * L]``, a contiguous
    piece of the text, and the last ``len(ids) - batch_size * L`` ids (fewer than one per
    stream) are dropped. No copy is made. Walk the streams with :func:`bptt_batches`.
    """
    if not isinstance(ids, Tensor) or ids.dim() != 1:
        got = f"shape {tuple(ids.shape)}" if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(
            f"lm_streams: expected a 1-D tensor of ids (vocab.encode(text)), got {got}"
        )
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"lm_streams: expected integer ids, got {ids.dtype}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"lm_streams: batch_size must be an int >= 1, got {batch_size!r}")
    length = ids.numel() // batch_size
    if length < 2:
        raise ValueError(
            f"lm_streams: {ids.numel()} ids cannot fill {batch_size} streams of at least 2 ids "
            "(an input and its next-token target); use fewer streams or more text"
        )
    return ids[: batch_size * length].view(batch_size, length)


class BPTTBatches:
    """The ``(x, y)`` windows over language-model streams, in order; see :func:`bptt_batches`.

    Iterating yields ``(x, y)``, both ``(B, T_k)`` views of ``streams``: ``x = streams[:,
    i:i+T_k]``, ``y = streams[:, i+1:i+1+T_k]`` (the next token), the windows one after the
    other, the last one shorter. ``len()`` is the number of windows of the current epoch.

    Attributes ``seq_len`` (the base window length), ``variable``, ``seed``, ``epoch``,
    ``position`` (windows yielded so far in this epoch), ``streams`` (the ``(B, L)`` tensor) and
    ``tokens`` (``B * L``). A training engine calls :meth:`set_epoch` before each epoch and
    saves :meth:`state_dict` in its checkpoints; with ``variable=True`` it scales the learning
    rate of each step by ``T_k / seq_len`` (Merity et al. 2017: short windows get a smaller
    step, so every token weighs alike).
    """

    batch_first = True

    def __init__(
        self,
        streams: Tensor,
        seq_len: int,
        variable: bool = False,
        seed: int = 0,
        *,
        std: float = 5.0,
        min_len: int = 5,
    ) -> None:
        if not isinstance(streams, Tensor) or streams.dim() != 2:
            got = (
                f"shape {tuple(streams.shape)}"
                if isinstance(streams, Tensor)
                else type(streams).__name__
            )
            raise ValueError(
                "bptt_batches: expected streams of shape (batch, length) from "
                f"rnnkit.lm_streams(ids, batch_size), got {got}"
            )
        if streams.is_floating_point() or streams.is_complex() or streams.dtype == torch.bool:
            raise ValueError(f"bptt_batches: expected integer ids, got {streams.dtype}")
        if streams.shape[1] < 2:
            raise ValueError(
                f"bptt_batches: streams of {streams.shape[1]} id hold no (input, target) pair"
            )
        for name, value in (("seq_len", seq_len), ("min_len", min_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"bptt_batches: {name} must be an int >= 1, got {value!r}")
        if not isinstance(variable, bool):
            raise ValueError(f"bptt_batches: variable must be True or False, got {variable!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"bptt_batches: seed must be an int >= 0, got {seed!r}")
        if not (isinstance(std, (int, float)) and math.isfinite(std) and std >= 0):
            raise ValueError(f"bptt_batches: std must be a finite number >= 0, got {std!r}")
        self.streams = streams
        self.seq_len, self.variable, self.seed = seq_len, variable, seed
        self.std, self.min_len = float(std), min(min_len, seq_len)
        self.tokens = streams.numel()
        self.position = 0
        self._resume_at = 0
        self.set_epoch(0)

    @property
    def num_streams(self) -> int:
        """The number of parallel streams: every window's batch size."""
        return self.streams.shape[0]

    batch_size = num_streams

    def _schedule(self, epoch: int) -> list[tuple[int, int]]:
        """``(start, length)`` of every window of ``epoch``: fixed lengths, or AWD-LSTM's draw
        from a generator seeded by ``(seed, epoch)``."""
        span = self.streams.shape[1] - 1  # positions that have a next token
        if not self.variable:
            return [(i, min(self.seq_len, span - i)) for i in range(0, span, self.seq_len)]
        rng = np.random.default_rng([self.seed, epoch])
        windows, start = [], 0
        while start < span:
            base = self.seq_len if rng.random() < 0.95 else self.seq_len / 2
            length = max(self.min_len, int(rng.normal(base, self.std)))
            windows.append((start, min(length, span - start)))
            start += length
        return windows

    def set_epoch(self, epoch: int) -> None:
        """Draw the window lengths of ``epoch`` (the same for the same ``(seed, epoch)``) and
        start it from its first window."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"BPTTBatches.set_epoch: epoch must be an int >= 0, got {epoch!r}")
        self.epoch = epoch
        self._windows = self._schedule(epoch)
        self.position = 0
        self._resume_at = 0

    def window_lengths(self) -> list[int]:
        """The length ``T_k`` of every window of the current epoch, in order."""
        return [length for _, length in self._windows]

    def __len__(self) -> int:
        return len(self._windows)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        start, self._resume_at = self._resume_at, 0
        self.position = start
        for k in range(start, len(self._windows)):
            i, length = self._windows[k]
            self.position = k + 1
            yield self.streams[:, i : i + length], self.streams[:, i + 1 : i + 1 + length]

    def state_dict(self) -> dict:
        """Where the walk is: the epoch and the windows yielded in it, with what must match on
        resume (streams, tokens, seq_len, variable, seed and the draw's std and min_len)."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "streams": self.num_streams,
            "tokens": self.tokens,
            "seq_len": self.seq_len,
            "variable": self.variable,
            "seed": self.seed,
            "std": self.std,
            "min_len": self.min_len,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at window ``state["position"]`` of epoch ``state["epoch"]``: the next
        iteration starts there. A state of other streams, corpus or windows is refused."""
        if not isinstance(state, dict):
            raise ValueError(
                f"BPTTBatches.load_state_dict: expected a dict, got {type(state).__name__}"
            )
        missing = {"epoch", "position", "streams", "tokens", "seq_len", "variable", "seed"} - set(
            state
        )
        if missing:
            raise ValueError(f"BPTTBatches.load_state_dict: the state lacks {sorted(missing)}")
        mine = self.state_dict()
        what = {
            "streams": "streams (batch size)",
            "tokens": "tokens (corpus length in the streams)",
            "seq_len": "seq_len",
            "variable": "variable",
            "seed": "seed",
            "std": "std",
            "min_len": "min_len",
        }
        for key, label in what.items():
            if key in state and state[key] != mine[key]:
                raise ValueError(
                    f"BPTTBatches.load_state_dict: the saved state has {label} {state[key]!r}, "
                    f"this batch source has {mine[key]!r}; resume with the same streams and "
                    "windows (rnnkit.lm_streams with the same batch size on the same text)"
                )
        self.set_epoch(state["epoch"])
        position = state["position"]
        if (
            isinstance(position, bool)
            or not isinstance(position, int)
            or not 0 <= position <= len(self)
        ):
            raise ValueError(
                f"BPTTBatches.load_state_dict: position must be an int in [0, {len(self)}] "
                f"(windows of epoch {self.epoch}), got {position!r}"
            )
        self.position = self._resume_at = position

    def shard(self, rank: int, world_size: int) -> BPTTBatches:
        """The windows of this rank's own streams: ``B / world_size`` consecutive streams, with
        the same window lengths on every rank (so that the ranks step in lockstep)."""
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(
                f"BPTTBatches.shard: world_size must be an int >= 1, got {world_size!r}"
            )
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"BPTTBatches.shard: rank must be in [0, {world_size}), got {rank!r}")
        if self.num_streams % world_size:
            raise ValueError(
                f"BPTTBatches.shard: {self.num_streams} streams cannot be split evenly over "
                f"{world_size} processes; make the number of streams a multiple of {world_size}"
            )
        per = self.num_streams // world_size
        part = BPTTBatches(
            self.streams[rank * per : (rank + 1) * per],
            self.seq_len,
            self.variable,
            self.seed,
            std=self.std,
            min_len=self.min_len,
        )
        part.set_epoch(self.epoch)
        return part

    def __repr__(self) -> str:
        kind = "variable" if self.variable else "fixed"
        return (
            f"BPTTBatches({self.num_streams} streams x {self.streams.shape[1]} tokens, "
            f"seq_len={self.seq_len} ({kind}), {len(self)} windows, epoch {self.epoch})"
        )


def bptt_batches(
    streams: Tensor,
    seq_len: int,
    variable: bool = False,
    seed: int = 0,
    *,
    std: float = 5.0,
    min_len: int = 5,
) -> BPTTBatches:
    """The ``(x, y)`` windows of length ``seq_len`` over ``streams`` (from :func:`lm_streams`),
    in order, as a :class:`BPTTBatches` that can be iterated again, resumed and sharded.

    With ``variable=True`` each window's length is drawn as in AWD-LSTM (Merity et al. 2017):
    the base is ``seq_len`` with probability 0.95 and ``seq_len / 2`` otherwise, and
    ``T_k = max(min_len, int(N(base, std)))`` (AWD: ``std = 5``, ``min_len = 5``; ``min_len`` is
    capped at ``seq_len``). The draw of epoch ``e`` depends only on ``(seed, e)``. Every position
    of the text is in exactly one window per epoch; the windows start at a different offset each
    epoch, which is the point: the model sees other cuts of the same text.

    Train a model that carries its state across windows with ``rnnkit.Trainer(...,
    stateful=True)`` (or ``rnnkit.fit(..., stateful=True)``), which accepts this object as its
    training and validation data.
    """
    return BPTTBatches(streams, seq_len, variable, seed, std=std, min_len=min_len)
