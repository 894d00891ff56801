"""The names this module had before the commands moved to :mod:`cnnkit.cli` (``kernels`` to
:mod:`cnnkit.cli.kernels`, ``bench`` to :mod:`cnnkit.cli.bench`); kept so that existing imports
keep working."""
from __future__ import annotations

from .cli import bench as _bench
from .cli import kernels as _kernels
from .cli._args import parse_layer_args, parse_shape
from .cli._common import CommandError
from .cli._layer import build_layer
from .cli.bench import (CONV2D_SHAPES, DEFAULT_SHAPES, QUICK_BATCH, BenchRow, BenchShape,
                        cmd_bench, format_bench, installed_plugins, layer_flops, run_bench)
from .cli.kernels import cmd_kernels

__all__ = ["add_commands", "BenchShape", "DEFAULT_SHAPES", "CONV2D_SHAPES", "parse_shape",
           "parse_layer_args", "build_layer", "layer_flops", "run_bench", "installed_plugins"]


def add_commands(sub) -> None:
    """Add ``kernels`` and ``bench`` to an argparse subcommand set."""
    _kernels.add_parser(sub)
    _bench.add_parser(sub)
