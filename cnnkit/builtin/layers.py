"""Built-in plugin: the layer types."""
from ..layers import BUILTIN_LAYERS
from ..plugins import hookimpl


@hookimpl
def cnnkit_register_layers(register):
    for cls in BUILTIN_LAYERS:
        register(cls.layer_type, cls)
