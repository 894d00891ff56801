"""Plugin manager, entry-point loading, the registry and variant selection.

Loading is lazy and happens once, on the first call to :func:`get_registry`.  The built-in
plugins are ordinary plugin modules registered through the same hooks as third-party ones;
third-party plugins come from the ``cnnkit`` entry-point group.
"""
from __future__ import annotations

import contextlib
import contextvars
import difflib
import importlib
import importlib.metadata as importlib_metadata
import inspect
import os
import threading
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pluggy

from . import autotuning as _autotune
from . import hookspecs
from ._cpu import KNOWN_FEATURES, missing_cpu_features
from .builtin import PLUGIN_MODULES

hookimpl = pluggy.HookimplMarker("cnnkit")

ENTRY_POINT_GROUP = "cnnkit"

#: Built-in plugin modules (one per layer family, plus optimizers and initializers),
#: registered first and in this order.
BUILTIN_PLUGINS = PLUGIN_MODULES

_KINDS = ("layer", "variant", "optimizer", "initializer")


class PluginError(RuntimeError):
    """A plugin could not be loaded or registered something invalid."""


class SelectionError(ValueError):
    """No variant can serve a request, or an explicitly chosen one cannot."""


class PluginWarning(UserWarning):
    """A third-party plugin failed and was skipped."""


@dataclass(frozen=True)
class Variant:
    """One implementation of a layer type."""

    layer_type: str
    name: str
    impl: Any
    plugin: str
    priority: int = 0
    dtypes: tuple = ("float32", "float64")
    capabilities: frozenset = frozenset()
    supports: Callable | None = None
    description: str = ""
    #: backward() accepts ``need_input_grad`` and may then skip the input gradient
    skips_input_grad: bool = False
    #: dtypes automatic selection may pick it for (an explicit choice may use any of ``dtypes``)
    auto_dtypes: tuple | None = None
    #: like ``supports``, consulted by automatic selection only (say, where it is slower)
    auto_supports: Callable | None = None
    #: {dtype: max error relative to the output scale} the conformance kit allows it, where it
    #: differs from the kit's default
    tolerance: dict = field(default_factory=dict, compare=False)
    #: instruction-set features the variant's code needs (``cnnkit._cpu.KNOWN_FEATURES``)
    cpu_features: tuple = ()

    def unavailable(self) -> str | None:
        """Why this variant cannot run at all here, whatever the request, or ``None``: the
        running CPU lacks one of its ``cpu_features``, or its ``impl.unavailable()`` (optional)
        gives a reason, such as a compiled module the build left out."""
        missing = missing_cpu_features(self.cpu_features) if self.cpu_features else None
        if missing:
            return (f"needs CPU features {', '.join(self.cpu_features)} (this CPU lacks "
                    f"{', '.join(missing)})")
        check = getattr(self.impl, "unavailable", None)
        return _ask(check, "unavailable()") if callable(check) else None

    def refusal(self, dtype, features, config) -> str | None:
        """Why this variant cannot serve the request, or ``None`` if it can."""
        reason = self.unavailable()
        if reason is not None:
            return reason
        dname = _dtype_name(dtype)
        if dname not in self.dtypes:
            return f"dtype {dname} not supported (supports {', '.join(self.dtypes)})"
        missing = sorted(set(features) - self.capabilities)
        if missing:
            return "does not support " + ", ".join(missing)
        if self.supports is not None:
            return _ask(self.supports, "supports()", config, dname)
        return None

    def auto_refusal(self, dtype, config=None) -> str | None:
        """Why automatic selection must not pick this variant for ``dtype`` and ``config`` even
        though it could serve the request when chosen explicitly, or ``None``."""
        dname = _dtype_name(dtype)
        if self.auto_dtypes is None or dname in self.auto_dtypes:
            if self.auto_supports is None:
                return None
            reason = _ask(self.auto_supports, "auto_supports()", config, dname)
            return (f"not picked automatically: {reason}; choose it explicitly (impl=, "
                    "cnnkit.use, CNNKIT_IMPL)") if reason else None
        why = ""
        if self.tolerance:
            why = ("; it rounds more than the reference (declared error bound, relative to the "
                   "output scale: " + ", ".join(f"{k} {v:g}" for k, v in self.tolerance.items())
                   + ")")
        return (f"not picked automatically for {dname}: its registration limits automatic "
                f"selection to {', '.join(self.auto_dtypes) or 'no dtype'} (auto_dtypes){why}; "
                "choose it explicitly (impl=, cnnkit.use, CNNKIT_IMPL)")

    def describe(self) -> dict:
        return {
            "layer_type": self.layer_type,
            "name": self.name,
            "plugin": self.plugin,
            "priority": self.priority,
            "dtypes": list(self.dtypes),
            "capabilities": sorted(self.capabilities),
            "cpu_features": list(self.cpu_features),
            "description": self.description,
            "auto_dtypes": list(self.dtypes if self.auto_dtypes is None else self.auto_dtypes),
            "tolerance": dict(self.tolerance),
        }


