"""rnnkit's error for bad input: both a ``ValueError`` and a ``RuntimeError``.

``torch.nn`` raises ``RuntimeError`` for many input mistakes (a hidden state of the wrong shape, a
wrong feature count, a dtype that does not match the weights); Python convention, and rnnkit's
own messages, say ``ValueError``. :class:`InputError` is both, so code written for ``torch.nn``
(``except RuntimeError``) and code written for rnnkit (``except ValueError``) keep working.
Its message names what was expected, what came, and what to do.
"""

from __future__ import annotations


class InputError(ValueError, RuntimeError):
    """Bad input to an rnnkit layer, cell or function (a ``ValueError`` and a ``RuntimeError``)."""
