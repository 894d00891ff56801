"""One run of a small float64 training job, for tests/test_distributed.py: run in-process (one
process) or under ``mpiexec -n N python distributed_worker.py SPEC.json`` (``distributed``).

The spec (JSON) names the model (``dropout`` / ``batchnorm``), the optimizer, the epochs and
the files: ``out`` receives the final weights and the loss history (rank 0), ``checkpoint`` /
``resume`` pass to fit.  ``fault`` makes one rank fail mid-epoch (``raise`` or ``kill``);
``mismatch`` gives rank 1 a different model, batch size or data size.
"""
from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np

import cnnkit as ck
from cnnkit.train import Callback, fit

N_SAMPLES, BATCH = 30, 7  # batches 7, 7, 7, 7, 2: shards of unequal size on 2 and 3 ranks


def data(n=N_SAMPLES):
    rng = np.random.default_rng(123)
    x = rng.standard_normal((n, 1, 8, 8))
    y = (np.abs(x[:, 0, 2:6, 2:6]).sum(axis=(1, 2)) * 3 % 3).astype(np.int64)
    return x, y


def model(kind, channels=4):
    L = ck.layers
    rng = np.random.default_rng(7)
    # a bias before BatchNorm gets a zero gradient (rounding only): left out
    body = [L.Conv2D(1, channels, 3, padding=1, bias=kind != "batchnorm", dtype=np.float64,
                     rng=rng)]
    if kind == "batchnorm":
        body.append(L.BatchNorm2D(channels, dtype=np.float64))
    body += [L.ReLU(), L.MaxPool2D(2), L.Flatten()]
    if kind == "dropout":
        # named: a checkpoint finds a layer's generator by the layer's name
        body.append(L.Dropout(0.3, rng=np.random.default_rng(11), name="drop"))
    body.append(L.Dense(channels * 16, 3, dtype=np.float64, rng=rng))
    return ck.Sequential(body, input_shape=(1, 8, 8))


def optimizer(name, net):
    if name == "lbfgs":
        return ck.optim.LBFGS(net, lr=0.5, max_iter=3)
    return ck.optim.SGD(net, lr=0.1, momentum=0.9)


class _Fault(Callback):
    def __init__(self, kind, rank):
        self.kind, self.rank = kind, rank

    def on_batch_end(self, batch, logs):
        if self.trainer.epoch == 2 and batch == 2:
            if self.kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"planted failure on rank {self.rank}")


def run(spec, distributed=False):
    rank = 0
    if distributed:
        from mpi4py import MPI

        rank = MPI.COMM_WORLD.Get_rank()
    mismatch = spec.get("mismatch") if rank == 1 else None
    net = model(spec["model"], channels=5 if mismatch == "model" else 4)
    x, y = data(N_SAMPLES - 1 if mismatch == "data" else N_SAMPLES)
    callbacks = []
    if spec.get("fault") and rank == 1:
        callbacks.append(_Fault(spec["fault"], rank))
    extras = {}
    if spec.get("extras"):  # augmentation, a weight penalty and gradient clipping
        from cnnkit import transforms as T

        extras = {"transform": T.Compose([T.RandomCrop(8, padding=1),
                                          T.RandomHorizontalFlip()]),
                  "regularizer": 0.01, "clip_grad_norm": 0.5}
    if spec.get("weights"):  # per-sample weights: uneven, some zero, a whole shard of zeros
        wrng = np.random.default_rng(3)
        w = wrng.uniform(0.1, 2.0, len(x))
        w[wrng.random(len(x)) < 0.6] = 0.0  # often a whole shard (3-4 samples) of zeros
        extras["sample_weight"] = w
    history = fit(net, (x, y), optimizer=optimizer(spec["optimizer"], net), **extras,
                  epochs=spec["epochs"], batch_size=BATCH + (mismatch == "batch"), seed=5,
                  verbose=distributed, stream=sys.stderr, checkpoint=spec.get("checkpoint"),
                  resume_from=spec.get("resume"), callbacks=callbacks,
                  distributed=distributed,
                  sync_batchnorm=bool(distributed and spec.get("sync_batchnorm")))
    arrays = {f"w/{k}": v for k, v in net.state_dict().items()}
    arrays["loss"] = np.array(history["loss"])
    arrays["accuracy"] = np.array(history["accuracy"])
    if distributed:  # the variant each rank's layers ran, rank by rank
        from mpi4py import MPI

        used = ",".join(f"{layer.name}={layer._variant.name}" for layer in net.layers
                        if getattr(layer, "_variant", None) is not None)
        arrays["variants"] = np.array(MPI.COMM_WORLD.allgather(used))
    return arrays


def infer(distributed=False):
    """evaluate() and predict() of an untrained model on 31 samples (uneven shards)."""
    from cnnkit.distributed import predict
    from cnnkit.train import evaluate

    net = model("dropout")
    x, y = data(31)
    result = evaluate(net, (x, y), batch_size=4, metrics=["confusion_matrix"],
                      distributed=distributed)
    return {"loss": np.array(result["loss"]), "accuracy": np.array(result["accuracy"]),
            "confusion": result["confusion_matrix"],
            "outputs": predict(net, x, batch_size=4, distributed=distributed)}


if __name__ == "__main__":
    spec = json.loads(open(sys.argv[1]).read())
    from mpi4py import MPI

    try:
        result = infer(True) if spec.get("action") == "infer" else run(spec, distributed=True)
    except Exception as exc:
        # each rank's error in a file of its own: mpiexec may cut a rank's stderr short when
        # it stops the others after the first failure
        if spec.get("errors"):
            with open(f"{spec['errors']}.{MPI.COMM_WORLD.Get_rank()}", "w") as f:
                f.write(f"{type(exc).__name__}: {exc}\n")
        raise

    if MPI.COMM_WORLD.Get_rank() == 0 and spec.get("out"):
        np.savez(spec["out"], **result)
