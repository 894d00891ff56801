"""What the commands share: the registry as they see it (a broken plugin is reported by
``cnnkit plugins``, not warned about), the error that ends a command with status 1, and
plain-text tables."""
from __future__ import annotations

import sys


class CommandError(Exception):
    """A request that cannot be served; the message is printed and the exit status is 1."""


def _registry():
    import warnings

    from ..plugins import get_registry

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a broken plugin is listed by `cnnkit plugins`
        return get_registry()


def _fail(command: str, message: str) -> int:
    print(f"cnnkit {command}: error: {message}", file=sys.stderr)
    return 1


def _format_table(rows, right=()):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    return lines
