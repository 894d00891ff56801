"""Per-shape autotuning: time every variant that can serve a layer's request and keep the
fastest on disk, where variant selection finds it.

::

    ck.autotune(model, (64, 1, 28, 28))     # time each layer's variants at this input shape
    CNNKIT_AUTOTUNE=1 python train.py        # or: tune each layer on its first call per shape
    cnnkit tune examples/lenet5-modern.toml  # or: from the command line, for a model config

A tuning times forward + backward in training mode of every registered variant that serves the
request (refused variants and those whose ``auto_dtypes`` leave out the dtype are skipped),
best of a few interleaved rounds, once per (layer type, resolved configuration, features,
input shape, dtype, thread count).  The winner is written to a JSON file in the user's cache
folder (``CNNKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/cnnkit``, else ``~/.cache/cnnkit``) whose
name is a digest of what makes timings comparable: the cnnkit and plugin versions (with what
each plugin registered) and the CPU (model and feature flags).  A file that is corrupt, of
another format or made for another setup is ignored with an :class:`AutotuneWarning` and
rewritten.

Selection (``Registry.explain``) consults the cache after the explicit choices (``impl=``,
``cnnkit.use``, ``CNNKIT_IMPL``) and before priorities; an entry naming a variant that is no
longer registered or now refuses the request is ignored.  ``CNNKIT_AUTOTUNE=0`` turns the cache
off; unset, entries already tuned are used and nothing new is timed.  The variable is read when
a layer selects its variant (its first call, a new shape, dtype or explicit choice).
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import threading
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import _timing
from ._threads import get_num_threads

__all__ = ["AutotuneWarning", "TuneResult", "autotune", "tune_layer", "cache_dir", "cache_path",
           "fingerprint", "DEFAULT_ROUNDS"]

FORMAT = "cnnkit-autotune"
FORMAT_VERSION = 1
#: interleaved timing rounds per tuning (the best round of each variant counts)
DEFAULT_ROUNDS = 3
#: configuration entries that do not change the work done (a dropout mask's seed)
_IGNORED_CONFIG = frozenset({"seed"})


class AutotuneWarning(UserWarning):
    """The autotuning cache could not be read or written and was ignored."""


@dataclass
class TuneResult:
    """The outcome of tuning one layer at one input shape."""

    layer: str
    layer_type: str
    input_shape: tuple
    dtype: str
    threads: int
    variant: str
    times_ms: dict            # {variant: best forward+backward time}
    skipped: dict = field(default_factory=dict)   # {variant: why it was not timed}
    cached: bool = False      # True: found in the cache, nothing was timed
    path: str = ""

    def describe(self) -> dict:
        d = dict(self.__dict__)
        d["input_shape"] = list(self.input_shape)
        return d


# ------------------------------------------------------------------------------ state
_lock = threading.RLock()
#: bumped whenever what the cache would answer may have changed; selection caches key on it
_generation = 0
#: once any entry is known, the thread count joins the selection key (entries depend on it)
_active = False
#: {cache file path: {entry key without the batch: {batch: entry}}}
_memory: dict[str, dict] = {}


def _bump():
    global _generation, _active
    _generation += 1
    _active = True


def token():
    """What a layer's cached selection must be keyed by for the cache's answer to stay valid.

    Called on every layer call, so it reads no environment variable: ``CNNKIT_AUTOTUNE`` is
    read when a layer selects its variant (first call, new shape, dtype or explicit choice)."""
    if _active:
        return _generation, get_num_threads()
    return _generation


def clear_memory() -> None:
    """Forget the cache files read so far (they are read again when next needed)."""
    global _generation
    with _lock:
        _memory.clear()
        _generation += 1


_MODES = {"": "use", "0": "off", "off": "off", "false": "off", "no": "off",
          "1": "lazy", "on": "lazy", "true": "lazy", "yes": "lazy"}


def mode() -> str:
    """``"use"`` (``CNNKIT_AUTOTUNE`` unset: tuned entries are used), ``"lazy"`` (``=1``: a
    layer is tuned on its first call per shape) or ``"off"`` (``=0``: the cache is ignored)."""
    value = os.environ.get("CNNKIT_AUTOTUNE", "").strip().lower()
    try:
        return _MODES[value]
    except KeyError:
        raise ValueError(f"CNNKIT_AUTOTUNE must be 1 (tune on first call) or 0 (ignore the "
                         f"autotuning cache), got {os.environ['CNNKIT_AUTOTUNE']!r}") from None


# ------------------------------------------------------------------------------ the key
def cache_dir() -> str:
    """The folder of the autotuning cache: ``CNNKIT_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/cnnkit``, else ``~/.cache/cnnkit``."""
    explicit = os.environ.get("CNNKIT_CACHE_DIR")
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = xdg if xdg and os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cnnkit")


@functools.lru_cache(maxsize=None)
def cpu_description() -> dict:
    """The CPU timings depend on: model name and a digest of its feature flags (from
    ``/proc/cpuinfo`` where there is one, otherwise what ``platform`` says)."""
    model, flags = None, ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                key = key.strip().lower()
                if not sep:
                    continue
                if model is None and key in ("model name", "cpu model", "hardware"):
                    model = value.strip()
                elif not flags and key in ("flags", "features"):
                    flags = " ".join(sorted(value.split()))
                if model is not None and flags:
                    break
    except OSError:
        pass
    return {"model": model or platform.processor() or "unknown",
            "flags": hashlib.sha256(flags.encode()).hexdigest()[:16] if flags else "",
            "machine": platform.machine(), "cpus": os.cpu_count()}


def fingerprint(registry) -> dict:
    """What makes timings comparable: the cnnkit and NumPy versions, every plugin (name,
    distribution, version and the variants it registered) and the CPU."""
    from . import __version__

    plugins = []
    for info in sorted(registry.plugins.values(), key=lambda i: i.name):
        version = info.version or (__version__ if info.source == "builtin" else None)
        plugins.append([info.name, info.distribution, version,
                        sorted(info.registered.get("variant", []))])
    return {"cnnkit": __version__, "numpy": np.__version__, "plugins": plugins,
            "cpu": cpu_description()}


_digests: dict = {}


def cache_path(registry=None) -> str:
    """The cache file for ``registry`` (default: the process registry) on this machine."""
    from . import __version__

    if registry is None:
        from .plugins import get_registry

        registry = get_registry()
    # the digest is computed once per state of what goes into the fingerprint
    state = (id(registry), __version__, tuple(sorted(cpu_description().items())),
             tuple((i.name, i.distribution, i.version, len(i.registered.get("variant", ())))
                   for i in registry.plugins.values()))
    digest = _digests.get(state)
    if digest is None:
        digest = _digests[state] = hashlib.sha256(
            json.dumps(fingerprint(registry), sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(cache_dir(), f"autotune-{digest}.json")


def _plain(value):
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _describe_request(layer_type, config, features, shape, dtype, threads) -> dict:
    return {"layer_type": layer_type,
            "config": {k: _plain(v) for k, v in sorted((config or {}).items())
                       if k not in _IGNORED_CONFIG},
            "features": sorted(features), "input_shape": list(shape),
            "dtype": np.dtype(dtype).name, "threads": int(threads)}


def _base_key(entry: dict) -> str:
    """The key of an entry without its batch size."""
    return json.dumps([entry["layer_type"], entry["config"], entry["features"],
                       entry["input_shape"][1:], entry["dtype"], entry["threads"]],
                      sort_keys=True)


# ------------------------------------------------------------------------------ the file
def _check_entry(e) -> str | None:
    if not isinstance(e, dict):
        return "an entry is not an object"
    kinds = {"layer_type": str, "config": dict, "features": list, "input_shape": list,
             "dtype": str, "threads": int, "variant": str, "times_ms": dict}
    for key, kind in kinds.items():
        if not isinstance(e.get(key), kind) or isinstance(e.get(key), bool):
            return f"entry field {key!r} is missing or not a {kind.__name__}"
    shape = e["input_shape"]
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                            for s in shape):
        return f"entry input_shape {shape!r} is not a list of positive ints"
    times = e["times_ms"]
    if e["variant"] not in times or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)
            and t >= 0 for t in times.values()):
        return "entry times_ms does not time its variant in finite milliseconds"
    return None


def _read(path: str, expected: dict) -> tuple[list, str | None]:
    """(entries, problem): the entries of a valid file, or why the file cannot be used."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return [], None
    except OSError as exc:
        return [], f"cannot be read ({exc.strerror or exc})"
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return [], "is not valid JSON (corrupt or truncated)"
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return [], "is not a cnnkit autotuning cache"
    if doc.get("version") != FORMAT_VERSION:
        return [], f"has format version {doc.get('version')!r}, expected {FORMAT_VERSION}"
    if doc.get("fingerprint") != expected:
        return [], "was made for other cnnkit or plugin versions or another CPU (stale)"
    entries = doc.get("entries")
    if not isinstance(entries, list):
        return [], "has no list of entries"
    for e in entries:
        problem = _check_entry(e)
        if problem:
            return [], problem
    return entries, None


