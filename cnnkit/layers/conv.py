"""Convolution layers: Conv2D and ConvTranspose2D (variants: ``cnnkit.builtin``, layer types
``conv2d`` and ``convtranspose2d``)."""
from __future__ import annotations

import numpy as np

from .._checks import pair, positive_int
from .._shapes import conv_output_size, conv_transpose_output_size, same_padding
from .base import Layer, _check_conv_input, _conv_features, _init_weight_and_bias


def _set_channels_kernel_stride(layer, in_channels, out_channels, kernel_size, stride, owner):
    layer.in_channels = positive_int(in_channels, "in_channels", owner)
    layer.out_channels = positive_int(out_channels, "out_channels", owner)
    layer.kernel_size = pair(kernel_size, "kernel_size", owner)
    layer.stride = pair(stride, "stride", owner)

__all__ = ["Conv2D", "ConvTranspose2D", "LENET5_C3_TABLE", "CONNECTION_TABLES"]


def _lenet5_c3_table():
    # LeCun, Bottou, Bengio, Haffner (1998), Table I: which of S2's 6 maps feed each of C3's 16.
    # The first six take 3 contiguous maps, the next six 4 contiguous maps, three take 4
    # non-contiguous maps, the last one all six.
    table = [[(j + d) % 6 for d in range(3)] for j in range(6)]
    table += [[(j + d) % 6 for d in range(4)] for j in range(6)]
    table += [[0, 1, 3, 4], [1, 2, 4, 5], [0, 2, 3, 5], list(range(6))]
    out = np.zeros((16, 6), dtype=bool)
    for o, ins in enumerate(table):
        out[o, ins] = True
    out.setflags(write=False)
    return out


#: The connection table of LeNet-5's C3 layer (LeCun et al. 1998, Table I), stored as
#: Conv2D's ``connections`` expects it: (out_channels, in_channels) = (16, 6), True where an
#: output map reads an input map (60 of the 96 pairs).
LENET5_C3_TABLE = _lenet5_c3_table()

#: Connection tables by the names configs may give for ``connections``.
CONNECTION_TABLES = {"lenet5_c3": LENET5_C3_TABLE}


def _connection_table(connections, out_channels, in_channels, groups, owner):
    """``connections`` (a name of :data:`CONNECTION_TABLES`, or a boolean / 0-1 matrix) as a
    read-only bool array (out_channels, in_channels)."""
    if isinstance(connections, str):
        if connections not in CONNECTION_TABLES:
            raise ValueError(f"{owner}: unknown connection table {connections!r}; known: "
                             f"{', '.join(sorted(CONNECTION_TABLES))}, or give a boolean "
                             "(out_channels, in_channels) matrix")
        table = CONNECTION_TABLES[connections]
    else:
        try:
            arr = np.asarray(connections)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{owner}: connections must be a boolean (out_channels, "
                            f"in_channels) matrix, got {connections!r}") from exc
        if arr.dtype == bool:
            table = arr
        elif arr.dtype.kind in "iuf" and np.all((arr == 0) | (arr == 1)):
            table = arr == 1
        else:
            raise TypeError(f"{owner}: connections must be a boolean or 0/1 (out_channels, "
                            f"in_channels) matrix, got dtype {arr.dtype} "
                            f"{'with other values than 0 and 1' if arr.dtype.kind in 'iuf' else ''}")
    if table.shape != (out_channels, in_channels):
        raise ValueError(f"{owner}: connections has shape {table.shape}, expected "
                         f"(out_channels, in_channels) = ({out_channels}, {in_channels})")
    empty = np.flatnonzero(~table.any(axis=1))
    if empty.size:
        raise ValueError(f"{owner}: output channels {empty.tolist()} have no input in the "
                         "connection table (each output needs at least one)")
    if groups != 1:
        raise ValueError(f"{owner}: connections and groups={groups} cannot be combined "
                         "(a connection table already says which inputs each output reads; "
                         "use groups=1)")
    table = np.array(table, dtype=bool)
    table.setflags(write=False)
    return table


def _check_groups(layer, owner):
    if layer.in_channels % layer.groups or layer.out_channels % layer.groups:
        raise ValueError(f"{owner}: in_channels ({layer.in_channels}) and out_channels "
                         f"({layer.out_channels}) must both be divisible by groups "
                         f"({layer.groups})")


