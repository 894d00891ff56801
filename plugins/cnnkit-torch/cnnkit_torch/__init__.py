"""cnnkit-torch: PyTorch-backed variants of cnnkit's layer types, named ``"torch"``.

This module is the plugin (entry point ``torch`` in the ``cnnkit`` group).  It is imported by
every program that loads cnnkit's registry, so it imports nothing heavy: PyTorch is imported by
:mod:`cnnkit_torch._kernels` the first time one of the variants below computes something.

The variants register with priority -100, below every built-in variant: the Cython kernels (100,
or -10 where NumPy's own SIMD code is faster) and the NumPy reference (0) alike; dense, for one,
has no Cython kernel.  Automatic selection never picks them while a built-in can serve a
request.  Ask for them with ``impl="torch"``,
``cnnkit.use(conv2d="torch")`` or ``CNNKIT_IMPL=conv2d=torch``.

Threads: the plugin leaves PyTorch's intra-op thread count alone, unless the environment
variable ``CNNKIT_TORCH_THREADS`` is set, in which case ``torch.set_num_threads`` is called
with it once, when PyTorch is first imported by the plugin.  That call is process-wide.
"""
from __future__ import annotations

from cnnkit.plugins import hookimpl

__version__ = "0.1.0"

#: Priority of every variant here: below every built-in variant (100, 0, -10), so that
#: installing the plugin changes nothing until a "torch" variant is asked for.
PRIORITY = -100

_DTYPES = ("float32", "float64")
_CONV_CAPS = ("stride", "padding", "asymmetric_padding", "dilation", "groups", "bias",
              "connections", "flip_kernel")
_POOL_CAPS = ("stride", "padding", "ceil_mode")

_kernel_module = None


def kernels():
    """The kernel module :mod:`cnnkit_torch._kernels` (imports PyTorch on the first call)."""
    global _kernel_module
    if _kernel_module is None:
        import importlib

        _kernel_module = importlib.import_module("cnnkit_torch._kernels")
    return _kernel_module


class Conv2dTorch:
    """2-D cross-correlation with ``torch.nn.functional.conv2d``; backward with
    ``aten.convolution_backward`` (skips the input gradient when nobody needs it)."""

    @staticmethod
    def forward(x, params, config, need_backward):
        return kernels().conv2d_forward(x, params, config, need_backward)

    @staticmethod
    def backward(dy, ctx, need_input_grad=True):
        return kernels().conv2d_backward(dy, ctx, need_input_grad)


class MaxPool2dTorch:
    @staticmethod
    def forward(x, params, config, need_backward):
        return kernels().maxpool2d_forward(x, params, config, need_backward)

    @staticmethod
    def backward(dy, ctx):
        return kernels().maxpool2d_backward(dy, ctx)


class AvgPool2dTorch:
    @staticmethod
    def forward(x, params, config, need_backward):
        return kernels().avgpool2d_forward(x, params, config, need_backward)

    @staticmethod
    def backward(dy, ctx):
        return kernels().avgpool2d_backward(dy, ctx)


def _activation(kind):
    class _Activation:
        @staticmethod
        def forward(x, params, config, need_backward):
            return kernels().activation_forward(kind, x, need_backward)

        @staticmethod
        def backward(dy, ctx):
            return kernels().activation_backward(kind, dy, ctx)

    _Activation.__name__ = _Activation.__qualname__ = kind.capitalize() + "Torch"
    return _Activation


ReluTorch = _activation("relu")
SigmoidTorch = _activation("sigmoid")
TanhTorch = _activation("tanh")


class DenseTorch:
    """y = x W^T + b with ``torch.nn.functional.linear``; explicit matrix-product gradients."""

    @staticmethod
    def forward(x, params, config, need_backward):
        return kernels().dense_forward(x, params, config, need_backward)

    @staticmethod
    def backward(dy, ctx, need_input_grad=True):
        return kernels().dense_backward(dy, ctx, need_input_grad)


@hookimpl
def cnnkit_register_variants(register):
    def reg(layer_type, impl, what, capabilities=()):
        register(layer_type, "torch", impl, priority=PRIORITY, dtypes=_DTYPES,
                 capabilities=capabilities, description=f"PyTorch {what} (imported on first use)")

    reg("conv2d", Conv2dTorch, "conv2d + convolution_backward", _CONV_CAPS)
    reg("maxpool2d", MaxPool2dTorch, "max_pool2d with indices", _POOL_CAPS)
    reg("avgpool2d", AvgPool2dTorch, "avg_pool2d", _POOL_CAPS + ("count_include_pad",))
    reg("relu", ReluTorch, "relu")
    reg("sigmoid", SigmoidTorch, "sigmoid")
    reg("tanh", TanhTorch, "tanh")
    reg("dense", DenseTorch, "linear", ("bias",))