def _write(path: str, fp: dict, entries: list) -> None:
    from .io import atomic_write_text

    doc = {"format": FORMAT, "version": FORMAT_VERSION, "fingerprint": fp,
           "entries": entries}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    except OSError as exc:
        warnings.warn(f"cnnkit autotuning cache {path}: cannot be written "
                      f"({exc.strerror or exc}); the tuning is kept for this process only",
                      AutotuneWarning, stacklevel=4)


def _index(entries) -> dict:
    table: dict = {}
    for e in entries:
        table.setdefault(_base_key(e), {})[e["input_shape"][0]] = e
    return table


def _entries_of(table) -> list:
    return [e for by_batch in table.values() for _, e in sorted(by_batch.items())]


def _loaded(registry) -> tuple[str, dict]:
    """(path, in-memory table) of the registry's cache file, read on first use.  A file that
    cannot be used is warned about and rewritten empty."""
    path = cache_path(registry)
    table = _memory.get(path)
    if table is not None:
        return path, table
    with _lock:
        table = _memory.get(path)
        if table is None:
            fp = fingerprint(registry)
            entries, problem = _read(path, fp)
            if problem:
                warnings.warn(f"cnnkit autotuning cache {path} {problem}; it is ignored and "
                              "rewritten", AutotuneWarning, stacklevel=3)
                _write(path, fp, [])
            table = _memory[path] = _index(entries)
            if table:
                _bump()
    return path, table


