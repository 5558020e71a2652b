"""The IPython extension: ``%load_ext rnnkit`` registers ``%rnnkit`` (line) and ``%%rnnkit`` (cell).

Every subcommand is one call of rnnkit's public Python API, and its help (``%rnnkit?``) shows
that call. Bad arguments, unknown names and bad TOML raise ``UsageError`` naming the problem
(IPython prints it without a traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys

import torch
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import Image, display
from IPython.utils.process import arg_split
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader

import rnnkit
from rnnkit.info import format_environment
from rnnkit.tables import Table
from rnnkit.widgets.panel import TrainingPanel

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


# ---- argument types: nonsense fails at parse time, before a panel or a run exists ----------


def _positive_int(text: str) -> int:
    value = int(text)  # a ValueError is argparse's "invalid _positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


_positive_int.__name__ = "int"  # argparse names the type in "invalid int value: 'many'"
_positive_float.__name__ = "float"
HELP_FLAGS = ("-h", "--help")


# ---- one parser per subcommand: its docstring is its help, with the plain-Python equivalent --


@magic_arguments("rnnkit info")
def _info():
    """Versions of rnnkit, torch and Python, the device, threads and cuDNN.

    Python: ``print(rnnkit.info.format_environment())``
    """


@magic_arguments("rnnkit seed")
@argument("seed", type=int, help="the seed, an int in [0, 2**32)")
@argument("--deterministic", action="store_true", help="also ask for deterministic kernels")
def _seed():
    """Seed Python's random, NumPy and torch (CPU and CUDA).

    Python: ``rnnkit.seed_everything(N, deterministic=False)``
    """


@magic_arguments("rnnkit train")
@argument("model", help="name of an nn.Module in the notebook")
@argument("data", help="name of the training data: (x, y), (x, y, lengths) or a DataLoader")
@argument("--val", metavar="VAR", help="name of the validation data")
@argument("--epochs", type=_positive_int, default=1, help="epochs per run (default 1)")
@argument("--lr", type=_positive_float, default=None, help="learning rate (default: optimizer's)")
@argument("--clip", type=_positive_float, default=None, help="max gradient norm (default: off)")
@argument("--optimizer", default="adam", help="adam, adamw, sgd, rmsprop or adagrad")
@argument("--loss", default="mse", help="mse, mae, huber, cross_entropy, bce, ...")
@argument("--metrics", default=None, help="comma-separated metric names, e.g. accuracy")
@argument("--batch-size", type=_positive_int, default=32, help="batch size for tensor data")
@argument("--name", default="panel", help="store the panel under this name (default panel)")
@argument("--start", action="store_true", help="start training in the background at once")
@argument("--block", action="store_true", help="train to the end before the cell returns")
def _train():
    """A TrainingPanel for a model and data of the notebook: Start/Pause/Stop, lr and clip
    sliders, live chart. The panel (with .trainer, .history) is stored under --name.

    Python::

        panel = rnnkit.widgets.TrainingPanel.from_model(
            model, data, val, optimizer="adam", lr=LR, loss="mse", grad_clip=CLIP,
            epochs=EPOCHS, batch_size=32)
        display(panel)            # --block: panel.fit(block=True); --start: panel.start()
    """


@magic_arguments("%rnnkit train")
@argument("--name", default="panel", help="store the panel under this name (default panel)")
@argument("--start", action="store_true", help="start training in the background at once")
@argument("--block", action="store_true", help="train to the end before the cell returns")
def _train_cell():
    """The cell magic: model, data and settings from the TOML in the cell, then a TrainingPanel
    as for %rnnkit train. Keys (defaults): cell ("lstm": rnn, lstm or gru), hidden (32), layers
    (1), bidirectional (false), dropout (0.0), task ("adding": adding, copy, sine or varlen, as
    for python -m rnnkit compare), seq_len (50), n (1000 training samples), n_val (200), epochs
    (1), lr (0.001), clip (off), optimizer ("adam"), batch_size (32), seed (0).

    Python::

        rnnkit.seed_everything(seed)
        train = rnnkit.tasks.adding_problem(n, seq_len, seed=seed)    # the task's generator
        val = rnnkit.tasks.adding_problem(n_val, seq_len, seed=seed + 1)
        model = rnnkit.SequenceModel(2, hidden, 1, cell=cell, num_layers=layers)
        panel = rnnkit.widgets.TrainingPanel.from_model(model, train, val, lr=lr, ...)
    """


@magic_arguments("rnnkit compare")
@argument("options", nargs=argparse.REMAINDER, help="as for python -m rnnkit compare")
def _compare():
    """Train one small model per cell type on a task with the same data and seed; show a table
    (held-out loss beside the baseline that ignores the input, the task's metric where it has
    one, parameters, time) and plot the loss curves. Options (defaults): --cells rnn,lstm,gru
    --task adding|copy|sine|varlen (adding) --seq-len 40 --steps 800 --hidden 32
    --batch-size 32 --lr 0.01 --grad-clip 1.0 --seed 0 --plot FILE.

    Python: ``rnnkit.compare_cells(["rnn", "lstm", "gru"], "adding", seq_len=40, steps=800)``
    """


@magic_arguments("rnnkit gradflow")
@argument("model", help="name of an nn.Module in the notebook")
@argument("inputs", help="name of its input: a tensor, a tuple of arguments or a dict")
@argument("targets", nargs="?", help="name of the targets (default: L = sum of the output)")
@argument("--loss", default="mse", help="loss name when targets are given (default mse)")
@argument("--name", default=None, help="store the rnnkit.GradientFlow result under this name")
def _gradflow():
    """The norm of dL/dh_t at every step of every recurrent layer: the vanishing/exploding curve,
    plotted, with the first/last step ratio per layer.

    Python: ``flow = rnnkit.gradient_flow(model, inputs, targets, loss_fn)``;
    ``flow.per_step[layer]`` holds the norms.
    """


@magic_arguments("rnnkit check")
@argument("model", help="name of an nn.Module in the notebook")
def _check():
    """Parameter counts, which engine each recurrent layer runs and why, and init sanity
    (non-finite parameters, spectral radius of each recurrent matrix per gate).

    Python: ``sum(p.numel() for p in model.parameters())``,
    ``print(*rnnkit.explain_fast_path(model), sep="\\n")``, ``rnnkit.spectral_radius(model)``
    """


@magic_arguments("rnnkit generate")
@argument("model", help="name of a stateful model, a Trainer or a TrainingPanel in the notebook")
@argument("--prompt", default="", help="the text to continue (quote it if it has spaces)")
@argument("--steps", type=int, default=200, help="tokens to generate (default 200)")
@argument("--temperature", type=float, default=1.0, help="softmax temperature (default 1.0)")
@argument("--top-k", type=int, default=None, help="keep the k most likely tokens (default off)")
@argument("--seed", type=int, default=None, help="the sampler's seed (default: random)")
@argument("--vocab", metavar="VAR", default=None, help="the vocabulary (default model.vocab)")
def _generate():
    """A generation widget (prompt, temperature, top-k, Generate) for a language model, with
    one sample drawn at once. A Trainer or panel is sampled through trainer.copy_model(), a copy
    taken at a step boundary, so a run in the background is left exact.

    Python::

        widget = rnnkit.widgets.GenerationWidget(model, vocab, prompt, steps, temperature,
                                                 top_k, seed)
        widget.generate()   # = rnnkit.sample(model, vocab, prompt, steps, ...)
        display(widget)
    """


SUBCOMMANDS = {
    "info": _info,
    "seed": _seed,
    "train": _train,
    "compare": _compare,
    "gradflow": _gradflow,
    "check": _check,
    "generate": _generate,
}

# TOML keys whose value must be >= 1 (ints) or > 0 (floats); dropout in [0, 1), seed >= 0
POSITIVE_KEYS = ("hidden", "layers", "seq_len", "n", "n_val", "epochs", "lr", "clip", "batch_size")

TRAIN_KEYS: dict[str, tuple[type, object]] = {
    # key: (type, default)
    "cell": (str, "lstm"),
    "hidden": (int, 32),
    "layers": (int, 1),
    "bidirectional": (bool, False),
    "dropout": (float, 0.0),
    "task": (str, "adding"),
    "seq_len": (int, 50),
    "n": (int, 1000),
    "n_val": (int, 200),
    "epochs": (int, 1),
    "lr": (float, 1e-3),
    "clip": (float, None),
    "optimizer": (str, "adam"),
    "batch_size": (int, 32),
    "seed": (int, 0),
}


def _parse(sub: str, rest: str, cell: bool = False) -> argparse.Namespace:
    """Parse a subcommand's arguments; a bad one is a UsageError with the usage line."""
    func = _train_cell if cell else SUBCOMMANDS[sub]
    if sub == "compare":  # checked by python -m rnnkit's own parser
        return argparse.Namespace(options=arg_split(rest))
    try:
        return parse_argstring(func, rest)
    except UsageError as err:
        prefix = "%%" if cell else "%"
        raise UsageError(f"{prefix}rnnkit {sub}: {err}\n{func.parser.format_usage()}") from None


