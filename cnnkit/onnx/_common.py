"""What ONNX export and import share: the lazy import of the ``onnx`` package and protobuf's
message size limit."""
from __future__ import annotations

INSTALL_HINT = 'pip install "cnnkit[onnx]"'
#: protobuf cannot serialise or parse a message of 2 GiB or more
PROTOBUF_LIMIT = 2**31 - 1


def require_onnx():
    """The ``onnx`` module, or an ImportError saying how to install it."""
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(f"ONNX support needs the 'onnx' package, which is not installed "
                          f"({exc}); install it with: {INSTALL_HINT}") from None
    return onnx
