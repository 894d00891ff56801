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
- Setting a BLAS limit through threadpoolctl costs tens of microseconds, as much as a small
  kernel, so a model's forward or backward pass sets it once (:func:`blas_pass`): inside a
  pass :func:`single_threaded_blas` and the small-product case of :func:`dense_blas_threads`
  cost nothing.  A layer called on its own sets the limit around its kernel, as before.

threadpoolctl is imported on first use, and one controller serves every caller.
"""
from __future__ import annotations

import contextlib
import threading

from cnnkit._ext import conv as _omp_probe

__all__ = ["SMALL_PRODUCT_MACS", "blas_pass", "controller", "dense_blas_threads",
           "get_num_threads", "num_threads", "set_num_threads", "single_threaded_blas"]

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


class _OneBlasThread:
    """The one-thread BLAS limit, shared by every holder in the process.

    BLAS limits are process-wide (threadpoolctl lets one Python thread at a time change
    OpenBLAS's), so concurrent holders (passes or kernel calls in several Python threads) share
    one limit: the first sets it, the last to leave restores what it found, and no thread's
    exit lifts the limit under another thread's kernels.  Each thread notes that it holds it,
    so what it runs inside needs no call of its own.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._holders = 0
        self._limiter = None
        self._local = threading.local()

    def held(self) -> bool:
        """Whether the calling thread is inside a section holding the limit."""
        return getattr(self._local, "depth", 0) > 0

    def original_threads(self):
        """BLAS's thread count before the limit was set (None when no limit is held)."""
        limiter = self._limiter
        return None if limiter is None else limiter.get_original_num_threads().get("blas")

    @contextlib.contextmanager
    def hold(self):
        local = self._local
        depth = getattr(local, "depth", 0)
        if depth == 0:
            with self._lock:
                if self._holders == 0:
                    # entered and exited as a context manager: threadpoolctl tracks the thread
                    # controlling OpenBLAS's limit through them
                    self._limiter = controller().limit(limits=1, user_api="blas").__enter__()
                self._holders += 1
        local.depth = depth + 1
        try:
            yield
        finally:
            local.depth = depth
            if depth == 0:
                with self._lock:
                    self._holders -= 1
                    if self._holders == 0:
                        limiter, self._limiter = self._limiter, None
                        limiter.__exit__(None, None, None)


_one_blas_thread = _OneBlasThread()
_NULL = contextlib.nullcontext()


def blas_pass():
    """Context for a whole forward or backward pass of a model: BLAS on one thread for every
    kernel inside it, set once (re-entrant: a pass inside a pass costs nothing).

    Without OpenMP (one thread) BLAS keeps its own threads, as in :func:`single_threaded_blas`.
    """
    if _one_blas_thread.held() or get_num_threads() <= 1:
        return _NULL
    return _one_blas_thread.hold()


def single_threaded_blas():
    """Context limiting BLAS to one thread while the OpenMP threads of a kernel call it; free
    inside a :func:`blas_pass`.

    Without OpenMP (one thread) BLAS keeps its own threads: they are the only parallelism left.
    """
    if _one_blas_thread.held() or get_num_threads() <= 1:
        return _NULL
    return _one_blas_thread.hold()


def dense_blas_threads(macs: int):
    """One BLAS thread for a product of fewer than :data:`SMALL_PRODUCT_MACS` multiply-adds,
    BLAS's own choice for larger ones (inside a :func:`blas_pass`, its thread count from before
    the pass).

    Splitting a small product over threads gains microseconds, but afterwards the OpenBLAS
    workers spin for a long time waiting for more work and take cores from the OpenMP kernels
    of the next layers (milliseconds lost per layer on a 2-core machine).
    """
    if macs >= SMALL_PRODUCT_MACS:
        if _one_blas_thread.held():
            original = _one_blas_thread.original_threads()
            if original is not None and original > 1:
                return controller().limit(limits=original, user_api="blas")
        return _NULL
    if _one_blas_thread.held():
        return _NULL
    return _one_blas_thread.hold()