def _check_range(key: str, value) -> None:
    """A TOML value of the right type but outside its range is a UsageError too."""
    if value is None:
        return
    if key in POSITIVE_KEYS and not (math.isfinite(value) and value > 0):
        bound = ">= 1" if isinstance(value, int) else "> 0"
        raise UsageError(f"%%rnnkit train: {key} must be {bound}, got {value!r}")
    if key == "dropout" and not 0.0 <= value < 1.0:
        raise UsageError(f"%%rnnkit train: dropout must be in [0, 1), got {value!r}")
    if key == "seed" and value < 0:
        raise UsageError(f"%%rnnkit train: seed must be >= 0, got {value!r}")


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _new_figure(width: float = 7.0, height: float = 3.2) -> Figure:
    figure = Figure(figsize=(width, height), dpi=80, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


@magics_class
class RNNKitMagics(Magics):
    """``%rnnkit SUBCOMMAND [options]`` and ``%%rnnkit train``."""

    @line_cell_magic
    def rnnkit(self, line: str, cell: str | None = None):
        sub, _, rest = line.strip().partition(" ")
        if sub in (*HELP_FLAGS, "help"):
            print(_help())
            return None
        if not sub:
            raise UsageError(f"%rnnkit needs a subcommand: one of {', '.join(SUBCOMMANDS)}")
        if sub not in SUBCOMMANDS:
            raise UsageError(
                f"%rnnkit: unknown subcommand {sub!r}; expected one of {', '.join(SUBCOMMANDS)}"
            )
        if cell is not None and sub != "train":
            raise UsageError(f"%%rnnkit is a cell magic for 'train' only, got {sub!r}")
        if any(token in HELP_FLAGS for token in arg_split(rest)):
            print((_train_cell if cell is not None else SUBCOMMANDS[sub]).parser.format_help())
            return None
        args = _parse(sub, rest, cell=cell is not None)
        if sub == "train" and cell is not None:
            return self._train_toml(args, cell)
        return getattr(self, f"_{sub}")(args)

    # ---- subcommands ------------------------------------------------------------------------

    def _info(self, args) -> None:
        print(format_environment())

    def _seed(self, args) -> None:
        try:
            rnnkit.seed_everything(args.seed, deterministic=args.deterministic)
        except (TypeError, ValueError) as err:
            raise UsageError(f"%rnnkit seed: {err}") from None
        print(f"seeded random, numpy and torch with {args.seed}")

    def _lookup(self, sub: str, name: str, kind: type | tuple | None = None, what: str = ""):
        if name not in self.shell.user_ns:
            raise UsageError(f"%rnnkit {sub}: no variable {name!r} in the notebook")
        value = self.shell.user_ns[name]
        if kind is not None and not isinstance(value, kind):
            raise UsageError(f"%rnnkit {sub}: {name} must be {what}, got {type(value).__name__}")
        return value

    def _data(self, sub: str, name: str):
        value = self._lookup(sub, name)
        ok = isinstance(value, DataLoader) or (
            isinstance(value, (tuple, list)) and len(value) in (2, 3)
        )
        if not ok:
            raise UsageError(
                f"%rnnkit {sub}: {name} must be (x, y), (x, y, lengths) or a DataLoader, "
                f"got {type(value).__name__}"
            )
        return value

    def _show_panel(self, panel: TrainingPanel, args) -> TrainingPanel:
        if args.start and args.block:
            raise UsageError("%rnnkit train: pass --start or --block, not both")
        if not args.name.isidentifier():
            raise UsageError(f"%rnnkit train: --name must be a Python name, got {args.name!r}")
        self.shell.user_ns[args.name] = panel
        display(panel)
        if args.block:
            panel.fit(block=True)
        elif args.start:
            panel.start()
        return None

    def _train(self, args):
        model = self._lookup("train", args.model, nn.Module, "a torch.nn.Module")
        train = self._data("train", args.data)
        val = self._data("train", args.val) if args.val else None
        metrics = args.metrics.split(",") if args.metrics else None
        try:
            panel = TrainingPanel.from_model(
                model,
                train,
                val,
                optimizer=args.optimizer,
                lr=args.lr,
                loss=args.loss,
                metrics=metrics,
                grad_clip=args.clip,
                epochs=args.epochs,
                batch_size=args.batch_size,
            )
        except (TypeError, ValueError) as err:
            raise UsageError(f"%rnnkit train: {err}") from None
        return self._show_panel(panel, args)

    def _train_toml(self, args, body: str):
        from rnnkit.compare import TASKS

        try:
            config = tomllib.loads(body)
        except tomllib.TOMLDecodeError as err:
            raise UsageError(f"%%rnnkit train: bad TOML in the cell: {err}") from None
        unknown = sorted(set(config) - set(TRAIN_KEYS))
        if unknown:
            raise UsageError(
                f"%%rnnkit train: unknown key(s) {', '.join(unknown)}; known keys: "
                f"{', '.join(TRAIN_KEYS)}"
            )
        settings = {}
        for key, (kind, default) in TRAIN_KEYS.items():
            value = config.get(key, default)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if value is not None and (
                not isinstance(value, kind) or (kind is int and isinstance(value, bool))
            ):
                raise UsageError(f"%%rnnkit train: {key} must be {kind.__name__}, got {value!r}")
            settings[key] = value
            _check_range(key, value)
        if settings["task"] not in TASKS:
            raise UsageError(
                f"%%rnnkit train: unknown task {settings['task']!r}; expected one of "
                f"{', '.join(TASKS)}"
            )
        spec = TASKS[settings["task"]]
        seed = settings["seed"]
        try:
            rnnkit.seed_everything(seed)
            train = spec.make(settings["n"], settings["seq_len"], seed)
            val = spec.make(settings["n_val"], settings["seq_len"], seed + 1)
            model = rnnkit.SequenceModel(
                spec.input_size,
                settings["hidden"],
                spec.output_size,
                cell=settings["cell"],
                num_layers=settings["layers"],
                bidirectional=settings["bidirectional"],
                dropout=settings["dropout"],
                output=spec.output,
            )
            panel = TrainingPanel.from_model(
                model,
                train,
                val,
                optimizer=settings["optimizer"],
                lr=settings["lr"],
                loss=spec.loss,
                metrics={"accuracy": spec.metric} if spec.metric else None,
                grad_clip=settings["clip"],
                epochs=settings["epochs"],
                batch_size=settings["batch_size"],
            )
        except (TypeError, ValueError) as err:
            raise UsageError(f"%%rnnkit train: {err}") from None
        return self._show_panel(panel, args)

    def _compare(self, args) -> None:
        from rnnkit.__main__ import compare_options, parser

        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                options = parser().parse_args(["compare", *args.options])
        except SystemExit:
            message = stderr.getvalue().strip().splitlines()
            problem = message[-1] if message else "bad arguments"
            raise UsageError(f"%rnnkit compare: {problem}") from None
        comparison = rnnkit.compare_cells(**compare_options(options))
        display(comparison)
        figure = _new_figure()
        comparison.plot(figure.subplots())
        if options.plot:
            figure.savefig(options.plot)
        display(Image(data=_png(figure), format="png"))

    def _gradflow(self, args) -> None:
        model = self._lookup("gradflow", args.model, nn.Module, "a torch.nn.Module")
        inputs = self._lookup("gradflow", args.inputs)
        if args.targets is None:
            targets, loss_fn = None, _output_sum
        else:
            targets = self._lookup("gradflow", args.targets)
            try:
                loss_fn = rnnkit.names.resolve_loss(args.loss)
            except ValueError as err:
                raise UsageError(f"%rnnkit gradflow: {err}") from None
        try:
            flow = rnnkit.gradient_flow(model, inputs, targets, loss_fn)
        except (TypeError, ValueError) as err:
            raise UsageError(f"%rnnkit gradflow: {err}") from None
        if args.name:
            self.shell.user_ns[args.name] = flow
        rows = []
        figure = _new_figure()
        ax = figure.subplots()
        for layer, norms in flow.per_step.items():
            ax.semilogy(norms.numpy(), label=layer)
            first, last = float(norms[0]), float(norms[-1])
            ratio = f"{first / last:.3g}" if last > 0 else "inf"
            rows.append([layer, str(len(norms)), f"{first:.3g}", f"{last:.3g}", ratio])
        display(
            Table(
                ["layer", "steps", "first-step norm", "last-step norm", "first / last"],
                rows,
                title=f"gradient flow: the norm of dL/dh_t per step, loss {flow.loss:.4g}",
                note="first / last far below 1: the gradient vanishes towards the first steps; "
                "far above 1: it explodes",
            )
        )
        ax.set(
            xlabel="time step t", ylabel="‖∂L/∂h_t‖", title=f"gradient flow, loss {flow.loss:.4g}"
        )
        ax.legend()
        display(Image(data=_png(figure), format="png"))

    def _check(self, args) -> None:
        model = self._lookup("check", args.model, nn.Module, "a torch.nn.Module")
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"parameters: {total:,} ({trainable:,} trainable)")
        for name, child in model.named_children():
            print(f"  {name}: {sum(p.numel() for p in child.parameters()):,}")
        print("engines:")
        reports = rnnkit.explain_fast_path(model)
        for report in reports:
            print(f"  {report}".replace("\n", "\n  "))
        if not reports:
            print("  no recurrent layer")
        bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
        print(f"non-finite parameters: {', '.join(bad) if bad else 'none'}")
        if reports:
            kinds = {unit.name: unit.kind for unit in rnnkit.recurrent_units(model)}
            print("spectral radius rho of each recurrent matrix, per gate:")
            for layer, gates in rnnkit.spectral_radius(model).items():
                radii = ", ".join(f"{g}={r:.3f}" for g, r in gates.items())
                print(f"  {layer} ({kinds.get(layer, '?')}): {radii}")
            for line in _reading_rho(set(kinds.values())):
                print(line)

    def _generate(self, args) -> None:
        from rnnkit.widgets.generation import GenerationWidget

        model = self._lookup("generate", args.model)
        vocab = self._lookup("generate", args.vocab) if args.vocab else None
        prompt = args.prompt
        if len(prompt) >= 2 and prompt[0] == prompt[-1] and prompt[0] in "'\"":
            prompt = prompt[1:-1]  # IPython's argument splitter keeps the quotes
        try:
            widget = GenerationWidget(
                model, vocab, prompt, args.steps, args.temperature, args.top_k, args.seed
            )
        except (TypeError, ValueError) as err:
            raise UsageError(f"%rnnkit generate: {err}") from None
        widget.generate()
        if widget.error is not None:
            raise UsageError(f"%rnnkit generate: {widget.error}")
        display(widget)


