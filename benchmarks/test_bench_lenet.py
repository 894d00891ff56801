"""A LeNet-5 training step (forward, loss, backward, SGD update) in cnnkit and in PyTorch: at
batch 64 and 256, and at batch 64 beside a busy process (one core of a 2-core machine taken by
a spinning process, pinned to the last core or left to the scheduler) against the quiet step.
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import cnnkit as ck
from conftest import PEER


def _lenet_step(request, batch, framework):
    """One training step of the README model with SGD momentum, as a function of nothing."""
    rng = np.random.default_rng(0)
    x = rng.random((batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    if framework == PEER:
        torch = request.getfixturevalue("torch_peer")
        nn = torch.nn
        model = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def step():
            opt.zero_grad()
            loss = loss_fn(model(tx), ty)
            loss.backward()
            opt.step()
    else:
        model = ck.models.lenet5(rng=0)
        opt = ck.optim.SGD(model, lr=0.01, momentum=0.9)
        loss = ck.losses.SoftmaxCrossEntropy()

        def step():
            opt.zero_grad()
            loss.forward(model.forward(x, training=True), y)
            model.backward(loss.backward())
            opt.step()
    return step


@pytest.mark.parametrize("framework", ["cnnkit", PEER])
@pytest.mark.parametrize("batch", [64, 256])
def test_lenet5_training_step(benchmark, request, batch, framework):
    benchmark.group = f"lenet5 training step, batch {batch}"
    benchmark(_lenet_step(request, batch, framework))


SPIN = "while True: pass"
SPIN_PINNED = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass"


def _spinner(pinned):
    """Start a process that keeps one core busy; pinned to the last core we may run on."""
    if not pinned:
        return subprocess.Popen([sys.executable, "-c", SPIN])
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("pinning a process needs os.sched_setaffinity (Linux)")
    core = max(os.sched_getaffinity(0))
    return subprocess.Popen([sys.executable, "-c", SPIN_PINNED, str(core)])


@pytest.mark.parametrize("framework", ["cnnkit", PEER])
@pytest.mark.parametrize("neighbour", ["quiet", "busy", "busy-pinned"])
def test_lenet5_step_beside_a_busy_neighbour(benchmark, request, neighbour, framework):
    """The quiet step and the same step while another process spins: the target is the busy
    step within 2x the quiet one."""
    benchmark.group = "lenet5 training step, batch 64, quiet vs a busy neighbour"
    step = _lenet_step(request, 64, framework)
    step()  # warm up before the neighbour starts: the first step allocates and selects
    spinner = None if neighbour == "quiet" else _spinner(neighbour == "busy-pinned")
    try:
        if spinner is not None:
            time.sleep(0.2)  # let it start spinning
            assert spinner.poll() is None, "the busy neighbour process exited"
        benchmark(step)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
