"""Built-in plugin: weight initializers."""
from .. import init
from ..plugins import hookimpl


@hookimpl
def cnnkit_register_initializers(register):
    for name in ("zeros", "xavier_uniform", "xavier_normal", "he_uniform", "he_normal"):
        register(name, getattr(init, name))
    register("glorot_uniform", init.xavier_uniform)
    register("glorot_normal", init.xavier_normal)
    register("kaiming_uniform", init.he_uniform)
    register("kaiming_normal", init.he_normal)