def _reading_rho(kinds: set[str]) -> list[str]:
    """What the spectral radius says about gradients through time, for the cells present."""
    lines = []
    if kinds & {"RNN", "IndRNN"}:
        lines += [
            "  RNN: rho < 1 makes gradients vanish through time; growing them needs rho > 1",
            "  (Pascanu et al. 2013).",
        ]
    if kinds & {"LSTM", "GRU"}:
        lines += [
            "  LSTM/GRU: each matrix acts through gates that scale it down (a sigmoid's slope",
            "  is at most 1/4, and half-open gates halve what passes), so rho > 1 grows",
            "  gradients only once the gates saturate open; the additive path through the",
            "  cell state (times the forget gate, GRU: the update gate, both < 1) carries",
            "  them whatever rho is.",
        ]
    return lines


def _output_sum(output, _targets):
    """L = sum of the model's output (the first element of a (output, state) pair)."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    return output.sum()


def _help() -> str:
    lines = [
        "rnnkit from IPython: %rnnkit SUBCOMMAND [options], or %%rnnkit train with a TOML body.",
        "%rnnkit --help prints this; %rnnkit SUBCOMMAND --help one subcommand's help.",
        "Subcommands: " + ", ".join(SUBCOMMANDS) + ". Each does one call of rnnkit's Python API,",
        "shown under 'Python:'.",
        "",
    ]
    for func in [*SUBCOMMANDS.values(), _train_cell]:
        lines += [func.parser.format_help(), ""]
    return "\n".join(lines)


RNNKitMagics.rnnkit.__doc__ = _help()


def load_ipython_extension(ipython) -> None:
    """Register the magics; loading twice replaces the registration (harmless)."""
    ipython.register_magics(RNNKitMagics)


def unload_ipython_extension(ipython) -> None:
    """Remove the ``%rnnkit`` magic."""
    ipython.magics_manager.magics["line"].pop("rnnkit", None)
    ipython.magics_manager.magics["cell"].pop("rnnkit", None)


__all__ = ["RNNKitMagics", "load_ipython_extension", "unload_ipython_extension"]
