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
"""
from __future__ import annotations

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
    from cnnkit.testing import _targets

    plugin = kwargs.pop("plugin", None)
    variants = kwargs.pop("variants", None)
    targets = _targets(plugin, variants, kwargs)
    metafunc.parametrize(ARGNAME, targets, ids=[t.id for t in targets])
