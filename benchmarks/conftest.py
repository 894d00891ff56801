"""Shared pieces of the benchmark suite: the variants to compare and the PyTorch peer.

Two different things carry PyTorch's name in the tables:

- ``torch`` is a cnnkit *variant*, registered by the ``cnnkit-torch`` plugin when it is
  installed; like every variant it is timed through cnnkit's layer objects (NumPy in and out);
- ``pytorch`` is the *peer*: PyTorch used directly on tensors, as a PyTorch user would, the
  outside reference the variants are compared with.  It runs whenever torch is importable.
"""
import os

import pytest

from cnnkit.plugins import get_registry

THREADS = int(os.environ.get("CNNKIT_BENCH_THREADS", "2"))

#: Parameter id of the PyTorch peer (distinct from the "torch" variant of cnnkit-torch).
PEER = "pytorch"


def variant_names(layer_type):
    """Every registered variant of ``layer_type``: installing a plugin adds it here.  A variant
    that cannot run on this machine (an instruction-set build the CPU lacks the features for,
    or one that was not built) is listed as skipped, with the reason."""
    return [v.name if v.unavailable() is None
            else pytest.param(v.name, marks=pytest.mark.skip(reason=f"{v.name}: "
                                                                     f"{v.unavailable()}"))
            for v in get_registry().variants_for(layer_type)]


def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(THREADS)
    return torch


def pytest_report_header(config):
    import numpy as np
    from threadpoolctl import threadpool_info

    import cnnkit
    from cnnkit.cli.bench import installed_plugins

    torch = torch_or_none()
    pools = ", ".join(f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info())
    plugins = ", ".join(f"{p['name']} ({p['distribution']} {p['version']}"
                        + (", FAILED" if p["error"] else "") + ")"
                        for p in installed_plugins()) or "none"
    return [f"cnnkit {cnnkit.__version__}, numpy {np.__version__}, "
            f"torch {torch.__version__ if torch else 'not installed'}, threads {THREADS} ({pools})",
            f"cnnkit plugins: {plugins}"]


@pytest.fixture
def torch_peer():
    torch = torch_or_none()
    if torch is None:
        pytest.skip("PyTorch is not installed: the peer comparison needs torch")
    return torch
