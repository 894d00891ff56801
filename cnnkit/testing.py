"""Conformance kit for layer variants: check a registered variant against the reference.

A plugin author checks a variant with one call::

    from cnnkit.testing import assert_conforms
    assert_conforms("conv2d", "mine")                 # raises AssertionError with the report

    report = check_variant("relu", "mine")            # or inspect the report yourself
    report.ok, report.failures, report.checks_run
    print(report)                                     # a readable table

or, in a test module, one parametrised test per variant of their plugin::

    from cnnkit.testing import conformance_tests
    test_conformance = conformance_tests(plugin="my-cnnkit-plugin")

What is checked, for every case (layer kwargs, input shape) and every declared dtype:

- selection: the variant is chosen when asked for explicitly (``impl=``) for the cases it
  declares support for, and refused (``cnnkit.SelectionError``) for cases that use a feature or
  a dtype it does not declare;
- output shape against the layer's shape inference, output dtype equal to the input dtype, and
  the same for the input gradient and every parameter gradient;
- inputs are never modified (``x``, ``params``, ``config``, ``dy`` are compared with copies
  after the call) and read-only inputs are accepted;
- ``need_backward=False`` returns ``ctx=None`` and the same output as a training forward;
- forward, input gradient and parameter gradients against the reference: the ``"numpy"``
  variant of the same layer type (in float64, with the float32 results compared against the
  float64 reference of the same float32-rounded inputs).  When the variant under test is the
  reference itself, its forward is compared with a slow, independent loop implementation
  (built-in layer types only); for a new layer type without a reference these are skipped;
- gradients against central finite differences in float64, along one random direction per
  input and per parameter;
- every declared capability is exercised by at least one case the variant accepts, and is a
  feature the layer type defines (its ``FEATURES``).

Errors are measured relative to the largest magnitude of the reference: ``max rel err`` is
``max|got - want| / max|want|``.  Default tolerances are in :data:`DEFAULT_RTOL`.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from .plugins import SelectionError, get_registry

__all__ = [
    "Case",
    "Failure",
    "Report",
    "VariantUnderTest",
    "assert_conforms",
    "builtin_cases",
    "check_variant",
    "conformance_tests",
    "distinct_inputs",
    "plugin_variants",
    "DEFAULT_RTOL",
    "REFERENCE_VARIANT",
]

#: Name of the reference variant every other variant of a layer type is compared with.
REFERENCE_VARIANT = "numpy"

#: Forward/backward tolerance per dtype, relative to the largest magnitude of the reference.
DEFAULT_RTOL = {"float64": 1e-9, "float32": 1e-4}

#: Central-difference step and tolerance of the float64 gradient check.  The tolerance is
#: relative to ``|grad| * |direction|`` (the largest the directional derivative can be).
GRADCHECK_EPS = 1e-6
GRADCHECK_RTOL = 1e-6

_DTYPES = ("float64", "float32")


# ---------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------
def distinct_inputs(rng: np.random.Generator, shape) -> np.ndarray:
    """Float64 inputs whose values are all distinct and at least 0.25 away from zero.

    Distinct values keep max-pooling free of ties, the distance from zero keeps ReLU-like
    operations away from their kink, so finite differences are meaningful.
    """
    n = int(math.prod(shape))
    mags = np.linspace(0.25, 2.0, n) if n > 1 else np.ones(n)
    rng.shuffle(mags)
    signs = rng.choice(np.array([-1.0, 1.0]), size=n)
    return (mags * signs).reshape(shape)


@dataclass
class Case:
    """One test case: constructor keyword arguments of the layer and the input shape (with the
    batch axis).  ``make_input(rng, shape)`` returns the float64 input (default:
    :func:`distinct_inputs`); pass one when your layer has kinks elsewhere than at zero."""

    kwargs: dict
    input_shape: tuple
    make_input: Callable[[np.random.Generator, tuple], np.ndarray] | None = None

    def label(self, layer_type: str) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{layer_type}({args}) x{tuple(self.input_shape)}"


def _as_case(item, layer_type) -> Case:
    if isinstance(item, Case):
        return item
    if isinstance(item, (tuple, list)) and len(item) in (2, 3) and isinstance(item[0], dict):
        return Case(dict(item[0]), tuple(int(s) for s in item[1]), *item[2:])
    raise TypeError(f"cnnkit.testing: a case of {layer_type} must be a Case or a "
                    f"(layer_kwargs, input_shape) pair, got {item!r}")


def _conv(cin, cout, k, **kw):
    return dict(in_channels=cin, out_channels=cout, kernel_size=k, **kw)


_CONV_CASES = [
    Case(_conv(2, 3, 3, bias=False), (2, 2, 5, 5)),                               # nothing
    Case(_conv(3, 4, 3), (2, 3, 6, 7)),                                           # bias
    Case(_conv(3, 2, 3, stride=2, bias=False), (2, 3, 7, 7)),                     # stride, odd
    Case(_conv(3, 4, 3, stride=(2, 1), padding=(1, 2)), (1, 3, 5, 6)),            # batch 1
    Case(_conv(3, 2, (2, 4), padding="same", bias=False), (2, 3, 5, 6)),          # asymmetric
    Case(_conv(2, 3, 3, padding=2, dilation=2), (2, 2, 7, 7)),                    # dilation
    Case(_conv(2, 2, 2, dilation=(2, 1), bias=False), (1, 2, 5, 4)),
    Case(_conv(4, 6, 3, groups=2, padding=1), (2, 4, 5, 5)),                      # groups
    Case(_conv(3, 3, 3, stride=2, padding=1, groups=3, bias=False), (2, 3, 6, 5)),  # depthwise
    Case(_conv(3, 5, 1, bias=False), (2, 3, 4, 3)),                               # 1x1
    Case(_conv(1, 2, (1, 3)), (3, 1, 1, 5)),                                      # odd sizes
    Case(_conv(4, 2, 3, stride=2, padding="same", dilation=2, groups=2), (1, 4, 8, 9)),  # all
]

_POOL_CASES = [
    Case(dict(kernel_size=2), (2, 3, 6, 6)),
    Case(dict(kernel_size=3, stride=1), (1, 2, 5, 6)),
    Case(dict(kernel_size=3, stride=2), (2, 2, 7, 7)),
    Case(dict(kernel_size=3, stride=2, padding=1), (1, 2, 6, 5)),
    Case(dict(kernel_size=2, ceil_mode=True), (2, 2, 5, 7)),
    Case(dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1), ceil_mode=True), (2, 1, 6, 5)),
]

_AVGPOOL_CASES = _POOL_CASES + [
    Case(dict(kernel_size=3, stride=2, padding=1, count_include_pad=False), (2, 2, 5, 6)),
    Case(dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
         (1, 2, 6, 6)),
]

_ELEMENTWISE_CASES = [Case({}, (4, 7)), Case({}, (2, 3, 4, 5)), Case({}, (1, 1))]

_DENSE_CASES = [
    Case(dict(in_features=5, out_features=3), (4, 5)),
    Case(dict(in_features=6, out_features=2, bias=False), (3, 6)),
    Case(dict(in_features=1, out_features=1), (1, 1)),
]

_BUILTIN_CASES = {
    "conv2d": _CONV_CASES,
    "maxpool2d": _POOL_CASES,
    "avgpool2d": _AVGPOOL_CASES,
    "relu": _ELEMENTWISE_CASES,
    "sigmoid": _ELEMENTWISE_CASES,
    "tanh": _ELEMENTWISE_CASES,
    "dense": _DENSE_CASES,
}


def _convt(cin, cout, k, **kw):
    return dict(in_channels=cin, out_channels=cout, kernel_size=k, **kw)


_CONVT_CASES = [
    Case(_convt(2, 3, 3, bias=False), (2, 2, 4, 5)),                              # nothing
    Case(_convt(3, 2, 3), (1, 3, 3, 3)),                                          # bias, batch 1
    Case(_convt(2, 2, 3, stride=2, padding=1, output_padding=1), (2, 2, 3, 4)),   # stride, pads
    Case(_convt(2, 3, (2, 3), stride=(1, 2), padding=(0, 1), bias=False), (1, 2, 3, 3)),
    Case(_convt(2, 2, 3, dilation=2, padding=2), (2, 2, 4, 4)),                   # dilation
    Case(_convt(4, 6, 3, groups=2, stride=2, output_padding=(1, 0)), (1, 4, 3, 3)),  # groups
    Case(_convt(3, 3, 2, groups=3, bias=False), (2, 3, 2, 3)),                    # depthwise
    Case(_convt(2, 4, (3, 2), stride=(2, 3), padding=(1, 0), output_padding=(1, 2),
                groups=2, dilation=(1, 2)), (2, 2, 3, 3)),                        # all
]

_SOFTMAX_CASES = [Case({}, (4, 7)), Case({}, (2, 3, 4, 5)), Case({"axis": -1}, (2, 3, 4, 5)),
                  Case({"axis": 2}, (2, 3, 4)), Case({}, (1, 1))]

_BUILTIN_CASES.update({
    "leakyrelu": [Case({}, (4, 7)), Case({"negative_slope": 0.2}, (2, 3, 4, 5)),
                  Case({"negative_slope": -0.5}, (1, 1))],
    "elu": [Case({}, (4, 7)), Case({"alpha": 0.5}, (2, 3, 4, 5)), Case({"alpha": 1.7}, (1, 1))],
    "gelu": [Case({}, (4, 7)), Case({"approximate": "tanh"}, (2, 3, 4, 5)),
             Case({"approximate": "tanh"}, (1, 1)), Case({}, (2, 3, 2, 2))],
    "scaledtanh": _ELEMENTWISE_CASES + [Case({"amplitude": 2.0, "slope": 0.5}, (3, 4))],
    "softmax": _SOFTMAX_CASES,
    "logsoftmax": _SOFTMAX_CASES,
    "dropout": [Case({"p": 0.5, "rng": 0}, (4, 7)), Case({"p": 0.2, "rng": 1}, (2, 3, 4, 5)),
                Case({"p": 0.0, "rng": 2}, (1, 3))],
    "batchnorm2d": [Case({"num_features": 3}, (4, 3, 2, 3)),
                    Case({"num_features": 2, "affine": False}, (3, 2, 3, 2)),
                    Case({"num_features": 1, "eps": 1e-3}, (2, 1, 3, 3))],
    "batchnorm1d": [Case({"num_features": 5}, (6, 5)), Case({"num_features": 3}, (4, 3, 5)),
                    Case({"num_features": 2, "affine": False}, (3, 2))],
    "globalavgpool2d": [Case({}, (2, 3, 4, 5)), Case({}, (1, 1, 1, 1)), Case({}, (3, 2, 1, 7))],
    "subsampling": [Case({"channels": 3}, (2, 3, 4, 6)),
                    Case({"channels": 2, "mode": "average", "bias": False}, (2, 2, 5, 7)),
                    Case({"channels": 1, "kernel_size": (3, 2), "mode": "average"}, (1, 1, 7, 5))],
    "zeropad2d": [Case({"padding": 1}, (2, 3, 4, 5)), Case({"padding": (2, 1)}, (1, 2, 3, 3)),
                  Case({"padding": (0, 3, 1, 2)}, (2, 1, 2, 4))],
    "convtranspose2d": _CONVT_CASES,
})


def builtin_cases(layer_type: str) -> list[Case] | None:
    """The built-in cases of a built-in layer type (``None`` for other layer types)."""
    cases = _BUILTIN_CASES.get(layer_type.lower())
    return None if cases is None else list(cases)


def _default_cases(layer_type, layer_cls) -> tuple[list[Case] | None, str | None]:
    """Built-in cases, or for a new layer type constructible without arguments, random inputs
    of rank 2 and 4 (or of its ``input_rank``)."""
    cases = builtin_cases(layer_type)
    if cases is not None:
        return cases, None
    try:
        layer_cls()
    except Exception as exc:
        return None, (f"layer type {layer_type!r} has no built-in cases and cannot be built "
                      f"without arguments ({type(exc).__name__}: {exc}); pass "
                      "cases=[(layer_kwargs, input_shape), ...]")
    rank = getattr(layer_cls, "input_rank", None)
    shapes = {None: [(3, 5), (2, 3, 4, 5)], 2: [(3, 5)], 4: [(2, 3, 4, 5)]}.get(rank)
    if shapes is None:
        shapes = [(2,) + tuple(range(3, 2 + rank))]
    return [Case({}, s) for s in shapes], None


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------
@dataclass
class Failure:
    """One failed check.  ``check`` is what was checked (``selection``, ``shape``, ``dtype``,
    ``mutation``, ``read-only``, ``inference``, ``forward``, ``backward``, ``gradcheck``,
    ``capabilities``, ``error``, ``setup``); ``output`` what was wrong (``y``, ``dx``,
    ``d<param>``, ``ctx``, or the mutated input ``x``, ``dy``, ``<param>``, ``config``)."""

    check: str
    message: str
    case: str | None = None
    layer_kwargs: dict | None = None
    input_shape: tuple | None = None
    dtype: str | None = None
    output: str | None = None
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    tol: float | None = None

    def __str__(self):
        where = ", ".join(str(p) for p in (self.case, self.dtype, self.output) if p)
        return f"[{self.check}] {where}: {self.message}"


@dataclass
class Report:
    """Outcome of :func:`check_variant`."""

    layer_type: str
    variant: str
    plugin: str | None = None
    reference: str | None = None
    failures: list[Failure] = field(default_factory=list)
    checks_run: int = 0
    #: (case, dtype, reason) of the cases the variant does not serve (refused by selection)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def __bool__(self):
        return self.ok

    def __str__(self):
        head = (f"conformance of {self.layer_type}/{self.variant}"
                + (f" (plugin {self.plugin!r})" if self.plugin else "")
                + f" against {self.reference or 'no reference (self-consistency only)'}: ")
        if self.ok:
            return head + f"{self.checks_run} checks passed, {len(self.skipped)} refused cases"
        lines = [head + f"{len(self.failures)} failed of {self.checks_run} checks"]
        cols = ("#", "check", "case", "dtype", "output", "max abs err", "max rel err", "tol")
        rows = []
        for i, f in enumerate(self.failures[:_MAX_ROWS], 1):
            rows.append((str(i), f.check, f.case or "-", f.dtype or "-", f.output or "-",
                         _num(f.max_abs_err), _num(f.max_rel_err), _num(f.tol)))
        widths = [max(len(c), *(len(r[k]) for r in rows)) for k, c in enumerate(cols)]
        lines.append("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
        for row, f in zip(rows, self.failures):
            lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
            lines.append(" " * (widths[0] + 2) + f.message)
        if len(self.failures) > _MAX_ROWS:
            lines.append(f"... and {len(self.failures) - _MAX_ROWS} more failures")
        return "\n".join(lines)


_MAX_ROWS = 40


def _num(v):
    return "-" if v is None else f"{v:.3g}"


# ---------------------------------------------------------------------------------------------
# loop references (for checking the reference variants themselves)
# ---------------------------------------------------------------------------------------------
def _loop_conv2d(x, params, config):
    """Cross-correlation as a sum over kernel offsets, one group at a time (no im2col)."""
    w, b = params["weight"], params.get("bias")
    sh, sw = config["stride"]
    top, bottom, left, right = config["padding"]
    dh, dw = config["dilation"]
    groups = config["groups"]
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + left + right - dw * (kw - 1) - 1) // sw + 1
    xp = np.zeros((n, c, h + top + bottom, wd + left + right))
    xp[:, :, top:top + h, left:left + wd] = x
    og = o // groups
    y = np.zeros((n, o, oh, ow))
    for g in range(groups):
        for p in range(kh):
            for q in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg, p * dh:p * dh + (oh - 1) * sh + 1:sh,
                           q * dw:q * dw + (ow - 1) * sw + 1:sw]
                y[:, g * og:(g + 1) * og] += np.einsum("ncij,oc->noij", patch,
                                                       w[g * og:(g + 1) * og, :, p, q])
    if b is not None:
        y += b[None, :, None, None]
    return y


def _pool_length(size, k, s, p, ceil_mode):
    span = size + 2 * p - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _loop_pool2d(x, config, kind):
    """Pooling one output position at a time, windows clipped to the input (PyTorch's rules)."""
    kh, kw = config["kernel_size"]
    sh, sw = config["stride"]
    ph, pw = config["padding"]
    ceil_mode = config["ceil_mode"]
    include = config.get("count_include_pad", True)
    n, c, h, w = x.shape
    oh, ow = _pool_length(h, kh, sh, ph, ceil_mode), _pool_length(w, kw, sw, pw, ceil_mode)
    y = np.empty((n, c, oh, ow))
    for i in range(oh):
        r0 = i * sh - ph
        r1 = min(r0 + kh, h + ph)
        for j in range(ow):
            c0 = j * sw - pw
            c1 = min(c0 + kw, w + pw)
            win = x[:, :, max(r0, 0):min(r1, h), max(c0, 0):min(c1, w)]
            if kind == "max":
                y[:, :, i, j] = win.max(axis=(2, 3))
            else:
                count = (r1 - r0) * (c1 - c0) if include else win.shape[2] * win.shape[3]
                y[:, :, i, j] = win.sum(axis=(2, 3)) / count
    return y


def _loop_sigmoid(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


_LOOP_REFERENCES: dict[str, Callable] = {
    "conv2d": _loop_conv2d,
    "maxpool2d": lambda x, params, config: _loop_pool2d(x, config, "max"),
    "avgpool2d": lambda x, params, config: _loop_pool2d(x, config, "avg"),
    "relu": lambda x, params, config: np.where(x > 0, x, 0.0),
    "sigmoid": lambda x, params, config: _loop_sigmoid(x),
    "tanh": lambda x, params, config: np.sinh(x) / np.cosh(x),
    "dense": lambda x, params, config: (np.einsum("ni,oi->no", x, params["weight"])
                                        + (0.0 if params.get("bias") is None
                                           else params["bias"])),
}


def _loop_convtranspose2d(x, params, config):
    """Scatter form: every input pixel adds weight * value into the (uncropped) output."""
    w, b = params["weight"], params.get("bias")
    sh, sw = config["stride"]
    ph, pw = config["padding"]
    oph, opw = config["output_padding"]
    dh, dw = config["dilation"]
    groups = config["groups"]
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    cg = c // groups
    fh = (h - 1) * sh + dh * (kh - 1) + 1 + oph
    fw = (wd - 1) * sw + dw * (kw - 1) + 1 + opw
    full = np.zeros((n, og * groups, fh, fw))
    for g in range(groups):
        for p in range(kh):
            for q in range(kw):
                contrib = np.einsum("ncij,co->noij", x[:, g * cg:(g + 1) * cg],
                                    w[g * cg:(g + 1) * cg, :, p, q])
                full[:, g * og:(g + 1) * og, p * dh:p * dh + (h - 1) * sh + 1:sh,
                     q * dw:q * dw + (wd - 1) * sw + 1:sw] += contrib
    y = full[:, :, ph:fh - ph, pw:fw - pw]
    return y if b is None else y + b[None, :, None, None]


def _loop_softmax(x, config, log):
    axis = config["axis"] % x.ndim
    moved = np.moveaxis(x, axis, -1)
    out = np.empty_like(moved)
    for idx in np.ndindex(moved.shape[:-1]):
        row = moved[idx]
        lse = row.max() + math.log(sum(math.exp(v - row.max()) for v in row))
        out[idx] = row - lse if log else np.exp(row - lse)
    return np.moveaxis(out, -1, axis)


def _loop_dropout(x, config):
    """Python-int splitmix64, one element at a time."""
    mask64 = 2**64 - 1
    seed, p = int(config["seed"]), float(config["p"])
    flat = x.reshape(-1)
    out = np.empty_like(flat)
    for i, v in enumerate(flat):
        z = (seed + (i + 1) * 0x9E3779B97F4A7C15) & mask64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask64
        z ^= z >> 31
        out[i] = v / (1 - p) if (z >> 11) / 2.0**53 >= p else 0.0
    return out.reshape(x.shape)


def _loop_batchnorm(x, params, config):
    y = np.empty_like(x)
    for ch in range(x.shape[1]):
        v = x[:, ch]
        y[:, ch] = (v - v.mean()) / math.sqrt(v.var() + config["eps"])
        if params.get("weight") is not None:
            y[:, ch] = y[:, ch] * params["weight"][ch] + params["bias"][ch]
    return y


def _loop_subsampling(x, params, config):
    kh, kw = config["kernel_size"]
    n, c, h, w = x.shape
    y = np.empty((n, c, h // kh, w // kw))
    for i in range(h // kh):
        for j in range(w // kw):
            s = x[:, :, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].sum(axis=(2, 3))
            if config["mode"] == "average":
                s = s / (kh * kw)
            y[:, :, i, j] = s * params["weight"] + (0.0 if params.get("bias") is None
                                                   else params["bias"])
    return y


def _loop_zeropad(x, config):
    top, bottom, left, right = config["padding"]
    n, c, h, w = x.shape
    y = np.zeros((n, c, h + top + bottom, w + left + right))
    y[:, :, top:top + h, left:left + w] = x
    return y


def _loop_gelu(x, config):
    if config["approximate"] == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))(x)


_LOOP_REFERENCES.update({
    "leakyrelu": lambda x, params, config: (np.maximum(x, 0)
                                            + config["negative_slope"] * np.minimum(x, 0)),
    "elu": lambda x, params, config: np.where(x > 0, x, config["alpha"] * (np.exp(x) - 1)),
    "gelu": lambda x, params, config: _loop_gelu(x, config),
    "scaledtanh": lambda x, params, config: config["amplitude"] * np.tanh(config["slope"] * x),
    "softmax": lambda x, params, config: _loop_softmax(x, config, False),
    "logsoftmax": lambda x, params, config: _loop_softmax(x, config, True),
    "dropout": lambda x, params, config: _loop_dropout(x, config),
    "batchnorm2d": _loop_batchnorm,
    "batchnorm1d": _loop_batchnorm,
    "globalavgpool2d": lambda x, params, config: np.array(
        [[x[i, ch].sum() / x[i, ch].size for ch in range(x.shape[1])] for i in range(x.shape[0])]),
    "subsampling": _loop_subsampling,
    "zeropad2d": lambda x, params, config: _loop_zeropad(x, config),
    "convtranspose2d": _loop_convtranspose2d,
})


# ---------------------------------------------------------------------------------------------
# the checker
# ---------------------------------------------------------------------------------------------
def _accepts(cls, name) -> bool:
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def _copy_params(params, dtype=None):
    return {k: (None if v is None else np.array(v, dtype=dtype or v.dtype, copy=True))
            for k, v in params.items()}


def _read_only(a):
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


def _max_abs(a) -> float:
    return float(np.max(np.abs(a))) if a.size else 0.0


def _resolve_config(layer, input_shape):
    """Resolve configuration that depends on the input size, as the layer's forward would
    (``padding="same"`` of Conv2D)."""
    resolve = getattr(layer, "_resolve_padding", None)
    if (callable(resolve) and isinstance(getattr(layer, "padding", None), str)
            and len(input_shape) == 4):
        layer.config = dict(layer.config, padding=tuple(resolve(*input_shape[2:])))


@dataclass
class _Where:
    case: Case
    label: str


class _CaseData:
    """Everything one case needs: the layer, its resolved config and float64 data."""

    def __init__(self, case, label, layer, x, params, dy, out_shape, features):
        self.case, self.label, self.layer = case, label, layer
        self.config = dict(layer.config)
        self.x, self.params, self.dy = x, params, dy
        self.out_shape, self.features = out_shape, features


class _Checker:
    def __init__(self, registry, variant, layer_cls, reference, loop_reference, report, rtol,
                 dtypes):
        self.reg = registry
        self.variant = variant
        self.impl = variant.impl
        self.layer_cls = layer_cls
        self.ref = reference            # a Variant or None
        self.loop_ref = loop_reference  # forward-only callable or None
        self.report = report
        self.rtol = rtol
        self.dtypes = dtypes
        self.exercised: set[str] = set()
        self.accepted = 0

    # ------------------------------------------------------------------ reporting
    def fail(self, check, message, data=None, dtype=None, output=None, **errs):
        case = data.case if data is not None else None
        self.report.failures.append(Failure(
            check=check, message=message, case=data.label if data is not None else None,
            layer_kwargs=dict(case.kwargs) if case is not None else None,
            input_shape=tuple(case.input_shape) if case is not None else None,
            dtype=dtype, output=output, **errs))

    def count(self):
        self.report.checks_run += 1

    # ------------------------------------------------------------------ comparisons
    def expect_array(self, data, dtype, output, got, shape, want_dtype, check_name="shape"):
        """Is ``got`` an array of the expected shape and dtype?  (Reports and returns False
        if not.)"""
        self.count()
        if not isinstance(got, np.ndarray):
            self.fail(check_name, f"{output} is a {type(got).__name__}, not a numpy.ndarray",
                      data, dtype, output)
            return False
        if tuple(got.shape) != tuple(shape):
            self.fail("shape", f"{output} has shape {tuple(got.shape)}, expected {tuple(shape)}",
                      data, dtype, output)
            return False
        self.count()
        if got.dtype != np.dtype(want_dtype):
            self.fail("dtype", f"{output} has dtype {got.dtype}, expected {np.dtype(want_dtype)} "
                      "(outputs and gradients must have the input's dtype)", data, dtype, output)
            return False
        return True

    def compare(self, data, dtype, output, got, want, check, what="the reference"):
        self.count()
        tol = self.rtol[dtype]
        got = np.asarray(got, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            diff = np.abs(got - want)
        bad_nan = np.isnan(diff) & ~(np.isnan(got) & np.isnan(want))
        abs_err = math.inf if bad_nan.any() else float(np.nanmax(diff)) if diff.size else 0.0
        scale = _max_abs(want[np.isfinite(want)]) if want.size else 0.0
        scale = scale if scale > 0 else 1.0
        rel_err = abs_err / scale
        if not rel_err <= tol:
            self.fail(check, f"{output} differs from {what}", data, dtype, output,
                      max_abs_err=abs_err, max_rel_err=rel_err, tol=tol)

    def unchanged(self, data, dtype, when, pairs):
        for name, before, after in pairs:
            self.count()
            if isinstance(before, np.ndarray):
                same = (isinstance(after, np.ndarray) and before.shape == after.shape
                        and np.array_equal(before, after, equal_nan=True))
            else:
                same = before == after
            if not same:
                self.fail("mutation", f"{when} modified its input {name!r} (variants must never "
                          "write to x, params, config or dy)", data, dtype, name)

    # ------------------------------------------------------------------ one case
    def prepare(self, index, case, seed) -> _CaseData | None:
        layer_type = self.variant.layer_type
        label = case.label(layer_type)
        probe = _Where(case, label)
        rng = np.random.default_rng([seed, index])
        kwargs = dict(case.kwargs)
        if _accepts(self.layer_cls, "dtype"):
            kwargs.setdefault("dtype", np.float64)
        if _accepts(self.layer_cls, "impl"):
            kwargs.setdefault("impl", self.variant.name)
        try:
            layer = self.layer_cls(**kwargs)
            _resolve_config(layer, case.input_shape)
            out = layer.output_shape((None,) + tuple(case.input_shape[1:]))
            out_shape = (case.input_shape[0],) + tuple(out[1:])
            features = tuple(layer.features())
        except Exception as exc:
            self.fail("setup", f"the case is invalid for {self.layer_cls.__name__}: "
                      f"{type(exc).__name__}: {exc}", probe)
            return None
        make_input = case.make_input or distinct_inputs
        x = np.ascontiguousarray(make_input(rng, tuple(case.input_shape)), dtype=np.float64)
        params = {k: (None if p is None else rng.uniform(-1.0, 1.0, p.shape))
                  for k, p in layer.params.items()}
        dy = rng.standard_normal(out_shape)
        return _CaseData(case, label, layer, x, params, dy, out_shape, features)

    def run_case(self, data: _CaseData, seed, index):
        refusals = {}
        for dtype in _DTYPES:
            reason = self.variant.refusal(dtype, data.features, data.config)
            declared = (dtype in self.variant.dtypes
                        and set(data.features) <= self.variant.capabilities)
            if reason is not None:
                refusals[dtype] = reason
                self.report.skipped.append((data.label, dtype, reason))
                if not declared:
                    self.expect_refused(data, dtype)
                continue
            if dtype not in self.dtypes:
                continue
            if not self.expect_selected(data, dtype):
                continue
            self.accepted += 1
            self.exercised.update(data.features)
            self.run_dtype(data, dtype)
        if "float64" in self.dtypes and "float64" not in refusals:
            self.gradcheck(data, np.random.default_rng([seed, index, 1]))

    def expect_refused(self, data, dtype):
        self.count()
        try:
            self.reg.select(self.variant.layer_type, dtype=np.dtype(dtype),
                            features=data.features, config=data.config, impl=self.variant.name)
        except SelectionError:
            return
        except Exception as exc:
            self.fail("selection", f"selection raised {type(exc).__name__}: {exc} instead of "
                      "cnnkit.SelectionError", data, dtype)
            return
        self.fail("selection", "explicitly selecting the variant for a request it does not "
                  f"declare (features {list(data.features)}) did not raise SelectionError",
                  data, dtype)

    def expect_selected(self, data, dtype):
        self.count()
        try:
            chosen = self.reg.select(self.variant.layer_type, dtype=np.dtype(dtype),
                                     features=data.features, config=data.config,
                                     impl=self.variant.name)
        except Exception as exc:
            self.fail("selection", f"selecting the variant raised {type(exc).__name__}: {exc}",
                      data, dtype)
            return False
        if chosen is not self.variant:
            self.fail("selection", f"impl={self.variant.name!r} selected {chosen.name!r}",
                      data, dtype)
            return False
        return True

    def reference(self, data, dtype):
        """Reference (y, dx, grads) in float64 for the inputs rounded to ``dtype``; entries are
        None where there is no reference."""
        x = data.x.astype(dtype).astype(np.float64)
        params = {k: (None if v is None else v.astype(dtype).astype(np.float64))
                  for k, v in data.params.items()}
        dy = data.dy.astype(dtype).astype(np.float64)
        if self.ref is not None:
            if self.ref.refusal(np.float64, data.features, data.config) is not None:
                return None, None, None
            y, ctx = self.ref.impl.forward(x, params, dict(data.config), True)
            dx, grads = self.ref.impl.backward(dy, ctx)
            return np.asarray(y, np.float64), np.asarray(dx, np.float64), grads
        if self.loop_ref is not None:
            return self.loop_ref(x, params, dict(data.config)), None, None
        return None, None, None

    def run_dtype(self, data, dtype):
        impl, config = self.impl, data.config
        x = data.x.astype(dtype)
        params = _copy_params(data.params, dtype)
        dy = data.dy.astype(dtype)
        expected_grads = sorted(k for k, v in params.items() if v is not None)
        try:
            ref_y, ref_dx, ref_grads = self.reference(data, dtype)
        except Exception as exc:
            self.fail("error", f"the reference raised {type(exc).__name__}: {exc}", data, dtype)
            ref_y = ref_dx = ref_grads = None
        what = ("the reference" if self.ref is not None
                else "the loop reference" if self.loop_ref is not None else "")

        # forward (training) on private copies, then check nothing was written
        xc, pc, cc = x.copy(), _copy_params(params), dict(config)
        try:
            y, ctx = impl.forward(xc, pc, cc, True)
        except Exception as exc:
            self.fail("error", f"forward raised {type(exc).__name__}: {exc}", data, dtype, "y")
            return
        self.unchanged(data, dtype, "forward",
                       [("x", x, xc), ("config", config, cc)]
                       + [(k, params[k], pc[k]) for k in params if params[k] is not None])
        y_ok = self.expect_array(data, dtype, "y", y, data.out_shape, dtype)
        if y_ok and ref_y is not None:
            self.compare(data, dtype, "y", y, ref_y, "forward", what)

        # backward
        if y_ok:
            dyc = dy.copy()
            # compare with the state after forward, so a forward mutation is reported once
            before = [("dy", dy, dyc), ("x", xc.copy(), xc)] + [
                (k, pc[k].copy(), pc[k]) for k in params if params[k] is not None]
            try:
                dx, grads = impl.backward(dyc, ctx)
            except Exception as exc:
                self.fail("error", f"backward raised {type(exc).__name__}: {exc}", data, dtype,
                          "dx")
            else:
                self.unchanged(data, dtype, "backward", before)
                if self.expect_array(data, dtype, "dx", dx, x.shape, dtype) and ref_dx is not None:
                    self.compare(data, dtype, "dx", dx, ref_dx, "backward", what)
                self.count()
                if not isinstance(grads, dict):
                    self.fail("backward", f"backward returned {type(grads).__name__} for the "
                              "parameter gradients, expected a dict", data, dtype, "grads")
                    grads = {}
                got = sorted(grads)
                if got != expected_grads:
                    self.fail("backward", f"parameter gradients for {got}, expected one for each "
                              f"non-None parameter: {expected_grads}", data, dtype, "grads")
                for k in expected_grads:
                    if k in grads and self.expect_array(data, dtype, f"d{k}", grads[k],
                                                        params[k].shape, dtype):
                        if ref_grads is not None and k in ref_grads:
                            self.compare(data, dtype, f"d{k}", grads[k],
                                         np.asarray(ref_grads[k], np.float64), "backward", what)

        # inference keeps nothing and computes the same; read-only inputs are accepted
        xr, pr, dyr = _read_only(x), {k: (None if v is None else _read_only(v))
                                      for k, v in params.items()}, _read_only(dy)
        try:
            y2, ctx2 = impl.forward(xr, pr, dict(config), False)
        except Exception as exc:
            self.fail("read-only", f"forward(need_backward=False) on read-only inputs raised "
                      f"{type(exc).__name__}: {exc}", data, dtype, "y")
        else:
            self.count()
            if ctx2 is not None:
                self.fail("inference", f"forward(need_backward=False) returned a "
                          f"{type(ctx2).__name__} ctx; it must be None (keep nothing)",
                          data, dtype, "ctx")
            if y_ok and self.expect_array(data, dtype, "y", y2, data.out_shape, dtype):
                self.compare(data, dtype, "y", y2, np.asarray(y, np.float64), "inference",
                             "the training forward's output")
        if y_ok:
            try:
                _, ctx3 = impl.forward(xr, pr, dict(config), True)
                impl.backward(dyr, ctx3)
            except Exception as exc:
                self.fail("read-only", f"forward/backward on read-only inputs raised "
                          f"{type(exc).__name__}: {exc}", data, dtype, "dx")
            else:
                self.count()

    def gradcheck(self, data, rng):
        """Directional derivatives of sum(y * dy) by central differences, float64."""
        impl, config, dy = self.impl, data.config, data.dy
        params = _copy_params(data.params)
        try:
            y, ctx = impl.forward(data.x.copy(), _copy_params(params), dict(config), True)
            if not isinstance(y, np.ndarray) or y.shape != tuple(data.out_shape):
                return  # reported by the shape check
            dx, grads = impl.backward(dy.copy(), ctx)
            grads = dict(grads)
        except Exception:
            return  # reported by run_dtype
        targets = [("x", "dx", dx)] + [(k, f"d{k}", grads.get(k)) for k in sorted(params)
                                       if params[k] is not None]

        def loss(x, p):
            out, _ = impl.forward(x, p, dict(config), False)
            return float(np.sum(np.asarray(out, np.float64) * dy))

        for name, output, grad in targets:
            if not isinstance(grad, np.ndarray):
                continue  # reported by run_dtype
            base = data.x if name == "x" else params[name]
            if grad.shape != base.shape:
                continue
            v = rng.standard_normal(base.shape)
            values = []
            for sign in (1.0, -1.0):
                moved = base + sign * GRADCHECK_EPS * v
                if name == "x":
                    values.append(loss(moved, _copy_params(params)))
                else:
                    values.append(loss(data.x.copy(), dict(_copy_params(params), **{name: moved})))
            numeric = (values[0] - values[1]) / (2 * GRADCHECK_EPS)
            analytic = float(np.sum(np.asarray(grad, np.float64) * v))
            scale = max(float(np.linalg.norm(grad)) * float(np.linalg.norm(v)), abs(numeric),
                        1e-12)
            err = abs(analytic - numeric)
            self.count()
            if not err <= GRADCHECK_RTOL * scale:
                self.fail("gradcheck", f"{output} disagrees with central finite differences: "
                          f"directional derivative {analytic:.9g} from backward, {numeric:.9g} "
                          f"from differences (eps={GRADCHECK_EPS})", data, "float64", output,
                          max_abs_err=err, max_rel_err=err / scale, tol=GRADCHECK_RTOL)

    def check_capabilities(self, n_cases):
        known = set(getattr(self.layer_cls, "FEATURES", ()) or ())
        for cap in sorted(self.variant.capabilities):
            self.count()
            if cap not in known:
                self.fail("capabilities", f"declares capability {cap!r}, which layer type "
                          f"{self.variant.layer_type!r} does not define (its FEATURES: "
                          f"{sorted(known)}); a request can never use it", output=cap)
            elif cap not in self.exercised:
                self.fail("capabilities", f"declares capability {cap!r} but none of the cases it "
                          "serves uses it; add a case (cases=[(layer_kwargs, input_shape), ...])",
                          output=cap)
        self.count()
        if n_cases and not self.accepted:
            self.fail("capabilities", f"the variant serves none of the {n_cases} cases at dtypes "
                      f"{list(self.dtypes)}; pass cases= it supports")


def _find_reference(reg, layer_type, variant_name):
    if variant_name != REFERENCE_VARIANT:
        ref = reg.variants.get(layer_type, {}).get(REFERENCE_VARIANT)
        if ref is not None:
            return ref, None, f"reference {REFERENCE_VARIANT!r}"
    loop = _LOOP_REFERENCES.get(layer_type)
    if loop is not None and layer_type in _BUILTIN_CASES:
        return None, loop, "the loop reference in cnnkit.testing (forward only)"
    return None, None, None


def check_variant(layer_type: str, variant_name: str, *, registry=None,
                  cases: Iterable | None = None, dtypes: Iterable | None = None,
                  rtol: float | dict | None = None, seed: int = 0) -> Report:
    """Check a registered variant against the reference; return a :class:`Report`.

    ``cases``: ``[(layer_kwargs, input_shape), ...]`` or :class:`Case` objects (default: the
    built-in cases of a built-in layer type; for a new layer type that can be built without
    arguments, random rank-2 and rank-4 inputs).  A case is built as real use builds it:
    ``registry.layer_class(layer_type)(**layer_kwargs, dtype=..., impl=variant_name)``.
    ``dtypes``: the dtypes to test (default: the declared ones among float32 and float64).
    ``rtol``: a float for every dtype or a ``{dtype: rtol}`` dict (default
    :data:`DEFAULT_RTOL`).  ``seed`` makes the random data reproducible.
    """
    reg = registry if registry is not None else get_registry()
    layer_type = layer_type.lower()
    report = Report(layer_type=layer_type, variant=variant_name)
    variant = reg.variants.get(layer_type, {}).get(variant_name)
    if variant is None:
        registered = sorted(reg.variants.get(layer_type, {}))
        report.failures.append(Failure("setup", f"variant {variant_name!r} of layer type "
                                       f"{layer_type!r} is not registered (registered: "
                                       f"{', '.join(registered) or 'none'})"))
        return report
    report.plugin = variant.plugin
    try:
        layer_cls = reg.layer_class(layer_type)
    except KeyError as exc:
        report.failures.append(Failure("setup", str(exc.args[0])))
        return report
    if cases is None:
        cases, problem = _default_cases(layer_type, layer_cls)
        if cases is None:
            report.failures.append(Failure("setup", problem))
            return report
    else:
        cases = [_as_case(c, layer_type) for c in cases]
    tol = dict(DEFAULT_RTOL)
    if isinstance(rtol, dict):
        tol.update({np.dtype(k).name: float(v) for k, v in rtol.items()})
    elif rtol is not None:
        tol = {k: float(rtol) for k in tol}
    wanted = _DTYPES if dtypes is None else tuple(np.dtype(d).name for d in dtypes)
    tested = tuple(d for d in _DTYPES if d in wanted and d in variant.dtypes)
    ref, loop_ref, report.reference = _find_reference(reg, layer_type, variant_name)
    checker = _Checker(reg, variant, layer_cls, ref, loop_ref, report, tol, tested)
    for index, case in enumerate(cases):
        data = checker.prepare(index, case, seed)
        if data is not None:
            checker.run_case(data, seed, index)
    checker.check_capabilities(len(cases))
    return report


def assert_conforms(layer_type: str, variant_name: str, **options) -> Report:
    """:func:`check_variant`, raising ``AssertionError`` with the report when a check fails."""
    report = check_variant(layer_type, variant_name, **options)
    if not report.ok:
        raise AssertionError(str(report))
    return report


# ---------------------------------------------------------------------------------------------
# test generation (used by conformance_tests and the pytest plugin)
# ---------------------------------------------------------------------------------------------
def _norm(name: str) -> str:
    return name.replace("_", "-").lower()


def plugin_variants(plugin: str | None = None, *, registry=None) -> list[tuple[str, str]]:
    """(layer_type, variant) pairs registered by a plugin, named by its entry-point name,
    plugin name, module or distribution name; all third-party variants when ``plugin`` is
    ``None``."""
    reg = registry if registry is not None else get_registry()
    if plugin is None:
        names = {i.name for i in reg.plugins.values() if i.source != "builtin"}
    else:
        names = {i.name for i in reg.plugins.values()
                 if plugin in (i.name, i.module)
                 or (i.distribution and _norm(plugin) == _norm(i.distribution))}
    return sorted((v.layer_type, v.name) for by_name in reg.variants.values()
                  for v in by_name.values() if v.plugin in names)


def _no_variants_message(plugin, reg) -> str:
    if plugin is None:
        return "no third-party cnnkit plugin registered any variant"
    infos = [i for i in reg.plugins.values()
             if plugin in (i.name, i.module)
             or (i.distribution and _norm(plugin) == _norm(i.distribution))]
    if not infos:
        known = ", ".join(sorted(i.name for i in reg.plugins.values() if i.source != "builtin"))
        return (f"no cnnkit plugin named {plugin!r} is loaded (third-party plugins loaded: "
                f"{known or 'none'}); is it installed, with a 'cnnkit' entry point, and not "
                "filtered out by CNNKIT_LOAD_PLUGINS / CNNKIT_DISABLE_PLUGINS?")
    failed = [f"{i.name}: {i.error}" for i in infos if i.error]
    if failed:
        return "the plugin failed to load: " + "; ".join(failed)
    return f"plugin {plugin!r} registered no variants"


@dataclass
class VariantUnderTest:
    """One (layer type, variant) to check: the parameter of generated conformance tests."""

    layer_type: str | None
    name: str | None
    options: dict = field(default_factory=dict)
    problem: str | None = None

    @property
    def id(self) -> str:
        return f"{self.layer_type}/{self.name}" if self.problem is None else "no-variants"

    def check(self, **options) -> Report:
        if self.problem is not None:
            raise AssertionError(self.problem)
        merged = dict(self.options, **options)
        cases = merged.pop("cases", None)
        if isinstance(cases, dict):
            cases = cases.get(self.layer_type)
        return check_variant(self.layer_type, self.name, cases=cases, **merged)

    def assert_conforms(self, **options) -> Report:
        __tracebackhide__ = True
        report = self.check(**options)
        if not report.ok:
            raise AssertionError(str(report))
        return report


def _targets(plugin=None, variants=None, options=None, registry=None) -> list[VariantUnderTest]:
    options = dict(options or {})
    if registry is not None:
        options["registry"] = registry
    if variants is not None:
        pairs = []
        for item in variants:
            if isinstance(item, str):
                layer_type, _, name = item.partition("/")
                if not name:
                    raise ValueError(f"variants entries are 'layer_type/variant', got {item!r}")
            else:
                layer_type, name = item
            pairs.append((layer_type.lower(), name))
        problem = "variants=[] names no variant"
    else:
        reg = registry if registry is not None else get_registry()
        pairs = plugin_variants(plugin, registry=reg)
        problem = None if pairs else _no_variants_message(plugin, reg)
    if not pairs:
        return [VariantUnderTest(None, None, options, problem)]
    return [VariantUnderTest(lt, name, options) for lt, name in pairs]


def conformance_tests(plugin: str | None = None, *, variants: Iterable | None = None,
                      cases: dict | None = None, dtypes: Iterable | None = None,
                      rtol: float | dict | None = None, seed: int = 0, registry=None):
    """A pytest test function with one item per (layer type, variant) of a plugin.

    Assign it to a ``test_*`` name in a test module::

        test_conformance = conformance_tests(plugin="my-cnnkit-plugin")

    ``plugin`` is the plugin's entry-point name or distribution name (``None``: every
    third-party variant); ``variants=["conv2d/mine", ...]`` names variants instead.  ``cases``
    maps layer types to their cases (needed for new layer types that cannot be built without
    arguments); ``dtypes``, ``rtol`` and ``seed`` are passed to :func:`check_variant`.  Items are
    named ``test_conformance[conv2d/mine]``.  When nothing matches, a single failing item
    ``[no-variants]`` says why (plugin not installed, filtered out or failed to load).
    """
    import pytest

    options = {"cases": cases, "dtypes": dtypes, "rtol": rtol, "seed": seed}
    targets = _targets(plugin, variants, options, registry)

    @pytest.mark.parametrize("cnnkit_variant", targets, ids=[t.id for t in targets])
    def test_conformance(cnnkit_variant):
        __tracebackhide__ = True
        if cnnkit_variant.problem is not None:
            pytest.fail(cnnkit_variant.problem, pytrace=False)
        report = cnnkit_variant.check()
        if not report.ok:
            pytest.fail(str(report), pytrace=False)

    return test_conformance
