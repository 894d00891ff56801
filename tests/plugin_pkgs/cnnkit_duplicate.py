"""A plugin that registers a (layer type, variant) pair the built-ins already own."""
import cnnkit
from cnnkit.builtin.conv import Conv2dNumpy


@cnnkit.hookimpl
def cnnkit_register_variants(register):
    register("conv2d", "numpy", Conv2dNumpy)
