"""``cnnkit bench LAYER_TYPE``: times every variant of a layer type on the same inputs (forward
and forward+backward, best of interleaved rounds), checks each against the float64 reference
and prints one table, with a warning when the machine is busy; ``--json FILE`` and ``--plot
FILE.png`` save the results and ``--compare OLD.json`` sets them against an earlier run.  Exit
status 1 when a variant fails or disagrees with the reference, or is slower than the earlier
run beyond the threshold."""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field

from .. import _timing
from ._args import (_dtype_arg, _non_negative_int, _positive_float, _positive_int,
                    parse_layer_args, parse_shape)
from ._common import CommandError, _fail, _format_table, _registry
from ._layer import build_layer

__all__ = ["BenchShape", "DEFAULT_SHAPES", "CONV2D_SHAPES", "QUICK_BATCH", "BenchRow",
           "layer_flops", "run_bench", "installed_plugins", "format_bench", "compare_runs",
           "machine_load", "cmd_bench"]


# ---------------------------------------------------------------------------------------------
# shapes benchmarked by default (benchmarks/test_bench_kernels.py uses the same conv2d shapes)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchShape:
    """A named benchmark case: the input shape (batch first) and the layer's keyword arguments
    (for conv2d and dense the input size comes from the shape)."""

    name: str
    input_shape: tuple
    kwargs: dict = field(default_factory=dict)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"({','.join(map(str, self.input_shape))})" + (f" {args}" if args else "")


def _conv(name, shape, cout, k, stride, pad):
    kwargs = {"out_channels": cout, "kernel_size": k}
    if stride != 1:
        kwargs["stride"] = stride
    if pad:
        kwargs["padding"] = pad
    return BenchShape(name, shape, kwargs)


#: The conv2d shapes of the benchmark suite: LeNet-5's two convolutions, a CIFAR-like first
#: layer, three wide ResNet-like 3x3 layers, and LeNet's convolutions as most implementations
#: write them (conv1 padded to keep 28x28, conv2 on the 14x14 maps a 2x2 pooling leaves).
CONV2D_SHAPES = (
    _conv("lenet-conv1", (64, 1, 28, 28), 6, 5, 1, 0),
    _conv("lenet-conv2", (64, 6, 12, 12), 16, 5, 1, 0),
    _conv("cifar-3x3", (64, 3, 32, 32), 32, 3, 1, 1),
    _conv("64ch-32px", (32, 64, 32, 32), 64, 3, 1, 1),
    _conv("128ch-28px", (16, 128, 28, 28), 128, 3, 1, 1),
    _conv("64to128-s2", (32, 64, 56, 56), 128, 3, 2, 1),
    _conv("lenet-conv1-p2", (64, 1, 28, 28), 6, 5, 1, 2),
    _conv("lenet-conv2-14px", (64, 6, 14, 14), 16, 5, 1, 0),
)

_POOL_SHAPES = (
    BenchShape("2x2", (64, 32, 32, 32), {"kernel_size": 2}),
    BenchShape("3x3-s2-p1", (32, 64, 56, 56), {"kernel_size": 3, "stride": 2, "padding": 1}),
)
_ELEMENTWISE_SHAPES = (
    BenchShape("conv-map", (64, 32, 32, 32)),
    BenchShape("features", (256, 1024)),
)
_MAP_SHAPES = (
    BenchShape("conv-map", (64, 32, 32, 32)),
    BenchShape("wide-map", (32, 128, 16, 16)),
)
_ROW_SHAPES = (
    BenchShape("logits", (256, 10)),
    BenchShape("features", (256, 1024)),
)

