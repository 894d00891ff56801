"""Time two cnnkit source trees against each other, interleaved, on the same machine.

Each tree is a folder holding a built ``cnnkit/`` package (kernels compiled in place with
``python setup.py build_ext --inplace``).  Every round runs one fresh process per tree, A then
B then A ..., and each process reports the best of several repeats of each workload; the
figure kept for a tree is its best round, and the ratio is B / A.  Alternating whole processes
keeps a drifting machine from favouring either tree, and taking minima discards the rounds a
busy neighbour slowed down.

    python benchmarks/compare_trees.py OLD_TREE NEW_TREE [--rounds 7] [--repeat 20]

Workloads: the README's LeNet-5 training step (batch 64, SGD with momentum) and conv2d
forward+backward on the shapes of ``benchmarks/test_bench_kernels.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import cnnkit as ck
assert ck.__file__.startswith(sys.argv[1]), ck.__file__
repeat = int(sys.argv[2])

def best(fn, n):
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return min(times)

out = {}
rng = np.random.default_rng(0)
x = rng.random((64, 1, 28, 28), dtype=np.float32)
y = rng.integers(0, 10, 64)
model = ck.models.lenet5(rng=0)
opt = ck.optim.SGD(model, lr=0.01, momentum=0.9)
loss = ck.losses.SoftmaxCrossEntropy()
def step():
    opt.zero_grad()
    loss.forward(model.forward(x, training=True), y)
    model.backward(loss.backward())
    opt.step()
out["lenet5 step b64"] = best(step, repeat)

for label, shape, cout, k, pad in [
        ("conv (64,1,28,28)->6@5x5 p2", (64, 1, 28, 28), 6, 5, 2),
        ("conv (64,6,14,14)->16@5x5", (64, 6, 14, 14), 16, 5, 0),
        ("conv (64,3,32,32)->32@3x3 p1", (64, 3, 32, 32), 32, 3, 1),
        ("conv (32,64,32,32)->64@3x3 p1", (32, 64, 32, 32), 64, 3, 1)]:
    conv = ck.layers.Conv2D(shape[1], cout, k, padding=pad, rng=0)
    xi = rng.random(shape, dtype=np.float32)
    dy = np.ones((shape[0],) + conv.output_shape((None,) + shape[1:])[1:], np.float32)
    def fb():
        conv.forward(xi, training=True)
        conv.backward(dy)
    out[label + " fwd+bwd"] = best(fb, max(3, repeat // 4))
print(json.dumps(out))
"""


def run(tree, repeat):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    res = subprocess.run([sys.executable, "-c", CHILD, os.path.abspath(tree), str(repeat)],
                         capture_output=True, text=True, env=env, check=False)
    if res.returncode:
        raise SystemExit(f"compare_trees: the run in {tree} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args(argv)
    for tree in (args.old, args.new):
        if not os.path.isdir(os.path.join(tree, "cnnkit")):
            p.error(f"{tree} holds no cnnkit/ package")
    best = {"old": {}, "new": {}}
    for _ in range(args.rounds):
        for which, tree in (("old", args.old), ("new", args.new)):
            for k, v in run(tree, args.repeat).items():
                best[which][k] = min(v, best[which].get(k, float("inf")))
    print(f"{'workload':40s} {'old ms':>9s} {'new ms':>9s} {'new/old':>8s}")
    for k in best["old"]:
        o, n = best["old"][k] * 1e3, best["new"][k] * 1e3
        print(f"{k:40s} {o:9.3f} {n:9.3f} {n / o:8.3f}")


if __name__ == "__main__":
    main()
