"""Interactive explorers: controls in, one picture out, each a call of rnnkit's public API.

* :class:`GradientFlowExplorer`: cell type, sequence length, init recipe and recurrent gain ->
  :math:`\\lVert \\partial L / \\partial h_t \\rVert` per step (:func:`rnnkit.gradient_flow`);
* :class:`PaddingExplorer`: length distribution, batch size, bucketing -> the padded batches and
  the useful-token fraction (:func:`rnnkit.padding_stats`, :class:`rnnkit.BucketBatchSampler`);
* :class:`HiddenStateExplorer`: hidden states and gate activations over time for one input
  (:func:`rnnkit.trace_states`).

Each explorer has ``widget`` (what a notebook shows), ``update()`` (recompute and redraw; the
controls call it when changed), ``figure`` (the matplotlib figure), ``png`` and ``snapshot()``
(the picture as a static image for a saved notebook), ``result`` (what the API returned) and
``error`` (what it raised, also shown in the info line). Displayed, an explorer leaves for
front-ends without a kernel (GitHub, nbconvert) its settings, its info line and its picture as
they were when displayed (:class:`rnnkit.widgets.fallback.StaticFallback`).
"""

from __future__ import annotations

import base64
import html
import io
import math
import re

import ipywidgets as w
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

import rnnkit
from rnnkit.widgets.fallback import LIVE_HINT, StaticFallback

_STYLE = {"description_width": "initial"}


class _Explorer(StaticFallback):
    """Controls, an info line and a picture; ``update()`` recomputes and redraws."""

    def __init__(self, rows: list[list[w.Widget]]) -> None:
        self.controls = [control for row in rows for control in row]
        self.info = w.HTML()
        self.image = w.Image(format="png")
        self.figure: Figure | None = None
        self.png: bytes = b""
        self.result = None
        self.error: Exception | None = None
        self.widget = w.VBox([w.HBox(row) for row in rows] + [self.info, self.image])
        for row in rows:
            for control in row:
                control.observe(lambda _: self.update(), "value")

    def update(self) -> None:
        """Recompute with the controls' values and redraw; an error of the API call (e.g. a
        recipe that does not fit the cell) is shown in the info line and kept in ``error``."""
        self.figure = Figure(figsize=self._figsize(), dpi=80, layout="constrained")
        FigureCanvasAgg(self.figure)
        try:
            self.info.value = self._draw(self.figure)
            self.error = None
        except (TypeError, ValueError) as err:
            self.error = err
            self.info.value = (
                f"<b style='color:#c62828'>{html.escape(f'{type(err).__name__}: {err}')}</b>"
            )
            return
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png")
        self.png = buffer.getvalue()
        self.image.value = self.png

    def snapshot(self):
        """The current picture as an ``IPython.display.Image`` (it stays in a saved notebook)."""
        from IPython.display import Image

        return Image(data=self.png, format="png")

    def settings(self) -> str:
        """The controls' values, e.g. ``cell rnn, init orthogonal, gain (ρ) 0.9``."""
        shown = [c for c in self.controls if not c.disabled]
        return ", ".join(f"{c.description} {_value(c.value)}" for c in shown)

    def fallback_text(self) -> str:
        info = html.unescape(re.sub(r"<[^>]+>", "", self.info.value)).replace("\xa0", " ")
        return f"{type(self).__name__}: {self.settings()}\n{info}\n({LIVE_HINT})"

    def fallback_html(self) -> str:
        title = f"<b>{type(self).__name__}</b>: {html.escape(self.settings())}"
        picture = ""
        if self.png and self.error is None:
            data = base64.b64encode(self.png).decode("ascii")
            picture = f"<br><img src='data:image/png;base64,{data}' alt='{type(self).__name__}'>"
        hint = f"<br><small>({html.escape(LIVE_HINT)})</small>"
        return f"<div class='rnnkit-fallback'>{title}<br>{self.info.value}{picture}{hint}</div>"

    def _figsize(self) -> tuple[float, float]:
        return (8.0, 3.2)

    def _draw(self, figure: Figure) -> str:
        raise NotImplementedError


