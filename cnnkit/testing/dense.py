"""Conformance cases and loop reference of the dense family: ``dense``."""
from __future__ import annotations

import numpy as np

from cnnkit.testing._cases import Case

CASES = {
    "dense": [Case(dict(in_features=5, out_features=3), (4, 5)),
              Case(dict(in_features=6, out_features=2, bias=False), (3, 6)),
              Case(dict(in_features=1, out_features=1), (1, 1))],
    "rbfoutput": [Case(dict(in_features=6, num_classes=4, seed=3), (5, 6)),
                  Case(dict(in_features=3, num_classes=2, codes=[[1, -1, 1], [0.5, 2, -1]],
                            trainable=True), (2, 3)),
                  Case(dict(in_features=1, num_classes=3), (1, 1))],
}


def loop_dense(x, params, kwargs, config):
    y = np.einsum("ni,oi->no", x, params["weight"])
    return y if params.get("bias") is None else y + params["bias"]


def loop_rbfoutput(x, params, kwargs, config):
    c = params["codes"]
    y = np.zeros((x.shape[0], c.shape[0]))
    for n in range(x.shape[0]):
        for k in range(c.shape[0]):
            y[n, k] = sum((x[n, f] - c[k, f]) ** 2 for f in range(x.shape[1]))
    return y


LOOP_REFERENCES = {"dense": loop_dense, "rbfoutput": loop_rbfoutput}
