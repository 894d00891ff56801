"""Data-parallel training over MPI (``pip install "cnnkit[mpi]"``): every rank holds a replica of
the model, takes its shard of each global batch, and the gradients are averaged with
``MPI_Allreduce`` before every optimizer step, so N ranks train as one process would::

    mpiexec -n 4 python train.py      # train.py calls fit(..., distributed=True)
    mpiexec -n 4 cnnkit train config.toml --distributed

What makes N ranks equal one process (same seed, same global batch, float64: the same weights to
rounding):

* the initial weights, optimizer and schedule state, the shuffling generator and the layers'
  generators come from rank 0 by broadcast (a resumed checkpoint is read by rank 0 only);
* global batch ``b`` of the shuffled order is cut into contiguous shards, rank ``r`` taking
  ``[r * b // N, (r + 1) * b // N)``-sized pieces (:func:`shard_bounds`), so every sample is used
  once per epoch for any rank count;
* each rank's gradient is weighted by its share of the global batch (``n_r / b``, a ratio of
  global sums) and the weighted gradients are summed with ``Allreduce`` over a few contiguous
  buffers (buckets) of the parameters' dtype;
* random numbers per sample are drawn for the global batch: dropout masks continue their
  counter from the shard's place in the batch (:func:`cnnkit._random.sample_offset`), the
  built-in augmentations draw for the whole batch and keep the shard's numbers;
* the variant of every layer (autotuned or not) is chosen on rank 0 and pinned on all ranks;
* BatchNorm keeps per-rank statistics, unless ``sync_batchnorm=True`` (mean, variance and the
  backward sums over the global batch, so the result equals one process too).

Only rank 0 writes checkpoints, logs and the progress bar.  A rank that fails inside training
prints ``cnnkit.distributed: rank R of N failed: ...`` and aborts the whole job
(``MPI_Abort``): the other ranks would otherwise wait forever in the next collective call.
"""
from __future__ import annotations

import sys

import numpy as np

__all__ = ["DistributedError", "Context", "context", "shard_bounds", "INSTALL_HINT",
           "mpi_available"]

INSTALL_HINT = ('distributed training needs mpi4py: pip install "cnnkit[mpi]" (and an MPI '
                'library, e.g. pip install mpich)')
#: gradient bucket size: large enough that the per-call latency is amortised, small enough
#: that the packing copies stay in cache
BUCKET_BYTES = 4 << 20


class DistributedError(RuntimeError):
    """Ranks that disagree (model, batch size, data), or MPI missing."""