@dataclass(frozen=True)
class Fusion:
    """A chain of layer types the executor may run as one call (``cnnkit_register_fusions``).

    ``variants`` holds, per entry of ``pattern``, the variant the layer must have selected for
    the fused call to stand in for it (``None``: any); ``modes`` says whether it applies in
    training, in inference or both.
    """

    name: str
    pattern: tuple
    impl: Any
    plugin: str
    variants: tuple
    modes: frozenset = frozenset({"training", "inference"})
    priority: int = 0
    supports: Callable | None = None
    description: str = ""

    def refusal(self, layers, input_shapes, dtype, training: bool) -> str | None:
        """Why this fusion cannot run ``layers`` (a chain matching ``pattern``, fed inputs of
        ``input_shapes``, batch entries may be None) now, or ``None`` if it can."""
        mode = "training" if training else "inference"
        if mode not in self.modes:
            return f"not registered for {mode}"
        dname = _dtype_name(dtype)
        for layer, shape, wanted in zip(layers, input_shapes, self.variants):
            if wanted is None:
                continue
            try:
                got = layer.variant(dtype, shape).name
            except (SelectionError, ValueError, TypeError) as exc:
                return str(exc)
            if got != wanted:
                return f"{layer.name} runs variant {got!r}, the fusion stands in for {wanted!r}"
        if self.supports is not None:
            return _ask(self.supports, "supports()", layers, dname)
        return None

    def describe(self) -> dict:
        return {"name": self.name, "pattern": list(self.pattern), "plugin": self.plugin,
                "variants": list(self.variants), "modes": sorted(self.modes),
                "priority": self.priority, "description": self.description}


@dataclass
class PluginInfo:
    """What the registry knows about one plugin."""

    name: str
    module: str
    source: str  # "builtin" or "entrypoint"
    distribution: str | None = None
    version: str | None = None
    registered: dict = field(default_factory=lambda: {k: [] for k in _KINDS})
    error: str | None = None
    traceback: str | None = None

    def describe(self) -> dict:
        return {
            "name": self.name,
            "module": self.module,
            "source": self.source,
            "distribution": self.distribution,
            "version": self.version,
            "registered": {k: list(v) for k, v in self.registered.items()},
            "error": self.error,
            "traceback": self.traceback,
        }


def _dtype_name(dtype) -> str:
    import numpy as np

    return np.dtype(dtype).name


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def _parse_impl_env(value: str | None) -> dict[str, str]:
    if not value:
        return {}
    out = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise SelectionError(
                f"CNNKIT_IMPL: entry {item!r} is not of the form layer_type=variant "
                "(example: CNNKIT_IMPL=conv2d=numpy,relu=cython)"
            )
        key, _, val = item.partition("=")
        out[key.strip().lower()] = val.strip()
    return out