def _store(registry, entry: dict) -> str:
    """Add an entry to the cache file (merged with what other processes wrote meanwhile)."""
    with _lock:
        path, table = _loaded(registry)
        fp = fingerprint(registry)
        on_disk, problem = _read(path, fp)
        if not problem:
            for e in on_disk:
                table.setdefault(_base_key(e), {}).setdefault(e["input_shape"][0], e)
        table.setdefault(_base_key(entry), {})[entry["input_shape"][0]] = entry
        _write(path, fp, _entries_of(table))
        _bump()
    return path


def _find(table, request: dict, exact: bool):
    """The entry for a request: its batch size, or (unless ``exact``) the nearest tuned one
    (a batch of ``None`` takes the largest)."""
    by_batch = table.get(_base_key(request))
    if not by_batch:
        return None
    batch = request["input_shape"][0]
    if batch in by_batch:
        return by_batch[batch]
    if exact:
        return None
    if batch is None:
        return by_batch[max(by_batch)]
    return by_batch[min(by_batch, key=lambda b: (abs(math.log(b / batch)), b))]


# ------------------------------------------------------------------------------ selection
def auto_refusal(variant, dtype, features, config) -> str | None:
    """Why automatic selection may not pick ``variant`` for this request, or ``None``."""
    return variant.refusal(dtype, features, config) or variant.auto_refusal(dtype, config)


