"""The one place that turns layer geometry into sizes: output lengths, "same" padding, pooling
windows and shape formatting.

Layers (shape inference), variants (output allocation), the conformance kit's built-in cases
and the command line all call these, so a formula is never written twice.  The conformance
kit's *loop references* deliberately do not: they resolve padding on their own, so a bug here
shows up as a mismatch instead of being shared by the code under test and its oracle.
"""
from __future__ import annotations


def conv_output_size(size: int, pad_before: int, pad_after: int, kernel: int, stride: int,
                     dilation: int = 1) -> int:
    """Output length of a convolution along one axis (PyTorch's formula); < 1 means the
    (dilated) kernel does not fit the padded input."""
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding giving ``ceil(size / stride)`` outputs; an odd total puts the
    extra row/column after (bottom/right), as TensorFlow and PyTorch do."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def conv_transpose_output_size(size: int, kernel: int, stride: int, padding: int,
                               output_padding: int, dilation: int = 1) -> int:
    """Output length of a transposed convolution along one axis (PyTorch's formula)."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def pool_output_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool,
                     padding_after: int | None = None, dilation: int = 1) -> int:
    """Output length of a pooling along one axis, PyTorch's rule (ONNX's since opset 19).

    ``padding`` is before the input, ``padding_after`` (default: ``padding``) after it; the
    window spans ``dilation * (kernel - 1) + 1`` positions.  With ``ceil_mode`` the last window
    may hang over the bottom/right edge, but it must start inside the input or the left
    padding; otherwise it is dropped.  < 1 means the window does not fit the padded input.
    """
    after = padding if padding_after is None else padding_after
    span = size + padding + after - (dilation * (kernel - 1) + 1)
    if span < 0:
        return 0
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + padding:
            out -= 1
    else:
        out = span // stride + 1
    return out


def pool_overhang(size: int, out: int, kernel: int, stride: int, padding: int,
                  dilation: int = 1) -> int:
    """Padding needed after the input so every (ceil-mode) window lies inside the array
    (``padding`` is the padding before the input)."""
    return max(0, (out - 1) * stride + dilation * (kernel - 1) + 1 - size - padding)


def fmt_shape(shape) -> str:
    """A shape for messages, the batch axis shown as N when unknown: ``(N, 3, 32, 32)``."""
    return "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
