"""Lion against a reference implementation of the published update rule.

Chen et al., "Symbolic Discovery of Optimization Algorithms" (2023), Algorithm 2:

    update = interp(g, m, beta1) = beta1 * m + (1 - beta1) * g
    update = sign(update) + lambda * theta
    theta  = theta - lr * update
    m      = beta2 * m + (1 - beta2) * g
"""
import numpy as np
import pytest

import cnnkit as ck


def lion_reference(theta, grads, lr, beta1, beta2, wd):
    """The paper's algorithm, one plain loop, on copies."""
    theta = theta.copy()
    m = np.zeros_like(theta)
    for g in grads:
        c = beta1 * m + (1 - beta1) * g
        theta = theta - lr * (np.sign(c) + wd * theta)
        m = beta2 * m + (1 - beta2) * g
    return theta, m


@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("betas", [(0.9, 0.99), (0.5, 0.8)])
def test_matches_the_published_rule(wd, betas):
    rng = np.random.default_rng(0)
    dense = ck.layers.Dense(5, 3, dtype=np.float64, rng=0)
    w0 = dense.params["weight"].copy()
    grads = [rng.standard_normal(w0.shape) for _ in range(7)]
    param = ck.Parameter(dense, "weight")
    opt = ck.optim.create("lion", [param], lr=0.01, betas=betas, weight_decay=wd)
    for g in grads:
        dense.grads = {"weight": g.copy()}
        opt.step()
    want_w, want_m = lion_reference(w0, grads, 0.01, *betas, wd)
    np.testing.assert_allclose(dense.params["weight"], want_w, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(opt.state_dict()["state"][param.name]["exp_avg"], want_m,
                               rtol=1e-13)
    assert opt.steps == len(grads)


def test_state_round_trip_continues_bit_for_bit():
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal((3, 5)) for _ in range(6)]

    def run(split):
        dense = ck.layers.Dense(5, 3, dtype=np.float64, rng=0)
        opt = ck.optim.create("lion", [ck.Parameter(dense, "weight")], lr=0.05, weight_decay=0.01)
        for i, g in enumerate(grads):
            if i == split:
                state = opt.state_dict()
                opt = ck.optim.create("lion", [ck.Parameter(dense, "weight")], lr=0.05,
                                      weight_decay=0.01)
                opt.load_state_dict(state)
            dense.grads = {"weight": g}
            opt.step()
        return dense.params["weight"]

    np.testing.assert_array_equal(run(split=3), run(split=-1))