class GradientFlowExplorer(_Explorer):
    """How far back does the gradient reach? :math:`\\lVert \\partial L / \\partial h_t \\rVert`
    for every step ``t`` of a one-layer model on the adding problem.

    Each update builds ``rnnkit.SequenceModel(2, hidden, 1, cell=cell)`` after
    ``rnnkit.seed_everything(seed)``, applies ``rnnkit.init_recurrent(model, recipe, ...)``
    (the "gain" control is the orthogonal recipe's gain and the IRNN recipe's scale, i.e. the
    spectral radius of each recurrent gate matrix; chrono gets ``t_max=seq_len``), and plots
    ``rnnkit.gradient_flow(model, x, y, mse)`` on a batch of ``rnnkit.tasks.adding_problem``
    (Hochreiter & Schmidhuber 1997). The info line gives ``rnnkit.spectral_radius(model)`` and
    the ratio of the first step's gradient norm to the last's: far below 1 is vanishing, far
    above 1 exploding (Bengio, Simard & Frasconi 1994; Pascanu, Mikolov & Bengio 2013).
    """

    RECIPES = ("default", "orthogonal", "irnn", "forget_bias", "chrono", "xavier", "kaiming")
    GAIN_OPTION = {"orthogonal": "gain", "irnn": "scale"}

    def __init__(
        self,
        cell: str = "rnn",
        seq_len: int = 100,
        recipe: str = "orthogonal",
        gain: float = 1.0,
        hidden: int = 32,
        batch: int = 16,
        seed: int = 0,
    ) -> None:
        if recipe not in self.RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(self.RECIPES)}, got {recipe!r}")
        self.batch, self.seed = batch, seed
        self.cell = w.Dropdown(options=["rnn", "lstm", "gru"], value=cell, description="cell")
        self.seq_len = w.IntSlider(
            value=seq_len,
            min=5,
            max=max(400, seq_len),
            step=5,
            description="seq len",
            continuous_update=False,
        )
        self.recipe = w.Dropdown(options=self.RECIPES, value=recipe, description="init")
        self.gain = w.FloatSlider(
            value=gain,
            min=0.1,
            max=3.0,
            step=0.05,
            description="gain (ρ)",
            continuous_update=False,
            style=_STYLE,
        )
        self.hidden = w.IntSlider(
            value=hidden,
            min=2,
            max=max(128, hidden),
            description="hidden",
            continuous_update=False,
        )
        super().__init__([[self.cell, self.recipe, self.gain], [self.seq_len, self.hidden]])
        self.update()

    def model_and_data(self):
        """The model and batch the current controls describe (what :meth:`update` measures)."""
        rnnkit.seed_everything(self.seed)
        model = rnnkit.SequenceModel(2, self.hidden.value, 1, cell=self.cell.value)
        recipe = self.recipe.value
        if recipe != "default":
            options = {}
            if recipe in self.GAIN_OPTION:
                options[self.GAIN_OPTION[recipe]] = self.gain.value
            if recipe == "chrono":
                options["t_max"] = float(self.seq_len.value)
            rnnkit.init_recurrent(model, recipe, **options)
        x, y = rnnkit.tasks.adding_problem(self.batch, self.seq_len.value, seed=self.seed)
        return model, x, y

    def _draw(self, figure: Figure) -> str:
        self.gain.disabled = self.recipe.value not in self.GAIN_OPTION
        model, x, y = self.model_and_data()
        self.result = rnnkit.gradient_flow(model, x, y, nn.functional.mse_loss)
        ax = figure.subplots()
        for layer, norms in self.result.per_step.items():
            ax.semilogy(np.arange(len(norms)), norms.numpy(), label=layer)
        ax.set(
            xlabel="time step t",
            ylabel="‖∂L/∂h_t‖",
            title=f"{self.cell.value.upper()}, init {self.recipe.value}, T={self.seq_len.value}",
        )
        radii = rnnkit.spectral_radius(model)
        norms = next(iter(self.result.per_step.values()))
        ratio = float(norms[0] / norms[-1]) if float(norms[-1]) > 0 else math.inf
        radius_text = "; ".join(
            f"{layer}: " + ", ".join(f"{g}={r:.2f}" for g, r in gates.items())
            for layer, gates in radii.items()
        )
        return (
            f"spectral radius of W_hh per gate: {radius_text} &nbsp;·&nbsp; "
            f"‖∂L/∂h_0‖ / ‖∂L/∂h_T-1‖ = {ratio:.3g} &nbsp;·&nbsp; loss {self.result.loss:.4f}"
        )