def mpi_available() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        raise DistributedError(INSTALL_HINT) from None
    return MPI


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """The contiguous shard ``[start, stop)`` of a batch of ``n`` samples that ``rank`` of
    ``size`` takes: sizes differ by at most one, the larger ones first (so rank 0's shard is
    empty only for an empty batch)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)



def context(distributed=True, sync_batchnorm: bool = False) -> "Context":
    """The :class:`Context` of ``fit(distributed=...)``: True for ``MPI.COMM_WORLD``, an mpi4py
    communicator, or a Context."""
    if isinstance(distributed, Context):
        return distributed
    MPI = _mpi()
    comm = MPI.COMM_WORLD if distributed is True else distributed
    if not hasattr(comm, "Allreduce"):
        raise TypeError(f"distributed must be True, an mpi4py communicator or a "
                        f"cnnkit.distributed.Context, got {distributed!r}")
    return Context(comm, sync_batchnorm=sync_batchnorm)


class Context:
    """One rank's view of a data-parallel job on communicator ``comm``."""

    def __init__(self, comm, *, sync_batchnorm: bool = False, bucket_bytes: int = BUCKET_BYTES):
        if not isinstance(sync_batchnorm, (bool, np.bool_)):
            raise TypeError(f"sync_batchnorm must be True or False, got {sync_batchnorm!r}")
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.sync_batchnorm = bool(sync_batchnorm)
        self.bucket_bytes = int(bucket_bytes)
        self._MPI = _mpi()
        _install_excepthook(self)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ start
    def check_same(self, facts: dict, who: str = "fit") -> None:
        """Refuse (on every rank alike) a job whose ranks were given different ``facts``."""
        everyone = self.comm.allgather(facts)
        for r, other in enumerate(everyone):
            for key in facts:
                if other.get(key) != everyone[0].get(key):
                    raise DistributedError(
                        f"{who}: rank {r} was given a different {key} than rank 0 "
                        f"({other.get(key)!r} vs {everyone[0].get(key)!r}); every rank must run "
                        "the same model, batch size and data")

    def root_call(self, fn):
        """Run ``fn`` on rank 0 and hand its result (or its error) to every rank."""
        result, error = None, None
        if self.is_root:
            try:
                result = fn()
            except Exception as exc:  # re-raised on every rank below
                error = exc
        error = self.comm.bcast(error, root=0)
        if error is not None:
            raise error
        return self.comm.bcast(result, root=0)

    def broadcast_arrays(self, arrays: dict) -> dict:
        """Rank 0's arrays (same names, shapes and dtypes everywhere: checked first)."""
        out = {}
        for name in sorted(arrays):
            buf = np.array(arrays[name], order="C", copy=True)
            self.comm.Bcast(buf, root=0)
            out[name] = buf
        return out

    def broadcast_model(self, model) -> None:
        state = model.state_dict()
        model.load_state_dict(self.broadcast_arrays(state), source="rank 0")

    # ------------------------------------------------------------------ per step
    def shard(self, n: int) -> tuple[int, int]:
        return shard_bounds(n, self.rank, self.size)

    def allreduce(self, values) -> np.ndarray:
        """Element-wise sum over the ranks of a small float64 vector."""
        buf = np.asarray(values, dtype=np.float64).copy()
        out = np.empty_like(buf)
        self.comm.Allreduce(buf, out, op=self._MPI.SUM)
        return out

    def reduce_gradients(self, params, value: float, share: float) -> float:
        """Replace every gradient by the global one, ``sum_r share_r * grad_r``, and return the
        global loss ``sum_r share_r * value_r``.  ``share`` is this rank's weight in the global
        average (its samples' summed weight over the global sum); 0 for an empty shard."""
        grads = [p.grad for p in params]
        scalars = np.array([value * share] + [g is not None for g in grads], dtype=np.float64)
        by_dtype: dict = {}
        for i, p in enumerate(params):
            by_dtype.setdefault(np.dtype(p.value.dtype), []).append(i)
        reduced = [None] * len(params)
        for dtype, members in by_dtype.items():
            for bucket in self._buckets(members, params, dtype):
                sizes = [params[i].value.size for i in bucket]
                buf = np.empty(sum(sizes), dtype=dtype)
                pos = 0
                for i, size in zip(bucket, sizes):
                    g = grads[i]
                    if g is None:
                        buf[pos:pos + size] = 0
                    else:
                        np.multiply(g.reshape(-1), dtype.type(share), out=buf[pos:pos + size],
                                    casting="unsafe")
                    pos += size
                total = np.empty_like(buf)
                self.comm.Allreduce(buf, total, op=self._MPI.SUM)
                pos = 0
                for i, size in zip(bucket, sizes):
                    reduced[i] = total[pos:pos + size].reshape(params[i].value.shape)
                    pos += size
        scalars = self.allreduce(scalars)
        for p, g, present in zip(params, reduced, scalars[1:]):
            if present:
                p.layer.grads[p.key] = g
        return float(scalars[0])

    def _buckets(self, members, params, dtype):
        bucket, nbytes = [], 0
        for i in members:
            size = params[i].value.size * dtype.itemsize
            if bucket and nbytes + size > self.bucket_bytes:
                yield bucket
                bucket, nbytes = [], 0
            bucket.append(i)
            nbytes += size
        if bucket:
            yield bucket

    def describe(self) -> str:
        """One line naming every rank's process (collective): an MPI launcher that reports a
        crash names the process id and host."""
        import os
        import socket

        procs = self.comm.allgather((os.getpid(), socket.gethostname()))
        return (f"distributed: {self.size} rank{'s' if self.size != 1 else ''} ("
                + ", ".join(f"rank {r}: pid {pid} on {host}" for r, (pid, host) in enumerate(procs))
                + ")")

    # ------------------------------------------------------------------ faults
    def abort(self, exc: BaseException) -> None:
        """Report ``exc`` as this rank's failure and end the whole job."""
        try:
            sys.stderr.write(f"cnnkit.distributed: rank {self.rank} of {self.size} failed: "
                             f"{type(exc).__name__}: {exc}\n")
            sys.stderr.flush()
        finally:
            self.comm.Abort(1)


