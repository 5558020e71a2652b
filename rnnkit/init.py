"""Initialisation recipes for recurrent layers, applied to every recurrent unit of a model.

``rnnkit.init_recurrent(model, recipe, **options)`` finds the units with
:func:`rnnkit.units.recurrent_units` (``torch.nn`` layers, rnnkit layers, the cells of
:class:`rnnkit.Recurrent`, standalone cells) and changes their weights in place. Weights are
stacked by gate (``W = [W_i; W_f; W_g; W_o]`` for an LSTM), and recipes act per gate block.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor, nn

from rnnkit.units import RecurrentUnit, recurrent_units


def _blocks(weight: Tensor, count: int) -> list[Tensor]:
    return list(weight.chunk(count, dim=0))


def _orthogonal(unit: RecurrentUnit, *, gain: float = 1.0) -> list[Tensor]:
    if unit.kind == "IndRNN":
        return []
    weight = unit.get(unit.weight_hh)
    for block in _blocks(weight, len(unit.gates)):
        fresh = torch.empty(block.shape, dtype=weight.dtype, device=weight.device)
        block.copy_(nn.init.orthogonal_(fresh, gain=gain))
    return [weight]


def _irnn(unit: RecurrentUnit, *, scale: float = 1.0) -> list[Tensor]:
    weight = unit.get(unit.weight_hh)
    if weight.dim() == 1:
        weight.fill_(scale)
    else:
        weight.copy_(scale * torch.eye(*weight.shape, dtype=weight.dtype, device=weight.device))
    biases = [unit.get(b) for b in unit.biases]
    for bias in biases:
        bias.zero_()
    return [weight, *biases]


def _set_gate_bias(unit: RecurrentUnit, gate: str, value: Tensor | float) -> list[Tensor]:
    """Make the effective bias of ``gate`` (the sum of the unit's biases) equal to ``value``."""
    index = unit.gates.index(gate)
    biases = [unit.get(b) for b in unit.biases]
    for position, bias in enumerate(biases):
        block = _blocks(bias, len(unit.gates))[index]
        if position == 0:
            block.copy_(torch.as_tensor(value, dtype=bias.dtype).expand_as(block))
        else:
            block.zero_()
    return biases


def _forget_bias(unit: RecurrentUnit, *, value: float = 1.0) -> list[Tensor]:
    if unit.kind != "LSTM":
        return []
    return _set_gate_bias(unit, "f", value)


def _chrono(unit: RecurrentUnit, *, t_max: float) -> list[Tensor]:
    if unit.kind != "LSTM":
        return []
    weight = unit.get(unit.weight_hh)
    log_t = torch.empty(unit.hidden_size, dtype=weight.dtype, device=weight.device)
    log_t.uniform_(1.0, t_max - 1.0).log_()
    return _set_gate_bias(unit, "f", log_t) + _set_gate_bias(unit, "i", -log_t)


def _input_weights(unit: RecurrentUnit, init: Callable[[Tensor], Tensor]) -> list[Tensor]:
    weight = unit.get(unit.weight_ih)
    for block in _blocks(weight, len(unit.gates)):
        fresh = torch.empty(block.shape, dtype=weight.dtype, device=weight.device)
        block.copy_(init(fresh))
    return [weight]


def _xavier(unit: RecurrentUnit, *, gain: float = 1.0) -> list[Tensor]:
    return _input_weights(unit, lambda w: nn.init.xavier_uniform_(w, gain=gain))


def _kaiming(unit: RecurrentUnit) -> list[Tensor]:
    act = "relu" if unit.nonlinearity == "relu" else "tanh"
    return _input_weights(unit, lambda w: nn.init.kaiming_uniform_(w, nonlinearity=act))


RECIPES: dict[str, Callable[..., list[Tensor]]] = {
    "orthogonal": _orthogonal,
    "irnn": _irnn,
    "forget_bias": _forget_bias,
    "chrono": _chrono,
    "xavier": _xavier,
    "kaiming": _kaiming,
}


def _check(recipe: str, options: dict, units: list[RecurrentUnit], model: nn.Module) -> None:
    if recipe not in RECIPES:
        raise ValueError(f"unknown init recipe {recipe!r}; known recipes: {', '.join(RECIPES)}")
    params = inspect.signature(RECIPES[recipe]).parameters
    accepted = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"init recipe {recipe!r} takes the options {accepted or 'none'}, got {unknown}"
        )
    if not units:
        raise ValueError(f"found no recurrent layer or cell in {type(model).__name__}")
    if recipe == "irnn":
        for unit in units:
            if unit.nonlinearity != "relu" or unit.kind not in ("RNN", "IndRNN"):
                what = f"a {unit.kind} with tanh" if unit.kind == "RNN" else f"a {unit.kind}"
                raise ValueError(
                    f"init recipe 'irnn' is identity recurrence with ReLU (Le et al. 2015), but "
                    f"{unit.name or 'the model'} is {what}; build it with nonlinearity='relu' "
                    "(with tanh the identity saturates and is a different model)"
                )
    if recipe in ("forget_bias", "chrono"):
        lstms = [u for u in units if u.kind == "LSTM"]
        if not lstms:
            kinds = sorted({u.kind for u in units})
            raise ValueError(f"init recipe {recipe!r} needs LSTM units, found only {kinds}")
        for unit in lstms:
            if not unit.biases:
                raise ValueError(
                    f"init recipe {recipe!r} sets gate biases, but {unit.name or 'the model'} "
                    "was built with bias=False"
                )
    if recipe == "chrono":
        t_max = options.get("t_max")
        if not isinstance(t_max, (int, float)) or isinstance(t_max, bool) or not t_max > 2:
            raise ValueError(
                "init recipe 'chrono' needs t_max, the longest time dependency expected (in "
                f"steps, > 2), e.g. init_recurrent(model, 'chrono', t_max=100); got {t_max!r}"
            )
    if recipe == "orthogonal" and all(u.kind == "IndRNN" for u in units):
        raise ValueError(
            "init recipe 'orthogonal' acts on recurrent matrices; the IndRNN's recurrent weight "
            "is a vector (use 'irnn' or IndRNNCell's recurrent_max_abs)"
        )


