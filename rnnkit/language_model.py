r"""Language models that follow the stateful contract ``forward(x, state=None) -> (output, state)``.

A stateful model takes a window of token ids and the recurrent state the previous window ended
with (None: zeros), and returns its output and the state at the window's end. The Trainer
(``stateful=True``) carries that state from window to window, detached; :func:`rnnkit.sample`
feeds a prompt once and then one token at a time with the same call. Two models follow it:

* :class:`LanguageModel`: embedding, any rnnkit recurrent layer or cell, a linear decoder, its
  vocabulary in its state dict;
* :class:`Stateful`: a thin adapter for a ``torch.nn`` recurrent layer (``nn.LSTM`` and the
  like, called ``layer(x, hx) -> (output, hx)``), optionally between an embedding and a head.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnkit.cells import RecurrentCell
from rnnkit.recurrent import GRU, LSTM, RNN, Recurrent
from rnnkit.text import Vocabulary

__all__ = ["LanguageModel", "Stateful"]

LAYERS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


def recurrent_layer(
    owner: str,
    cell: str | nn.Module,
    input_size: int,
    hidden_size: int,
    num_layers: int,
    dropout: float,
    bidirectional: bool = False,
    engine: str = "auto",
) -> nn.Module:
    """A batch-first recurrent layer: ``"rnn"``/``"lstm"``/``"gru"`` (rnnkit's torch.nn-compatible
    layers), a cell (run by :class:`rnnkit.Recurrent`) or a ready layer, checked as it is."""
    if isinstance(cell, str):
        if cell not in LAYERS:
            raise ValueError(
                f"{owner}: cell must be one of {', '.join(LAYERS)} or a module, got {cell!r}"
            )
        return LAYERS[cell](
            input_size,
            hidden_size,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
            batch_first=True,
            engine=engine,
        )
    if isinstance(cell, (RecurrentCell, nn.RNNCellBase)):
        if cell.input_size != input_size:
            raise ValueError(
                f"{owner}: the cell takes {cell.input_size} inputs, but the embedding gives "
                f"{input_size}; build it as {type(cell).__name__}({input_size}, ...)"
            )
        return Recurrent(
            cell,
            num_layers=num_layers,
            bidirectional=bidirectional,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
            engine=engine,
        )
    if isinstance(cell, nn.Module):
        if getattr(cell, "batch_first", None) is not True:
            raise ValueError(
                f"{owner}: the recurrent layer {type(cell).__name__} must be batch first "
                "(build it with batch_first=True)"
            )
        if getattr(cell, "input_size", input_size) != input_size:
            raise ValueError(
                f"{owner}: the layer takes {cell.input_size} inputs, the embedding gives "
                f"{input_size}"
            )
        if bool(getattr(cell, "bidirectional", False)) != bidirectional:
            raise ValueError(
                f"{owner}: the layer has bidirectional={getattr(cell, 'bidirectional', False)}, "
                f"expected {bidirectional}"
            )
        return cell
    raise ValueError(f"{owner}: cell must be a name, a cell or a layer, got {type(cell).__name__}")


def layer_output_size(layer: nn.Module) -> int:
    """Features per step of a recurrent layer's output: (proj or hidden) size x directions."""
    size = getattr(layer, "proj_size", 0) or layer.hidden_size
    return size * (2 if getattr(layer, "bidirectional", False) else 1)


def _check_ids(owner: str, x: Tensor, vocab_size: int) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2:
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{owner}: expected token ids of shape (batch, time), got {got}")
    if x.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{owner}: expected integer token ids (torch.long), got {x.dtype}")
    # On CUDA the embedding kernel asserts on a bad id itself; a check here would synchronise.
    if x.device.type != "cuda" and x.numel():
        low, high = int(x.min()), int(x.max())
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"{owner}: token id {bad} is outside the vocabulary's [0, {vocab_size})"
            )


