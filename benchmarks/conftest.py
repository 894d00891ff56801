"""Shared pieces of the benchmark suite: the variants to compare and the PyTorch peer."""
import os

import pytest

from cnnkit.plugins import get_registry

THREADS = int(os.environ.get("CNNKIT_BENCH_THREADS", "2"))


def variant_names(layer_type):
    """Every registered variant of ``layer_type``: installing a plugin adds it here."""
    return [v.name for v in get_registry().variants_for(layer_type)]


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

    torch = torch_or_none()
    pools = ", ".join(f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info())
    return [f"cnnkit {cnnkit.__version__}, numpy {np.__version__}, "
            f"torch {torch.__version__ if torch else 'not installed'}, threads {THREADS} ({pools})"]


@pytest.fixture
def torch_peer():
    torch = torch_or_none()
    if torch is None:
        pytest.skip("PyTorch is not installed: the peer comparison needs torch")
    return torch
