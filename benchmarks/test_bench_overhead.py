"""What a layer call costs beyond its kernel: each layer type on a one-image input so small
that the kernel itself takes a microsecond or two, against the same kernel called directly
(group "per-call overhead").  The difference is the Python around the kernel: the input check
and shape resolution (cached per input and parameter signature), variant selection, the
BLAS thread limit and the context kept for backward; PyTorch's own call on the same input is
the peer."""
import numpy as np
import pytest

import cnnkit as ck
from cnnkit._ext import activation as _act
from cnnkit._ext import pool as _pool
from conftest import PEER

X = np.random.default_rng(0).standard_normal((1, 4, 8, 8), dtype=np.float32)


def _layers():
    return {
        "relu": ck.layers.ReLU(),
        "maxpool2d": ck.layers.MaxPool2D(2),
        "conv2d": ck.layers.Conv2D(4, 4, 3, padding=1, rng=0),
        "dense": ck.layers.Dense(4 * 8 * 8, 10, rng=0),
    }


def _kernel(name):
    """The layer's own kernel on the same input, called directly (no layer object)."""
    if name == "relu":
        flat, out = X.reshape(-1), np.empty(X.size, np.float32)
        return lambda: _act.relu_forward(flat, out)
    if name == "maxpool2d":
        out = np.empty((1, 4, 4, 4), np.float32)
        return lambda: _pool.maxpool2d_forward(X, out, None, 2, 2, 2, 2, 0, 0)
    return None


@pytest.mark.parametrize("name", ["relu", "maxpool2d", "conv2d", "dense"])
@pytest.mark.parametrize("who", ["layer", "kernel", PEER])
def test_per_call_overhead(benchmark, request, name, who):
    benchmark.group = f"per-call overhead: {name} forward on {X.shape}"
    if who == "layer":
        layer = _layers()[name]
        x = X.reshape(1, -1) if name == "dense" else X
        layer.forward(x, training=True)  # the first call resolves and caches
        benchmark(lambda: layer.forward(x, training=True))
    elif who == "kernel":
        run = _kernel(name)
        if run is None:
            pytest.skip(f"{name}: its kernel takes prepared buffers (see the layer row)")
        benchmark(run)
    else:
        torch = request.getfixturevalue("torch_peer")
        tx = torch.from_numpy(X.copy())
        mod = {"relu": torch.nn.ReLU(), "maxpool2d": torch.nn.MaxPool2d(2),
               "conv2d": torch.nn.Conv2d(4, 4, 3, padding=1),
               "dense": torch.nn.Linear(4 * 8 * 8, 10)}[name]
        if name == "dense":
            tx = tx.reshape(1, -1)

        def run():
            with torch.no_grad():
                mod(tx)
        benchmark(run)