class Conv2D(Layer):
    """2-D cross-correlation over NCHW input, PyTorch's weight layout (out, in/groups, kh, kw).

    ``connections``: a boolean (out_channels, in_channels) matrix (or 0/1, or a name of
    :data:`CONNECTION_TABLES` such as ``"lenet5_c3"``) saying which input maps each output map
    reads (LeNet-5's non-full connection; groups must be 1).  The layer computes the dense
    convolution with the weights of unconnected pairs held at zero: they start at zero, their
    gradients are exactly zero, and the variants ignore whatever they hold.
    ``flip_kernel=True``: true convolution, the kernel turned 180 degrees (padding unchanged);
    the weight gradient is turned back, so it is the gradient of the stored weight.

    ``padding`` is an int, an (h, w) pair, ``"valid"`` (0) or ``"same"`` (output size
    ceil(input / stride); odd padding puts the extra row/column at the bottom/right, as PyTorch
    and TensorFlow do).  ``config["padding"]`` is (top, bottom, left, right); with ``"same"``
    it depends on the input size and is resolved per input shape (:meth:`resolve`).
    """

    layer_type = "conv2d"
    FEATURES = ("stride", "padding", "asymmetric_padding", "dilation", "groups", "bias",
                "connections", "flip_kernel")
    input_rank = 4

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, *, connections=None, flip_kernel=False,
                 weight_init="he_uniform", bias_init="zeros", dtype=np.float32, rng=None,
                 impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} (Conv2D)"
        _set_channels_kernel_stride(self, in_channels, out_channels, kernel_size, stride, owner)
        self.dilation = pair(dilation, "dilation", owner)
        self.groups = positive_int(groups, "groups", owner)
        _check_groups(self, owner)
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(f"{owner}: padding must be 'valid', 'same', an int or a pair, "
                                 f"got {padding!r}")
            self.padding = padding
        else:
            self.padding = pair(padding, "padding", owner, minimum=0)
        if not isinstance(flip_kernel, (bool, np.bool_)):
            raise TypeError(f"{owner}: flip_kernel must be True or False, got {flip_kernel!r}")
        self.flip_kernel = bool(flip_kernel)
        self._connections_spec = connections
        self.connections = (None if connections is None else _connection_table(
            connections, self.out_channels, self.in_channels, self.groups, owner))
        kh, kw = self.kernel_size
        cin_g = self.in_channels // self.groups
        _init_weight_and_bias(self, (self.out_channels, cin_g, kh, kw), (self.out_channels,),
                              cin_g * kh * kw, self.out_channels * kh * kw, bias=bias,
                              weight_init=weight_init, bias_init=bias_init, dtype=dtype, rng=rng,
                              owner=owner)
        if self.connections is not None:
            self.params["weight"] *= self.connections[:, :, None, None]
        ph, pw = (0, 0) if isinstance(self.padding, str) else self.padding
        # kernel size and channels, for the supports() checks of variants limited to some
        # kernels or sizes (winograd: 3x3 only, picked automatically from 16 channels)
        self.config = {"stride": self.stride, "padding": (ph, ph, pw, pw),
                       "dilation": self.dilation, "groups": self.groups,
                       "kernel_size": self.kernel_size,
                       "channels": (self.in_channels, self.out_channels)}
        # only when used, so the configuration (and the autotuning keys made from it) of a
        # plain convolution stays as it was
        if self.connections is not None:
            self.config["connections"] = tuple(map(tuple, self.connections.tolist()))
        if self.flip_kernel:
            self.config["flip_kernel"] = True

    def get_config(self):
        cfg = {"in_channels": self.in_channels, "out_channels": self.out_channels,
               "kernel_size": self.kernel_size, "stride": self.stride,
               "padding": self.padding, "dilation": self.dilation, "groups": self.groups,
               "bias": self.params["bias"] is not None}
        if self.connections is not None:
            spec = self._connections_spec
            cfg["connections"] = (spec if isinstance(spec, str)
                                  else self.connections.astype(int).tolist())
        if self.flip_kernel:
            cfg["flip_kernel"] = True
        return cfg

    def _resolve_padding(self, h, w):
        """(top, bottom, left, right) padding for an h x w input."""
        if self.padding == "same":
            return (same_padding(h, self.kernel_size[0], self.stride[0], self.dilation[0])
                    + same_padding(w, self.kernel_size[1], self.stride[1], self.dilation[1]))
        return self.config["padding"]

    def _resolve(self, input_shape):
        if self.padding != "same":
            return self.config, self.features()
        pads = self._resolve_padding(input_shape[2], input_shape[3])
        return dict(self.config, padding=pads), self._features_for(pads)

    def _features_for(self, padding):
        pt, pb, pl, pr = padding
        used = _conv_features(self, padding=any(padding), asymmetric_padding=pt != pb or pl != pr)
        return used + tuple(name for name, on in (("connections", self.connections is not None),
                                                  ("flip_kernel", self.flip_kernel)) if on)

    def features(self):
        return self._features_for(self.config["padding"])

    def output_shape(self, input_shape):
        owner = f"{self.name} (Conv2D)"
        n, c, h, w = _check_conv_input(self, input_shape, owner)
        pt, pb, pl, pr = self._resolve_padding(h, w)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        oh = conv_output_size(h, pt, pb, kh, sh, dh)
        ow = conv_output_size(w, pl, pr, kw, sw, dw)
        if oh < 1 or ow < 1:
            raise ValueError(f"{owner}: (dilated) kernel {dh * (kh - 1) + 1}x{dw * (kw - 1) + 1} "
                             f"is larger than the padded input {h + pt + pb}x{w + pl + pr} (input "
                             f"shape {tuple(input_shape)})")
        return (n, self.out_channels, oh, ow)


