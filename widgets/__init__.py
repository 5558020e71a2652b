"""rnnkit.widgets: the Jupyter layer of rnnkit (ipywidgets controls, explorers, ``%rnnkit`` magics).

Imported as ``rnnkit.widgets``; the core ``rnnkit`` package never imports it. Every control here
calls rnnkit's public Python API: this layer adds controls and pictures, not logic.
"""

from rnnkit.widgets.magics import RNNKitMagics, load_ipython_extension, unload_ipython_extension

__all__ = ["RNNKitMagics", "load_ipython_extension", "unload_ipython_extension"]