def gather_rows(ctx: Context, local: np.ndarray, total: int) -> np.ndarray:
    """Every rank's ``local`` rows (its :meth:`Context.shard` of ``total``), concatenated in
    rank order on every rank: the original order of the data."""
    local = np.ascontiguousarray(local)
    row = ctx.comm.bcast(local.shape[1:] if ctx.is_root else None, root=0)
    dtype = ctx.comm.bcast(local.dtype.str if ctx.is_root else None, root=0)
    local = local.reshape((-1,) + tuple(row)).astype(dtype, copy=False)
    width = int(np.prod(row, dtype=np.int64))
    counts = [(b - a) * width for a, b in (shard_bounds(total, r, ctx.size)
                                           for r in range(ctx.size))]
    if local.size != counts[ctx.rank]:
        raise DistributedError(f"rank {ctx.rank}: {len(local)} rows to gather, its shard of "
                               f"{total} has {counts[ctx.rank] // max(width, 1)}")
    out = np.empty((total,) + tuple(row), dtype=dtype)
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
    ctx.comm.Allgatherv(local, [out, (counts, displs)])
    return out


def _install_excepthook(ctx: Context) -> None:
    """An uncaught exception on one rank aborts the job (the others would hang)."""
    if ctx.size == 1 or getattr(sys.excepthook, "_cnnkit_abort", False):
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        ctx.abort(value)

    hook._cnnkit_abort = True
    sys.excepthook = hook


# ---------------------------------------------------------------------------------- fit's hooks
def model_facts(model) -> list:
    """What must agree across ranks about a model: its layers and parameter shapes."""
    return [[layer.name, type(layer).__name__,
             sorted((k, tuple(v.shape), str(v.dtype)) for k, v in layer.params.items()
                    if v is not None)] for layer in model.layers]


def describe_object(obj):
    """A description of ``obj`` that is the same in every process for equal objects: its repr
    when its class writes one, else its type and plain attributes (the default repr holds an
    address, different in each rank)."""
    if obj is None or type(obj).__repr__ is not object.__repr__:
        return repr(obj)
    plain = {k: v for k, v in sorted(vars(obj).items()) if not k.startswith("_")
             and isinstance(v, (int, float, str, bool, tuple, type(None)))}
    return f"{type(obj).__name__}{plain}"


def pin_variants(ctx: Context, model, sample) -> dict:
    """Choose every layer's variant on rank 0 (a training-mode forward of ``sample``, which
    autotunes when autotuning is on) and pin the same choice on every rank; returns the layers'
    previous ``impl`` to restore after training."""
    from .train import _layer_generators

    def choose():
        gens = {n: g.bit_generator.state for n, g in _layer_generators(model).items()}
        state = model.state_dict()
        try:
            model.forward(sample, training=True)
        finally:
            for layer in model.layers:
                layer._ctx = None
            model.load_state_dict(state, source="rank 0")
            for name, g in _layer_generators(model).items():
                g.bit_generator.state = gens[name]
        return {layer.name: layer._variant.name for layer in model.layers
                if layer.impl is None and getattr(layer, "_variant", None) is not None}

    chosen = ctx.root_call(choose)
    previous = {}
    for layer in model.layers:
        if layer.name in chosen:
            previous[layer.name] = layer.impl
            layer.impl = chosen[layer.name]
    return previous


