"""Conformance cases and loop reference of the reshape family: ``zeropad2d`` (``flatten`` has
no variants to check)."""
from __future__ import annotations

import numpy as np

from cnnkit.testing._cases import Case

CASES = {
    "zeropad2d": [Case({"padding": 1}, (2, 3, 4, 5)), Case({"padding": (2, 1)}, (1, 2, 3, 3)),
                  Case({"padding": (0, 3, 1, 2)}, (2, 1, 2, 4))],
}


def loop_zeropad2d(x, params, kwargs, config):
    """``padding``: an int, (h, w), or PyTorch's (left, right, top, bottom)."""
    p = kwargs["padding"]
    if isinstance(p, (int, np.integer)):
        left = right = top = bottom = p
    elif len(p) == 2:
        top = bottom = p[0]
        left = right = p[1]
    else:
        left, right, top, bottom = p
    n, c, h, w = x.shape
    y = np.zeros((n, c, h + top + bottom, w + left + right))
    y[:, :, top:top + h, left:left + w] = x
    return y


LOOP_REFERENCES = {"zeropad2d": loop_zeropad2d}
