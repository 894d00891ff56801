"""The one place that owns cnnkit's thread policy: the OpenMP team of the kernels and the
threads of the BLAS library NumPy and the kernels call.

- The OpenMP team size is the user's knob (:func:`set_num_threads`, :func:`num_threads`,
  :func:`get_num_threads`).
- Kernels that run an OpenMP team and call BLAS inside it do so under
  :func:`single_threaded_blas`, so the two pools never nest (2 OpenMP x 2 BLAS threads on 2
  cores would oversubscribe) and BLAS never wakes its own workers for our products: idle
  OpenBLAS workers keep spinning long after a multi-threaded call and compete with the team.
- Plain matrix products (Dense) run on one BLAS thread unless they are large
  (:func:`dense_blas_threads`), for the same reason.

threadpoolctl is imported on first use, and one controller serves every caller.
"""
from __future__ import annotations

import contextlib
import threading

from cnnkit._ext import conv as _omp_probe

__all__ = ["SMALL_PRODUCT_MACS", "controller", "dense_blas_threads", "get_num_threads",
           "num_threads", "set_num_threads", "single_threaded_blas"]

#: Matrix products below this many multiply-adds run on one BLAS thread.
SMALL_PRODUCT_MACS = 1 << 27

_controller = None
_controller_lock = threading.Lock()


def controller():
    """The process's ``threadpoolctl.ThreadpoolController`` (built once: building one scans
    every loaded shared library)."""
    global _controller
    if _controller is None:
        with _controller_lock:
            if _controller is None:
                from threadpoolctl import ThreadpoolController

                _controller = ThreadpoolController()
    return _controller


def get_num_threads() -> int:
    """The OpenMP team size the kernels will use (1 when built without OpenMP)."""
    return int(_omp_probe.max_threads())


def _team_size(n, who):
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"cnnkit.{who}: expected a positive int, got {n!r}")
    return n


def set_num_threads(n: int) -> None:
    """Set the size of the OpenMP team cnnkit's kernels use (for the calling thread and, as
    with ``omp_set_num_threads``, threads it starts afterwards).  BLAS calls inside the kernels
    stay single-threaded either way."""
    controller().select(user_api="openmp").limit(limits=_team_size(n, "set_num_threads"))


def num_threads(n: int):
    """Context manager: ``with cnnkit.num_threads(1): ...`` runs the kernels on ``n`` threads."""
    return controller().select(user_api="openmp").limit(limits=_team_size(n, "num_threads"))


def single_threaded_blas():
    """Context limiting BLAS to one thread while the OpenMP threads of a kernel call it.

    Without OpenMP (one thread) BLAS keeps its own threads: they are the only parallelism left.
    """
    if get_num_threads() <= 1:
        return contextlib.nullcontext()
    return controller().limit(limits=1, user_api="blas")


def dense_blas_threads(macs: int):
    """One BLAS thread for a product of fewer than :data:`SMALL_PRODUCT_MACS` multiply-adds,
    BLAS's own choice for larger ones.

    Splitting a small product over threads gains microseconds, but afterwards the OpenBLAS
    workers spin for a long time waiting for more work and take cores from the OpenMP kernels
    of the next layers (milliseconds lost per layer on a 2-core machine).
    """
    if macs >= SMALL_PRODUCT_MACS:
        return contextlib.nullcontext()
    return controller().limit(limits=1, user_api="blas")
