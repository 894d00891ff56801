"""The speed targets measured side by side: cnnkit and PyTorch in one process, interleaved.

    python benchmarks/interleaved.py [--rounds 21] [--repeat 5] [--rows conv,relu] [--json FILE]

pytest-benchmark times each variant's rounds one after the other, so on a shared machine a
slow minute can land on one side of a comparison only.  Here every round times each row's
cnnkit call and its PyTorch call back to back (the order alternating from round to round), a
sample being the mean of ``--repeat`` calls after one untimed call.  Three ratios: cnnkit's
best sample over PyTorch's best (the issue's statistic, which decides "met"), the same of the
medians, and the median of the rounds' own ratios (each round's two samples were taken
moments apart, so a noisy minute weighs on both).  The workloads are the benchmark
suite's own (``test_bench_kernels.py``, ``test_bench_lenet.py``): the same shapes, seeds and
calls, with the variant automatic selection picks on this CPU.  Both libraries use
``CNNKIT_BENCH_THREADS`` threads (default 2).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import cnnkit as ck  # noqa: E402
import test_bench_kernels as kernels  # noqa: E402
import test_bench_lenet as lenet  # noqa: E402
from conftest import PEER, THREADS, torch_or_none  # noqa: E402


class _Request:
    """What the benchmark suite's builders ask of pytest's ``request``: the PyTorch peer."""

    def __init__(self, torch):
        self._torch = torch

    def getfixturevalue(self, name):
        if name != "torch_peer":
            raise LookupError(name)
        return self._torch


def _conv_shape(name):
    for shape in kernels.CONV_SHAPES:
        if shape[0] == name:
            return shape[1:]
    raise LookupError(name)


def _layer_run(layer, x, backward):
    """The cnnkit side of a convolution row, as the benchmark suite calls it (the variant left
    to automatic selection): forward, and backward with a gradient of ones made in the call."""
    def run():
        y = layer.forward(x, training=backward)
        if backward:
            layer.backward(np.ones_like(y))
    return run


def _conv_row(torch, name, backward):
    shape, cout, k, stride, pad = _conv_shape(name)
    x, conv = kernels._conv_case(shape, cout, k, stride, pad)
    peer = kernels._torch_conv(torch, x, conv, stride, pad, backward)

    return _layer_run(conv, x, backward), peer, conv, x


def _convt_row(torch, backward):
    shape, cout, k, stride, pad = kernels.CONVT_SHAPE
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    conv = ck.layers.ConvTranspose2D(shape[1], cout, k, stride=stride, padding=pad, rng=0)
    peer = kernels._torch_conv(torch, x, conv, stride, pad, backward, "conv_transpose2d")

    return _layer_run(conv, x, backward), peer, conv, x


def _pool_row(torch, window, backward):
    name, shape, k, stride, pad = next(s for s in kernels.POOL_SHAPES if s[0] == window)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    request = _Request(torch)
    run = kernels._pool_run(request, "maxpool2d", None, x, k, stride, pad, backward)
    peer = kernels._pool_run(request, "maxpool2d", PEER, x, k, stride, pad, backward)
    return run, peer, ck.layers.MaxPool2D(k, stride=stride, padding=pad), x


def _relu_row(torch):
    x = np.random.default_rng(0).standard_normal((64, 32, 32, 32), dtype=np.float32)
    dy = np.ones_like(x)
    relu = ck.layers.ReLU()
    tx, tdy = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(dy)

    def run():
        relu.forward(x, training=True)
        relu.backward(dy)

    def peer():
        y = torch.relu(tx)
        y.backward(tdy)
        tx.grad = None
    return run, peer, relu, x


def _batchnorm_row(torch):
    x = np.random.default_rng(0).standard_normal((32, 64, 32, 32), dtype=np.float32)
    dy = np.ones_like(x)
    bn = ck.layers.BatchNorm2D(64)
    tbn = torch.nn.BatchNorm2d(64)
    tx, tdy = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(dy)

    def run():
        bn.forward(x, training=True)
        bn.backward(dy)

    def peer():
        y = tbn(tx)
        y.backward(tdy)
        tx.grad = tbn.weight.grad = tbn.bias.grad = None
    return run, peer, bn, x


def _lenet_row(torch, batch):
    request = _Request(torch)
    return (lenet._lenet_step(request, batch, "cnnkit"), lenet._lenet_step(request, batch, PEER),
            None, None)


def _copy_row(torch):
    """MaxPool2D 2x2 forward against ``x.copy()`` of its input (not PyTorch)."""
    run, _, pool, x = _pool_row(torch, "2x2", False)
    return run, x.copy, pool, x


#: (key, label, target ratio or None, builder(torch) -> (cnnkit call, peer call, layer, input))
ROWS = [
    ("conv-lenet1", "conv 5x5 (64,1,28,28)->6 pad 2 fwd+bwd (LeNet conv1)", 1.0,
     lambda t: _conv_row(t, "lenet-conv1-p2", True)),
    ("conv-lenet2", "conv 5x5 (64,6,14,14)->16 fwd+bwd (LeNet conv2)", 1.0,
     lambda t: _conv_row(t, "lenet-conv2-14px", True)),
    ("conv-3x3-fwd", "conv 3x3 p1 (32,64,32,32)->64 forward", 0.8,
     lambda t: _conv_row(t, "64ch-32px", False)),
    ("conv-3x3", "conv 3x3 p1 (32,64,32,32)->64 fwd+bwd", 1.0,
     lambda t: _conv_row(t, "64ch-32px", True)),
    ("conv-3x3-128", "conv 3x3 p1 (16,128,28,28)->128 fwd+bwd", 1.0,
     lambda t: _conv_row(t, "128ch-28px", True)),
    ("conv-s2", "conv 3x3 s2 p1 (32,64,56,56)->128 fwd+bwd", 1.0,
     lambda t: _conv_row(t, "64to128-s2", True)),
    ("convt", "ConvTranspose2D k4 s2 p1 (32,64,16,16)->32 fwd+bwd", 1.0,
     lambda t: _convt_row(t, True)),
    ("maxpool-fwd", "MaxPool2D 2x2 (64,32,32,32) forward", 0.33,
     lambda t: _pool_row(t, "2x2", False)),
    ("maxpool", "MaxPool2D 2x2 (64,32,32,32) fwd+bwd", 0.5,
     lambda t: _pool_row(t, "2x2", True)),
    ("maxpool-3x3", "MaxPool2D 3x3 s2 p1 (32,64,56,56) fwd+bwd", 1.0,
     lambda t: _pool_row(t, "3x3 s2 p1", True)),
    ("relu", "ReLU (64,32,32,32) fwd+bwd", 1.0, _relu_row),
    ("batchnorm", "BatchNorm2D (32,64,32,32) fwd+bwd", 1.0, _batchnorm_row),
    ("lenet-64", "LeNet-5 training step, batch 64", 0.67, lambda t: _lenet_row(t, 64)),
    ("lenet-256", "LeNet-5 training step, batch 256", 0.67, lambda t: _lenet_row(t, 256)),
    ("maxpool-copy", "MaxPool2D 2x2 forward / `x.copy()` of its input", 1.5, _copy_row),
]


def _sample(fn, repeat):
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def measure(rows, torch, rounds=21, repeat=5, progress=None):
    """One dict per row: the label, target, the variant cnnkit ran, best and median samples
    (seconds) of both sides, their ratios and the median of the rounds' ratios; the rows'
    calls interleaved round by round."""
    built = []
    for key, label, target, build in rows:
        run, peer, layer, x = build(torch)
        built.append((key, label, target, run, peer, layer, x, [], []))
    for r in range(rounds):
        if progress:
            progress(f"round {r + 1} of {rounds}")
        for *_, run, peer, _layer, _x, ours, theirs in built:
            if r % 2:
                theirs.append(_sample(peer, repeat))
                ours.append(_sample(run, repeat))
            else:
                ours.append(_sample(run, repeat))
                theirs.append(_sample(peer, repeat))
    out = []
    for key, label, target, _run, _peer, layer, x, ours, theirs in built:
        variant = None
        if layer is not None:
            variant = layer.variant(x.dtype, x.shape).name
        best, peer_best = min(ours), min(theirs)
        med, peer_med = float(np.median(ours)), float(np.median(theirs))
        out.append({"row": key, "label": label, "target": target, "variant": variant,
                    "cnnkit_best_s": best, "peer_best_s": peer_best,
                    "cnnkit_median_s": med, "peer_median_s": peer_med,
                    "ratio_best": best / peer_best, "ratio_median": med / peer_med,
                    "ratio_paired": float(np.median(np.divide(ours, theirs))),
                    "met": None if target is None else best / peer_best <= target})
    return out


def format_table(results) -> str:
    lines = ["| op | variant | cnnkit ms | peer ms | ratio best | ratio median | ratio paired "
             "| target | met |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        target = "" if r["target"] is None else f"<= {r['target']:g}"
        met = "" if r["met"] is None else ("yes" if r["met"] else "no")
        lines.append(
            f"| {r['label']} | {r['variant'] or ''} | {r['cnnkit_best_s'] * 1e3:.3f} | "
            f"{r['peer_best_s'] * 1e3:.3f} | {r['ratio_best']:.2f} | {r['ratio_median']:.2f} | "
            f"{r['ratio_paired']:.2f} | {target} | {met} |")
    return "\n".join(lines)


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21, help="interleaved rounds (default 21)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="calls per sample, after one untimed call (default 5)")
    parser.add_argument("--rows", default="",
                        help="comma-separated row keys or key prefixes (default: all): "
                             + ", ".join(key for key, *_ in ROWS))
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.repeat < 1:
        parser.error("--rounds and --repeat must be at least 1")
    wanted = [w.strip() for w in args.rows.split(",") if w.strip()]
    rows = [row for row in ROWS if not wanted or any(row[0].startswith(w) for w in wanted)]
    if not rows:
        parser.error(f"no row matches --rows {args.rows!r}; the rows are "
                     + ", ".join(key for key, *_ in ROWS))
    torch = torch_or_none()
    if torch is None:
        print("interleaved.py compares against PyTorch, which is not installed "
              "(pip install torch==2.13.0)", file=sys.stderr)
        return 2
    ck.set_num_threads(THREADS)
    results = measure(rows, torch, args.rounds, args.repeat,
                      progress=lambda text: print(text, file=sys.stderr, flush=True))
    print(f"cnnkit {ck.__version__}, PyTorch {torch.__version__}, NumPy {np.__version__}; "
          f"{THREADS} threads each; {_cpu_model()}; best of {args.rounds} interleaved rounds "
          f"of {args.repeat} calls")
    print(format_table(results))
    if args.json:
        record = {"cnnkit": ck.__version__, "torch": torch.__version__, "numpy": np.__version__,
                  "threads": THREADS, "cpu": _cpu_model(), "rounds": args.rounds,
                  "repeat": args.repeat, "load_average": list(os.getloadavg()),
                  "results": results}
        tmp = Path(args.json + ".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
