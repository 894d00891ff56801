"""The checker behind :func:`cnnkit.testing.check_variant`."""
from __future__ import annotations

import math
import unittest
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from cnnkit._checks import accepts
from cnnkit.plugins import SelectionError, get_registry
from cnnkit.testing._cases import Case, as_case, default_cases, distinct_inputs, loop_reference
from cnnkit.testing._report import Failure, Report

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
# the checker
# ---------------------------------------------------------------------------------------------
def _copy_params(params, dtype=None):
    return {k: (None if v is None else np.array(v, dtype=dtype or v.dtype, copy=True))
            for k, v in params.items()}


def _read_only(a):
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


def _max_abs(a) -> float:
    return float(np.max(np.abs(a))) if a.size else 0.0


@dataclass
class _Where:
    case: Case
    label: str


class _CaseData:
    """Everything one case needs: the layer, its resolved config and float64 data."""

    def __init__(self, case, label, layer, config, x, params, dy, out_shape, features):
        self.case, self.label, self.layer, self.config = case, label, layer, config
        self.x, self.params, self.dy = x, params, dy
        self.out_shape, self.features = out_shape, features


class _Checker:
    def __init__(self, registry, variant, layer_cls, reference, loop_reference, loop_backward,
                 report, rtol, dtypes):
        self.reg = registry
        self.variant = variant
        self.impl = variant.impl
        self.layer_cls = layer_cls
        self.ref = reference            # a Variant or None
        self.loop_ref = loop_reference  # loop forward of a built-in layer type, or None
        self.loop_bwd = loop_backward   # loop input gradient, or None
        #: the dtype of the check through the layer: float64 unless the variant refuses it
        self.layer_dtype = "float64" if "float64" in dtypes else (dtypes[0] if dtypes else None)
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
        if accepts(self.layer_cls, "dtype"):
            kwargs.setdefault("dtype", np.float64)
        if accepts(self.layer_cls, "impl"):
            kwargs.setdefault("impl", self.variant.name)
        try:
            layer = self.layer_cls(**kwargs)
            # what the layer's forward resolves before selecting a variant ("same" padding)
            res = layer.resolution(tuple(case.input_shape))
            out_shape = (case.input_shape[0],) + tuple(res.output_shape)
            features = tuple(res.features)
        except Exception as exc:
            self.fail("setup", f"the case is invalid for {self.layer_cls.__name__}: "
                      f"{type(exc).__name__}: {exc}", probe)
            return None
        make_input = case.make_input or distinct_inputs
        x = np.ascontiguousarray(make_input(rng, tuple(case.input_shape)), dtype=np.float64)
        params = {k: (None if p is None else rng.uniform(-1.0, 1.0, p.shape))
                  for k, p in layer.params.items()}
        dy = rng.standard_normal(out_shape)
        return _CaseData(case, label, layer, dict(res.config), x, params, dy, out_shape,
                         features)

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
        if data.case.gradcheck and "float64" in self.dtypes and "float64" not in refusals:
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
            kwargs, config = dict(data.case.kwargs), dict(data.config)
            dx = (None if self.loop_bwd is None
                  else self.loop_bwd(x, params, kwargs, config, dy))
            return self.loop_ref(x, params, kwargs, config), dx, None
        return None, None, None

    def loop_inputs(self, data, dtype):
        """x, params and dy rounded to ``dtype``, in float64, for the loop references."""
        def rounded(a):
            return None if a is None else a.astype(dtype).astype(np.float64)
        return (rounded(data.x), {k: rounded(v) for k, v in data.params.items()},
                rounded(data.dy))

    def through_layer(self, data, dtype):
        """The variant as a user runs it: the layer resolves its own configuration from the
        input, selects the variant (``impl=``) and calls it; the output (and the input gradient
        where a loop backward exists) is compared with the loop reference, which resolved the
        geometry from the constructor arguments by itself."""
        layer = data.layer
        x, params, dy = self.loop_inputs(data, dtype)
        reg = self.reg
        # the kit may check a registry other than the process one: the layer selects from it
        layer.registry = reg
        try:
            layer.astype(dtype)
            for k, v in params.items():
                if v is not None:
                    layer.params[k] = v.astype(dtype)
            y = layer.forward(x.astype(dtype), training=True)
            config = dict(layer.config)  # after forward: holds what the layer drew (seeds)
            dx = layer.backward(dy.astype(dtype)) if self.loop_bwd is not None else None
        except Exception as exc:
            self.fail("layer", f"{type(layer).__name__}(...).forward/backward with "
                      f"impl={self.variant.name!r} raised {type(exc).__name__}: {exc}",
                      data, dtype, "y")
            return
        kwargs = dict(data.case.kwargs)
        what = "the loop reference (configuration resolved by the layer)"
        try:
            want = self.loop_ref(x, params, kwargs, config)
            want_dx = (None if dx is None
                       else self.loop_bwd(x, params, kwargs, config, dy))
        except Exception as exc:
            self.fail("error", f"the loop reference raised {type(exc).__name__}: {exc}",
                      data, dtype)
            return
        if self.expect_array(data, dtype, "y", y, want.shape, dtype, "layer"):
            self.compare(data, dtype, "y", y, want, "layer", what)
        if want_dx is not None and self.expect_array(data, dtype, "dx", dx, want_dx.shape,
                                                     dtype, "layer"):
            self.compare(data, dtype, "dx", dx, want_dx, "layer", what)

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
        if y_ok and self.loop_ref is not None and dtype == self.layer_dtype:
            self.through_layer(data, dtype)

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

    def check_config_round_trip(self, data):
        """A layer rebuilt from its ``get_config()`` must compute what the original computes
        (saving a model stores that config: an argument missing from it comes back as its
        default, silently changing the model)."""
        self.count()
        layer = data.layer
        name = self.layer_cls.__name__
        try:
            cfg = layer.get_config()
            kwargs = dict(cfg)
            if accepts(self.layer_cls, "dtype"):
                kwargs.setdefault("dtype", np.float64)
            if accepts(self.layer_cls, "impl"):
                kwargs.setdefault("impl", self.variant.name)
            clone = self.layer_cls(**kwargs)
            layer.registry = clone.registry = self.reg  # select from the registry checked
        except Exception as exc:
            self.fail("config", f"{name}(**layer.get_config()) raised {type(exc).__name__}: "
                      f"{exc}; get_config() must return the constructor arguments", data,
                      "float64")
            return
        try:
            for key, value in data.params.items():
                for target in (layer, clone):
                    if key in target.params and value is not None:
                        target.params[key] = value.copy()
            for key, value in getattr(layer, "buffers", {}).items():  # running statistics
                clone.buffers[key] = np.array(value, copy=True)
            x = data.x.copy()
            y0 = layer.forward(x, training=False)
        except Exception:
            return  # the layer itself fails: the other checks report that
        try:
            y1 = clone.forward(x.copy(), training=False)
        except Exception as exc:
            self.fail("config", f"forward of the layer rebuilt from get_config() raised "
                      f"{type(exc).__name__}: {exc}", data, "float64", "y")
            return
        if not (np.shape(y0) == np.shape(y1) and np.array_equal(y0, y1, equal_nan=True)):
            self.fail("config", f"{name} rebuilt from its get_config() {cfg!r} computes "
                      "something else: get_config() leaves out a constructor argument that "
                      "changes the result", data, "float64", "y")

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
    """(reference variant, description): the "numpy" variant for every other variant; for
    the "numpy" variant of a built-in layer type, the loop reference."""
    if variant_name != REFERENCE_VARIANT:
        ref = reg.variants.get(layer_type, {}).get(REFERENCE_VARIANT)
        if ref is not None:
            return ref, f"reference {REFERENCE_VARIANT!r}"
    if loop_reference(layer_type)[0] is not None:
        return None, "the loop reference in cnnkit.testing"
    return None, None