def unpin_variants(model, previous: dict) -> None:
    for layer in model.layers:
        if layer.name in previous:
            layer.impl = previous[layer.name]


# ---------------------------------------------------------------------------------- sync BN
def attach_sync_batchnorm(ctx: Context, model) -> list:
    """Make every BatchNorm layer of ``model`` normalise over the global batch; returns the
    layers patched (see :func:`detach_sync_batchnorm`)."""
    from .layers.norm import _BatchNorm

    patched = []
    for layer in model.layers:
        if isinstance(layer, _BatchNorm):
            sync = _SyncBN(ctx, layer)
            layer.forward, layer.backward = sync.forward, sync.backward
            patched.append(sync)
    return patched


def detach_sync_batchnorm(patched) -> None:
    for sync in patched:
        for attr in ("forward", "backward"):
            sync.layer.__dict__.pop(attr, None)


class _SyncBN:
    """Training-mode batch normalisation whose statistics and backward sums are global.

    The local loss is the mean over the rank's shard, weighted by ``share`` in the global one:
    the incoming gradient is scaled by ``share`` before the backward sums are reduced, and the
    input gradient divided by it again (fit's gradient average multiplies by it)."""

    def __init__(self, ctx, layer):
        self.ctx, self.layer = ctx, layer
        self.share = 1.0
        self._saved = None
        self._plain_forward = type(layer).forward.__get__(layer)

    def forward(self, x, training=None):
        layer = self.layer
        training = layer.training if training is None else bool(training)
        if not training:
            return self._plain_forward(x, training)
        x = layer._validate(x)
        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        count = x.size // x.shape[1]
        sums = self.ctx.allreduce(np.concatenate([[count], x.sum(axis=axes, dtype=np.float64)]))
        m = sums[0]
        if m < 2:
            raise ValueError(f"{layer.name} ({type(layer).__name__}): expected more than 1 value "
                             f"per channel when training, got {int(m)} over all ranks")
        mean = sums[1:] / m
        centred = x.astype(np.float64) - mean.reshape(shape)
        var = self.ctx.allreduce(np.square(centred).sum(axis=axes)) / m
        inv = 1.0 / np.sqrt(var + layer.eps)
        xhat = centred * inv.reshape(shape)
        y = xhat
        if layer.affine:
            y = xhat * layer.params["weight"].astype(np.float64).reshape(shape) \
                + layer.params["bias"].astype(np.float64).reshape(shape)
        self._saved = (xhat, inv, m, x.dtype, axes, shape)
        if layer.track_running_stats:
            b = layer.buffers
            b["num_batches_tracked"] = b["num_batches_tracked"] + 1
            f = (1.0 / float(b["num_batches_tracked"]) if layer.momentum is None
                 else layer.momentum)
            dtype = b["running_mean"].dtype
            b["running_mean"] = ((1 - f) * b["running_mean"] + f * mean).astype(dtype)
            b["running_var"] = ((1 - f) * b["running_var"] + f * var * (m / (m - 1))
                                ).astype(dtype)
        return y.astype(x.dtype)

    def backward(self, dy, need_input_grad=True):
        layer = self.layer
        if self._saved is None:
            raise RuntimeError(f"{layer.name} ({type(layer).__name__}): backward() needs a "
                               "forward(x, training=True) first")
        xhat, inv, m, dtype, axes, shape = self._saved
        self._saved = None
        dy = np.asarray(dy, dtype=np.float64)
        grads = {}
        if layer.affine:
            grads["weight"] = (dy * xhat).sum(axis=axes).astype(dtype)
            grads["bias"] = dy.sum(axis=axes).astype(dtype)
            g = dy * layer.params["weight"].astype(np.float64).reshape(shape)
        else:
            g = dy
        share = self.share
        sums = self.ctx.allreduce(np.concatenate([share * g.sum(axis=axes),
                                                  share * (g * xhat).sum(axis=axes)]))
        c = len(inv)
        mean_g, mean_gx = sums[:c] / m, sums[c:] / m
        dx = inv.reshape(shape) * (g - (mean_g / share if share else 0).reshape(shape)
                                   - xhat * (mean_gx / share if share else 0).reshape(shape))
        layer.grads = grads
        return dx.astype(dtype)


