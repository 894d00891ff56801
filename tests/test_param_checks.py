"""Parameters are checked against the layer's configuration before a kernel runs, and
check_finite blames a non-finite input on the input."""
import numpy as np
import pytest

import cnnkit as ck

L = ck.layers


@pytest.mark.parametrize("impl", ["numpy", "cython"])
def test_a_wrong_shaped_weight_fails_on_the_next_forward(impl):
    conv = L.Conv2D(1, 1, 3, stride=2, padding=1, bias=False, impl=impl)
    x = np.ones((1, 1, 7, 5), np.float32)
    conv.forward(x)  # a good call first: the check must not be cached away
    conv.params["weight"] = np.ones((1, 1, 3, 2), np.float32)
    with pytest.raises(ValueError, match=r"\(Conv2D\): parameter 'weight' has shape "
                                         r"\(1, 1, 3, 2\), but the layer's configuration gives "
                                         r"\(1, 1, 3, 3\)"):
        conv.forward(x)


@pytest.mark.parametrize("impl", ["numpy", "cython"])
def test_a_wrong_length_bias_is_named_in_every_variant(impl):
    conv = L.Conv2D(1, 2, 3, impl=impl)
    conv.params["bias"] = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"parameter 'bias' has shape \(3,\), but the layer's "
                                         r"configuration gives \(2,\)"):
        conv.forward(np.ones((1, 1, 7, 5), np.float32))


def test_other_parameter_mistakes():
    dense = L.Dense(4, 3, bias=False)
    dense.params["bias"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="built without it"):
        dense.forward(np.ones((2, 4), np.float32))
    bn = L.BatchNorm2D(3)
    bn.params["weight"] = None
    with pytest.raises(ValueError, match="'weight' is missing"):
        bn.forward(np.ones((2, 3, 4, 4), np.float32))
    sub = L.Subsampling(2)
    sub.params["weight"] = np.ones(2, np.int64)
    with pytest.raises(TypeError, match="float32 or float64 numpy array, got int64"):
        sub.forward(np.ones((1, 2, 4, 4), np.float32))
    # replaced with the right shape: fine
    dense = L.Dense(4, 3)
    dense.params["weight"] = np.zeros((3, 4), np.float32)
    assert dense.forward(np.ones((2, 4), np.float32)).shape == (2, 3)


def test_check_finite_reports_a_bad_input_as_the_input():
    model = ck.Sequential([L.Conv2D(1, 2, 3, name="conv1")], input_shape=(1, 5, 5))
    model.check_finite = True
    x = np.ones((1, 1, 5, 5), np.float32)
    x[0, 0, 1, 1] = np.nan
    with pytest.raises(FloatingPointError, match=r"the input '.*' holds 1 NaN/Inf"):
        model.forward(x)
    model.check_finite = False
    model.forward(x)  # off: no check
