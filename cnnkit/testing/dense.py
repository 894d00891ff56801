"""Conformance cases and loop reference of the dense family: ``dense``."""
from __future__ import annotations

import numpy as np

from cnnkit.testing._cases import Case

CASES = {
    "dense": [Case(dict(in_features=5, out_features=3), (4, 5)),
              Case(dict(in_features=6, out_features=2, bias=False), (3, 6)),
              Case(dict(in_features=1, out_features=1), (1, 1))],
}


def loop_dense(x, params, kwargs, config):
    y = np.einsum("ni,oi->no", x, params["weight"])
    return y if params.get("bias") is None else y + params["bias"]


LOOP_REFERENCES = {"dense": loop_dense}
