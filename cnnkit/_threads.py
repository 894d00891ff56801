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

- Beside a busy process the team shrinks (:class:`_Contention`): a model's pass measures how
  long its thread was off its CPU (wall time minus the thread's CPU time: waiting for a core,
  or asleep at a barrier for a team thread that lost its core); when that is a large share of
  the pass, the next passes run on half the team, and a pass on the whole team every second
  probes whether the neighbour has gone.  Only while the user has not fixed the team
  (``OMP_NUM_THREADS``, ``OMP_DYNAMIC``, :func:`set_num_threads`, :func:`num_threads`);
  ``CNNKIT_ADAPTIVE_THREADS=0`` turns it off.

threadpoolctl is imported on first use, and one controller serves every caller.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time

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
    stay single-threaded either way.  A team set here is kept beside a busy process too."""
    controller().select(user_api="openmp").limit(limits=_team_size(n, "set_num_threads"))
    _contention.user_fixed = True


@contextlib.contextmanager
def num_threads(n: int):
    """Context manager: ``with cnnkit.num_threads(1): ...`` runs the kernels on ``n`` threads."""
    limiter = controller().select(user_api="openmp").limit(limits=_team_size(n, "num_threads"))
    local = _contention.local()
    local.fixed += 1
    try:
        yield limiter
    finally:
        local.fixed -= 1
        limiter.restore_original_limits()


def _thread_cpu_time():
    """Seconds of CPU the calling thread has used (None where the platform cannot tell)."""
    try:
        return time.thread_time()
    except (OSError, AttributeError):
        return None


class _Contention:
    """Shrinks the OpenMP team of a model's passes while another process takes cores.

    The threads of a team wait for each other at the end of every kernel: beside a busy
    process, one of them is often off its core and the whole team waits (a LeNet-5 step took
    3-4x its quiet time on a 2-core machine), while half the team keeps a core to itself.  A
    pass counts as contended when its thread was off its CPU for more than :attr:`SHARE` of
    the pass's time (runnable but waiting for a core, or asleep at a barrier while a team
    thread waits for one: OpenMP threads spin only briefly before they sleep);
    :attr:`STRIKES` contended passes in a row halve the team for the following passes, and
    every :attr:`PROBE_SECONDS` one pass runs on the whole team and restores it if it was not
    contended.  State is per Python thread.
    """

    SHARE = 0.3
    STRIKES = 3
    PROBE_SECONDS = 1.0
    MIN_PASS_SECONDS = 2e-4  # shorter passes are too short to judge

    def __init__(self):
        self.user_fixed = False
        self._local = threading.local()
        self._env_off = None

    def local(self):
        local = self._local
        if not hasattr(local, "fixed"):
            local.fixed = 0
            local.depth = 0
            local.reduced = False
            local.strikes = 0
            local.probe_at = 0.0
        return local

    def enabled(self) -> bool:
        if self._env_off is None:
            flag = os.environ.get("CNNKIT_ADAPTIVE_THREADS", "1").strip().lower()
            self._env_off = (flag in ("0", "false", "no", "off")
                             or "OMP_NUM_THREADS" in os.environ or "OMP_DYNAMIC" in os.environ
                             or _thread_cpu_time() is None)
        return not (self._env_off or self.user_fixed or self.local().fixed)

    def state(self) -> dict:
        """What the policy does now in the calling thread (for ``cnnkit kernels --explain``
        and tests)."""
        local = self.local()
        return {"enabled": self.enabled(), "reduced": local.reduced, "strikes": local.strikes}

    def reset(self):
        local = self.local()
        local.reduced, local.strikes, local.probe_at = False, 0, 0.0
        self._env_off = None

    @contextlib.contextmanager
    def run(self, team: int):
        """Context for one outermost pass on a team of ``team`` threads."""
        local = self.local()
        now = time.perf_counter()
        probing = local.reduced and now >= local.probe_at
        smaller = local.reduced and not probing
        if smaller:
            _omp_probe.set_max_threads(max(1, team // 2))
        start_cpu = _thread_cpu_time()
        try:
            yield
        finally:
            if smaller:
                _omp_probe.set_max_threads(team)
            end_cpu = _thread_cpu_time()
            elapsed = time.perf_counter() - now
            if start_cpu is not None and end_cpu is not None:
                self._judge(local, elapsed - (end_cpu - start_cpu), elapsed, smaller, probing)

    def _judge(self, local, waited, elapsed, smaller, probing):
        if elapsed < self.MIN_PASS_SECONDS:
            return
        contended = waited > self.SHARE * elapsed
        if probing:
            local.reduced = contended
            local.strikes = 0
            local.probe_at = time.perf_counter() + self.PROBE_SECONDS
        elif not smaller:
            local.strikes = local.strikes + 1 if contended else 0
            if local.strikes >= self.STRIKES:
                local.reduced, local.strikes = True, 0
                local.probe_at = time.perf_counter() + self.PROBE_SECONDS


_contention = _Contention()


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


@contextlib.contextmanager
def _outer_pass(team):
    local = _contention.local()
    local.depth += 1
    try:
        if local.depth == 1 and _contention.enabled():
            with _contention.run(team), _one_blas_thread.hold():
                yield
        else:
            with _one_blas_thread.hold():
                yield
    finally:
        local.depth -= 1


def blas_pass():
    """Context for a whole forward or backward pass of a model: BLAS on one thread for every
    kernel inside it, set once (re-entrant: a pass inside a pass costs nothing), and the
    OpenMP team chosen for the pass (:class:`_Contention`).

    Without OpenMP (one thread) BLAS keeps its own threads, as in :func:`single_threaded_blas`.
    """
    if _one_blas_thread.held():
        return _NULL
    team = get_num_threads()
    if team <= 1:
        return _NULL
    return _outer_pass(team)


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