#: Default cases of every built-in layer type that has variants (the others compute
#: themselves: flatten, add, concat).
DEFAULT_SHAPES = {
    "conv2d": CONV2D_SHAPES,
    "convtranspose2d": (
        _conv("k4-s2-p1", (32, 64, 16, 16), 32, 4, 2, 1),
        _conv("3x3-p1", (32, 32, 32, 32), 32, 3, 1, 1),
    ),
    "maxpool2d": _POOL_SHAPES,
    "avgpool2d": _POOL_SHAPES,
    "globalavgpool2d": _MAP_SHAPES,
    "globalmaxpool2d": _MAP_SHAPES,
    "subsampling": (
        BenchShape("lenet-s2", (64, 6, 28, 28), {"kernel_size": 2}),
        BenchShape("lenet-s4", (64, 16, 10, 10), {"kernel_size": 2}),
    ),
    "batchnorm2d": _MAP_SHAPES,
    "batchnorm1d": (
        BenchShape("fc", (256, 120)),
        BenchShape("features", (256, 1024)),
    ),
    "dropout": _ELEMENTWISE_SHAPES,
    "zeropad2d": (
        BenchShape("pad2", (64, 32, 32, 32), {"padding": 2}),
        BenchShape("pad1-wide", (32, 128, 16, 16), {"padding": 1}),
    ),
    "pad2d": (
        BenchShape("reflect2", (64, 32, 32, 32), {"padding": 2, "mode": "reflect"}),
        BenchShape("edge-1x2", (32, 128, 16, 16), {"padding": (1, 2), "mode": "replicate"}),
    ),
    "upsample2d": (
        BenchShape("x2", (64, 32, 16, 16), {"scale_factor": 2}),
        BenchShape("x2-wide", (32, 128, 8, 8), {"scale_factor": 2}),
    ),
    "softmax": _ROW_SHAPES,
    "logsoftmax": _ROW_SHAPES,
    "dense": (
        BenchShape("lenet-fc1", (64, 400), {"out_features": 120}),
        BenchShape("mlp-1024", (256, 1024), {"out_features": 1024}),
    ),
    "rbfoutput": (
        BenchShape("lenet-output", (256, 84), {"num_classes": 10}),
    ),
    **{t: _ELEMENTWISE_SHAPES for t in ("relu", "leakyrelu", "sigmoid", "tanh", "elu", "gelu",
                                        "scaledtanh", "clip", "relu6")},
}

#: Batch cap of the default shapes under ``--quick`` (a smoke run, not a measurement).
QUICK_BATCH = 2


def add_parser(sub) -> None:
    """Add ``bench`` to the ``cnnkit`` subcommands."""
    bench = sub.add_parser(
        "bench", help="time every variant of a layer type and check it against the reference",
        description="Time every registered variant of LAYER_TYPE on the same inputs: forward and "
        "forward+backward, best of interleaved rounds (one sample of each variant per round) "
        "after warm-up, GFLOP/s (conv2d, dense), the ratio to the fastest variant, and agreement "
        "with the float64 reference ('numpy' variant). Warns when the machine is busy. Exits "
        "with status 1 if a variant fails or disagrees (MISMATCH), or with --compare if a time "
        "regressed beyond --threshold.")
    bench.add_argument("layer_type", metavar="LAYER_TYPE")
    bench.add_argument("--shape", type=parse_shape, action="append", metavar="N,C,H,W",
                       help="benchmark this input shape instead of the defaults (repeatable)")
    bench.add_argument("--args", type=parse_layer_args, default={}, metavar="K=V,...",
                       help="layer arguments, e.g. out_channels=32,kernel_size=3 (in_channels, "
                       "in_features, num_features and channels come from the shape)")
    bench.add_argument("--variants", metavar="NAME,...", default=None,
                       help="only these variants (default: every registered one)")
    bench.add_argument("--repeat", type=_positive_int, default=None,
                       help="interleaved timing rounds; each variant's best round is reported "
                       "(default: 5)")
    bench.add_argument("--warmup", type=_non_negative_int, default=None,
                       help="untimed runs before timing (default: 1)")
    bench.add_argument("--quick", action="store_true",
                       help=f"smoke run: 1 repeat, 1 warm-up, default shapes cut to batch "
                       f"{QUICK_BATCH}")
    bench.add_argument("--rtol", type=float, default=None,
                       help="tolerance of the reference check, relative to the largest "
                       "reference magnitude (default: 1e-4 for float32, 1e-9 for float64)")
    _dtype_arg(bench)
    bench.add_argument("--json", metavar="FILE", dest="json_file", default=None,
                       help="write the results, versions, plugins and threads as JSON")
    bench.add_argument("--plot", metavar="FILE.png", default=None,
                       help="write a bar chart (needs matplotlib: pip install 'cnnkit[plot]')")
    bench.add_argument("--compare", metavar="OLD.json", default=None,
                       help="compare with the --json results of an earlier run: ratio new/old "
                       "per shape, variant and mode")
    bench.add_argument("--threshold", type=_positive_float, default=0.10,
                       help="with --compare, flag a time more than this fraction above the old "
                       "one as a regression (default: 0.10)")
    bench.set_defaults(func=cmd_bench)


