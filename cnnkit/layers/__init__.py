"""Layers: the user-facing objects, one module per family.

Each layer validates its inputs, resolves its configuration against the input shape, asks the
plugin registry for the variant that computes it and keeps what its backward pass needs.  The
forward and backward maths live in the variants (``cnnkit.builtin`` for the built-ins); a layer
holds parameters, hyper-parameters and shape inference.

=============  =================================================================
module         layers
=============  =================================================================
``base``       :class:`Layer` (the base class every layer, built-in or plugin, derives from)
``conv``       :class:`Conv2D`, :class:`ConvTranspose2D`
``pool``       :class:`MaxPool2D`, :class:`AvgPool2D`, :class:`GlobalAvgPool2D`,
               :class:`Subsampling`
``activation`` :class:`ReLU`, :class:`Sigmoid`, :class:`Tanh`, :class:`LeakyReLU`,
               :class:`ELU`, :class:`GELU`, :class:`ScaledTanh`, :class:`Softmax`,
               :class:`LogSoftmax`
``dropout``    :class:`Dropout`
``norm``       :class:`BatchNorm1D`, :class:`BatchNorm2D`
``dense``      :class:`Dense`
``reshape``    :class:`Flatten`, :class:`ZeroPad2D`
``merge``      :class:`Add`, :class:`Concat`
=============  =================================================================
"""
from __future__ import annotations

from .activation import (ELU, GELU, LeakyReLU, LogSoftmax, ReLU, ScaledTanh, Sigmoid, Softmax,
                         Tanh)
from .base import FLOAT_DTYPES, Layer, Resolution
from .conv import Conv2D, ConvTranspose2D
from .dense import Dense
from .dropout import Dropout
from .merge import Add, Concat
from .norm import BatchNorm1D, BatchNorm2D
from .pool import AvgPool2D, GlobalAvgPool2D, MaxPool2D, Subsampling
from .reshape import Flatten, ZeroPad2D

BUILTIN_LAYERS = (Conv2D, MaxPool2D, AvgPool2D, ReLU, Sigmoid, Tanh, Flatten, Dense, Add,
                  LeakyReLU, ELU, GELU, ScaledTanh, Softmax, LogSoftmax, Dropout, BatchNorm2D,
                  BatchNorm1D, GlobalAvgPool2D, Subsampling, ZeroPad2D, ConvTranspose2D, Concat)

__all__ = ["FLOAT_DTYPES", "Layer", "Resolution", *(cls.__name__ for cls in BUILTIN_LAYERS)]

# The public path of every layer class stays cnnkit.layers.<Name> (what reprs, listings and
# pickles show), whichever family module defines it.
for _cls in (Layer, Resolution, *BUILTIN_LAYERS):
    _cls.__module__ = __name__
del _cls
