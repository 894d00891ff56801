"""A plugin whose relu variant returns the wrong shape (the executor must catch it)."""
import numpy as np

import cnnkit


class BadRelu:
    @staticmethod
    def forward(x, params, config, need_backward):
        return np.maximum(x, 0)[:, :1], None

    @staticmethod
    def backward(dy, ctx):
        return dy, {}


@cnnkit.hookimpl
def cnnkit_register_variants(register):
    register("relu", "bad_shape", BadRelu, priority=-10)
