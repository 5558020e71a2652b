"""rnnkit.widgets: the Jupyter layer of rnnkit (ipywidgets controls, explorers, ``%rnnkit`` magics).

Imported as ``rnnkit.widgets``; the core ``rnnkit`` package never imports it. Every control here
calls rnnkit's public Python API: this layer adds controls and pictures, not logic.
"""

from rnnkit.widgets.explorers import GradientFlowExplorer, HiddenStateExplorer, PaddingExplorer
from rnnkit.widgets.fallback import StaticFallback, with_fallback
from rnnkit.widgets.generation import AttentionHeatmap, GenerationWidget, attention_figure
from rnnkit.widgets.magics import RNNKitMagics, load_ipython_extension, unload_ipython_extension
from rnnkit.widgets.panel import TrainingPanel

__all__ = [
    "AttentionHeatmap",
    "GenerationWidget",
    "attention_figure",
    "GradientFlowExplorer",
    "HiddenStateExplorer",
    "PaddingExplorer",
    "RNNKitMagics",
    "StaticFallback",
    "TrainingPanel",
    "load_ipython_extension",
    "unload_ipython_extension",
    "with_fallback",
]