def layer_flops(layer_type: str, layer, input_shape, output_shape) -> float | None:
    """Floating-point operations of one forward pass (multiply-adds count 2), or ``None`` where
    the measure is not defined.  Forward+backward counts three times the forward (input and
    weight gradients are each a product of the forward's size)."""
    if layer_type == "conv2d":
        o, cg, kh, kw = layer.params["weight"].shape
        n, _, oh, ow = output_shape
        return 2.0 * n * o * oh * ow * cg * kh * kw
    if layer_type == "convtranspose2d":  # every input pixel meets the whole weight once
        n, _, h, w = input_shape
        return 2.0 * n * h * w * layer.params["weight"].size
    if layer_type == "dense":
        o, i = layer.params["weight"].shape
        return 2.0 * input_shape[0] * o * i
    return None


@dataclass
class BenchRow:
    shape: str
    input_shape: tuple
    kwargs: dict
    variant: str
    plugin: str
    status: str = "ok"              # ok | MISMATCH | ERROR | refused | unchecked
    message: str | None = None
    forward_ms: float | None = None
    backward_ms: float | None = None  # forward+backward
    forward_gflops: float | None = None
    backward_gflops: float | None = None
    forward_ratio: float | None = None
    backward_ratio: float | None = None
    max_rel_err: float | None = None
    tol: float | None = None
    #: how far the median round is above the best one (0.1: 10%); None under three rounds
    forward_spread: float | None = None
    backward_spread: float | None = None

    def describe(self) -> dict:
        d = dict(self.__dict__)
        d["input_shape"] = list(self.input_shape)
        for key in ("ms", "gflops", "ratio", "spread"):
            d[f"forward_backward_{key}"] = d.pop(f"backward_{key}")
        return d


def _max_rel_err(got, want):
    import numpy as np

    want = np.asarray(want, np.float64)
    got = np.asarray(got, np.float64)
    if got.shape != want.shape:
        return math.inf
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    if not math.isfinite(err):
        return math.inf
    return err / scale if scale > 0 else err


def _reference_outputs(reg, layer_type, layer, x, dy):
    """Forward output, input gradient and parameter gradients of the reference variant in
    float64, on the same parameters and inputs (or ``None`` when there is no reference)."""
    import numpy as np

    from ..testing import REFERENCE_VARIANT

    if REFERENCE_VARIANT not in reg.variants.get(layer_type, {}):
        return None
    saved = (layer.impl, layer.params, layer.grads)
    try:
        layer.params = {k: None if v is None else v.astype(np.float64)
                        for k, v in layer.params.items()}
        layer.impl = REFERENCE_VARIANT
        y = layer.forward(x.astype(np.float64), training=True)
        dx = layer.backward(dy.astype(np.float64))
        return y, dx, dict(layer.grads)
    finally:
        layer.impl, layer.params, layer.grads = saved  # selection follows impl per call


