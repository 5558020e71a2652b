"""The IPython extension: ``%load_ext rnnkit`` registers the ``%rnnkit`` line magic.

Every subcommand is one call of rnnkit's public Python API; each docstring shows that call.
"""

from __future__ import annotations

import shlex

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from rnnkit.info import format_environment

SUBCOMMANDS = ("info",)


@magics_class
class RNNKitMagics(Magics):
    """``%rnnkit SUBCOMMAND [options]``."""

    @magic_arguments()
    @argument("subcommand", help=f"one of: {', '.join(SUBCOMMANDS)}")
    @argument("rest", nargs="*", help="the subcommand's arguments")
    @line_magic
    def rnnkit(self, line: str):
        """rnnkit from IPython.

        ``%rnnkit info``: versions of rnnkit, torch and Python, the device, thread count and
        whether cuDNN is available. Python: ``print(rnnkit.info.format_environment())``.
        """
        words = shlex.split(line)
        if not words:
            raise UsageError(f"%rnnkit needs a subcommand: one of {', '.join(SUBCOMMANDS)}")
        args = parse_argstring(self.rnnkit, line)
        if args.subcommand == "info":
            print(format_environment())
            return None
        raise UsageError(
            f"%rnnkit: unknown subcommand {args.subcommand!r}; expected one of "
            f"{', '.join(SUBCOMMANDS)}"
        )


def load_ipython_extension(ipython) -> None:
    """Register the magics; loading twice replaces the registration (harmless)."""
    ipython.register_magics(RNNKitMagics)


def unload_ipython_extension(ipython) -> None:
    """Remove the ``%rnnkit`` magic."""
    ipython.magics_manager.magics["line"].pop("rnnkit", None)
    ipython.magics_manager.magics["cell"].pop("rnnkit", None)


__all__ = ["RNNKitMagics", "load_ipython_extension", "unload_ipython_extension"]