def check_variant(layer_type: str, variant_name: str, *, registry=None,
                  cases: Iterable | None = None, dtypes: Iterable | None = None,
                  rtol: float | dict | None = None, seed: int = 0) -> Report:
    """Check a registered variant against the reference; return a :class:`Report`.

    ``cases``: ``[(layer_kwargs, input_shape), ...]`` or :class:`Case` objects (default: the
    built-in cases of a built-in layer type; for a new layer type that can be built without
    arguments, random rank-2 and rank-4 inputs).  A case is built as real use builds it:
    ``registry.layer_class(layer_type)(**layer_kwargs, dtype=..., impl=variant_name)``.
    ``dtypes``: the dtypes to test (default: the declared ones among float32 and float64).
    ``rtol``: a float for every dtype or a ``{dtype: rtol}`` dict (default: the variant's
    ``tolerance=`` from its registration, else :data:`DEFAULT_RTOL`).  ``seed`` makes the
    random data reproducible.
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
    report.unavailable = variant.unavailable()
    if report.unavailable is not None:
        return report
    try:
        layer_cls = reg.layer_class(layer_type)
    except KeyError as exc:
        report.failures.append(Failure("setup", str(exc.args[0])))
        return report
    if cases is None:
        cases, problem = default_cases(layer_type, layer_cls)
        if cases is None:
            report.failures.append(Failure("setup", problem))
            return report
    else:
        cases = [as_case(c, layer_type) for c in cases]
    tol = dict(DEFAULT_RTOL, **getattr(variant, "tolerance", {}))
    if isinstance(rtol, dict):
        tol.update({np.dtype(k).name: float(v) for k, v in rtol.items()})
    elif rtol is not None:
        tol = {k: float(rtol) for k in tol}
    wanted = _DTYPES if dtypes is None else tuple(np.dtype(d).name for d in dtypes)
    tested = tuple(d for d in _DTYPES if d in wanted and d in variant.dtypes)
    ref, report.reference = _find_reference(reg, layer_type, variant_name)
    loop_fwd, loop_bwd = loop_reference(layer_type)
    checker = _Checker(reg, variant, layer_cls, ref, loop_fwd, loop_bwd, report, tol, tested)
    round_trip = "float64" in tested
    for index, case in enumerate(cases):
        data = checker.prepare(index, case, seed)
        if data is not None:
            checker.run_case(data, seed, index)
            if round_trip:  # once, on the first valid case
                checker.check_config_round_trip(data)
                round_trip = False
    checker.check_capabilities(len(cases))
    return report


def assert_conforms(layer_type: str, variant_name: str, **options) -> Report:
    """:func:`check_variant`, raising ``AssertionError`` with the report when a check fails, and
    ``unittest.SkipTest`` (a skip for pytest and unittest) when the variant cannot run here
    (``Report.unavailable``)."""
    report = check_variant(layer_type, variant_name, **options)
    return raise_unless_conforms(report)


def raise_unless_conforms(report: Report) -> Report:
    """``report``, or the AssertionError / SkipTest of :func:`assert_conforms`."""
    __tracebackhide__ = True
    if not report.ok:
        raise AssertionError(str(report))
    if report.unavailable is not None:
        raise unittest.SkipTest(str(report))
    return report