class Registry:
    """Everything the plugins registered: layer types, variants, optimizers, initializers."""

    def __init__(self):
        self.pm = pluggy.PluginManager("cnnkit")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.layer_types: dict[str, tuple[type, str]] = {}
        self.variants: dict[str, dict[str, Variant]] = {}
        self.optimizers: dict[str, tuple[Any, str]] = {}
        self.initializers: dict[str, tuple[Any, str]] = {}
        #: {fusion name: Fusion}, see :meth:`fusions_from`
        self.fusions: dict[str, Fusion] = {}
        #: {layer type: (ONNX exporter, plugin)}, see :meth:`onnx_exporter`
        self.onnx_exporters: dict[str, tuple[Any, str]] = {}
        self._impl_env_checked: str | None = None

    # ------------------------------------------------------------------ loading
    def load(self, builtins=BUILTIN_PLUGINS, entry_points=True) -> None:
        strict = os.environ.get("CNNKIT_STRICT_PLUGINS", "") not in ("", "0")
        candidates: list[tuple[PluginInfo, Callable[[], Any]]] = []
        for modname in builtins:
            info = PluginInfo(name=modname, module=modname, source="builtin", distribution="cnnkit",
                              version=_cnnkit_version())
            candidates.append((info, lambda m=modname: importlib.import_module(m)))
        if entry_points:
            candidates.extend(self._entry_point_candidates())
        for info, loader in candidates:
            self.plugins[info.name] = info
            try:
                module = loader()
            except Exception as exc:
                self._fail(info, f"import failed: {type(exc).__name__}: {exc}", strict)
                continue
            self.register_plugin(module, info, strict=strict, deferred=True)
        self._check_variant_layer_types(strict)

    def _table(self, kind: str) -> dict:
        """The registry table of a named kind of registration ({name: ...})."""
        return {"layer": self.layer_types, "optimizer": self.optimizers,
                "initializer": self.initializers, "fusion": self.fusions,
                "onnx_exporter": self.onnx_exporters}[kind]

    def _check_variant_layer_types(self, strict, only=None) -> None:
        """A plugin whose variants name a layer type no plugin registered fails as a whole
        (checked once every plugin has loaded, as one plugin may add variants for another's
        layer type): its registrations are withdrawn and the reason recorded."""
        for info in list(self.plugins.values()):
            if (only is not None and info is not only) or info.error:
                continue
            unknown = sorted({key.split("/")[0] for key in info.registered["variant"]}
                             - set(self.layer_types))
            if not unknown:
                continue
            for kind, keys in info.registered.items():
                for key in keys:
                    if kind == "variant":
                        layer_type, name = key.split("/", 1)
                        self.variants.get(layer_type, {}).pop(name, None)
                        if not self.variants.get(layer_type, True):
                            del self.variants[layer_type]
                    else:
                        self._table(kind).pop(key, None)
                keys.clear()
            hints = "".join(_did_you_mean(t, self.layer_types) for t in unknown)
            self._fail(info, "registers variants for layer type(s) no plugin registered: "
                       + ", ".join(repr(t) for t in unknown) + hints
                       + "; register the layer class with cnnkit_register_layers", strict)

    def _entry_point_candidates(self):
        allow = _env_list("CNNKIT_LOAD_PLUGINS")
        deny = set(_env_list("CNNKIT_DISABLE_PLUGINS") or [])
        for ep in sorted(importlib_metadata.entry_points(group=ENTRY_POINT_GROUP),
                         key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            names = {ep.name}
            if dist_name:
                names.add(dist_name)
                names.add(dist_name.replace("_", "-").lower())
            if allow is not None and not names & set(allow):
                continue
            if names & deny:
                continue
            info = PluginInfo(name=ep.name, module=ep.value, source="entrypoint",
                              distribution=dist_name,
                              version=dist.version if dist is not None else None)
            if info.name in self.plugins:
                info.name = f"{ep.name} ({dist_name})"
            yield info, ep.load

    def register_plugin(self, module, info: PluginInfo | str, *, strict: bool | None = None,
                        deferred: bool = False) -> bool:
        """Register a plugin object and run its hooks.  Returns False if it failed.

        ``deferred``: leave the check that its variants' layer types exist to the caller
        (:meth:`load` checks once every plugin is in)."""
        if strict is None:
            strict = os.environ.get("CNNKIT_STRICT_PLUGINS", "") not in ("", "0")
        if isinstance(info, str):
            info = PluginInfo(name=info, module=getattr(module, "__name__", repr(module)),
                              source="runtime")
        self.plugins[info.name] = info
        try:
            self.pm.register(module, name=info.name)
        except Exception as exc:
            self._fail(info, f"invalid plugin: {type(exc).__name__}: {exc}", strict)
            return False
        unknown = [hc.name for hc in (self.pm.get_hookcallers(module) or [])
                   if not hc.has_spec()]
        if unknown:
            self.pm.unregister(module)
            self._fail(info, "implements unknown hook(s): " + ", ".join(sorted(unknown))
                       + f" (known hooks: {', '.join(hookspecs.__all__[1:])})", strict)
            return False
        staged: list[tuple[str, tuple, dict]] = []
        try:
            for hook_name, kind in (("cnnkit_register_layers", "layer"),
                                    ("cnnkit_register_variants", "variant"),
                                    ("cnnkit_register_optimizers", "optimizer"),
                                    ("cnnkit_register_initializers", "initializer"),
                                    ("cnnkit_register_fusions", "fusion"),
                                    ("cnnkit_register_onnx_exporters", "onnx_exporter")):
                caller = getattr(self.pm.hook, hook_name)
                for impl in caller.get_hookimpls():
                    if impl.plugin_name != info.name:
                        continue

                    def register(*args, _kind=kind, **kwargs):
                        self._check(_kind, info.name, staged, *args, **kwargs)
                        staged.append((_kind, args, kwargs))

                    impl.function(register=register)
        except Exception as exc:
            self.pm.unregister(module)
            self._fail(info, f"{type(exc).__name__}: {exc}", strict)
            return False
        for kind, args, kwargs in staged:
            key = self._commit(kind, info.name, *args, **kwargs)
            info.registered.setdefault(kind, []).append(key)
        if not deferred:
            self._check_variant_layer_types(strict, only=info)
            return info.error is None
        return True

    def _fail(self, info: PluginInfo, message: str, strict: bool) -> None:
        info.error = message
        info.traceback = traceback.format_exc()
        text = f"cnnkit plugin {info.name!r} ({info.module}) failed and was skipped: {message}"
        if strict:
            raise PluginError(text + " [CNNKIT_STRICT_PLUGINS is set]")
        warnings.warn(text, PluginWarning, stacklevel=_caller_level())

    # ------------------------------------------------------------------ registration
    def _check(self, kind, plugin, staged, *args, **kwargs) -> None:
        """Validate one registration before it is staged; raise naming the plugin."""
        if kind == "fusion":
            f = _make_fusion(plugin, *args, **kwargs)
            owner = self.fusions.get(f.name)
            if owner is not None or any(k == "fusion" and _make_fusion(plugin, *a, **kw).name
                                        == f.name for k, a, kw in staged):
                by = owner.plugin if owner is not None else plugin
                raise PluginError(f"fusion {f.name!r} is registered twice: by plugin {by!r} "
                                  f"and by plugin {plugin!r}")
            return
        if kind == "variant":
            v = _make_variant(plugin, *args, **kwargs)
            key = (v.layer_type, v.name)
            existing = self.variants.get(v.layer_type, {}).get(v.name)
            if existing is not None:
                raise PluginError(f"variant {v.layer_type}/{v.name} is registered twice: by plugin "
                                  f"{existing.plugin!r} and by plugin {plugin!r}")
            for k, a, kw in staged:
                if k == "variant" and (_make_variant(plugin, *a, **kw).layer_type,
                                       _make_variant(plugin, *a, **kw).name) == key:
                    raise PluginError(f"variant {key[0]}/{key[1]} is registered twice by plugin "
                                      f"{plugin!r}")
            return
        name, obj = _name_obj(kind, *args, **kwargs)
        table = self._table(kind)
        if name in table:
            raise PluginError(f"{kind} {name!r} is registered twice: by plugin {table[name][1]!r} "
                              f"and by plugin {plugin!r}")
        if any(k == kind and _name_obj(k, *a, **kw)[0] == name for k, a, kw in staged):
            raise PluginError(f"{kind} {name!r} is registered twice by plugin {plugin!r}")
        if kind == "layer":
            if not isinstance(obj, type) or getattr(obj, "layer_type", None) != name:
                raise PluginError(f"layer {name!r} from plugin {plugin!r}: expected a Layer class "
                                  f"whose layer_type is {name!r}, got {obj!r}")
        elif not callable(obj):
            raise PluginError(f"{kind} {name!r} from plugin {plugin!r} is not callable: {obj!r}")

    def _commit(self, kind, plugin, *args, **kwargs):
        if kind == "fusion":
            f = _make_fusion(plugin, *args, **kwargs)
            self.fusions[f.name] = f
            return f.name
        if kind == "variant":
            v = _make_variant(plugin, *args, **kwargs)
            self.variants.setdefault(v.layer_type, {})[v.name] = v
            return f"{v.layer_type}/{v.name}"
        name, obj = _name_obj(kind, *args, **kwargs)
        table = self._table(kind)
        table[name] = (obj, plugin)
        return name

    # ------------------------------------------------------------------ lookups
    def layer_class(self, name: str) -> type:
        return self._lookup(self.layer_types, name, "layer type")

    def optimizer(self, name: str):
        return self._lookup(self.optimizers, name, "optimizer")

    def initializer(self, name: str):
        return self._lookup(self.initializers, name, "initializer")

    def onnx_exporter(self, layer_type: str):
        """``(exporter, plugin)`` registered for ``layer_type`` with
        ``cnnkit_register_onnx_exporters``, or ``None``."""
        return self.onnx_exporters.get(layer_type.lower())

    @staticmethod
    def _lookup(table, name, what):
        key = name.lower()
        if key not in table:
            raise KeyError(f"unknown {what} {name!r}; registered: " + ", ".join(sorted(table)))
        return table[key][0]

    def variants_for(self, layer_type: str) -> list[Variant]:
        """Variants of a layer type, highest priority first."""
        return sorted(self.variants.get(layer_type, {}).values(),
                      key=lambda v: (-v.priority, v.name))

    def fusions_from(self, layer_type: str) -> list[Fusion]:
        """Fusions whose pattern starts with ``layer_type``: longest pattern first, then
        highest priority (the order the executor tries them in)."""
        return sorted((f for f in self.fusions.values() if f.pattern[0] == layer_type),
                      key=lambda f: (-len(f.pattern), -f.priority, f.name))

    def known_layer_types(self) -> list[str]:
        """Every layer type a choice may name: those with a class and those with variants."""
        return sorted(set(self.layer_types) | set(self.variants))

    def check_choices(self, choices: dict, source: str, *, variants: bool = False) -> None:
        """Raise :class:`SelectionError` naming ``source`` if ``choices`` ({layer type: variant})
        names a layer type nobody registered or, with ``variants``, a variant of it nobody
        registered; both with a did-you-mean."""
        known = self.known_layer_types()
        for layer_type, name in choices.items():
            if layer_type not in known:
                raise SelectionError(
                    f"{source}: unknown layer type {layer_type!r}{_did_you_mean(layer_type, known)}"
                    f"; known layer types: {', '.join(known)}")
            if not variants:
                continue
            names = sorted(self.variants.get(layer_type, {}))
            if not names:
                raise SelectionError(f"{source}: layer type {layer_type!r} has no variants to "
                                     "choose from (the layer computes itself)")
            if name not in names:
                raise SelectionError(
                    f"{source}: unknown variant {name!r} of {layer_type}"
                    f"{_did_you_mean(name, names)}; registered variants: {', '.join(names)}")

    def explicit_choice(self, layer_type: str, impl: str | None = None) -> tuple[str | None, str]:
        """The explicitly chosen variant name for a layer type and where the choice came from."""
        if impl is not None:
            return impl, "impl= argument"
        chosen = _USE.get().get(layer_type)
        if chosen is not None:
            return chosen
        env = self.impl_env()
        if layer_type in env:
            return env[layer_type], "CNNKIT_IMPL"
        return None, "automatic"

    def impl_env(self) -> dict[str, str]:
        """The choices of ``CNNKIT_IMPL`` ({layer type: variant}); a layer type nobody
        registered raises :class:`SelectionError`."""
        value = os.environ.get("CNNKIT_IMPL")
        env = _parse_impl_env_cached(value)
        if env and value != self._impl_env_checked:
            # checked on the first use of each value, so a misspelt layer type is an error
            # instead of a choice that never applies
            self.check_choices(env, "CNNKIT_IMPL")
            self._impl_env_checked = value
        return env

    def select(self, layer_type: str, *, dtype, features=(), config=None,
               impl: str | None = None, owner: str | None = None, shape=None) -> Variant:
        """Pick the variant that serves a request (see the selection rules in the docs)."""
        winner, _, reasons = self.explain(layer_type, dtype=dtype, features=features,
                                          config=config, impl=impl, owner=owner, shape=shape)
        return winner

    def explain(self, layer_type, *, dtype, features=(), config=None, impl=None, owner=None,
                shape=None):
        """Return (winner, how it was chosen, {variant name: reason it was not chosen}).

        ``shape`` (the input shape, batch first) lets the autotuning cache answer."""
        who = owner or layer_type
        variants = self.variants_for(layer_type)
        if not variants:
            raise SelectionError(f"{who}: no variant of layer type {layer_type!r} is registered")
        choice, source = self.explicit_choice(layer_type, impl)
        reasons: dict[str, str] = {}
        if choice is not None:
            by_name = {v.name: v for v in variants}
            if choice not in by_name:
                raise SelectionError(f"{who}: variant {choice!r} of {layer_type} (chosen by "
                                     f"{source}) is not registered"
                                     f"{_did_you_mean(choice, sorted(by_name))}; registered "
                                     "variants: " + ", ".join(sorted(by_name)))
            v = by_name[choice]
            reason = v.refusal(dtype, features, config)
            if reason is not None:
                raise SelectionError(f"{who}: variant {choice!r} of {layer_type} (chosen by "
                                     f"{source}, plugin {v.plugin!r}) cannot serve this request: "
                                     f"{reason}")
            for other in variants:
                if other is not v:
                    reasons[other.name] = f"not chosen: {source} asks for {choice!r}"
            return v, source, reasons
        tuned, note, tuned_reasons = _autotune.lookup(self, layer_type, variants, dtype=dtype,
                                                      features=features, config=config,
                                                      shape=shape)
        if tuned is not None:
            return tuned, note, tuned_reasons
        winner = None
        for v in variants:
            reason = v.refusal(dtype, features, config) or v.auto_refusal(dtype, config)
            if reason is not None:
                reasons[v.name] = reason
            elif winner is None:
                winner = v
            else:
                reasons[v.name] = (f"lower priority ({v.priority}) than {winner.name!r} "
                                   f"({winner.priority})")
        if winner is None:
            raise SelectionError(f"{who}: no registered variant of {layer_type} can serve this "
                                 "request: " + "; ".join(f"{k}: {r}" for k, r in reasons.items()))
        how = "highest priority among variants that support the request"
        return winner, how + (f" ({note})" if note else ""), reasons


def _make_variant(plugin, layer_type, name, impl, *, priority=0, dtypes=("float32", "float64"),
                  capabilities=(), supports=None, description="", auto_dtypes=None,
                  auto_supports=None, tolerance=None, cpu_features=()) -> Variant:
    if not isinstance(layer_type, str) or not layer_type:
        raise PluginError(f"plugin {plugin!r}: variant layer_type must be a non-empty string, "
                          f"got {layer_type!r}")
    if not isinstance(name, str) or not name:
        raise PluginError(f"plugin {plugin!r}: variant name must be a non-empty string, got {name!r}")
    for attr in ("forward", "backward"):
        if not callable(getattr(impl, attr, None)):
            raise PluginError(f"plugin {plugin!r}: variant {layer_type}/{name} has no callable "
                              f"{attr}()")
    dtypes = _dtype_names(plugin, layer_type, name, "dtypes", dtypes)
    if isinstance(capabilities, str):
        capabilities = (capabilities,)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise PluginError(f"plugin {plugin!r}: variant {layer_type}/{name}: priority must be an "
                          f"int, got {priority!r}")
    for what, fn in (("supports", supports), ("auto_supports", auto_supports)):
        if fn is not None and not callable(fn):
            raise PluginError(f"plugin {plugin!r}: variant {layer_type}/{name}: {what} must be "
                              "callable or None")
    auto_dtypes = _auto_dtypes(plugin, layer_type, name, auto_dtypes, dtypes)
    tolerance = _tolerance(plugin, layer_type, name, tolerance, dtypes)
    if isinstance(cpu_features, str):
        cpu_features = (cpu_features,)
    try:
        cpu_features = tuple(cpu_features)
    except TypeError:
        cpu_features = (cpu_features,)
    if not all(isinstance(f, str) for f in cpu_features):
        raise PluginError(f"plugin {plugin!r}: variant {layer_type}/{name}: cpu_features must "
                          f"be feature names, got {cpu_features!r}")
    unknown = [f for f in cpu_features if f.lower() not in KNOWN_FEATURES]
    if unknown:
        raise PluginError(f"plugin {plugin!r}: variant {layer_type}/{name}: unknown CPU "
                          f"feature(s) {', '.join(map(repr, unknown))} (known: "
                          f"{', '.join(KNOWN_FEATURES)})")
    cpu_features = tuple(dict.fromkeys(f.lower() for f in cpu_features))
    try:
        skips = "need_input_grad" in inspect.signature(impl.backward).parameters
    except (TypeError, ValueError):
        skips = False
    return Variant(layer_type=layer_type.lower(), name=name, impl=impl, plugin=plugin,
                   priority=priority, dtypes=dtypes, capabilities=frozenset(capabilities),
                   supports=supports, description=description, skips_input_grad=skips,
                   auto_dtypes=auto_dtypes, auto_supports=auto_supports, tolerance=tolerance,
                   cpu_features=cpu_features)


def _dtype_names(plugin, layer_type, name, what, value) -> tuple:
    """A registration's list of dtypes (one name or several) as canonical names."""
    if isinstance(value, str):
        value = (value,)
    try:
        return tuple(_dtype_name(d) for d in value)
    except TypeError as exc:
        raise PluginError(f"plugin {plugin!r}: variant {layer_type}/{name}: bad {what} "
                          f"{value!r}: {exc}") from None


def _auto_dtypes(plugin, layer_type, name, auto_dtypes, dtypes):
    """``auto_dtypes=`` checked: None (all of ``dtypes``) or a subset of ``dtypes``."""
    if auto_dtypes is None:
        return None
    auto_dtypes = _dtype_names(plugin, layer_type, name, "auto_dtypes", auto_dtypes)
    extra = sorted(set(auto_dtypes) - set(dtypes))
    if extra:
        raise PluginError(f"plugin {plugin!r}: variant {layer_type}/{name}: auto_dtypes "
                          f"{', '.join(extra)} not among its dtypes ({', '.join(dtypes)})")
    return auto_dtypes


def _tolerance(plugin, layer_type, name, tolerance, dtypes):
    """``tolerance=`` checked: None, one positive number for every dtype, or {dtype: number}."""
    if tolerance is None:
        return {}
    if not isinstance(tolerance, dict):
        tolerance = {d: tolerance for d in dtypes}
    out = {}
    for dtype, value in tolerance.items():
        try:
            key = _dtype_name(dtype)
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and 0 < float(value) < float("inf"))
        except TypeError:
            ok = False
        if not ok:
            raise PluginError(f"plugin {plugin!r}: variant {layer_type}/{name}: tolerance must "
                              "be a positive number or {dtype: positive number}, got "
                              f"{tolerance!r}")
        out[key] = float(value)
    return out