def run_bench(layer_type, shapes, *, dtype="float32", repeat=5, warmup=1, variants=None,
              rtol=None, registry=None, progress=None) -> list[BenchRow]:
    """Time every variant of ``layer_type`` on each :class:`BenchShape`; return the rows."""
    import numpy as np

    from ..plugins import SelectionError
    from ..testing import DEFAULT_RTOL

    reg = registry if registry is not None else _registry()
    all_variants = reg.variants_for(layer_type)
    if not all_variants:
        raise CommandError(f"layer type {layer_type!r} has no registered variants")
    if variants is not None:
        known = {v.name for v in all_variants}
        unknown = [v for v in variants if v not in known]
        if unknown:
            raise CommandError(f"{layer_type} has no variant(s) {', '.join(unknown)}; registered: "
                               + ", ".join(sorted(known)))
        all_variants = [v for v in all_variants if v.name in variants]
    tol = DEFAULT_RTOL[dtype] if rtol is None else float(rtol)
    rows: list[BenchRow] = []
    for case in shapes:
        layer, out_shape = build_layer(reg, layer_type, case.input_shape, case.kwargs, dtype)
        rng = np.random.default_rng(0)
        x = rng.standard_normal(case.input_shape).astype(dtype)
        dy = rng.standard_normal(out_shape).astype(dtype)
        try:
            ref = _reference_outputs(reg, layer_type, layer, x, dy)
        except Exception as exc:  # the reference itself failing is reported, not fatal
            ref, ref_error = None, f"reference failed: {type(exc).__name__}: {exc}"
        else:
            ref_error = None
        flops = layer_flops(layer_type, layer, case.input_shape, out_shape)
        case_rows, timed = [], {}
        for v in all_variants:
            if progress:
                progress(f"{case.name} {v.name}")
            row = BenchRow(case.name, tuple(case.input_shape), dict(case.kwargs), v.name,
                           v.plugin, tol=tol)
            case_rows.append(row)
            # one layer per variant (the same parameters: built with the same seed), so the
            # interleaved rounds never switch a layer's variant
            vlayer, _ = build_layer(reg, layer_type, case.input_shape, case.kwargs, dtype,
                                    impl=v.name)
            try:
                vlayer.variant(dtype, case.input_shape)
            except SelectionError as exc:
                row.status = "refused"
                row.message = str(exc).split("cannot serve this request: ")[-1]
                continue
            try:
                _check_row(row, vlayer, x, dy, ref, ref_error, tol)
            except Exception as exc:
                row.status, row.message = "ERROR", f"{type(exc).__name__}: {exc}"
                continue
            timed[(v.name, "forward")], timed[(v.name, "backward")] = _runs(vlayer, x, dy)
        if progress:
            progress(f"{case.name}: {repeat} interleaved rounds")
        samples, errors = _timing.interleaved(timed, repeat, warmup)
        for row in case_rows:
            for mode in ("forward", "backward"):
                exc = errors.get((row.variant, mode))
                if exc is not None:
                    row.status, row.message = "ERROR", f"{type(exc).__name__}: {exc}"
                got = samples.get((row.variant, mode))
                if got:
                    setattr(row, f"{mode}_ms", 1e3 * min(got))
                    setattr(row, f"{mode}_spread", _timing.spread(got))
            if flops and row.forward_ms and row.backward_ms:
                row.forward_gflops = flops / (row.forward_ms * 1e6)
                row.backward_gflops = 3 * flops / (row.backward_ms * 1e6)
        for attr, ratio in (("forward_ms", "forward_ratio"), ("backward_ms", "backward_ratio")):
            times = [getattr(r, attr) for r in case_rows if getattr(r, attr)]
            for r in case_rows:
                if getattr(r, attr):
                    setattr(r, ratio, getattr(r, attr) / min(times))
        rows.extend(case_rows)
    return rows


def _runs(layer, x, dy):
    """(inference forward, training forward + backward) of a layer on fixed inputs."""
    def forward():
        layer.forward(x, training=False)

    def forward_backward():
        layer.forward(x, training=True)
        layer.backward(dy)

    return forward, forward_backward


def _check_row(row, layer, x, dy, ref, ref_error, tol) -> None:
    """Run the variant once in training mode and compare it with the reference outputs."""
    y = layer.forward(x, training=True)
    dx = layer.backward(dy)
    grads = dict(layer.grads)
    if ref is None:
        row.status, row.message = "unchecked", ref_error or "no reference variant"
        return
    errs = [_max_rel_err(y, ref[0]), _max_rel_err(dx, ref[1])]
    errs += [_max_rel_err(grads.get(k), g) for k, g in ref[2].items()]
    row.max_rel_err = max(errs)
    if not row.max_rel_err <= tol:
        row.status = "MISMATCH"


def installed_plugins(reg=None) -> list[dict]:
    """The third-party plugins loaded (and failed), with distribution and version."""
    reg = reg if reg is not None else _registry()
    out = []
    for info in reg.plugins.values():
        if info.source == "builtin":
            continue
        out.append({"name": info.name, "distribution": info.distribution,
                    "version": info.version, "module": info.module,
                    "error": info.error})
    return out


def _threads():
    from threadpoolctl import threadpool_info

    from .. import get_num_threads

    info = {"cnnkit_openmp": get_num_threads(),
            "blas": sorted({p["num_threads"] for p in threadpool_info()
                            if p["user_api"] == "blas"}),
            "torch": None}
    torch = sys.modules.get("torch")  # reported when a variant imported it; never imported here
    if torch is not None:
        info["torch"] = torch.get_num_threads()
    return info


