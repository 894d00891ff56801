"""Held-out accuracy of the boosting-like LeNet-5 against the plain one, over seeds and
training-set sizes, trained exactly as ``cnnkit train CONFIG`` trains them.

Usage::

    python tools/compare_boosting.py [--seeds 0 1 2] [--train-sizes 4000 500] [--epochs 10]

Runs examples/lenet5-modern.toml (plain, its lr 0.05, and again at the boosted example's
lr 0.01) and examples/lenet5-boosted.toml (weights carried over between rounds, and with
``carry_over = false``) on the embedded MNIST sample, each training set being the first
``train_size`` training images; the test set is always the sample's 1,000 test images.
Prints one Markdown table row per (setup, size): mean, standard deviation and per-seed values.
"""
from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def run(config: Path, seed: int, train_size: int, epochs: int, overrides: dict) -> float:
    from cnnkit import config as C
    from cnnkit.boosting import fit as boosting_fit
    from cnnkit.train import fit

    cfg = copy.deepcopy(C.load_config(config))
    training = cfg.setdefault("training", {})
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        training[section] = dict(training.get(section) or {}, **{name: value})
    spec = C.training_from_config(cfg)
    spec.seed, spec.epochs = seed, epochs
    spec.data = dict(spec.data, train_size=train_size)
    rng = np.random.default_rng(seed)
    model = C.make_boosted(spec, C.model_from_config(cfg, rng=rng), rng=rng)
    opt = C.make_optimizer(spec, model)
    (x, y), (xt, yt), _ = C.load_data(spec)
    kw = dict(optimizer=opt, loss=C.make_loss(spec), epochs=spec.epochs,
              batch_size=spec.batch_size, rng=rng, verbose=False)
    if spec.boosting:
        hist = boosting_fit(model, (x, y), (xt, yt),
                            carry_over=spec.boosting.get("carry_over", True), **kw)
    else:
        hist = fit(model, (x, y), (xt, yt), **kw)
    return hist.epochs[-1]["val_accuracy"]


SETUPS = [
    ("plain LeNet-5, lr 0.05 (lenet5-modern.toml)", "lenet5-modern.toml", {}),
    ("plain LeNet-5, lr 0.01", "lenet5-modern.toml", {"optimizer.lr": 0.01}),
    ("boosted, lr 0.01 (lenet5-boosted.toml)", "lenet5-boosted.toml", {}),
    ("boosted, lr 0.01, carry_over = false", "lenet5-boosted.toml",
     {"boosting.carry_over": False}),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-sizes", type=int, nargs="+", default=[4000, 500])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    print("| setup | training images | held-out accuracy, mean ± sd | per seed |")
    print("|---|---|---|---|")
    for size in args.train_sizes:
        for label, name, overrides in SETUPS:
            accs = [run(ROOT / "examples" / name, s, size, args.epochs, overrides)
                    for s in args.seeds]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"| {label} | {size} | {100 * statistics.mean(accs):.1f}% ± {100 * sd:.1f} | "
                  + ", ".join(f"{100 * a:.1f}" for a in accs) + " |", flush=True)


if __name__ == "__main__":
    main()