class PaddingExplorer(_Explorer):
    """How much of a padded batch is real? Lengths, batch size and bucketing -> the padded
    batches drawn row by row (real steps and padding) and the useful-token fraction.

    Without bucketing the batches are ``torch.randperm(n).split(batch_size)``; with it they come
    from ``rnnkit.BucketBatchSampler(lengths, batch_size, pool_batches=...)`` (sort pools of
    random samples by length; Khomenko et al. 2016). Both are measured with
    ``rnnkit.padding_stats(lengths, batches)``: ``real steps / padded steps``. ``lengths``:
    your own data's lengths, or None to draw ``n`` from the chosen distribution (uniform;
    long-tailed: log-normal, median ``max_len / 8``; bimodal: short and long around
    ``max_len / 5`` and ``4 max_len / 5``).
    """

    DISTRIBUTIONS = ("uniform", "long-tailed", "bimodal")

    def __init__(
        self,
        lengths=None,
        *,
        distribution: str = "long-tailed",
        n: int = 2000,
        max_len: int = 200,
        batch_size: int = 32,
        bucketing: bool = False,
        pool_batches: int = 50,
        batches_shown: int = 12,
        seed: int = 0,
    ) -> None:
        if distribution not in self.DISTRIBUTIONS:
            raise ValueError(
                f"distribution must be one of {', '.join(self.DISTRIBUTIONS)}, got {distribution!r}"
            )
        self.lengths = None if lengths is None else torch.as_tensor(lengths).long().cpu()
        self.n, self.batches_shown, self.seed = n, batches_shown, seed
        self.distribution = w.Dropdown(
            options=self.DISTRIBUTIONS,
            value=distribution,
            description="lengths",
            disabled=lengths is not None,
        )
        self.max_len = w.IntSlider(
            value=max_len,
            min=2,
            max=max(1000, max_len),
            description="max len",
            continuous_update=False,
            disabled=lengths is not None,
        )
        self.batch_size = w.IntSlider(
            value=batch_size,
            min=1,
            max=max(256, batch_size),
            description="batch size",
            continuous_update=False,
            style=_STYLE,
        )
        self.bucketing = w.Checkbox(value=bucketing, description="bucketing", indent=False)
        self.pool_batches = w.IntSlider(
            value=pool_batches,
            min=1,
            max=max(200, pool_batches),
            description="pool (batches)",
            continuous_update=False,
            style=_STYLE,
        )
        super().__init__(
            [
                [self.distribution, self.max_len],
                [self.batch_size, self.bucketing, self.pool_batches],
            ]
        )
        self.update()

    def current_lengths(self) -> torch.Tensor:
        """The lengths measured: the given ones, or ``n`` drawn from the chosen distribution."""
        if self.lengths is not None:
            return self.lengths
        gen = torch.Generator().manual_seed(self.seed)
        top = self.max_len.value
        if self.distribution.value == "uniform":
            values = torch.randint(1, top + 1, (self.n,), generator=gen).double()
        elif self.distribution.value == "long-tailed":
            values = torch.exp(math.log(top / 8) + torch.randn(self.n, generator=gen, dtype=float))
        else:
            centre = torch.where(torch.rand(self.n, generator=gen) < 0.5, top / 5, 4 * top / 5)
            values = centre + top / 15 * torch.randn(self.n, generator=gen, dtype=float)
        return values.round().clamp(1, top).long()

    def batches(self, bucketing: bool) -> list[list[int]]:
        """The batches of one epoch, with or without bucketing."""
        lengths = self.current_lengths()
        if bucketing:
            sampler = rnnkit.BucketBatchSampler(
                lengths, self.batch_size.value, seed=self.seed, pool_batches=self.pool_batches.value
            )
            return list(sampler)
        order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(self.seed))
        return [b.tolist() for b in order.split(self.batch_size.value)]

    def _figsize(self) -> tuple[float, float]:
        return (9.0, 3.4)

    def _draw(self, figure: Figure) -> str:
        self.pool_batches.disabled = not self.bucketing.value
        lengths = self.current_lengths()
        stats = {b: rnnkit.padding_stats(lengths, self.batches(b)) for b in (False, True)}
        self.result = stats[self.bucketing.value]
        hist_ax, batch_ax = figure.subplots(1, 2, width_ratios=[1, 2])
        hist_ax.hist(lengths.numpy(), bins=40, color="tab:blue")
        hist_ax.set(title=f"{len(lengths)} sequence lengths", xlabel="length", ylabel="count")
        shown = self.batches(self.bucketing.value)[: self.batches_shown]
        width = max((int(lengths[b].max()) for b in shown if b), default=1)
        rows = []
        for batch in shown:
            picked = lengths[batch]
            block = np.full((len(batch), width), np.nan)
            block[:, : int(picked.max())] = 0.0  # padding
            for row, length in enumerate(picked.tolist()):
                block[row, :length] = 1.0  # real steps
            rows.extend([block, np.full((1, width), np.nan)])
        cmap = _two_colours()
        batch_ax.imshow(
            np.vstack(rows[:-1]), aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest"
        )
        mode = "bucketing" if self.bucketing.value else "random batches"
        batch_ax.set(
            title=f"first {len(shown)} batches ({mode}): blue real, red padding",
            xlabel="time step",
            yticks=[],
        )
        off, on = stats[False], stats[True]
        return (
            f"useful-token fraction: <b>{self.result.useful_fraction:.1%}</b> "
            f"({self.result.real_steps} real of {self.result.padded_steps} padded steps, "
            f"{self.result.num_batches} batches) &nbsp;·&nbsp; random batches "
            f"{off.useful_fraction:.1%}, bucketing {on.useful_fraction:.1%}"
        )


