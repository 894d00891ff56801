"""Built-in plugin: optimizers (``torch.optim``'s update rules)."""
from .. import optim
from ..plugins import hookimpl


@hookimpl
def cnnkit_register_optimizers(register):
    register("sgd", optim.SGD)
    register("adam", optim.Adam)
    register("adamw", optim.AdamW)
    register("rmsprop", optim.RMSProp)
    register("adagrad", optim.AdaGrad)
    register("lbfgs", optim.LBFGS)
