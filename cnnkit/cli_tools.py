"""Command-line tools for variant authors and benchmarkers (``cnnkit kernels``, ``cnnkit bench``).

``add_commands(subparsers)`` adds them to the ``cnnkit`` parser; each sets ``func`` to its
handler, which takes the parsed arguments and returns the exit status.
"""
from __future__ import annotations


def add_commands(sub) -> None:
    """Add this module's subcommands to the ``cnnkit`` argument parser."""