def init_recurrent(model: nn.Module, recipe: str, **options) -> list[str]:
    r"""Initialise every recurrent unit (layer and direction) inside ``model`` with ``recipe``.

    Recipes (options in brackets):

    * ``"orthogonal"`` [``gain=1``] — each gate block of the recurrent matrix :math:`W_{hh}` a
      random orthogonal matrix (Saxe et al. 2014; Henaff et al. 2016): its singular values are 1,
      so products through time neither shrink nor grow at initialisation. IndRNN units (a
      vector recurrence) are skipped.
    * ``"irnn"`` [``scale=1``] — :math:`W_{hh} = \text{scale} \cdot I` and zero biases, for
      ReLU RNNs (Le, Jaitly & Hinton 2015, "A Simple Way to Initialize Recurrent Networks of
      Rectified Linear Units"); on an IndRNN, :math:`u = \text{scale}`. A tanh RNN, an LSTM or a
      GRU is refused with a ``ValueError``: identity plus tanh is not the IRNN (the state
      saturates instead of integrating) and the recipe would silently mean something else.
    * ``"forget_bias"`` [``value=1``] — the LSTM forget gate's effective bias set to ``value``
      (Gers et al. 2000; Jozefowicz, Zaremba & Sutskever 2015): ``torch.nn`` has two biases,
      :math:`b_{ih}` and :math:`b_{hh}`, that add up, so the forget block of the first is set to
      ``value`` and that of the second to 0. Non-LSTM units are skipped.
    * ``"chrono"`` [``t_max``, required] — chrono initialisation (Tallec & Ollivier 2018, "Can
      Recurrent Neural Networks Warp Time?"): :math:`b_f \sim \log \mathcal{U}(1, T_{max} - 1)`
      and :math:`b_i = -b_f` (effective biases), so the forget gates' time constants spread over
      ``[1, t_max]`` steps. LSTM units only.
    * ``"xavier"`` [``gain=1``] — each gate block of the input matrix :math:`W_{ih}`
      Xavier-uniform (Glorot & Bengio 2010).
    * ``"kaiming"`` — each gate block of :math:`W_{ih}` Kaiming-uniform, fan-in, with the gain of
      the unit's nonlinearity (He et al. 2015).

    The whole model is checked before anything changes: an unknown recipe or option, a model
    with no recurrent unit, or a recipe that cannot apply raises a ``ValueError`` naming what is
    expected. Returns the qualified names (as in ``model.named_parameters()``) of the parameters
    that changed. Weights wrapped by :class:`rnnkit.WeightDrop` are changed in their raw form.
    """
    units = recurrent_units(model)
    _check(recipe, options, units, model)
    changed: list[Tensor] = []
    with torch.no_grad():
        for unit in units:
            changed.extend(RECIPES[recipe](unit, **options))
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    seen: dict[str, None] = {}
    for tensor in changed:
        seen.setdefault(names[id(tensor)], None)
    return list(seen)
