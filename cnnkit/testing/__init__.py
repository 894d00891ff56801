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
  reference itself, it is compared with a slow, independent loop implementation (built-in
  layer types only); for a new layer type without a reference these are skipped;
- for built-in layer types, the variant run through the layer as a user runs it (the layer
  resolves its configuration, e.g. ``padding="same"``, and selects the variant by ``impl=``)
  against the loop reference, which resolves the geometry from the case's constructor
  arguments by itself; in float64 (float32 for a float32-only variant).  Max pooling's input
  gradient is checked this way too, on a case full of ties (the first maximum wins);
- gradients against central finite differences in float64, along one random direction per
  input and per parameter;
- every declared capability is exercised by at least one case the variant accepts, and is a
  feature the layer type defines (its ``FEATURES``).

The built-in cases and loop references live with their family: ``cnnkit/testing/conv.py``,
``pool.py``, ``activation.py``, ...

Errors are measured relative to the largest magnitude of the reference: ``max rel err`` is
``max|got - want| / max|want|``.  Default tolerances are in :data:`DEFAULT_RTOL`.
"""
from __future__ import annotations

from cnnkit.pytest_plugin import VariantUnderTest, conformance_tests, plugin_variants
from cnnkit.testing._cases import Case, builtin_cases, distinct_inputs
from cnnkit.testing._checker import (DEFAULT_RTOL, GRADCHECK_EPS, GRADCHECK_RTOL,
                                     REFERENCE_VARIANT, assert_conforms, check_variant)
from cnnkit.testing._report import Failure, Report

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