def _environment(reg):
    import numpy as np

    from .. import __version__

    plugins = installed_plugins(reg)
    return {
        "cnnkit_version": __version__,
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": _threads(),
        "plugins": plugins,
        # pinned like `pip freeze` / `datasette plugins --requirements`: what to install to
        # reproduce the set of variants that was measured
        "requirements": [f"cnnkit=={__version__}"] + [
            f"{p['distribution']}=={p['version']}" for p in plugins
            if p["distribution"] and p["version"] and not p["error"]],
    }


def _fmt(value, digits=3):
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}" if digits < 3 else f"{value:.1f}"
    return f"{value:.{digits}g}" if value < 1 else f"{value:.2f}"


def _check_text(row: BenchRow) -> str:
    if row.status in ("ok", "MISMATCH"):
        return f"{row.status} {row.max_rel_err:.1e}"
    if row.status == "unchecked":
        return f"unchecked ({row.message})"
    return f"{row.status}: {row.message}"


def format_bench(layer_type, rows, env, dtype, repeat, warmup, tol) -> str:
    threads = env["threads"]
    t = f"cnnkit {threads['cnnkit_openmp']}, BLAS {','.join(map(str, threads['blas'])) or '-'}"
    if threads["torch"] is not None:
        t += f", torch {threads['torch']}"
    lines = [f"cnnkit bench {layer_type}: {dtype}, best of {repeat} interleaved rounds after "
             f"{warmup} warm-up, times in ms; threads: {t}",
             f"check: max |variant - reference| / max |reference|, reference 'numpy' in float64, "
             f"tolerance {tol:.0e}", ""]
    table = [("shape", "variant", "forward", "GFLOP/s", "x best", "fwd+bwd", "GFLOP/s", "x best",
              "check")]
    previous = None
    for r in rows:
        table.append((r.shape if r.shape != previous else "", r.variant, _fmt(r.forward_ms),
                      _fmt(r.forward_gflops), _fmt(r.forward_ratio), _fmt(r.backward_ms),
                      _fmt(r.backward_gflops), _fmt(r.backward_ratio), _check_text(r)))
        previous = r.shape
    lines += _format_table(table, right={2, 3, 4, 5, 6, 7})
    lines.append("")
    seen = {}
    for r in rows:
        seen.setdefault(r.shape, (r.input_shape, r.kwargs))
    lines.append("shapes: " + "; ".join(
        f"{name} = {BenchShape(name, s, kw).describe()}" for name, (s, kw) in seen.items()))
    plugins = sorted({(r.variant, r.plugin) for r in rows})
    versions = {p["name"]: f"{p['distribution']} {p['version']}" for p in env["plugins"]}
    lines.append("variants: " + "; ".join(
        f"{v} = plugin {p}" + (f" ({versions[p]})" if p in versions else " (cnnkit "
                               f"{env['cnnkit_version']})")
        for v, p in plugins))
    return "\n".join(lines)


def _plot(path, layer_type, rows, dtype):
    try:
        import matplotlib
    except ImportError:
        raise CommandError("--plot needs matplotlib, which is not installed: "
                           "pip install 'cnnkit[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import io as _io

    import matplotlib.pyplot as plt

    from ..io import atomic_write_bytes

    shapes = list(dict.fromkeys(r.shape for r in rows))
    variants = list(dict.fromkeys(r.variant for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(shapes) * 2), 4.5))
    width = 0.8 / max(len(variants), 1)
    for ax, attr, title in ((axes[0], "forward_ms", "forward"),
                            (axes[1], "backward_ms", "forward + backward")):
        for i, v in enumerate(variants):
            by_shape = {r.shape: getattr(r, attr) for r in rows if r.variant == v}
            values = [by_shape.get(s) or 0.0 for s in shapes]
            ax.bar([k + (i - (len(variants) - 1) / 2) * width for k in range(len(shapes))],
                   values, width, label=v)
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(shapes, rotation=30, ha="right")
        ax.set_ylabel("median time (ms)")
        ax.set_title(f"{layer_type} {title}, {dtype}")
        ax.legend()
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


#: the spread (median round above the best one) beyond which timings are called unstable
UNSTABLE_SPREAD = 0.25


machine_load = _timing.machine_load


