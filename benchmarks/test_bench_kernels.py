"""Kernel benchmarks: every registered variant and the PyTorch peer on the same shapes, in one run.

    python -m pytest benchmarks --benchmark-only --benchmark-group-by=group

Variants are whatever the registry holds (the cnnkit-torch plugin adds the "torch" variant);
the peer "pytorch" is PyTorch itself, on tensors (see conftest.py).  ``cnnkit bench conv2d``
times the same shapes.
"""
import numpy as np
import pytest

import cnnkit as ck
from cnnkit.cli.bench import CONV2D_SHAPES
from conftest import PEER, variant_names

# (name, input shape, out channels, kernel, stride, padding)
CONV_SHAPES = [(s.name, s.input_shape, s.kwargs["out_channels"], s.kwargs["kernel_size"],
                s.kwargs.get("stride", 1), s.kwargs.get("padding", 0)) for s in CONV2D_SHAPES]
PEERS = variant_names("conv2d") + [PEER]


def _conv_case(shape, cout, k, stride, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    conv = ck.layers.Conv2D(shape[1], cout, k, stride=stride, padding=pad, rng=0)
    return x, conv


def _torch_conv(torch, x, conv, stride, pad, backward, op="conv2d"):
    """The peer's call of ``torch.nn.functional.<op>`` (conv2d or conv_transpose2d) with the
    layer's parameters, and its backward."""
    fn = getattr(torch.nn.functional, op)
    tx = torch.from_numpy(x).requires_grad_(backward)
    w = torch.from_numpy(conv.params["weight"]).requires_grad_(backward)
    b = torch.from_numpy(conv.params["bias"]).requires_grad_(backward)

    def run():
        if backward:
            y = fn(tx, w, b, stride=stride, padding=pad)
            y.backward(torch.ones_like(y))
            tx.grad = w.grad = b.grad = None
        else:
            with torch.no_grad():
                fn(tx, w, b, stride=stride, padding=pad)
    return run


@pytest.mark.parametrize("variant", PEERS)
@pytest.mark.parametrize("name,shape,cout,k,stride,pad", CONV_SHAPES, ids=[s[0] for s in CONV_SHAPES])
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
def test_conv2d(benchmark, request, mode, name, shape, cout, k, stride, pad, variant):
    benchmark.group = f"conv2d {mode} {name}"
    x, conv = _conv_case(shape, cout, k, stride, pad)
    backward = mode != "forward"
    if variant == PEER:
        run = _torch_conv(request.getfixturevalue("torch_peer"), x, conv, stride, pad, backward)
    else:
        res = conv.resolution(x.shape)
        reason = ck.get_registry().variants["conv2d"][variant].refusal(
            np.float32, res.features, res.config)
        if reason:  # a variant for some geometries only (winograd: 3x3 stride 1)
            pytest.skip(f"{variant}: {reason}")
        conv.impl = variant
        if backward:
            def run():
                y = conv.forward(x, training=True)
                conv.backward(np.ones_like(y))
        else:
            def run():
                conv.forward(x, training=False)
    benchmark(run)


# (input shape, out channels, kernel, stride, padding): a DCGAN-like k4 s2 p1 up-sampling block
CONVT_SHAPE = ((32, 64, 16, 16), 32, 4, 2, 1)


@pytest.mark.parametrize("variant", variant_names("convtranspose2d") + [PEER])
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
def test_convtranspose2d(benchmark, request, mode, variant):
    shape, cout, k, stride, pad = CONVT_SHAPE
    benchmark.group = f"convtranspose2d {mode} k{k} s{stride} p{pad} ({','.join(map(str, shape))})->{cout}"
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    conv = ck.layers.ConvTranspose2D(shape[1], cout, k, stride=stride, padding=pad, rng=0)
    backward = mode != "forward"
    if variant == PEER:
        run = _torch_conv(request.getfixturevalue("torch_peer"), x, conv, stride, pad, backward,
                          "conv_transpose2d")
    else:
        conv.impl = variant

        def run():
            y = conv.forward(x, training=backward)
            if backward:
                conv.backward(np.ones_like(y))
    benchmark(run)


# (window, input shape, kernel, stride, padding)
POOL_SHAPES = [("2x2", (64, 32, 32, 32), 2, 2, 0), ("3x3 s2 p1", (32, 64, 56, 56), 3, 2, 1)]
POOL_IDS = [f"{s[0]} {s[1]}".replace(" ", "") for s in POOL_SHAPES]


def _pool_group(layer_type, name, mode, shape):
    return f"{layer_type} {name} {mode} ({','.join(map(str, shape))})"


def _pool_run(request, layer_type, variant, x, k, stride, pad, backward):
    """One pooling call (and its backward): a cnnkit variant through its layer, or the peer."""
    if variant == PEER:
        torch = request.getfixturevalue("torch_peer")
        fn = (torch.nn.functional.max_pool2d if layer_type == "maxpool2d"
              else torch.nn.functional.avg_pool2d)
        tx = torch.from_numpy(x).requires_grad_(backward)

        def run():
            if backward:
                y = fn(tx, k, stride, pad)
                y.backward(torch.ones_like(y))
                tx.grad = None
            else:
                with torch.no_grad():
                    fn(tx, k, stride, pad)
        return run
    cls = ck.layers.MaxPool2D if layer_type == "maxpool2d" else ck.layers.AvgPool2D
    pool = cls(k, stride=stride, padding=pad, impl=variant)

    def run():
        y = pool.forward(x, training=backward)
        if backward:
            pool.backward(np.ones_like(y))
    return run


@pytest.mark.parametrize("variant", variant_names("maxpool2d") + [PEER])
@pytest.mark.parametrize("name,shape,k,stride,pad", POOL_SHAPES, ids=POOL_IDS)
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
def test_maxpool2d(benchmark, request, mode, name, shape, k, stride, pad, variant):
    benchmark.group = _pool_group("maxpool2d", name, mode, shape)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    benchmark(_pool_run(request, "maxpool2d", variant, x, k, stride, pad, mode != "forward"))


def test_maxpool2d_copy_reference(benchmark):
    """``x.copy()`` of the 2x2 row's input, the memory-speed yardstick of its forward pass."""
    benchmark.group = _pool_group("maxpool2d", POOL_SHAPES[0][0], "forward", POOL_SHAPES[0][1])
    x = np.random.default_rng(0).standard_normal(POOL_SHAPES[0][1], dtype=np.float32)
    benchmark(x.copy)


@pytest.mark.parametrize("variant", variant_names("avgpool2d") + [PEER])
@pytest.mark.parametrize("name,shape,k,stride,pad", POOL_SHAPES, ids=POOL_IDS)
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
def test_avgpool2d(benchmark, request, mode, name, shape, k, stride, pad, variant):
    benchmark.group = _pool_group("avgpool2d", name, mode, shape)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    benchmark(_pool_run(request, "avgpool2d", variant, x, k, stride, pad, mode != "forward"))


def _torch_tensor(torch, x, backward):
    return torch.from_numpy(x).requires_grad_(backward)


@pytest.mark.parametrize("variant", variant_names("relu") + [PEER])
@pytest.mark.parametrize("mode", ["forward+backward"])
def test_relu(benchmark, request, mode, variant):
    benchmark.group = f"relu {mode} (64,32,32,32)"
    x = np.random.default_rng(0).standard_normal((64, 32, 32, 32), dtype=np.float32)
    dy = np.ones_like(x)  # made once on both sides: filling it is not the op under test
    if variant == PEER:
        torch = request.getfixturevalue("torch_peer")
        tx, tdy = _torch_tensor(torch, x, True), torch.from_numpy(dy)

        def run():
            y = torch.relu(tx)
            y.backward(tdy)
            tx.grad = None
    else:
        relu = ck.layers.ReLU(impl=variant)

        def run():
            relu.forward(x, training=True)
            relu.backward(dy)
    benchmark(run)


@pytest.mark.parametrize("variant", variant_names("batchnorm2d") + [PEER])
@pytest.mark.parametrize("mode", ["forward+backward"])
def test_batchnorm2d(benchmark, request, mode, variant):
    """Training mode: batch statistics, running statistics updated, gradients of x, weight, bias."""
    benchmark.group = f"batchnorm2d {mode} (32,64,32,32)"
    x = np.random.default_rng(0).standard_normal((32, 64, 32, 32), dtype=np.float32)
    dy = np.ones_like(x)  # made once on both sides: filling it is not the op under test
    if variant == PEER:
        torch = request.getfixturevalue("torch_peer")
        tx, tdy = _torch_tensor(torch, x, True), torch.from_numpy(dy)
        bn = torch.nn.BatchNorm2d(64)

        def run():
            y = bn(tx)
            y.backward(tdy)
            tx.grad = bn.weight.grad = bn.bias.grad = None
    else:
        bn = ck.layers.BatchNorm2D(64, impl=variant)

        def run():
            bn.forward(x, training=True)
            bn.backward(dy)
    benchmark(run)
