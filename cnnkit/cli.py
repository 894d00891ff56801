"""The ``cnnkit`` command line: ``cnnkit train`` and ``cnnkit plugins``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _impl_choices(text):
    out = {}
    for item in text.split(","):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"expected layer_type=variant[,...], got {text!r}")
        key, _, val = item.partition("=")
        out[key.strip().lower()] = val.strip()
    return out


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="cnnkit", description="cnnkit: convolutional networks "
                                     "with Cython kernels and pluggable layers.")
    parser.add_argument("--version", action="version", version=f"cnnkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train LeNet-5 on MNIST (the embedded sample by default)",
                           description="Train LeNet-5 (conv 6@5x5 pad 2, ReLU, max-pool 2, conv "
                           "16@5x5, ReLU, max-pool 2, dense 120, 84, 10) with SGD + momentum.")
    train.add_argument("--epochs", type=_positive_int, default=10, help="default: 10")
    train.add_argument("--batch-size", type=_positive_int, default=64, help="default: 64")
    train.add_argument("--lr", type=_positive_float, default=0.05, help="default: 0.05")
    train.add_argument("--momentum", type=float, default=0.9, help="default: 0.9")
    train.add_argument("--weight-decay", type=float, default=0.0, help="default: 0")
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument("--data", metavar="FOLDER", default=None,
                       help="folder with the standard MNIST IDX files (plain or .gz); default: "
                       "the 5,000-image sample embedded in cnnkit")
    train.add_argument("--output", "-o", metavar="FILE", default="lenet5.npz",
                       help="where to save the trained weights (.npz; default: lenet5.npz)")
    train.add_argument("--impl", type=_impl_choices, default=None, metavar="TYPE=VARIANT,...",
                       help="pick variants, e.g. conv2d=numpy,relu=cython")
    train.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    train.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    train.set_defaults(func=cmd_train)

    plugins = sub.add_parser("plugins", help="list installed plugins and what they registered")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(func=cmd_plugins)

    from . import cli_tools

    cli_tools.add_commands(sub)
    return parser


def cmd_train(args) -> int:
    import numpy as np

    from . import optim, use
    from .datasets import load_mnist
    from .models import lenet5
    from .train import fit

    out = sys.stdout
    dtype = np.dtype(args.dtype)
    t0 = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = load_mnist(args.data, dtype=dtype)
    source = args.data or "embedded MNIST sample"
    print(f"data: {source}: {len(x_train)} training, {len(x_test)} test images", file=out)
    rng = np.random.default_rng(args.seed)
    with use(**(args.impl or {})):
        model = lenet5(dtype=dtype, rng=rng)
        print(model.summary(), file=out)
        opt = optim.SGD(model, lr=args.lr, momentum=args.momentum,
                        weight_decay=args.weight_decay)
        print(f"training: {args.epochs} epochs, batch {args.batch_size}, SGD lr {args.lr} "
              f"momentum {args.momentum}, seed {args.seed}", file=out)
        out.flush()
        history = fit(model, (x_train, y_train), (x_test, y_test), optimizer=opt,
                      epochs=args.epochs, batch_size=args.batch_size, rng=rng,
                      verbose=not args.quiet, stream=sys.stderr)
    for e in history.epochs:
        print(f"epoch {e['epoch']:>3}: loss {e['loss']:.4f}  accuracy {e['accuracy']:.4f}  "
              f"val_loss {e['val_loss']:.4f}  val_accuracy {e['val_accuracy']:.4f}  "
              f"({e['time']:.1f}s)", file=out)
    final = history.epochs[-1]["val_accuracy"]
    elapsed = time.perf_counter() - t0
    model.save_weights(args.output, {"val_accuracy": final, "epochs": args.epochs,
                                     "seed": args.seed})
    print(f"held-out accuracy: {final * 100:.2f}% on {len(x_test)} test images "
          f"({elapsed:.1f}s in all)", file=out)
    print(f"weights saved to {os.path.abspath(args.output)}", file=out)
    return 0


def cmd_plugins(args) -> int:
    import warnings

    from .plugins import get_registry

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # failures are part of the listing
        reg = get_registry()
    rows = [info.describe() for info in reg.plugins.values()]
    if args.json:
        json.dump({"plugins": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for r in rows:
        version = r["version"] or (r["distribution"] == "cnnkit" and _version()) or "?"
        status = "FAILED" if r["error"] else "ok"
        print(f"{r['name']}  [{r['source']}]  {r['distribution'] or '-'} {version}  {status}")
        if r["error"]:
            print(f"    error: {r['error']}")
        for kind, items in r["registered"].items():
            if items:
                print(f"    {kind}s: {', '.join(items)}")
    return 0


def _version():
    from . import __version__

    return __version__


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, TypeError, KeyError, OSError) as exc:
        print(f"cnnkit {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
