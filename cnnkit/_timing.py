"""Timing several callables fairly on a shared machine: interleaved rounds, best of each.

Consecutive runs of one callable see the same burst of a busy neighbour, so a median over them
says more about the neighbour than about the callable.  Running one call of each callable per
round, and keeping each one's fastest round, gives every callable the same chances (used by
``cnnkit bench`` and by autotuning).
"""
from __future__ import annotations

import os
import time

__all__ = ["interleaved", "spread", "busy_load", "machine_load"]

#: a timed sample lasts about this long: faster calls are repeated within the sample, so timer
#: resolution and loop overhead stay small
MIN_SAMPLE_SECONDS = 1e-3


def interleaved(fns: dict, rounds: int, warmup: int = 1,
                min_sample: float = MIN_SAMPLE_SECONDS, settle: bool = True) -> tuple[dict, dict]:
    """Time each callable of ``fns`` ({name: callable}) over ``rounds`` interleaved rounds.

    Each callable first runs ``warmup`` times untimed (the last warm-up run also sets how many
    calls make one sample).  With ``settle``, one untimed call precedes each sample: thread
    pools of the previous callable (another OpenMP runtime, PyTorch's) keep spinning for a
    while after their last call, and that time must not be charged to the next one.

    Returns ``({name: [seconds per call, one per round]}, {name: exception})``: a callable that
    raises is dropped from the later rounds and reported with its exception instead."""
    if rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    errors: dict = {}
    inner: dict = {}
    for name, fn in fns.items():
        last = None
        try:
            for _ in range(warmup):
                t0 = time.perf_counter()
                fn()
                last = time.perf_counter() - t0
        except Exception as exc:
            errors[name] = exc
            continue
        inner[name] = 1 if not last else max(1, min(1000, int(min_sample / max(last, 1e-7))))
    samples: dict = {name: [] for name in inner}
    for _ in range(rounds):
        for name, n in list(inner.items()):
            fn = fns[name]
            try:
                if settle:
                    fn()
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                samples[name].append((time.perf_counter() - t0) / n)
            except Exception as exc:
                errors[name] = exc
                del inner[name], samples[name]
    return samples, errors


def spread(samples) -> float | None:
    """How far the median sample is above the best one (0.1: 10% slower); ``None`` for fewer
    than three samples, where the median says nothing."""
    if len(samples) < 3:
        return None
    ordered = sorted(samples)
    best, median = ordered[0], ordered[len(ordered) // 2]
    return median / best - 1.0 if best > 0 else None


def busy_load() -> tuple[float | None, int]:
    """(one-minute load average or ``None`` where the platform has none, CPU count)."""
    cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return load, cpus


def machine_load(threads: int) -> dict:
    """The one-minute load average now and whether it makes the machine busy for a run on
    ``threads`` threads: more load than the cores left free can absorb (plus half a core)."""
    load, cpus = busy_load()
    free = max(cpus - threads, 0)
    return {"load_average": load, "cpu_count": cpus,
            "busy": load is not None and load > free + 0.5}