class LanguageModel(nn.Module):
    r"""A recurrent language model: embedding, recurrent layer, linear decoder.

    .. math::
        e_t = E\,x_t, \qquad (h_t, s_t) = \mathrm{RNN}(e_t, s_{t-1}), \qquad
        z_t = W h_t + b, \qquad p(x_{t+1} \mid x_{\le t}) = \mathrm{softmax}(z_t)

    Args:
        vocab: the vocabulary size, or a :class:`rnnkit.text.Vocabulary` (its size is used and
            it is kept as ``model.vocab``, saved in the state dict).
        embed_size, hidden_size, num_layers: sizes.
        cell: ``"lstm"``, ``"gru"``, ``"rnn"`` (``rnnkit.LSTM/GRU/RNN``: fused kernels when they
            compute it exactly), a cell (``rnnkit.LayerNormLSTMCell(embed_size, H)``, any
            :class:`rnnkit.RecurrentCell` or ``torch.nn`` cell: run by :class:`rnnkit.Recurrent`)
            or a batch-first recurrent layer (``rnnkit.MinRNNStack(..., batch_first=True)``). A
            language model reads left to right, so a bidirectional layer is refused.
        dropout: dropout on the embeddings, between recurrent layers and before the decoder
            (the non-recurrent connections; Zaremba, Sutskever & Vinyals 2014).
        tie_weights: share the embedding matrix with the decoder, ``W = E`` (Press & Wolf 2017;
            Inan, Khosravi & Socher 2017); needs the recurrent output size to equal
            ``embed_size``, else a ``ValueError`` says which sizes to change.
        engine: the recurrent layer's engine (``"auto"``, ``"loop"``, ``"fused"``).

    ``forward(x, state=None, *, lengths=None) -> (logits, state)``: ``x (B, T)`` token ids,
    ``logits (B, T, V)``, ``state`` as the recurrent layer returns it (``(h, c)`` of shape
    ``(num_layers, B, H)`` for an LSTM); ``state=None`` starts from zeros. With ``lengths=``
    the state returned is each sequence's state at its own last token.

    The vocabulary travels with the weights: ``state_dict()`` holds it as JSON (the entry
    ``_extra_state`` is ``vocab.to_json()``, a str, "" without a vocabulary, which
    ``torch.save`` and weights-only loading keep as it is), and ``load_state_dict`` restores
    it. Loading a state whose vocabulary differs from the model's own raises a
    ``ValueError``; set ``model.vocab = None`` first to take the saved one.
    """

    def __init__(
        self,
        vocab: int | Vocabulary,
        embed_size: int,
        hidden_size: int,
        num_layers: int = 1,
        cell: str | nn.Module = "lstm",
        dropout: float = 0.0,
        tie_weights: bool = False,
        engine: str = "auto",
    ) -> None:
        super().__init__()
        if isinstance(vocab, Vocabulary):
            vocab_size, self.vocab = len(vocab), vocab
        elif isinstance(vocab, int) and not isinstance(vocab, bool) and vocab >= 1:
            vocab_size, self.vocab = vocab, None
        else:
            raise ValueError(
                "LanguageModel: vocab must be a vocabulary or its size (an int >= 1), "
                f"got {vocab!r}"
            )
        for name, value in (
            ("embed_size", embed_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LanguageModel: {name} must be an int >= 1, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LanguageModel: dropout must be in [0, 1), got {dropout!r}")
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = recurrent_layer(
            "LanguageModel", cell, embed_size, hidden_size, num_layers, dropout, engine=engine
        )
        self.drop = nn.Dropout(dropout)
        out_size = layer_output_size(self.rnn)
        self.decoder = nn.Linear(out_size, vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if tie_weights:
            if out_size != embed_size:
                raise ValueError(
                    f"LanguageModel: tie_weights shares the embedding ({vocab_size} x "
                    f"{embed_size}) with the decoder, which needs the recurrent output size "
                    f"({out_size}) to equal embed_size ({embed_size}); set embed_size="
                    f"{out_size} or hidden_size={embed_size} (or give an LSTM layer "
                    f"proj_size={embed_size})"
                )
            self.decoder.weight = self.embedding.weight
        self.tie_weights = tie_weights

    def forward(
        self, x: Tensor, state=None, *, lengths: Tensor | None = None
    ) -> tuple[Tensor, object]:
        _check_ids("LanguageModel", x, self.vocab_size)
        embedded = self.drop(self.embedding(x))
        if lengths is None:
            output, state = self.rnn(embedded, state)
        else:
            output, state = self.rnn(embedded, state, lengths=lengths)
        return self.decoder(self.drop(output)), state

    def step(self, tokens: Tensor, state=None) -> tuple[Tensor, object]:
        """One token per sequence: ``tokens (B,)`` -> ``(logits (B, V), state)``, the same
        numbers as ``forward(tokens[:, None], state)`` (tested). Generation calls it once per
        new token: the layer's step equations run directly (the functions of
        :mod:`rnnkit.cells`, or a cell's ``project_input`` and ``step``), which on a CPU costs
        a third of a one-step call of the fused kernel, whose set-up dominates at one step.
        Layers without step equations (e.g. ``MinRNNStack``) run ``forward`` over one step."""
        units = self._units()
        if units is None:
            logits, state = self(tokens[:, None], state)
            return logits[:, 0], state
        _check_ids("LanguageModel", tokens[:, None], self.vocab_size)
        x = self.drop(self.embedding(tokens))
        if state is None:
            state = self._zero_state(x)
        parts = state if isinstance(state, tuple) else (state,)
        new = []
        for layer, (project, step) in enumerate(units):
            unit_state = tuple(p[layer] for p in parts) if len(parts) > 1 else parts[0][layer]
            unit_state = step(project(x), unit_state)
            new.append(unit_state if isinstance(unit_state, tuple) else (unit_state,))
            x = new[-1][0]
            if layer + 1 < len(units) and self.training:
                x = nn.functional.dropout(x, self.rnn.dropout)
        stacked = tuple(torch.stack([n[i] for n in new]) for i in range(len(parts)))
        return self.decoder(self.drop(x)), stacked if isinstance(state, tuple) else stacked[0]

    def _units(self):
        """``[(project, step)]`` per layer, or None for a layer without step equations."""
        if isinstance(self.rnn, (LSTM, GRU, RNN)):
            return self.rnn._step_units()
        if isinstance(self.rnn, Recurrent):
            return [
                (c.project_input, c.step) if hasattr(c, "project_input") else (lambda x: x, c)
                for c in self.rnn.cells
            ]
        return None

    def _zero_state(self, x: Tensor):
        if isinstance(self.rnn, (LSTM, GRU, RNN)):
            zeros = tuple(x.new_zeros(shape) for shape in self.rnn._state_shapes(x.shape[0]))
            return zeros if len(zeros) > 1 else zeros[0]
        zeros = self.rnn._initial_states(x[None])  # one zero state per cell
        if isinstance(zeros[0], tuple):
            return tuple(torch.stack([z[i] for z in zeros]) for i in range(len(zeros[0])))
        return torch.stack(zeros)

    def get_extra_state(self) -> str:
        return self.vocab.to_json() if self.vocab is not None else ""

    def set_extra_state(self, state) -> None:
        if not isinstance(state, str):
            raise ValueError(
                f"LanguageModel: the state's _extra_state must be the vocabulary's JSON (a str), "
                f"got {type(state).__name__}"
            )
        text = state
        if not text:
            return
        saved = Vocabulary.from_json(text)
        if len(saved) != self.vocab_size:
            raise ValueError(
                f"LanguageModel: the saved vocabulary has {len(saved)} ids, this model "
                f"{self.vocab_size}"
            )
        if self.vocab is not None and saved != self.vocab:
            raise ValueError(
                f"LanguageModel: the saved vocabulary ({saved!r}) differs from this model's "
                f"({self.vocab!r}): the weights would read the ids wrongly; set model.vocab = "
                "None before loading to take the saved one"
            )
        self.vocab = saved

    def extra_repr(self) -> str:
        vocab = repr(self.vocab) if self.vocab is not None else str(self.vocab_size)
        return f"vocab={vocab}, tie_weights={self.tie_weights}"


class Stateful(nn.Module):
    """Adapt a ``torch.nn`` recurrent layer to ``forward(x, state=None) -> (output, state)``.

    ``layer(x, hx) -> (output, hx)`` (``torch.nn.RNN/LSTM/GRU`` with ``batch_first=True``, or any
    module called that way) runs between an optional ``embedding`` (applied to ``x`` first, e.g.
    ``nn.Embedding``) and an optional ``head`` (applied to the layer's output, e.g.
    ``nn.Linear``), so that ``Stateful(nn.LSTM(E, H, batch_first=True), nn.Embedding(V, E),
    nn.Linear(H, V))`` is a plain torch.nn language model that the stateful Trainer and
    :func:`rnnkit.sample` take as they take :class:`LanguageModel`.
    """

    def __init__(
        self, layer: nn.Module, embedding: nn.Module | None = None, head: nn.Module | None = None
    ) -> None:
        super().__init__()
        if not isinstance(layer, nn.Module):
            raise ValueError(
                f"Stateful: expected a recurrent layer module, got {type(layer).__name__}"
            )
        if getattr(layer, "batch_first", True) is not True:
            raise ValueError(
                f"Stateful: {type(layer).__name__} has batch_first=False, but stateful batches "
                "are (batch, time); build it with batch_first=True"
            )
        if getattr(layer, "bidirectional", False):
            raise ValueError("Stateful: a bidirectional layer cannot carry its state forward")
        self.layer, self.embedding, self.head = layer, embedding, head

    def forward(self, x: Tensor, state=None) -> tuple[Tensor, object]:
        if self.embedding is not None:
            x = self.embedding(x)
        result = self.layer(x, state)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ValueError(
                f"Stateful: {type(self.layer).__name__} must return (output, state), got "
                f"{type(result).__name__}"
            )
        output, state = result
        if self.head is not None:
            output = self.head(output)
        return output, state


def vocab_of(model: nn.Module) -> Vocabulary | None:
    """The vocabulary a model carries (``model.vocab``), if any."""
    vocab = getattr(model, "vocab", None)
    return vocab if isinstance(vocab, Vocabulary) else None
