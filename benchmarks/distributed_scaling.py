"""Data-parallel scaling of cnnkit.distributed: LeNet-5 training throughput (images/s) for
ranks x threads layouts, and MPI_Allreduce time against buffer size.

::

    python benchmarks/distributed_scaling.py                 # the default layouts and sizes
    python benchmarks/distributed_scaling.py --layouts 1x2,2x1,2x2 --images 4096 --batch 64

Each layout runs ``mpiexec -n RANKS python distributed_scaling.py worker ...`` with
``OMP_NUM_THREADS=THREADS``: one untimed epoch (allocation, variant selection), then the best
of ``--rounds`` timed epochs of ``fit(..., distributed=True)`` over the same images with the
same global batch (so every layout does the same arithmetic).  The allreduce part runs on 2
ranks: the best of several ``Allreduce`` calls per float32 buffer size.  Needs mpi4py and
mpiexec (``pip install "cnnkit[mpi]" mpich``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.abspath(__file__)


def _worker(args):
    from mpi4py import MPI

    import cnnkit as ck
    from cnnkit.train import fit

    ck.set_num_threads(args.threads)
    comm = MPI.COMM_WORLD
    (x, y), _ = ck.datasets.load_mnist()
    reps = -(-args.images // len(x))
    x, y = np.concatenate([x] * reps)[:args.images], np.concatenate([y] * reps)[:args.images]
    model = ck.models.lenet5(rng=0)
    opt = ck.optim.SGD(model, lr=0.01, momentum=0.9)
    fit(model, (x[:4 * args.batch], y[:4 * args.batch]), optimizer=opt, epochs=1,
        batch_size=args.batch, verbose=False, seed=0, distributed=True)  # warm-up
    best = float("inf")
    for _ in range(args.rounds):
        comm.Barrier()
        t0 = time.perf_counter()
        fit(model, (x, y), optimizer=opt, epochs=1, batch_size=args.batch, verbose=False,
            seed=0, distributed=True)
        comm.Barrier()
        best = min(best, time.perf_counter() - t0)
    if comm.Get_rank() == 0:
        print(json.dumps({"images_per_s": len(x) / best, "seconds": best}))


def _allreduce(args):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rows = []
    for size in args.sizes:
        buf = np.ones(size // 4, dtype=np.float32)
        out = np.empty_like(buf)
        reps = max(3, min(200, int(2e8 // max(size, 1))))
        comm.Allreduce(buf, out, op=MPI.SUM)  # warm-up
        best = float("inf")
        for _ in range(reps):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(buf, out, op=MPI.SUM)
            best = min(best, time.perf_counter() - t0)
        rows.append({"bytes": size, "ms": best * 1e3, "GB_per_s": size / best / 1e9})
    if comm.Get_rank() == 0:
        print(json.dumps(rows))


def _run(mpiexec, ranks, threads, extra, timeout):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), CNNKIT_NUM_THREADS=str(threads))
    proc = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, HERE] + extra,
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{ranks} ranks x {threads} threads failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="driver",
                        choices=("driver", "worker", "allreduce"))
    parser.add_argument("--layouts", default="1x2,2x1,2x2",
                        help="RANKSxTHREADS, comma-separated (default: 1x2,2x1,2x2)")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64, help="global batch (default: 64)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", default="4096,65536,262144,1048576,4194304,16777216,67108864",
                        help="allreduce buffer sizes in bytes")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in str(args.sizes).split(",")]
    if args.mode == "worker":
        return _worker(args)
    if args.mode == "allreduce":
        return _allreduce(args)
    mpiexec = shutil.which("mpiexec") or shutil.which("mpiexec",
                                                      path=os.path.dirname(sys.executable))
    if mpiexec is None:
        sys.exit("no mpiexec on PATH (pip install mpich)")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"LeNet-5 float32, {args.images} MNIST images per epoch, global batch {args.batch}, "
          f"best of {args.rounds} epochs")
    print("| ranks x threads | images/s | epoch (s) |\n|---|---:|---:|")
    for layout in args.layouts.split(","):
        ranks, threads = (int(v) for v in layout.split("x"))
        r = _run(mpiexec, ranks, threads,
                 ["worker", "--threads", str(threads), "--images", str(args.images),
                  "--batch", str(args.batch), "--rounds", str(args.rounds)], timeout=1800)
        print(f"| {ranks} x {threads} | {r['images_per_s']:.0f} | {r['seconds']:.2f} |",
              flush=True)
    print("\nAllreduce (SUM, float32) on 2 ranks, best call:\n"
          "| bytes | ms | GB/s |\n|---:|---:|---:|")
    for row in _run(mpiexec, 2, 1, ["allreduce", "--sizes", ",".join(map(str, args.sizes))],
                    timeout=600):
        print(f"| {row['bytes']:,} | {row['ms']:.3f} | {row['GB_per_s']:.2f} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
