"""A LeNet-5 training step (forward, loss, backward, SGD update) in cnnkit and in PyTorch."""
import numpy as np
import pytest

import cnnkit as ck
from conftest import PEER


@pytest.mark.parametrize("framework", ["cnnkit", PEER])
@pytest.mark.parametrize("batch", [64, 256])
def test_lenet5_training_step(benchmark, request, batch, framework):
    benchmark.group = f"lenet5 training step, batch {batch}"
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
    benchmark(step)
