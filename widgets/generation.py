"""Text generation and attention, in the notebook: each view is one call of rnnkit's API.

* :class:`GenerationWidget`: prompt, temperature, top-k, length and seed -> one
  :func:`rnnkit.sample` call per click of Generate;
* :class:`AttentionHeatmap`: a source text -> :meth:`rnnkit.Seq2Seq.align` drawn as a heatmap
  (source on the x axis, output on the y axis); :func:`attention_figure` draws one alignment
  as a matplotlib figure for a notebook.

Both show a plain-text and HTML summary where no kernel renders the widget (a saved notebook
on GitHub, nbviewer, a terminal; :mod:`rnnkit.widgets.fallback`): the output shown when
displayed, not a widget's class name.
"""

from __future__ import annotations

import html
import io

import ipywidgets as w
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

import rnnkit
from rnnkit.generate import check_sampling
from rnnkit.seq2seq import Alignment
from rnnkit.widgets.fallback import StaticFallback

__all__ = ["AttentionHeatmap", "GenerationWidget", "attention_figure"]

_STYLE = {"description_width": "initial"}


def _source_of(model):
    """What rnnkit.sample gets: a panel's trainer (sampled through ``copy_model``), a trainer,
    or the model itself."""
    trainer = getattr(model, "trainer", None)
    if isinstance(trainer, rnnkit.Trainer):
        return trainer
    if isinstance(model, (rnnkit.Trainer, nn.Module)):
        return model
    raise ValueError(f"expected a model, a Trainer or a TrainingPanel, got {type(model).__name__}")


class GenerationWidget(StaticFallback):
    """Prompt box, temperature and top-k controls, a length and a seed, a Generate button and
    the text it produced.

    Each click is one call::

        rnnkit.sample(model, vocab, prompt, steps, temperature=T, top_k=K, seed=S)

    (``top_k`` 0 means off; seed -1 means a fresh random seed). ``model`` is a stateful model,
    a :class:`rnnkit.Trainer` or a :class:`rnnkit.widgets.TrainingPanel`: for the last two the
    sample comes from ``trainer.copy_model()``, a copy taken at a step boundary, so a run in
    the background is left exact. A plain model is sampled as it is; its mode is never changed.
    ``vocab`` defaults to ``model.vocab``. ``text`` holds the last output, ``error`` the last
    error (also shown in red).
    """

    def __init__(
        self,
        model,
        vocab=None,
        prompt: str = "",
        steps: int = 200,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> None:
        check_sampling(temperature, top_k, None)
        self.source = _source_of(model)
        self.vocab = vocab
        self.text = ""
        self.error: Exception | None = None
        self.prompt = w.Textarea(value=prompt, description="prompt", layout={"width": "100%"})
        self.temperature = w.FloatSlider(
            value=temperature,
            min=0.05,
            max=2.0,
            step=0.05,
            description="temperature",
            style=_STYLE,
        )
        self.top_k = w.IntText(value=top_k or 0, description="top-k (0 = off)", style=_STYLE)
        self.steps = w.BoundedIntText(
            value=steps, min=1, max=100_000, description="characters", style=_STYLE
        )
        self.seed = w.IntText(
            value=-1 if seed is None else seed, description="seed (-1 = random)", style=_STYLE
        )
        self.button = w.Button(description="Generate", button_style="primary")
        self.output = w.HTML()
        self.button.on_click(lambda _: self.generate())
        self.widget = w.VBox(
            [
                self.prompt,
                w.HBox([self.temperature, self.top_k]),
                w.HBox([self.steps, self.seed, self.button]),
                self.output,
            ]
        )

    def generate(self) -> str:
        """One :func:`rnnkit.sample` call with the controls' values; the text is shown and
        returned (an error is shown and kept in ``error``, and "" returned)."""
        try:
            self.text = rnnkit.sample(
                self.source,
                self.vocab,
                self.prompt.value,
                self.steps.value,
                temperature=self.temperature.value,
                top_k=self.top_k.value or None,
                seed=None if self.seed.value == -1 else self.seed.value,
            )
            self.error = None
        except (TypeError, ValueError) as err:
            self.error, self.text = err, ""
            message = html.escape(f"{type(err).__name__}: {err}")
            self.output.value = f"<b style='color:#c62828'>{message}</b>"
            return ""
        self.output.value = self.fallback_html()
        return self.text

    def __repr__(self) -> str:
        return self.fallback_text()

    def fallback_text(self) -> str:
        if self.error is not None:
            return f"GenerationWidget: {type(self.error).__name__}: {self.error}"
        if not self.text:
            return f"GenerationWidget (prompt {self.prompt.value!r}; press Generate)"
        return self.prompt.value + self.text

    def fallback_html(self) -> str:
        if not self.text:
            return f"<pre>{html.escape(self.fallback_text())}</pre>"
        return (
            "<pre style='white-space:pre-wrap'><b>"
            f"{html.escape(self.prompt.value)}</b>{html.escape(self.text)}</pre>"
        )


def attention_figure(alignment: Alignment, title: str | None = None) -> Figure:
    """A heatmap of one alignment: the source tokens along x, the output tokens along y, each
    cell the attention weight (0 to 1)."""
    weights = alignment.weights.float().numpy()
    height = 1.2 + 0.3 * len(alignment.output)
    width = 1.8 + 0.45 * len(alignment.source)
    figure = Figure(figsize=(width, height), dpi=80, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(alignment.source)), alignment.source, rotation=45, ha="right")
    ax.set_yticks(range(len(alignment.output)), alignment.output)
    ax.set(xlabel="source", ylabel="output")
    if title:
        ax.set_title(title)
    figure.colorbar(image, ax=ax, label="attention weight")
    return figure


