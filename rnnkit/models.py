"""A small ready-made model: a recurrent layer and a linear head, for tasks and examples."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnkit.recurrent import GRU, LSTM, RNN

LAYERS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


class SequenceModel(nn.Module):
    r"""``rnnkit.RNN/LSTM/GRU`` (batch first) followed by a linear head.

    ``output="last"``: :math:`\hat y = W h_{\text{last}} + b` from the state at each sequence's
    own last step (both directions' when bidirectional), shape ``(B, output_size)``.
    ``output="sequence"``: the head at every step, ``(B, T, output_size)``.
    ``forward(x, lengths=None)`` takes ``x`` of shape ``(B, T, input_size)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        cell: str = "lstm",
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        output: str = "last",
    ) -> None:
        super().__init__()
        if cell not in LAYERS:
            raise ValueError(f"cell must be one of {', '.join(LAYERS)}, got {cell!r}")
        if output not in ("last", "sequence"):
            raise ValueError(f"output must be 'last' or 'sequence', got {output!r}")
        self.output = output
        self.directions = 2 if bidirectional else 1
        self.rnn = LAYERS[cell](
            input_size,
            hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            dropout=dropout,
            batch_first=True,
        )
        self.head = nn.Linear(self.directions * hidden_size, output_size)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        out, state = self.rnn(x, lengths=lengths)
        if self.output == "sequence":
            return self.head(out)
        h_n = state[0] if isinstance(state, tuple) else state
        last = torch.cat(list(h_n[-self.directions :]), dim=-1)
        return self.head(last)
