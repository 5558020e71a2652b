"""rnnkit: a notebook-first PyTorch toolkit for recurrent neural networks.

The public API is flat: ``rnnkit.LSTM``, ``rnnkit.pad``, ``rnnkit.explain_fast_path``, ...
The Jupyter layer lives in ``rnnkit.widgets`` and is never imported by the core.
"""

from pathlib import Path as _Path

from rnnkit.cells import GRUCell, LSTMCell, RecurrentCell, RNNCell
from rnnkit.clipping import NonFiniteGradientError, clip_gradients
from rnnkit.diagnostics import GradientFlow, gradient_flow, saturation, spectral_radius
from rnnkit.init import init_recurrent
from rnnkit.padding import lengths_to_mask, mask_to_lengths
from rnnkit.recurrent import GRU, LSTM, RNN, Recurrent, explain_fast_path
from rnnkit.regularization import (
    ActivationRegularization,
    LockedDropout,
    Zoneout,
    activation_regularization,
    embedding_dropout,
)
from rnnkit.tbptt import Chunk, detach_state, tbptt
from rnnkit.units import RecurrentUnit, recurrent_units
from rnnkit.variants import IndRNNCell, LayerNormGRUCell, LayerNormLSTMCell
from rnnkit.weight_drop import WeightDrop

__version__ = "0.1.0"

# In a source checkout the Jupyter layer sits in ../widgets (pyproject maps it to rnnkit.widgets
# when built); adding the checkout root to the search path makes `rnnkit.widgets` resolve there too.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "widgets" / "__init__.py").is_file() and not (
    _checkout / "rnnkit/widgets"
).exists():
    __path__.append(str(_checkout))


def load_ipython_extension(ipython):
    """``%load_ext rnnkit``: register the ``%rnnkit`` magics (see :mod:`rnnkit.widgets.magics`)."""
    from rnnkit.widgets.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython):
    """``%unload_ext rnnkit``: remove the ``%rnnkit`` magics."""
    from rnnkit.widgets.magics import unload_ipython_extension as unload

    unload(ipython)


__all__ = [
    "GRU",
    "GRUCell",
    "LSTM",
    "LSTMCell",
    "RNN",
    "RNNCell",
    "Recurrent",
    "RecurrentCell",
    "explain_fast_path",
    "lengths_to_mask",
    "mask_to_lengths",
    "ActivationRegularization",
    "Chunk",
    "GradientFlow",
    "IndRNNCell",
    "LayerNormGRUCell",
    "LayerNormLSTMCell",
    "LockedDropout",
    "NonFiniteGradientError",
    "RecurrentUnit",
    "WeightDrop",
    "Zoneout",
    "activation_regularization",
    "clip_gradients",
    "detach_state",
    "embedding_dropout",
    "gradient_flow",
    "init_recurrent",
    "recurrent_units",
    "saturation",
    "spectral_radius",
    "tbptt",
]
