"""The ``cnnkit`` command line: one module per command (:mod:`.train`, :mod:`.plugins`,
:mod:`.predict`, :mod:`.kernels`, :mod:`.bench`, :mod:`.tune`, :mod:`.new_plugin`,
:mod:`.export`), each adding its parser and handler; :func:`main` wires them.

Exit status: 0 on success, 1 when the request cannot be served (a bad config, an unknown layer
type, a variant that fails or disagrees with the reference in ``cnnkit bench``...), 2 for
malformed command-line arguments, 130 when interrupted, 141 (like a shell's SIGPIPE) when
the reader of the output went away; ``cnnkit plugins`` exits 1 when a plugin failed, and
``cnnkit bench --compare`` when a time regressed beyond its threshold.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import bench, export, kernels, new_plugin, plugins, predict, train, tune
from ._common import _fail
from .plugins import cmd_plugins
from .train import cmd_train

__all__ = ["main", "build_parser", "cmd_train", "cmd_plugins"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="cnnkit", description="cnnkit: convolutional networks "
                                     "with Cython kernels and pluggable layers.")
    parser.add_argument("--version", action="version", version=f"cnnkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in (train, predict, plugins, kernels, bench, tune, new_plugin, export):
        command.add_parser(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None):
    # a user of the command line needs the warning, not the source line that raised it
    return f"cnnkit: {category.__name__}: {message}\n"


def main(argv=None) -> int:
    import warnings

    previous, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = previous


def _main(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return status
    except BrokenPipeError:
        # the reader went away (`cnnkit plugins --json | head -1`): end quietly, like other
        # command-line tools; stdout goes to devnull so the exit-time flush cannot fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except (ValueError, TypeError, KeyError, OSError, ImportError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        return _fail(args.command, str(msg))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