class ConvTranspose2D(Layer):
    """Transposed 2-D convolution (the gradient of Conv2D w.r.t. its input), PyTorch's
    ``conv_transpose2d``: weight (in, out/groups, kh, kw), output size
    ``(H - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1``.

    The default initialisation follows PyTorch's fan convention for transposed convolutions
    (fan_in = out/groups * kh * kw, from the weight's second axis).
    """

    layer_type = "convtranspose2d"
    FEATURES = ("stride", "padding", "output_padding", "dilation", "groups", "bias")
    input_rank = 4

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, *, weight_init="he_uniform",
                 bias_init="zeros", dtype=np.float32, rng=None, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        owner = f"{self.name} (ConvTranspose2D)"
        _set_channels_kernel_stride(self, in_channels, out_channels, kernel_size, stride, owner)
        self.padding = pair(padding, "padding", owner, minimum=0)
        self.output_padding = pair(output_padding, "output_padding", owner, minimum=0)
        self.dilation = pair(dilation, "dilation", owner)
        self.groups = positive_int(groups, "groups", owner)
        _check_groups(self, owner)
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if op >= max(s, d):
                raise ValueError(f"{owner}: output_padding {self.output_padding} must be smaller "
                                 f"than stride {self.stride} or dilation {self.dilation}")
        kh, kw = self.kernel_size
        cout_g = self.out_channels // self.groups
        # PyTorch's transposed-convolution fans: fan_in from the weight's second axis
        _init_weight_and_bias(self, (self.in_channels, cout_g, kh, kw), (self.out_channels,),
                              cout_g * kh * kw, self.in_channels * kh * kw, bias=bias,
                              weight_init=weight_init, bias_init=bias_init, dtype=dtype, rng=rng,
                              owner=owner)
        self.config = {"stride": self.stride, "padding": self.padding,
                       "output_padding": self.output_padding, "dilation": self.dilation,
                       "groups": self.groups}

    def get_config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "output_padding": self.output_padding, "groups": self.groups,
                "bias": self.params["bias"] is not None, "dilation": self.dilation}

    def features(self):
        return _conv_features(self, padding=self.padding != (0, 0),
                              output_padding=self.output_padding != (0, 0))

    def output_shape(self, input_shape):
        owner = f"{self.name} (ConvTranspose2D)"
        n, c, h, w = _check_conv_input(self, input_shape, owner)
        out = [conv_transpose_output_size(size, k, s, p, op, d)
               for size, k, s, p, op, d in zip((h, w), self.kernel_size, self.stride,
                                               self.padding, self.output_padding, self.dilation)]
        if min(out) < 1:
            raise ValueError(f"{owner}: padding {self.padding} leaves no output for input shape "
                             f"{tuple(input_shape)} (output would be {out[0]}x{out[1]})")
        return (n, self.out_channels, out[0], out[1])