def _ask(check, what, *args) -> str | None:
    """A plugin's own check (``supports()``, ``unavailable()``...): its reason as a string, or
    None; a check that raises is a reason too, since a broken plugin must not take selection
    or execution down."""
    try:
        reason = check(*args)
    except Exception as exc:
        return f"its {what} check raised {type(exc).__name__}: {exc}"
    return str(reason) if reason else None


def _cnnkit_version() -> str:
    from . import __version__

    return __version__


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside cnnkit (the user's
    line that loaded the plugins), not at cnnkit's own ``reg.load()``."""
    import sys

    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


_FUSION_MODES = ("training", "inference")


def _make_fusion(plugin, name, pattern, impl, *, variants=None, modes=_FUSION_MODES, priority=0,
                 supports=None, description="") -> Fusion:
    what = f"plugin {plugin!r}: fusion {name!r}"
    if not isinstance(name, str) or not name:
        raise PluginError(f"plugin {plugin!r}: fusion name must be a non-empty string, got "
                          f"{name!r}")
    if (not isinstance(pattern, (tuple, list)) or len(pattern) < 2
            or not all(isinstance(t, str) and t for t in pattern)):
        raise PluginError(f"{what}: pattern must be a tuple of at least two layer types, got "
                          f"{pattern!r}")
    pattern = tuple(t.lower() for t in pattern)
    variants = (None,) * len(pattern) if variants is None else tuple(variants)
    if len(variants) != len(pattern) or not all(v is None or isinstance(v, str)
                                                for v in variants):
        raise PluginError(f"{what}: variants must give a variant name (or None) per layer of "
                          f"{pattern!r}, got {variants!r}")
    if isinstance(modes, str):
        modes = (modes,)
    if not modes or not set(modes) <= set(_FUSION_MODES):
        raise PluginError(f"{what}: modes must be a non-empty subset of {_FUSION_MODES}, got "
                          f"{modes!r}")
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise PluginError(f"{what}: priority must be an int, got {priority!r}")
    for attr in ("forward", "backward"):
        if not callable(getattr(impl, attr, None)):
            raise PluginError(f"{what} has no callable {attr}()")
    if supports is not None and not callable(supports):
        raise PluginError(f"{what}: supports must be callable or None")
    return Fusion(name=name, pattern=pattern, impl=impl, plugin=plugin, variants=variants,
                  modes=frozenset(modes), priority=priority, supports=supports,
                  description=description)


