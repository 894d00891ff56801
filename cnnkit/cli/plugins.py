"""``cnnkit plugins [--json]``: installed plugins and what they registered; exit status 1
when any plugin failed."""
from __future__ import annotations

import json
import sys
import textwrap

from ._common import _registry


def add_parser(sub) -> None:
    """Add ``plugins`` to the ``cnnkit`` subcommands."""
    plugins = sub.add_parser("plugins", help="list installed plugins and what they registered")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(func=cmd_plugins)


def cmd_plugins(args) -> int:
    reg = _registry()  # a plugin's failure is part of the listing, not a warning
    rows = [info.describe() for info in reg.plugins.values()]
    exit_status = 1 if any(r["error"] for r in rows) else 0  # scripts can check the install
    if args.json:
        json.dump({"plugins": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return exit_status
    for r in rows:
        status = "FAILED" if r["error"] else "ok"
        print(f"{r['name']}  [{r['source']}]  {r['distribution'] or '-'} {r['version'] or '?'}  "
              f"{status}")
        if r["error"]:
            print(_wrap("error: ", r["error"]))
        for kind, items in r["registered"].items():
            if items:
                print(_wrap(f"{kind}s: ", ", ".join(items)))
    return exit_status


def _wrap(label, text, width=100):
    """An indented entry folded to ``width`` columns, continuation lines aligned."""
    return textwrap.fill(text, width=width, initial_indent="    " + label,
                         subsequent_indent=" " * (4 + len(label)), break_on_hyphens=False)

