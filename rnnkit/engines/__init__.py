"""How a recurrent layer runs: the engines, and the choice between them.

Every engine computes the same numbers (tested against the own loop, which is the reference):

* ``"fused"`` (:mod:`rnnkit.engines.fused`): torch's fused kernels, cuDNN on a GPU and
  aten/oneDNN on a CPU, for exact RNN/LSTM/GRU cells; with ``lengths=`` in segments cut at the
  distinct lengths;
* ``"triton"`` (:mod:`rnnkit.engines.triton`, on CUDA): one cuBLAS product and one Triton kernel
  per step, a hand-derived backward through time, both loops in CUDA graphs; for the cells the
  fused kernels lack (layer-norm LSTM/GRU, IndRNN) and every exact RNN/LSTM/GRU cell;
* ``"loop"`` (:mod:`rnnkit.engines.loop`): rnnkit's own loop over time with the input projection
  hoisted out of it; any cell, any configuration.

A layer with ``engine="auto"`` runs the first of them that computes it exactly; which one, and
why not a faster one, is answered by :func:`rnnkit.explain_fast_path`
(:mod:`rnnkit.engines.selection`), from the same rule the layer's forward applies.
"""

from rnnkit.engines.selection import ENGINES, FastPath, explain_fast_path, select

__all__ = ["ENGINES", "FastPath", "explain_fast_path", "select"]