# ---------------------------------------------------------------------------------- fit's run
class FitRun:
    """What :func:`cnnkit.train.fit` does differently on a rank of a data-parallel job; fit
    calls it at a few points (start, each batch, each step, each epoch's end, the end)."""

    def __init__(self, ctx: Context, model):
        self.ctx, self.model = ctx, model
        self.params = list(model.parameters())
        self.start, self.stop, self.total, self.idx = 0, 0, 0, None
        self.weight_total, self.silent, self._share = None, False, 0.0
        self._x = None
        self._sync_bn: list = []
        self._pinned: dict = {}

    @property
    def is_root(self) -> bool:
        return self.ctx.is_root

    def begin(self, facts: dict, *, optimizer, scheduler, rng, callbacks, read_state,
              x, batch_size: int):
        """Refuse ranks that disagree, then give every rank rank 0's state (``read_state()``,
        run on rank 0 only, returns ``(epoch, history)``: a resumed checkpoint or a new run);
        returns ``(epoch, history)``."""
        from .train import History, _layer_generators

        ctx = self.ctx
        ctx.check_same(facts)
        if self.ctx.sync_batchnorm and ctx.size > 1:
            sizes = {min(batch_size, len(x)), len(x) % batch_size or batch_size}
            if min(sizes) < ctx.size:
                raise DistributedError(f"fit: sync_batchnorm needs every global batch to hold at "
                                       f"least one sample per rank; a batch of {min(sizes)} "
                                       f"cannot be shared by {ctx.size} ranks")

        def read():
            epoch, history = read_state()
            return {"epoch": epoch, "history": history.epochs,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "rng": rng.bit_generator.state,
                    "generators": {n: g.bit_generator.state
                                   for n, g in _layer_generators(self.model).items()},
                    "callbacks": [cb.state_dict() for cb in callbacks]}

        state = ctx.root_call(read)
        if not ctx.is_root:
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            rng.bit_generator.state = state["rng"]
            for name, g in _layer_generators(self.model).items():
                g.bit_generator.state = state["generators"][name]
            for cb, st in zip(callbacks, state["callbacks"]):
                if st is not None:
                    cb.load_state_dict(st)
        ctx.broadcast_model(self.model)
        self._x = x
        if ctx.size > 1:
            first = shard_bounds(min(batch_size, len(x)), 0, ctx.size)[1]
            self._pinned = pin_variants(ctx, self.model, x[:first])
        if ctx.sync_batchnorm:
            self._sync_bn = attach_sync_batchnorm(ctx, self.model)
        return state["epoch"], History([dict(e) for e in state["history"]])

    def describe(self) -> str:
        return self.ctx.describe()

    def sync_buffers(self) -> None:
        """Rank 0's weights and buffers on every rank: per-rank BatchNorm running statistics
        differ, and evaluation must see one model (PyTorch's DDP broadcasts buffers too)."""
        if self.ctx.size > 1 and any(layer.buffers for layer in self.model.layers
                                     if hasattr(layer, "buffers")):
            self.ctx.broadcast_model(self.model)

    def own_callbacks(self, callbacks):
        """The callbacks this rank runs: file loggers on rank 0 only."""
        from .train import _EpochLogger

        return [cb for cb in callbacks if self.is_root or not isinstance(cb, _EpochLogger)]

    def end(self):
        detach_sync_batchnorm(self._sync_bn)
        unpin_variants(self.model, self._pinned)
        self._sync_bn, self._pinned = [], {}

    # ------------------------------------------------------------------ batches
    def batches(self, x, y, index_batches, sample_weight=None):
        """This rank's shard of every global batch (index arrays into x and y), as
        ``(x, y, weights)`` triples.

        With ``sample_weight`` (the whole array: every rank holds it, so the global sums need
        no communication) a rank's share of the gradient is its weight over the batch's, and
        a shard whose weights are all zero runs unweighted with no share (``silent``: its
        samples still draw their random numbers, as they do in one process)."""
        for idx in index_batches:
            self.start, self.stop = self.ctx.shard(len(idx))
            self.total, self.idx = len(idx), idx
            samples = (self.stop - self.start) / self.total if self.total else 0.0
            for sync in self._sync_bn:
                sync.share = samples  # batch statistics count samples, not their weights
            mine = idx[self.start:self.stop]
            wb, self.silent, self._share = None, False, samples
            if sample_weight is not None:
                self.weight_total = float(np.sum(sample_weight[idx]))
                local = float(np.sum(sample_weight[mine]))
                self._share = local / self.weight_total if self.weight_total > 0 else 0.0
                self.silent = local == 0
                wb = None if self.silent else sample_weight[mine]
            yield x[mine], y[mine], wb

    @property
    def share(self) -> float:
        """This rank's weight in the global average: its samples over the global batch's (or
        its sample weights over the batch's)."""
        return self._share

    @property
    def batch_size(self) -> float:
        """What the step just taken counts for in the epoch's means: the global batch's
        samples, or the sum of their weights."""
        return self.total if self.weight_total is None else self.weight_total

    def transform(self, transform, xb, rng):
        if getattr(transform, "supports_part", False):
            return transform.apply(xb, rng, part=(self.start, self.total))
        # a transform that cannot draw for a part: the whole batch, then this rank's rows
        return transform.apply(self._x[self.idx], rng)[self.start:self.stop]

    def offset(self):
        from . import _random

        return _random.batch_offset(self.start)

    def reduce(self, value: float) -> float:
        return self.ctx.reduce_gradients(self.params, value, self.share)

    def empty_step(self, optimizer) -> float:
        """The closure of a rank whose shard of this batch is empty: it still takes part in
        the reduction, with no weight."""
        optimizer.zero_grad()
        return self.reduce(0.0)

    def step_end(self, correct: int, classify: bool) -> tuple[int, bool]:
        """Global correct count and classification flag of the step just taken."""
        from .train import _layer_generators

        sums = self.ctx.allreduce([correct, classify])
        if self.total < self.ctx.size:
            # a rank without samples drew no random numbers: rank 0's generators go on
            gens = _layer_generators(self.model)
            states = self.ctx.comm.bcast({n: g.bit_generator.state for n, g in gens.items()}
                                         if self.is_root else None, root=0)
            for name, g in gens.items():
                g.bit_generator.state = states[name]
        correct = int(sums[0]) if self.weight_total is None else float(sums[0])
        return correct, bool(sums[1] == self.ctx.size)

    def agree(self, flag: bool) -> bool:
        """True on every rank when any rank says so (a stop request)."""
        return bool(self.ctx.allreduce([bool(flag)])[0] > 0)

    def epoch_metrics(self, metrics: dict) -> dict:
        """Rank 0's metrics (with per-rank BatchNorm statistics, validation results differ)."""
        return self.ctx.comm.bcast(metrics, root=0)


# ---------------------------------------------------------------------------------- prediction
def predict(model, x, *, batch_size: int = 256, distributed=False) -> np.ndarray:
    """``model``'s outputs on ``x`` in inference mode, in batches.  ``distributed=True`` (under
    ``mpiexec``; or an mpi4py communicator): each rank computes its contiguous share and every
    rank returns all outputs, in the order of ``x``.  Works in one process without MPI."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"predict: batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(x, np.ndarray) or x.ndim < 1 or len(x) == 0:
        raise ValueError(f"predict: expected a non-empty numpy array of inputs, got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if distributed is False or distributed is None:
        return model.predict(x, batch_size=batch_size)
    ctx = context(distributed)
    lo, hi = ctx.shard(len(x))
    local = model.predict(x[lo:hi], batch_size=batch_size) if hi > lo else np.empty(0)
    return gather_rows(ctx, local, len(x))
