"""What a notebook shows of a widget where no kernel draws it: a text and an HTML summary.

A displayed widget is one output holding the live view
(``application/vnd.jupyter.widget-view+json``, drawn by JupyterLab's widget manager while the
widget's model exists) and, for every other
front-end (GitHub, nbconvert, a notebook reopened without its widget state), ``text/plain``,
which ipywidgets fills with the widget's repr: ``VBox(children=(HBox(children=(Button(...``.
:class:`StaticFallback` puts in its place a plain-text and an HTML summary written by the
widget's owner: front-ends with a widget manager still draw the live view (it ranks first), the
others show the summary.

How to use it. An object that shows a widget (it has ``widget``) subclasses
:class:`StaticFallback` and writes ``fallback_text()`` (and, if plain text is not enough,
``fallback_html()``); displaying the object then displays the widget with that fallback::

    class Generator(StaticFallback):
        def __init__(self, ...):
            self.widget = w.VBox([...])

        def fallback_text(self) -> str:
            return f"Generator: prompt {self.prompt!r}, temperature {self.temperature}"

    Generator(...)            # as the last line of a cell
    display(generator)        # or explicitly

A widget built in a notebook gets one with ``display(with_fallback(box, "text"))``. The summary
is what the widget showed *when displayed* (it is not updated later, which would re-create the
live view): say what the widget is and what it was set to, and point to the outputs that stay
(a panel's summary and final chart are outputs of their own; the fallback does not repeat them).
"""

from __future__ import annotations

import html

import ipywidgets as w

LIVE_HINT = "live controls in JupyterLab with a running kernel"


def fallback_bundle(widget: w.Widget, text: str, html_text: str | None = None) -> dict:
    """The display data of ``widget`` with ``text`` (and ``html_text``, default: ``text``
    escaped) as its fallback for front-ends that cannot draw the live view."""
    bundle = dict(widget._repr_mimebundle_())
    bundle["text/plain"] = text
    bundle["text/html"] = html_text if html_text is not None else text_to_html(text)
    return bundle


def text_to_html(text: str) -> str:
    """Plain text as HTML: escaped, one line per line, the first in bold."""
    first, *rest = html.escape(text).splitlines() or [""]
    lines = [f"<b>{first}</b>", *rest]
    return "<div class='rnnkit-fallback'>" + "<br>".join(lines) + "</div>"


class StaticFallback:
    """Mixin for an object with a ``widget``: displaying it shows the widget, with
    :meth:`fallback_text` / :meth:`fallback_html` where the live view cannot be drawn."""

    widget: w.Widget

    def fallback_text(self) -> str:
        raise NotImplementedError

    def fallback_html(self) -> str:
        return text_to_html(self.fallback_text())

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        return fallback_bundle(self.widget, self.fallback_text(), self.fallback_html())


class WithFallback(StaticFallback):
    """A widget with a given fallback text (and HTML): see :func:`with_fallback`."""

    def __init__(self, widget: w.Widget, text: str, html_text: str | None = None) -> None:
        if not isinstance(widget, w.Widget):
            raise TypeError(f"widget must be an ipywidgets Widget, got {type(widget).__name__}")
        self.widget, self.text, self.html_text = widget, text, html_text

    def fallback_text(self) -> str:
        return self.text

    def fallback_html(self) -> str:
        return self.html_text if self.html_text is not None else text_to_html(self.text)


def with_fallback(widget: w.Widget, text: str, html_text: str | None = None) -> WithFallback:
    """``widget`` shown with ``text`` (and ``html_text``) where no kernel draws it:
    ``display(with_fallback(controls, "Sweep controls: ..."))``."""
    return WithFallback(widget, text, html_text)
