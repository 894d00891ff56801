"""Built-in plugin: weight initializers (see ``cnnkit.init``)."""
from .. import init
from ..plugins import hookimpl

_NAMES = ("zeros", "constant", "uniform", "normal", "xavier_uniform", "xavier_normal",
          "he_uniform", "he_normal", "lecun_uniform", "lecun_normal", "orthogonal", "gabor", "kmeans_patches")
_ALIASES = {"glorot_uniform": "xavier_uniform", "glorot_normal": "xavier_normal",
            "kaiming_uniform": "he_uniform", "kaiming_normal": "he_normal"}


@hookimpl
def cnnkit_register_initializers(register):
    for name in _NAMES:
        register(name, getattr(init, name))
    for alias, name in _ALIASES.items():
        register(alias, getattr(init, name))
