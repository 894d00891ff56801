"""pytest plugin for cnnkit plugin authors (registered through the ``pytest11`` entry point).

It adds the ``cnnkit_conformance`` marker and the ``cnnkit_variant`` parameter: a test that takes
``cnnkit_variant`` runs once per (layer type, variant) the marker selects::

    import pytest

    @pytest.mark.cnnkit_conformance(plugin="my-cnnkit-plugin",
                                    cases={"swish": [({}, (4, 7))]})
    def test_my_variants(cnnkit_variant):
        cnnkit_variant.assert_conforms()       # or: report = cnnkit_variant.check(rtol=1e-3)

Items are named ``test_my_variants[conv2d/mine]``.  Without the marker every third-party
variant is tested.  The marker takes the arguments of :func:`cnnkit.testing.conformance_tests`
(``plugin``, ``variants``, ``cases``, ``dtypes``, ``rtol``, ``seed``).

The shorter form, which needs nothing from this plugin, is
``test_conformance = cnnkit.testing.conformance_tests(plugin="my-cnnkit-plugin")``.

This module is imported by every pytest run in an environment where cnnkit is installed, so it
imports nothing heavy at module level: cnnkit itself is imported only by a test that asks for
``cnnkit_variant``.

It also holds the pytest side of :mod:`cnnkit.testing`: :func:`conformance_tests`,
:class:`VariantUnderTest` and :func:`plugin_variants` (re-exported there).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

MARKER = "cnnkit_conformance"
ARGNAME = "cnnkit_variant"
_OPTIONS = ("plugin", "variants", "cases", "dtypes", "rtol", "seed")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        f"{MARKER}(plugin=None, variants=None, cases=None, dtypes=None, rtol=None, seed=0): "
        f"run the test once per cnnkit variant of a plugin, passed as the {ARGNAME!r} argument "
        "(see cnnkit.testing)",
    )


def _already_parametrized(metafunc) -> bool:
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        if ARGNAME in names:
            return True
    return False


def pytest_generate_tests(metafunc):
    if ARGNAME not in metafunc.fixturenames or _already_parametrized(metafunc):
        return
    marker = metafunc.definition.get_closest_marker(MARKER)
    kwargs = dict(marker.kwargs) if marker is not None else {}
    if marker is not None and marker.args:
        kwargs.setdefault("plugin", marker.args[0])
    unknown = sorted(set(kwargs) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"@pytest.mark.{MARKER}: unknown argument(s) {', '.join(unknown)} "
                        f"(accepted: {', '.join(_OPTIONS)})")
    plugin = kwargs.pop("plugin", None)
    variants = kwargs.pop("variants", None)
    targets = _targets(plugin, variants, kwargs)
    metafunc.parametrize(ARGNAME, targets, ids=[t.id for t in targets])


def _norm(name: str) -> str:
    return name.replace("_", "-").lower()


def plugin_variants(plugin: str | None = None, *, registry=None) -> list[tuple[str, str]]:
    """(layer_type, variant) pairs registered by a plugin, named by its entry-point name,
    plugin name, module or distribution name; all third-party variants when ``plugin`` is
    ``None``."""
    from cnnkit.plugins import get_registry

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
        from cnnkit.testing import check_variant

        return check_variant(self.layer_type, self.name, cases=cases, **merged)

    def assert_conforms(self, **options) -> Report:
        __tracebackhide__ = True
        from cnnkit.testing._checker import raise_unless_conforms

        return raise_unless_conforms(self.check(**options))


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
        from cnnkit.plugins import get_registry

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
        if report.unavailable is not None:
            pytest.skip(str(report))

    return test_conformance
