"""Data-parallel training over MPI (cnnkit.distributed): ``mpiexec -n N`` runs of
tests/distributed_worker.py against the same job in this process (float64, same seed, same
global batch), checkpoints across rank counts, faults and mismatched ranks."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import cnnkit

from cnnkit.distributed import mpi_available

MPIEXEC = shutil.which("mpiexec") or shutil.which(
    "mpiexec", path=os.path.dirname(sys.executable))
needs_mpi = pytest.mark.skipif(
    not mpi_available() or MPIEXEC is None,
    reason="needs mpi4py and mpiexec (pip install \"cnnkit[mpi]\" mpich)")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import distributed_worker as worker  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cnnkit.__file__)))
TOL = 1e-10


def mpirun(n, spec, tmp_path, timeout=60, root_env=None):
    """Run the worker on ``n`` ranks (``root_env``: variables for rank 0 only); returns the
    CompletedProcess."""
    path = tmp_path / f"spec{n}.json"
    path.write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", CNNKIT_NUM_THREADS="1")
    command = [sys.executable, os.path.join(HERE, "distributed_worker.py"), str(path)]
    if root_env:  # MPMD: rank 0 with its own variables, the others without
        ranks = ["-n", "1"] + [a for k, v in root_env.items() for a in ("-env", k, v)] \
            + command + [":", "-n", str(n - 1)] + command
    else:
        ranks = ["-n", str(n)] + command
    return subprocess.run([MPIEXEC] + ranks, capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=tmp_path)


def distributed(n, spec, tmp_path, *, keep_variants=False, root_env=None):
    spec = dict(spec, out=str(tmp_path / f"out{n}.npz"))
    proc = mpirun(n, spec, tmp_path, root_env=root_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = dict(np.load(spec["out"]))
    if not keep_variants:
        out.pop("variants", None)
    return out


def assert_same(one, many, what):
    assert sorted(one) == sorted(many)
    for key in one:
        a, b = np.asarray(one[key], np.float64), np.asarray(many[key], np.float64)
        scale = max(float(np.max(np.abs(a))), 1e-300)
        err = float(np.max(np.abs(a - b))) / scale if a.size else 0.0
        assert err <= TOL, f"{what}: {key} differs by {err:.3g} (relative)"


@needs_mpi
@pytest.mark.parametrize("spec", [
    {"model": "dropout", "optimizer": "sgd"},
    {"model": "batchnorm", "optimizer": "sgd", "sync_batchnorm": True},
    {"model": "dropout", "optimizer": "lbfgs"},
    {"model": "dropout", "optimizer": "sgd", "extras": True},
    {"model": "dropout", "optimizer": "sgd", "weights": True},
], ids=["dropout-sgd", "sync-batchnorm", "lbfgs", "augment-l2-clip", "sample-weight"])
def test_two_ranks_equal_one_process(spec, tmp_path):
    spec = dict(spec, epochs=2)
    one = worker.run(spec)
    many = distributed(2, spec, tmp_path)
    assert_same(one, many, f"2 ranks vs 1 process ({spec})")
    # the run trained: the weights moved away from their initial values
    start = worker.model(spec["model"]).state_dict()
    assert max(np.max(np.abs(one[f"w/{k}"] - v)) for k, v in start.items()) > 1e-3


@needs_mpi
def test_variants_are_chosen_on_rank_0(tmp_path):
    """Rank 0 alone is told to run the NumPy reference variants: every rank runs them."""
    spec = {"model": "dropout", "optimizer": "sgd", "epochs": 1}
    out = distributed(2, spec, tmp_path, keep_variants=True,
                      root_env={"CNNKIT_IMPL": "conv2d=numpy,dense=numpy"})
    root, other = out["variants"].tolist()
    assert root == other
    chosen = dict(v.split("=") for v in root.split(","))
    assert [chosen[k] for k in chosen if k.startswith(("conv2d", "dense"))] == ["numpy"] * 2
    assert chosen["drop"] != "numpy"  # the others kept the usual choice (also on rank 0)


@needs_mpi
def test_batchnorm_per_rank_statistics_by_default(tmp_path):
    """Without sync_batchnorm each rank normalises its own shard: not the one-process result
    (so the sync test above is about the sync)."""
    spec = {"model": "batchnorm", "optimizer": "sgd", "epochs": 1}
    one = worker.run(spec)
    many = distributed(2, spec, tmp_path)
    assert np.max(np.abs(one["w/1.weight"] - many["w/1.weight"])) > 1e-6


@needs_mpi
def test_checkpoint_of_two_ranks_resumes_on_one_and_three(tmp_path):
    base = {"model": "dropout", "optimizer": "sgd"}
    uninterrupted = worker.run(dict(base, epochs=3))
    ckpt = str(tmp_path / "run.ckpt.npz")
    distributed(2, dict(base, epochs=2, checkpoint=ckpt), tmp_path)
    resumed_one = worker.run(dict(base, epochs=3, resume=ckpt))
    resumed_three = distributed(3, dict(base, epochs=3, resume=ckpt), tmp_path)
    assert_same(uninterrupted, resumed_one, "2 ranks, resumed on 1")
    assert_same(uninterrupted, resumed_three, "2 ranks, resumed on 3")


@needs_mpi
@pytest.mark.parametrize("fault", ["raise", "kill"])
def test_a_failing_rank_ends_the_job(fault, tmp_path):
    ckpt = tmp_path / "run.ckpt.npz"
    spec = {"model": "dropout", "optimizer": "sgd", "epochs": 3, "fault": fault,
            "checkpoint": str(ckpt), "out": str(tmp_path / "out.npz")}
    proc = mpirun(2, spec, tmp_path, timeout=60)  # a hang would time out here
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    if fault == "raise":
        assert "rank 1 of 2 failed: RuntimeError: planted failure on rank 1" in text, text
    else:
        # the launcher names the killed process (MPICH: its pid; Open MPI: its rank); fit's
        # first line maps a pid to its rank
        pid = re.search(r"rank 1: pid (\d+)", text).group(1)
        assert (re.search(rf"PID {pid} .*\n.*EXIT CODE: 9", text)
                or re.search(r"process rank 1 with PID \d+ .* signal 9", text)), text
    assert not (tmp_path / "out.npz").exists()
    # epoch 1's checkpoint is whole; no temporary file of an interrupted write is left
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("run.ckpt")]
    assert leftovers in ([], ["run.ckpt.npz"]), leftovers
    if leftovers:
        epoch, _ = cnnkit.train.load_checkpoint(ckpt, worker.model("dropout"))
        assert epoch == 1


@needs_mpi
@pytest.mark.parametrize("mismatch,what", [("model", "model"), ("batch", "batch size"),
                                           ("data", "data size")])
def test_mismatched_ranks_are_refused(mismatch, what, tmp_path):
    spec = {"model": "dropout", "optimizer": "sgd", "epochs": 1, "mismatch": mismatch,
            "errors": str(tmp_path / "error")}
    proc = mpirun(2, spec, tmp_path, timeout=60)
    assert proc.returncode != 0
    errors = "".join(p.read_text() for p in sorted(tmp_path.glob("error.*")))
    assert errors.startswith("DistributedError: ") and \
        f"rank 1 was given a different {what} than rank 0" in errors, (errors, proc.stderr)


def test_shards_cover_every_sample_once():
    from cnnkit.distributed import shard_bounds

    for n in range(0, 20):
        for size in range(1, 6):
            bounds = [shard_bounds(n, r, size) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            lengths = [b - a for a, b in bounds]
            assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


@needs_mpi
def test_iterable_of_batches_is_refused():
    net = worker.model("dropout")
    x, y = worker.data()
    with pytest.raises(TypeError, match="needs the training data as \\(x, y\\) arrays"):
        cnnkit.train.fit(net, [(x[:7], y[:7])], optimizer=worker.optimizer("sgd", net),
                         epochs=1, verbose=False, distributed=True)


def test_transform_parts_equal_the_whole_batch():
    """The built-in augmentations draw for the whole batch and keep a part's numbers."""
    from cnnkit import transforms as T

    x = np.random.default_rng(0).standard_normal((9, 1, 8, 8))
    aug = T.Compose([T.RandomCrop(8, padding=2), T.RandomHorizontalFlip(),
                     T.RandomAffine(degrees=10, translate=0.1), T.Normalize(0.1, 2.0)])
    whole = aug.apply(x, np.random.default_rng(3))
    parts = [aug.apply(x[a:b], np.random.default_rng(3), part=(a, 9))
             for a, b in ((0, 4), (4, 7), (7, 9))]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def _small_mnist(tmp_path):
    (xt, yt), (xs, ys) = cnnkit.datasets.load_mnist()
    path = tmp_path / "small.npz"
    np.savez(path, x_train=xt[:160], y_train=yt[:160], x_test=xs[:100], y_test=ys[:100])
    return path