def lookup(registry, layer_type, variants, *, dtype, features, config, shape):
    """The cache's answer for a request: ``(variant, how, reasons)`` when a usable entry
    exists, ``(None, note, {})`` when one exists but cannot be used (the note says why), and
    ``(None, None, {})`` otherwise."""
    if shape is None or mode() == "off":
        return None, None, {}
    path, table = _loaded(registry)
    if not table:
        return None, None, {}
    request = _describe_request(layer_type, config, features, shape, dtype, get_num_threads())
    entry = _find(table, request, exact=False)
    if entry is None:
        return None, None, {}
    by_name = {v.name: v for v in variants}
    chosen = by_name.get(entry["variant"])
    if chosen is None:
        return None, f"autotuned variant {entry['variant']!r} is no longer registered", {}
    reason = auto_refusal(chosen, dtype, features, config)
    if reason is not None:
        return None, f"autotuned variant {chosen.name!r} ignored: {reason}", {}
    times = entry["times_ms"]
    best = times[chosen.name]
    how = (f"autotuned: fastest of {len(times)} variant{'s' if len(times) != 1 else ''} for "
           f"this shape on this CPU, cache {path}")
    if entry["input_shape"][0] != shape[0]:
        how += f" (tuned at batch {entry['input_shape'][0]})"
    reasons = {}
    for v in variants:
        if v is chosen:
            continue
        if v.name in times:
            reasons[v.name] = (f"slower in autotuning: {times[v.name]:.3g} ms against "
                               f"{best:.3g} ms")
        else:
            reasons[v.name] = "not timed by autotuning: " + entry.get("skipped", {}).get(
                v.name, "not registered when tuned")
    return chosen, how, reasons


# ------------------------------------------------------------------------------ tuning
def _time_variants(fns: dict, rounds: int) -> tuple[dict, dict]:
    """({name: best seconds}, {name: exception}) over interleaved rounds."""
    samples, errors = _timing.interleaved(fns, rounds)
    return {name: min(s) for name, s in samples.items() if s}, errors


def _registry_of(layer, registry):
    if registry is not None:
        return registry
    if layer.registry is not None:
        return layer.registry
    from .plugins import get_registry

    return get_registry()


def tune_layer(layer, input_shape, *, dtype=None, registry=None, rounds: int = DEFAULT_ROUNDS,
               force: bool = False) -> TuneResult | None:
    """Tune one layer for inputs of ``input_shape`` (batch first); ``None`` for a layer with
    nothing to choose from (no variants, or a merge layer).  An entry already in the cache is
    returned as is unless ``force``."""
    owner = f"{layer.name} ({type(layer).__name__})"
    if layer.is_merge:
        return None
    reg = _registry_of(layer, registry)
    variants = reg.variants_for(layer.layer_type)
    if not variants:
        return None
    shape = tuple(int(s) for s in input_shape)
    dtype = np.dtype(dtype if dtype is not None else (layer.dtype or np.float32))
    res = layer.resolution(shape)
    threads = get_num_threads()
    request = _describe_request(layer.layer_type, res.config, res.features, shape, dtype,
                                threads)
    path, table = _loaded(reg)
    if not force:
        entry = _find(table, request, exact=True)
        if entry is not None:
            return TuneResult(layer.name, layer.layer_type, shape, dtype.name, threads,
                              entry["variant"], dict(entry["times_ms"]),
                              dict(entry.get("skipped", {})), cached=True, path=path)
    skipped, candidates = {}, {}
    for v in variants:
        reason = auto_refusal(v, dtype, res.features, res.config)
        if reason is None:
            candidates[v.name] = v
        else:
            skipped[v.name] = reason
    if not candidates:
        raise ValueError(f"{owner}: no variant of {layer.layer_type} can serve inputs of shape "
                         f"{shape} {dtype.name}: " + "; ".join(f"{k}: {r}"
                                                             for k, r in skipped.items()))
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape[:1] + tuple(res.output_shape)).astype(dtype)
    # copies: a training forward may update running statistics in place
    params = {k: None if p is None else p.copy() for k, p in layer.params.items()}
    config = res.config

    def step(v):
        def run():
            _, ctx = v.impl.forward(x, params, config, True)
            v.impl.backward(dy, ctx)
        return run

    times, errors = _time_variants({n: step(v) for n, v in candidates.items()}, rounds)
    for name, exc in errors.items():
        skipped[name] = f"failed: {type(exc).__name__}: {exc}"
    if not times:
        raise RuntimeError(f"{owner}: every variant failed while autotuning: "
                           + "; ".join(f"{k}: {r}" for k, r in skipped.items()))
    times_ms = {name: t * 1e3 for name, t in times.items()}
    best = min(times_ms, key=lambda n: (times_ms[n], -candidates[n].priority, n))
    entry = dict(request, variant=best, times_ms=times_ms, skipped=skipped, rounds=rounds)
    path = _store(reg, entry)
    return TuneResult(layer.name, layer.layer_type, shape, dtype.name, threads, best, times_ms,
                      skipped, cached=False, path=path)


