"""cnnkit's conformance kit on every variant of this plugin: one test per variant
(``test_conformance[mish/cython]``, ``test_conformance[mish/numpy]``).  The kit builds the layer
from the registry, checks shapes, dtypes, no input mutation, inference, the Cython variant
against the NumPy reference and both against finite differences."""
from cnnkit.testing import conformance_tests

test_conformance = conformance_tests(plugin="cnnkit-example")