@needs_mpi
def test_cli_two_ranks_equal_one_process(tmp_path, capsys):
    """mpiexec -n 2 cnnkit train --distributed: the model and the held-out accuracy of
    cnnkit train (float64 LeNet-5 on a few MNIST images)."""
    from cnnkit.cli import main

    data = _small_mnist(tmp_path)
    common = ["train", "--data", str(data), "--epochs", "2", "--batch-size", "30",
              "--dtype", "float64", "--quiet"]
    assert main(common + ["-o", str(tmp_path / "one.safetensors")]) == 0
    single = capsys.readouterr().out
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "cnnkit.cli"] + common
                          + ["-o", str(tmp_path / "two.safetensors"), "--distributed"],
                          capture_output=True, text=True, timeout=90, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed: 2 ranks" in proc.stdout
    held_out = [line for line in single.splitlines() if line.startswith("held-out accuracy")]
    assert held_out and held_out[0].split(" on ")[0] in proc.stdout
    assert proc.stdout.count("held-out accuracy") == 1  # rank 0 reports, the other is quiet
    one = cnnkit.load_model(tmp_path / "one.safetensors").state_dict()
    two = cnnkit.load_model(tmp_path / "two.safetensors").state_dict()
    assert_same(one, two, "cnnkit train: 2 ranks vs 1 process")
    # --distributed without mpiexec: one rank, the very same run as without --distributed
    # (both in subprocesses, so with the same thread count)
    for name, flag in (("plain", []), ("alone", ["--distributed"])):
        proc = subprocess.run([sys.executable, "-m", "cnnkit.cli"] + common + flag
                              + ["-o", str(tmp_path / f"{name}.safetensors")],
                              capture_output=True, text=True, timeout=90, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed: 1 rank (" in proc.stdout
    plain = cnnkit.load_model(tmp_path / "plain.safetensors").state_dict()
    alone = cnnkit.load_model(tmp_path / "alone.safetensors").state_dict()
    for key in plain:
        np.testing.assert_array_equal(alone[key], plain[key])


def test_cli_distributed_without_mpi4py_says_how_to_install(monkeypatch, capsys, tmp_path):
    from cnnkit.cli import main

    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py raises ImportError
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--distributed", "--epochs", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['cnnkit train: error: distributed training needs mpi4py: pip install '
                   '"cnnkit[mpi]" (and an MPI library, e.g. pip install mpich)']
    assert not (tmp_path / "lenet5.safetensors").exists()


@needs_mpi
def test_evaluate_and_predict_share_the_data_and_keep_its_order(tmp_path):
    one = worker.infer()
    many = distributed(3, {"action": "infer"}, tmp_path)  # 31 samples: shards 11, 10, 10
    assert_same(one, many, "evaluate/predict on 3 ranks vs 1 process")


@needs_mpi
def test_cli_predict_on_two_ranks(tmp_path):
    from cnnkit.cli import main

    net = worker.model("dropout")
    net.save(tmp_path / "net.safetensors")
    x, _ = worker.data(31)
    np.save(tmp_path / "x.npy", x)
    assert main(["predict", str(tmp_path / "net.safetensors"), str(tmp_path / "x.npy"),
                 "--out", str(tmp_path / "one.npz")]) == 0
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "cnnkit.cli", "predict",
                           "net.safetensors", "x.npy", "--out", "two.csv", "--distributed"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = np.load(tmp_path / "one.npz")
    np.testing.assert_allclose(one["outputs"], net.predict(x), rtol=1e-12)
    rows = (tmp_path / "two.csv").read_text().splitlines()
    assert rows[0] == "index,label"
    assert [int(r.split(",")[1]) for r in rows[1:]] == one["labels"].tolist()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("two")] == ["two.csv"]


def test_predict_without_mpi(tmp_path, capsys):
    from cnnkit.cli import main

    net = worker.model("dropout")
    net.save(tmp_path / "net.safetensors")
    x, _ = worker.data(5)
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["predict", str(tmp_path / "net.safetensors"), str(tmp_path / "x.npz"),
                 "--out", str(tmp_path / "p.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), net.predict(x))
    assert main(["predict", str(tmp_path / "net.safetensors"), str(tmp_path / "x.npz"),
                 "--out", str(tmp_path / "p.txt")]) == 1
    assert "name a .npy, .npz or .csv file" in capsys.readouterr().err
