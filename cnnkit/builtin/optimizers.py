"""Built-in plugin: optimizers."""
from .. import optim
from ..plugins import hookimpl


@hookimpl
def cnnkit_register_optimizers(register):
    register("sgd", optim.SGD)
