"""Central finite differences for the tests (float64)."""
import numpy as np


def numeric_grad(f, x, eps=1e-6):
    """d f() / d x for a scalar function f that reads x (modified in place and restored)."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


def assert_close(analytic, numeric, rtol=1e-5, atol=1e-7, what=""):
    err = np.max(np.abs(analytic - numeric)) if analytic.size else 0.0
    scale = max(np.max(np.abs(numeric)) if numeric.size else 0.0, 1e-3)
    assert err <= atol + rtol * scale, f"{what}: max abs error {err:.3e} (scale {scale:.3e})"