def tune_on_first_call(layer, registry, dtype, res, shape) -> bool:
    """Under ``CNNKIT_AUTOTUNE=1``, tune a layer the first time it computes an input shape
    (no explicit choice, nothing tuned yet for it); True if an entry was added."""
    if layer.is_merge or mode() != "lazy" or registry.explicit_choice(
            layer.layer_type, layer.impl)[0] is not None:
        return False
    if not registry.variants_for(layer.layer_type):
        return False
    _, table = _loaded(registry)
    request = _describe_request(layer.layer_type, res.config, res.features, shape, dtype,
                                get_num_threads())
    if _find(table, request, exact=True) is not None:
        return False
    try:
        result = tune_layer(layer, shape, dtype=dtype, registry=registry)
    except (ValueError, RuntimeError):
        return False  # selection reports what cannot be served
    return result is not None


def autotune(model, input_shape, *, dtype=None, rounds: int = DEFAULT_ROUNDS,
             force: bool = False, registry=None) -> list[TuneResult]:
    """Time every applicable variant of each layer of ``model`` (a model or a single layer) at
    ``input_shape`` (batch first; a list of shapes for a model with several inputs) and cache
    the fastest on disk, where selection then finds it.  Layers already tuned for their shape
    are not timed again unless ``force``.  Returns one :class:`TuneResult` per tuned layer."""
    from .graph import Model, Sequential
    from .layers import Layer

    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"cnnkit.autotune: rounds must be a positive int, got {rounds!r}")
    load = _timing.machine_load(get_num_threads())
    if load["busy"]:
        warnings.warn(f"cnnkit.autotune: the machine is busy (load average "
                      f"{load['load_average']:.2f} on {load['cpu_count']} CPUs): the timings, "
                      "and so the variants chosen, may not hold on a quiet machine; tune again "
                      "later with force=True (cnnkit tune --force)", AutotuneWarning,
                      stacklevel=2)
    if isinstance(model, Layer):
        shape = _check_shape(input_shape, "cnnkit.autotune")
        result = tune_layer(model, shape, dtype=dtype, registry=registry, rounds=rounds,
                            force=force)
        return [] if result is None else [result]
    if not isinstance(model, Model):
        raise TypeError(f"cnnkit.autotune: expected a cnnkit model or layer, got "
                        f"{type(model).__name__}")
    if isinstance(model, Sequential) and not model._built:
        shape = _check_shape(input_shape, "cnnkit.autotune")
        model.build(shape[1:])
    multi = model._multi_in
    shapes = ([_check_shape(s, "cnnkit.autotune") for s in input_shape]
              if multi and isinstance(input_shape, (list, tuple))
              and all(isinstance(s, (list, tuple)) for s in input_shape)
              else [_check_shape(input_shape, "cnnkit.autotune")])
    if len(shapes) != len(model.inputs):
        raise ValueError(f"cnnkit.autotune: {model.name} has {len(model.inputs)} inputs, got "
                         f"{len(shapes)} input shape(s)")
    batch = shapes[0][0]
    for node, s in zip(model.inputs, shapes):
        if s[1:] != tuple(node.shape[1:]) or s[0] != batch:
            raise ValueError(f"cnnkit.autotune: {model.name}: input {node.name!r} expects shape "
                             f"(N, {', '.join(map(str, node.shape[1:]))}) with one batch size "
                             f"for every input, got {s}")
    if dtype is None:
        dtype = model.dtype or np.float32
    results = []
    for node in model.nodes:
        if node.layer.is_merge:
            continue
        shape = (batch,) + tuple(node.inputs[0].shape[1:])
        result = tune_layer(node.layer, shape, dtype=dtype, registry=registry, rounds=rounds,
                            force=force)
        if result is not None:
            results.append(result)
    return results


def _check_shape(shape, who) -> tuple:
    if (not isinstance(shape, (tuple, list)) or len(shape) < 2
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
                       for s in shape)):
        raise ValueError(f"{who}: input_shape must be a tuple of positive ints with the batch "
                         f"first, like (64, 1, 28, 28); got {shape!r}")
    return tuple(int(s) for s in shape)
