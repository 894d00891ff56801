"""``cnnkit tune CONFIG``: autotune the model of a config file (see :mod:`cnnkit.autotuning`):
time every applicable variant of each layer at the training batch size and cache the fastest,
where later runs (``cnnkit train CONFIG``, scripts building the same layers) find it."""
from __future__ import annotations

import json
import sys

from ._args import _positive_int
from ._common import CommandError, _fail, _format_table, _registry


def add_parser(sub) -> None:
    """Add ``tune`` to the ``cnnkit`` subcommands."""
    tune = sub.add_parser(
        "tune", help="autotune the layers of a model config and cache the fastest variants",
        description="Build the model of CONFIG (a .toml or .json model config, as cnnkit train "
        "reads), time forward+backward of every variant that can serve each layer at the input "
        "shape (batch: --batch-size, else the config's [training] batch_size, else 64), best of "
        "interleaved rounds, and cache the fastest in the user's cache folder "
        "(CNNKIT_CACHE_DIR, else $XDG_CACHE_HOME/cnnkit, else ~/.cache/cnnkit). Selection then "
        "uses it below impl=, cnnkit.use and CNNKIT_IMPL.")
    tune.add_argument("config", metavar="CONFIG", help="model config file (.toml or .json)")
    tune.add_argument("--batch-size", type=_positive_int, default=None,
                      help="batch size to tune for (default: the config's, else 64)")
    tune.add_argument("--dtype", choices=("float32", "float64"), default=None,
                      help="default: the config's dtype, else float32")
    tune.add_argument("--rounds", type=_positive_int, default=None,
                      help="interleaved timing rounds, best of which counts (default: 3)")
    tune.add_argument("--force", action="store_true",
                      help="time again layers already in the cache")
    tune.add_argument("--json", action="store_true", help="machine-readable output")
    tune.set_defaults(func=cmd_tune)


def cmd_tune(args) -> int:
    import numpy as np

    from .. import config as C
    from ..autotuning import DEFAULT_ROUNDS, autotune, cache_path

    try:
        reg = _registry()
        cfg = C.load_config(args.config)
        batch = args.batch_size
        if batch is None:
            batch = C.training_from_config(cfg).batch_size
        dtype = np.dtype(args.dtype or cfg.get("dtype", "float32"))
        model = C.model_from_config(cfg, rng=0, dtype=dtype)
        shapes = [(batch,) + tuple(node.shape[1:]) for node in model.inputs]
        results = autotune(model, shapes if len(shapes) > 1 else shapes[0], dtype=dtype,
                           rounds=args.rounds or DEFAULT_ROUNDS, force=args.force)
    except CommandError as exc:
        return _fail("tune", str(exc))
    path = cache_path(reg)
    if args.json:
        json.dump({"config": args.config, "cache": path, "batch_size": batch,
                   "dtype": dtype.name, "layers": [r.describe() for r in results]},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"cnnkit tune {args.config}: batch {batch}, {dtype.name}, forward+backward times in "
          "ms (best of interleaved rounds)")
    table = [("layer", "type", "input", "chosen", "times")]
    for r in results:
        times = ", ".join(f"{name} {t:.3g}" for name, t in sorted(r.times_ms.items(),
                                                                   key=lambda kv: kv[1]))
        skipped = "; ".join(f"{k} skipped: {v}" for k, v in r.skipped.items())
        table.append((r.layer, r.layer_type, ",".join(map(str, r.input_shape)), r.variant,
                      ("(cached) " if r.cached else "") + times + (f"; {skipped}" if skipped
                                                                   else "")))
    for line in _format_table(table):
        print(line)
    print(f"cache: {path}")
    return 0