def _value(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _two_colours():
    from matplotlib.colors import ListedColormap

    return ListedColormap(["tab:red", "tab:blue"]).with_extremes(bad="white")


class HiddenStateExplorer(_Explorer):
    """Inside the memory: the input, the hidden state and every gate over time, as heatmaps
    (units down, time across) for one sequence, from ``rnnkit.trace_states(model, x_i)``.

    ``x`` holds the sequences ``(N, T, F)`` (batch first; ``model`` is called on one of them,
    ``x[i:i+1, :lengths[i]]``). Sigmoid gates are drawn on [0, 1], tanh quantities on [-1, 1];
    an LSTM shows ``i, f, g, o`` and its cell state ``c`` (on its own symmetric scale).
    """

    SIGMOID = {"i", "f", "o", "r", "z"}

    def __init__(self, model: nn.Module, x: torch.Tensor, lengths=None, *, units: int = 32):
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a tensor (N, T, features), got {got}")
        if lengths is not None and len(lengths) != x.shape[0]:
            raise ValueError(
                f"expected {x.shape[0]} lengths (one per sequence), got {len(lengths)}"
            )
        self.model, self.x, self.units = model, x, units
        self.lengths = None if lengths is None else torch.as_tensor(lengths).long().cpu()
        layers = list(rnnkit.trace_states(model, self._sequence(0)))
        self.sample = w.IntSlider(
            value=0, min=0, max=x.shape[0] - 1, description="sequence", continuous_update=False
        )
        self.layer = w.Dropdown(options=layers, value=layers[-1], description="layer")
        super().__init__([[self.sample, self.layer]])
        self.update()

    def _sequence(self, index: int) -> torch.Tensor:
        end = self.x.shape[1] if self.lengths is None else int(self.lengths[index])
        return self.x[index : index + 1, :end]

    def _draw(self, figure: Figure) -> str:
        sequence = self._sequence(self.sample.value)
        self.result = rnnkit.trace_states(self.model, sequence)
        trace = self.result[self.layer.value]
        bound = float(sequence.abs().max()) or 1.0
        panels = [("input", sequence[0].T, (-bound, bound))]
        panels.append(("hidden h", trace.hidden[0].T, (-1, 1)))
        for gate, values in trace.gates.items():
            if gate == "c":
                bound = float(values.abs().max()) or 1.0
                panels.append(("cell state c", values[0].T, (-bound, bound)))
            else:
                panels.append(
                    (f"gate {gate}", values[0].T, (0, 1) if gate in self.SIGMOID else (-1, 1))
                )
        figure.set_size_inches(9.0, 0.8 + 1.1 * len(panels))
        axes = figure.subplots(len(panels), 1, sharex=True)
        for ax, (title, values, limits) in zip(axes, panels, strict=True):
            values = values[: self.units].numpy()
            cmap = "viridis" if limits == (0, 1) else "RdBu_r"
            image = ax.imshow(
                values,
                aspect="auto",
                cmap=cmap,
                vmin=limits[0],
                vmax=limits[1],
                interpolation="nearest",
            )
            ax.set_ylabel(title, rotation=0, ha="right", va="center")
            ax.set_yticks([])
            figure.colorbar(image, ax=ax, pad=0.01, aspect=8)
        axes[-1].set_xlabel("time step")
        steps = sequence.shape[1]
        units = trace.hidden.shape[-1]
        shown = min(units, self.units)
        return (
            f"{self.layer.value} ({trace.kind}): sequence {self.sample.value}, {steps} steps, "
            f"{shown} of {units} units shown"
        )
