"""Regularisers for recurrent networks: locked (variational) dropout, embedding dropout,
zoneout, and activation / temporal activation regularisation.

All of them act only in training: in evaluation mode (or with ``training=False``) the dropouts
and zoneout compute their expectation and the penalties are zero. The weight-dropped layer
(DropConnect on the recurrent weights) is :class:`rnnkit.WeightDrop`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import recurrent as _recurrent
from rnnkit.cells import RecurrentCell, State
from rnnkit.padding import Lengths, lengths_to_mask


def _check_p(name: str, p: float) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"{name}: p must be a probability in [0, 1), got {p!r}")


class LockedDropout(nn.Module):
    r"""Dropout with one mask per sequence, shared by every time step (Gal & Ghahramani 2016, "A
    Theoretically Grounded Application of Dropout in Recurrent Neural Networks"; Merity et al.
    2017 call it locked dropout).

    .. math::
        y_{t,b} = x_{t,b} \odot m_b / (1 - p), \quad m_b \sim \mathrm{Bernoulli}(1 - p)^F

    The same features of a sequence are dropped at every step, so the noise cannot be averaged
    out over time as with a fresh mask per step. Input ``(T, B, *)`` (``(B, T, *)`` with
    ``batch_first``) or unbatched ``(T, *)``; the identity in evaluation mode or with ``p=0``.
    """

    def __init__(self, p: float = 0.5, batch_first: bool = False) -> None:
        super().__init__()
        _check_p("LockedDropout", p)
        self.p, self.batch_first = p, batch_first

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise ValueError(
                f"LockedDropout: expected a sequence with a time axis (at least 2-D), "
                f"got shape {tuple(x.shape)}"
            )
        if not self.training or self.p == 0:
            return x
        time_dim = 1 if self.batch_first and x.dim() >= 3 else 0
        shape = list(x.shape)
        shape[time_dim] = 1
        mask = x.new_empty(shape).bernoulli_(1 - self.p) / (1 - self.p)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, batch_first={self.batch_first}"


def embedding_dropout(
    embedding: nn.Embedding, input: Tensor, p: float, training: bool = True
) -> Tensor:
    r"""Look up ``input`` in ``embedding`` with whole words dropped (Gal & Ghahramani 2016;
    Merity, Keskar & Socher 2017, "Regularizing and Optimizing LSTM Language Models").

    .. math::
        E' = \mathrm{diag}(m) E / (1 - p), \quad m \sim \mathrm{Bernoulli}(1 - p)^V

    A row of the embedding matrix (a word type) is zeroed for the whole batch, every occurrence
    of the word at once, and the others are scaled by ``1/(1-p)``. With ``training=False`` or
    ``p=0`` it is ``embedding(input)``. The embedding's ``padding_idx`` and ``scale_grad_by_freq``
    are honoured.
    """
    if not isinstance(embedding, nn.Embedding):
        raise ValueError(
            f"embedding_dropout: expected an nn.Embedding, got {type(embedding).__name__}"
        )
    _check_p("embedding_dropout", p)
    weight = embedding.weight
    if training and p > 0:
        mask = weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p) / (1 - p)
        weight = weight * mask
    return F.embedding(
        input,
        weight,
        embedding.padding_idx,
        embedding.max_norm,
        embedding.norm_type,
        embedding.scale_grad_by_freq,
        embedding.sparse,
    )


def activation_regularization(
    output: Tensor,
    alpha: float = 0.0,
    beta: float = 0.0,
    *,
    dropped_output: Tensor | None = None,
    lengths: Lengths | None = None,
    batch_first: bool = False,
) -> Tensor:
    r"""Activation (AR) and temporal activation regularisation (TAR) penalties (Merity, McCann &
    Socher 2017, "Revisiting Activation Regularization for Language RNNs").

    .. math::
        \mathrm{AR} = \alpha \, \mathrm{mean}_{t}\, \lVert m \odot h_t \rVert^2, \qquad
        \mathrm{TAR} = \beta \, \mathrm{mean}_{t}\, \lVert h_{t+1} - h_t \rVert^2

    (means over steps, batch and features). AR keeps activations small and is applied to the
    dropped-out output ``dropped_output`` (:math:`m \odot h_t`, default ``output``); TAR keeps
    the hidden state slowly changing and is applied to the output before dropout. ``output`` is
    ``(T, B, H)`` (``(B, T, H)`` with ``batch_first``); with ``lengths`` padded steps are left
    out of both means. Returns the scalar ``AR + TAR`` to add to the loss. For a penalty that is
    off in evaluation mode use :class:`ActivationRegularization`.
    """
    for name, value in (("alpha", alpha), ("beta", beta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"activation_regularization: {name} must be >= 0, got {value!r}")
    if output.dim() != 3:
        layout = "(batch, time, features)" if batch_first else "(time, batch, features)"
        raise ValueError(
            f"activation_regularization: expected output {layout}, got shape {tuple(output.shape)}"
        )
    dropped = output if dropped_output is None else dropped_output
    if dropped.shape != output.shape:
        raise ValueError(
            f"activation_regularization: dropped_output has shape {tuple(dropped.shape)}, "
            f"output {tuple(output.shape)}"
        )
    if batch_first:
        output, dropped = output.transpose(0, 1), dropped.transpose(0, 1)
    steps = output.shape[0]
    if lengths is None:
        valid = output.new_ones(steps, output.shape[1], dtype=torch.bool)
    else:
        valid = lengths_to_mask(lengths, steps).t().to(output.device)
    features = output.shape[-1]

    def masked_mean(squares: Tensor, keep: Tensor) -> Tensor:
        count = keep.sum() * features
        return (squares * keep.unsqueeze(-1)).sum() / count.clamp_min(1)

    ar = masked_mean(dropped.pow(2), valid)
    tar = masked_mean((output[1:] - output[:-1]).pow(2), valid[1:] & valid[:-1])
    return alpha * ar + beta * tar


class ActivationRegularization(nn.Module):
    """:func:`activation_regularization` as a module: the AR + TAR penalty in training mode,
    zero in evaluation mode. ``forward(output, dropped_output=None, lengths=None)``."""

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, batch_first: bool = False) -> None:
        super().__init__()
        activation_regularization(torch.zeros(1, 1, 1), alpha, beta)  # validates alpha and beta
        self.alpha, self.beta, self.batch_first = alpha, beta, batch_first

    def forward(
        self,
        output: Tensor,
        dropped_output: Tensor | None = None,
        lengths: Lengths | None = None,
    ) -> Tensor:
        if not self.training:
            return output.new_zeros(())
        return activation_regularization(
            output,
            self.alpha,
            self.beta,
            dropped_output=dropped_output,
            lengths=lengths,
            batch_first=self.batch_first,
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, batch_first={self.batch_first}"


class Zoneout(RecurrentCell):
    r"""Zoneout around any cell (Krueger et al. 2017, "Zoneout: Regularizing RNNs by Randomly
    Preserving Hidden Activations"): each unit of the state keeps its previous value with
    probability ``p`` instead of taking the new one.

    .. math::
        \begin{array}{ll}
        \text{training:} & s_t = d_t \odot s_{t-1} + (1 - d_t) \odot \mathrm{cell}(x_t,
                            s_{t-1}), \quad d_t \sim \mathrm{Bernoulli}(p) \\
        \text{evaluation:} & s_t = p \, s_{t-1} + (1 - p) \, \mathrm{cell}(x_t, s_{t-1})
        \end{array}

    with a fresh mask :math:`d_t` per step, sequence and unit. For a state ``(h, c)`` the rates
    are ``p`` for ``h`` and ``p_cell`` (default ``p``) for ``c``; the paper uses small rates for
    ``h`` (0.05) and larger for ``c`` (0.5). Unlike dropout, a zoned-out unit passes its value
    and its gradient through time unchanged, like an identity connection.

    Usable wherever a cell is: ``rnnkit.Recurrent(rnnkit.Zoneout(rnnkit.LSTMCell(8, 16), 0.1,
    0.5), num_layers=2)`` (fresh wrapped cells for the other layers and directions). The input
    projection of an rnnkit cell stays hoisted out of the time loop.
    """

    def __init__(self, cell: nn.Module, p: float, p_cell: float | None = None) -> None:
        super().__init__()
        if not isinstance(cell, nn.Module):
            raise ValueError(f"Zoneout: expected a cell module, got {type(cell).__name__}")
        _check_p("Zoneout", p)
        arity = getattr(cell, "state_arity", 2 if isinstance(cell, nn.LSTMCell) else 1)
        if p_cell is not None:
            _check_p("Zoneout", p_cell)
            if arity != 2:
                raise ValueError(
                    f"Zoneout: p_cell is for cells with an (h, c) state; "
                    f"{type(cell).__name__} has one state tensor"
                )
        self.cell, self.p, self.p_cell = cell, p, p_cell
        self.state_arity = arity
        self.input_size = cell.input_size
        self.hidden_size = cell.hidden_size
        self.output_size = getattr(cell, "output_size", cell.hidden_size)

    def _rates(self) -> tuple[float, ...]:
        if self.state_arity == 1:
            return (self.p,)
        return self.p, self.p if self.p_cell is None else self.p_cell

    def project_input(self, x: Tensor) -> Tensor:
        project = getattr(self.cell, "project_input", None)
        return x if project is None else project(x)

    def _inner_step(self, x_proj: Tensor, state: State) -> State:
        step = getattr(self.cell, "step", None)
        return self.cell(x_proj, state) if step is None else step(x_proj, state)

    def step(self, x_proj: Tensor, state: State) -> State:
        return self.zone(state, self._inner_step(x_proj, state))

    def zone(self, state: State, new: State) -> State:
        """Mix the previous ``state`` and the cell's ``new`` one (class doc, by mode)."""
        olds = state if isinstance(state, tuple) else (state,)
        news = new if isinstance(new, tuple) else (new,)
        mixed = []
        for old, fresh, p in zip(olds, news, self._rates(), strict=True):
            if not p:
                mixed.append(fresh)
            elif self.training:
                keep = torch.empty_like(fresh).bernoulli_(p)
                mixed.append(torch.lerp(fresh, old, keep))
            else:
                mixed.append(torch.lerp(fresh, old, p))
        return tuple(mixed) if isinstance(new, tuple) else mixed[0]

    def initial_state(
        self, batch_size: int | None, *, dtype: torch.dtype, device: torch.device
    ) -> State:
        if hasattr(self.cell, "initial_state"):
            return self.cell.initial_state(batch_size, dtype=dtype, device=device)
        return super().initial_state(batch_size, dtype=dtype, device=device)

    def replicate(self, input_size: int) -> Zoneout:
        """A zoneout wrapper, same rates, around a fresh cell for ``input_size`` inputs."""
        return Zoneout(_recurrent._replicate(self.cell, input_size), self.p, self.p_cell)

    def reset_parameters(self) -> None:
        self.cell.reset_parameters()

    def extra_repr(self) -> str:
        extra = "" if self.p_cell is None else f", p_cell={self.p_cell}"
        return f"p={self.p}{extra}"
