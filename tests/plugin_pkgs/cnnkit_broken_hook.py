"""A plugin whose hook raises after registering one thing (which must be rolled back)."""
import cnnkit
from cnnkit.builtin.activation import ReluNumpy


@cnnkit.hookimpl
def cnnkit_register_variants(register):
    register("relu", "half_registered", ReluNumpy)
    raise RuntimeError("boom inside the hook")