class AttentionHeatmap(StaticFallback):
    """Type a source, see where each output token looked: one :meth:`rnnkit.Seq2Seq.align`
    call per change (``model.align(source, beam_size=B)``), drawn by :func:`attention_figure`.
    ``alignment`` holds the last result, ``png`` the picture, ``error`` the last error."""

    def __init__(self, model: rnnkit.Seq2Seq, source: str, beam_size: int = 1) -> None:
        if not isinstance(model, rnnkit.Seq2Seq):
            raise ValueError(
                f"AttentionHeatmap needs an rnnkit.Seq2Seq, got {type(model).__name__}"
            )
        self.model = model
        self.source = w.Text(value=source, description="source", continuous_update=False)
        self.beam = w.BoundedIntText(value=beam_size, min=1, max=32, description="beam")
        self.info = w.HTML()
        self.image = w.Image(format="png")
        self.alignment: Alignment | None = None
        self.error: Exception | None = None
        self.png = b""
        self.widget = w.VBox([w.HBox([self.source, self.beam]), self.info, self.image])
        self.source.observe(lambda _: self.update(), "value")
        self.beam.observe(lambda _: self.update(), "value")
        self.update()

    def update(self) -> None:
        """Align the current source and redraw (an error is shown and kept in ``error``)."""
        try:
            self.alignment = self.model.align(self.source.value, beam_size=self.beam.value)
            self.error = None
        except (TypeError, ValueError) as err:
            self.error, self.alignment = err, None
            self.info.value = (
                f"<b style='color:#c62828'>{html.escape(f'{type(err).__name__}: {err}')}</b>"
            )
            return
        figure = attention_figure(self.alignment)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        self.png = self.image.value = buffer.getvalue()
        self.info.value = html.escape(self.fallback_text())

    def __repr__(self) -> str:
        return self.fallback_text()

    def fallback_text(self) -> str:
        if self.alignment is None:
            return f"AttentionHeatmap: {self.error}"
        output = "".join(t for t in self.alignment.output if not t.startswith("<"))
        return f"{self.source.value!r} -> {output!r}"

    def fallback_html(self) -> str:
        if self.alignment is None or not self.png:
            return super().fallback_html()  # the text, as HTML
        import base64

        data = base64.b64encode(self.png).decode("ascii")
        return (
            f"<p>{html.escape(self.fallback_text())}</p><img src='data:image/png;base64,{data}'/>"
        )
