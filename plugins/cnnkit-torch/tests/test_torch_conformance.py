"""Every variant of the plugin passes cnnkit's conformance kit (one test per variant)."""
from cnnkit.testing import conformance_tests

test_conformance = conformance_tests(plugin="cnnkit-torch")