def _did_you_mean(word: str, candidates) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=3)
    if not close:
        return ""
    # only the near-best: "cythn" means "cython", not also its build "cython-avx2"
    score = [difflib.SequenceMatcher(None, word, c).ratio() for c in close]
    close = [c for c, r in zip(close, score) if r >= score[0] - 0.1]
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def _name_obj(kind, name, obj):
    if not isinstance(name, str) or not name:
        raise PluginError(f"{kind} name must be a non-empty string, got {name!r}")
    return name.lower(), obj


_IMPL_ENV_CACHE: dict[str | None, dict] = {}


def _parse_impl_env_cached(value):
    try:
        return _IMPL_ENV_CACHE[value]
    except KeyError:
        parsed = _parse_impl_env(value)
        _IMPL_ENV_CACHE[value] = parsed
        return parsed


#: {layer type: (variant name, where the choice came from)}
_USE: contextvars.ContextVar[dict] = contextvars.ContextVar("cnnkit_use", default={})

_registry: Registry | None = None
_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, loading the plugins on first use (once)."""
    global _registry
    reg = _registry
    if reg is not None:
        return reg
    with _lock:
        if _registry is None:
            reg = Registry()
            reg.load()
            _registry = reg
    return _registry


def reset_registry() -> None:
    """Forget the loaded plugins; the next :func:`get_registry` loads them again (for tests)."""
    global _registry
    with _lock:
        _registry = None


def use(**choices: str) -> contextlib.AbstractContextManager[None]:
    """Choose variants by layer type inside a ``with`` block: ``with ck.use(conv2d="numpy"):``.

    A layer type nobody registered is an error here, with a did-you-mean; a variant name is
    checked when a layer selects its variant (plugins may still be registered meanwhile)."""
    for key, value in choices.items():
        if not isinstance(value, str):
            raise TypeError(f"cnnkit.use({key}=...): variant name must be a string, got {value!r}")
    return _use({k.lower(): v for k, v in choices.items()}, "cnnkit.use()")


@contextlib.contextmanager
def _use(choices: dict[str, str], source: str) -> Iterator[None]:
    """:func:`use` with the name of where the choices came from (``--impl`` for the CLI),
    which selection errors then name."""
    get_registry().check_choices(choices, source)
    current = dict(_USE.get())
    current.update({k: (v, source) for k, v in choices.items()})
    token = _USE.set(current)
    try:
        yield
    finally:
        _USE.reset(token)


def list_plugins() -> list[dict]:
    return [info.describe() for info in get_registry().plugins.values()]