def _warnings(load: dict, rows, threads: int) -> list[str]:
    out = []
    if load["busy"]:
        out.append(f"the machine is busy: load average {load['load_average']:.2f} over the last "
                   f"minute on {load['cpu_count']} CPUs, and cnnkit uses {threads} thread(s); "
                   "timings are slower and noisier than on a quiet machine (compare ratios, or "
                   "rerun when it is quiet)")
    unstable = [f"{r.variant} on {r.shape} {mode} (median {100 * spread:.0f}% above best)"
                for r in rows for mode, spread in (("forward", r.forward_spread),
                                                  ("fwd+bwd", r.backward_spread))
                if spread is not None and spread > UNSTABLE_SPREAD]
    if unstable:
        out.append("unstable timings: " + "; ".join(unstable[:5])
                   + (f"; and {len(unstable) - 5} more" if len(unstable) > 5 else ""))
    return out


def _row_key(shape, input_shape, kwargs, variant):
    return (shape, tuple(input_shape), json.dumps(kwargs, sort_keys=True, default=str), variant)


def _load_previous(path, layer_type, dtype) -> dict:
    """An earlier run's ``--json`` document, checked before anything is timed."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise CommandError(f"--compare {path}: cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise CommandError(f"--compare {path}: not a JSON file ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list) or not all(
            isinstance(r, dict) and {"shape", "input_shape", "variant"} <= set(r)
            for r in doc["results"]):
        raise CommandError(f"--compare {path}: not the --json output of cnnkit bench")
    if doc.get("layer_type") != layer_type:
        raise CommandError(f"--compare {path}: results of layer type {doc.get('layer_type')!r}, "
                           f"not {layer_type!r}")
    if doc.get("dtype") != dtype:
        raise CommandError(f"--compare {path}: results in {doc.get('dtype')}, not {dtype} "
                           "(pass --dtype to match)")
    return doc


def compare_runs(old: dict, rows, threshold: float) -> list[dict]:
    """Ratio new/old of every time measured in both runs, per (shape, variant, mode), flagged
    as a regression when above ``1 + threshold``."""
    previous = {_row_key(r["shape"], r["input_shape"], r.get("kwargs", {}), r["variant"]): r
                for r in old["results"]}
    out = []
    for r in rows:
        before = previous.get(_row_key(r.shape, r.input_shape, r.kwargs, r.variant))
        for mode, new_ms, key in (("forward", r.forward_ms, "forward_ms"),
                                  ("forward+backward", r.backward_ms, "forward_backward_ms")):
            old_ms = before.get(key) if before else None
            if not isinstance(old_ms, (int, float)) or not old_ms > 0 or not new_ms:
                continue
            ratio = new_ms / old_ms
            out.append({"shape": r.shape, "variant": r.variant, "mode": mode,
                        "old_ms": old_ms, "new_ms": new_ms, "ratio": ratio,
                        "regression": ratio > 1 + threshold})
    return out


def format_comparison(path, old, comparison, threshold) -> str:
    lines = [f"compared with {path} (new/old; regression: more than {100 * threshold:.0f}% "
             "slower)"]
    from .. import __version__

    notes = [f"{what} {old.get(key)} then, {now} now"
             for what, key, now in (("cnnkit", "cnnkit_version", __version__),
                                    ("platform", "platform", platform.platform()))
             if old.get(key) not in (None, now)]
    if notes:
        lines.append("note: " + "; ".join(notes))
    if not comparison:
        lines.append("no (shape, variant) measured in both runs")
        return "\n".join(lines)
    table = [("shape", "variant", "mode", "old", "new", "new/old", "")]
    for c in comparison:
        table.append((c["shape"], c["variant"], c["mode"], _fmt(c["old_ms"]), _fmt(c["new_ms"]),
                      f"{c['ratio']:.2f}", "REGRESSION" if c["regression"] else ""))
    lines += _format_table(table, right={3, 4, 5})
    return "\n".join(lines)


def cmd_bench(args) -> int:
    layer_type = args.layer_type.lower()
    reg = _registry()
    if layer_type not in reg.layer_types and layer_type not in reg.variants:
        return _fail("bench", f"unknown layer type {args.layer_type!r}; registered: "
                     + ", ".join(sorted(reg.layer_types)))
    if not reg.variants_for(layer_type):
        return _fail("bench", f"layer type {layer_type!r} has no variants to time (the layer "
                     "computes itself)")
    repeat = args.repeat or (1 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else 1
    if args.shape:
        shapes = [BenchShape("custom" if len(args.shape) == 1 else f"custom{i + 1}", s,
                             dict(args.args)) for i, s in enumerate(args.shape)]
    else:
        shapes = DEFAULT_SHAPES.get(layer_type)
        if shapes is None:
            cls = reg.layer_types.get(layer_type, (None,))[0]
            if cls is not None and getattr(cls, "input_rank", 0) is None:
                shapes = _ELEMENTWISE_SHAPES  # a new element-wise layer type
            else:
                return _fail("bench", f"no default shapes for layer type {layer_type!r}: pass "
                             "--shape N,C,H,W (and --args name=value,... for the layer)")
        shapes = [BenchShape(s.name, s.input_shape, {**s.kwargs, **args.args}) for s in shapes]
        if args.quick:
            shapes = [BenchShape(s.name, (min(s.input_shape[0], QUICK_BATCH),)
                                 + tuple(s.input_shape[1:]), s.kwargs) for s in shapes]
    variants = None
    if args.variants:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.plot:  # fail before the timing, not after
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return _fail("bench", "--plot needs matplotlib, which is not installed: "
                         "pip install 'cnnkit[plot]' (or pip install matplotlib)")
    old = None
    if args.compare:
        try:
            old = _load_previous(args.compare, layer_type, args.dtype)
        except CommandError as exc:
            return _fail("bench", str(exc))
    tty = sys.stderr.isatty()

    def progress(text):
        if tty:
            sys.stderr.write(f"\r\033[Kbenchmarking {layer_type} {text} ...")
            sys.stderr.flush()

    from .. import get_num_threads

    threads = get_num_threads()
    load = machine_load(threads)
    try:
        rows = run_bench(layer_type, shapes, dtype=args.dtype, repeat=repeat, warmup=warmup,
                         variants=variants, rtol=args.rtol, registry=reg, progress=progress)
    except CommandError as exc:
        return _fail("bench", str(exc))
    finally:
        if tty:
            sys.stderr.write("\r\033[K")
    env = _environment(reg)
    tol = rows[0].tol if rows else 0.0
    warns = _warnings(load, rows, threads)
    print(format_bench(layer_type, rows, env, args.dtype, repeat, warmup, tol))
    if load["load_average"] is not None:
        print(f"load average at start: {load['load_average']:.2f} on {load['cpu_count']} CPUs")
    for w in warns:
        print(f"cnnkit bench: warning: {w}", file=sys.stderr)
    comparison = None
    if old is not None:
        comparison = compare_runs(old, rows, args.threshold)
        print()
        print(format_comparison(args.compare, old, comparison, args.threshold))
    if args.json_file:
        from ..io import atomic_write_text

        doc = {"command": "cnnkit bench", "layer_type": layer_type, "dtype": args.dtype,
               "repeat": repeat, "warmup": warmup, "tolerance": tol,
               "statistic": "best of interleaved rounds", **env, **load, "warnings": warns,
               "results": [r.describe() for r in rows]}
        if comparison is not None:
            doc["comparison"] = {"against": args.compare, "threshold": args.threshold,
                                 "rows": comparison}
        atomic_write_text(args.json_file, json.dumps(doc, indent=2) + "\n")
        print(f"results written to {args.json_file}")
    if args.plot:
        try:
            _plot(args.plot, layer_type, rows, args.dtype)
        except CommandError as exc:
            return _fail("bench", str(exc))
        print(f"chart written to {args.plot}")
    status = 0
    bad = [r for r in rows if r.status in ("MISMATCH", "ERROR")]
    if bad:
        print(f"{len(bad)} variant run(s) failed or disagree with the reference: "
              + ", ".join(f"{r.variant} on {r.shape} ({r.status})" for r in bad), file=sys.stderr)
        status = 1
    slower = [c for c in comparison or () if c["regression"]]
    if slower:
        print(f"{len(slower)} time(s) regressed beyond {100 * args.threshold:.0f}% against "
              f"{args.compare}: " + ", ".join(f"{c['variant']} on {c['shape']} {c['mode']} "
                                             f"x{c['ratio']:.2f}" for c in slower),
              file=sys.stderr)
        status = 1
    return status
