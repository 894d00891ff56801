"""Activation layers, element-wise or along one axis (variants: ``cnnkit.builtin``, layer types
``relu``, ``sigmoid``, ``tanh``, ``leakyrelu``, ``elu``, ``gelu``, ``scaledtanh``, ``softmax``,
``logsoftmax``, ``clip``, ``relu6``)."""
from __future__ import annotations

from .._checks import is_int, real
from .base import _axis, _Elementwise

__all__ = ["ReLU", "Sigmoid", "Tanh", "LeakyReLU", "ELU", "GELU", "ScaledTanh", "Softmax",
           "LogSoftmax", "Clip", "ReLU6"]


class ReLU(_Elementwise):
    layer_type = "relu"


class Sigmoid(_Elementwise):
    layer_type = "sigmoid"


class Tanh(_Elementwise):
    layer_type = "tanh"


class LeakyReLU(_Elementwise):
    """x for x > 0, ``negative_slope * x`` otherwise (the gradient at 0 is the slope, as in
    PyTorch)."""

    layer_type = "leakyrelu"

    def __init__(self, negative_slope=0.01, *, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        self.negative_slope = real(negative_slope, "negative_slope", f"{self.name} (LeakyReLU)")
        self.config = {"negative_slope": self.negative_slope}

    def get_config(self):
        return {"negative_slope": self.negative_slope}


class ELU(_Elementwise):
    """x for x > 0, ``alpha * (exp(x) - 1)`` otherwise."""

    layer_type = "elu"

    def __init__(self, alpha=1.0, *, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        self.alpha = real(alpha, "alpha", f"{self.name} (ELU)")
        self.config = {"alpha": self.alpha}

    def get_config(self):
        return {"alpha": self.alpha}


class GELU(_Elementwise):
    """x * Phi(x) with the exact normal CDF (``approximate="none"``), or PyTorch's tanh form
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) with ``approximate="tanh"``."""

    layer_type = "gelu"
    FEATURES = ("approximate",)

    def __init__(self, approximate="none", *, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        if approximate not in ("none", "tanh"):
            raise ValueError(f"{self.name} (GELU): approximate must be 'none' or 'tanh', got "
                             f"{approximate!r}")
        self.approximate = approximate
        self.config = {"approximate": approximate}

    def get_config(self):
        return {"approximate": self.approximate}

    def features(self):
        return ("approximate",) if self.approximate == "tanh" else ()


class ScaledTanh(_Elementwise):
    """``amplitude * tanh(slope * x)``; the defaults 1.7159 and 2/3 are LeCun et al. (1998)'s
    LeNet-5 squashing function (f(1) = 1, f(-1) = -1, largest second derivative at +-1)."""

    layer_type = "scaledtanh"

    def __init__(self, amplitude=1.7159, slope=2.0 / 3.0, *, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} (ScaledTanh)"
        self.amplitude = real(amplitude, "amplitude", owner)
        self.slope = real(slope, "slope", owner)
        self.config = {"amplitude": self.amplitude, "slope": self.slope}

    def get_config(self):
        return {"amplitude": self.amplitude, "slope": self.slope}


class _SoftmaxBase(_Elementwise):
    def __init__(self, axis=1, *, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        if not is_int(axis):
            raise TypeError(f"{self.name} ({type(self).__name__}): axis must be an int, got "
                            f"{axis!r}")
        self.axis = int(axis)
        self.config = {"axis": self.axis}

    def get_config(self):
        return {"axis": self.axis}

    def check_input_shape(self, shape):
        super().check_input_shape(shape)
        _axis(self.axis, len(shape), f"{self.name} ({type(self).__name__})")


class Softmax(_SoftmaxBase):
    """exp(x) / sum(exp(x)) along ``axis`` (default 1: classes or channels), max-shifted."""

    layer_type = "softmax"


class LogSoftmax(_SoftmaxBase):
    """x - logsumexp(x) along ``axis`` (default 1), max-shifted."""

    layer_type = "logsoftmax"


class Clip(_Elementwise):
    """x limited to [``min_value``, ``max_value``] (either bound may be None: no limit), as
    ``torch.clamp`` and ONNX's Clip.  The gradient passes where the input lies strictly inside
    the bounds (PyTorch's ``hardtanh`` rule: 0 at a bound); NaN propagates."""

    layer_type = "clip"

    def __init__(self, min_value=None, max_value=None, *, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} ({type(self).__name__})"
        self.min_value = None if min_value is None else real(min_value, "min_value", owner)
        self.max_value = None if max_value is None else real(max_value, "max_value", owner)
        if None not in (self.min_value, self.max_value) and self.min_value > self.max_value:
            raise ValueError(f"{owner}: min_value {self.min_value} is larger than max_value "
                             f"{self.max_value}")
        self.config = {"min": self.min_value, "max": self.max_value}

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value}


class ReLU6(Clip):
    """min(max(x, 0), 6) (MobileNet's activation; ``torch.nn.ReLU6``)."""

    layer_type = "relu6"

    def __init__(self, *, impl=None, name=None):
        super().__init__(0.0, 6.0, impl=impl, name=name)

    def get_config(self):
        return {}
