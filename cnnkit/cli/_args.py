"""Argument types and shared options of the ``cnnkit`` commands (argparse ``type=``
callables raise ``ArgumentTypeError``, which argparse reports with exit status 2)."""
from __future__ import annotations

import argparse
import ast
import re


def _int_at_least(minimum, what, name):
    """An argparse ``type=`` for integers >= ``minimum`` (anything else: "expected a {what}")."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {what}, got {text!r}")
        return value
    parse.__name__ = parse.__qualname__ = name
    return parse


_positive_int = _int_at_least(1, "positive integer", "_positive_int")
_non_negative_int = _int_at_least(0, "non-negative integer", "_non_negative_int")


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _impl_choices(text):
    """``conv2d=numpy,relu=cython`` -> {layer type: variant}, each checked against the
    registry now, so a misspelling fails before any data is loaded."""
    from ..plugins import SelectionError
    from ._common import _registry

    out = {}
    for item in text.split(","):
        key, sep, val = item.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise argparse.ArgumentTypeError(f"expected layer_type=variant[,...], got {text!r}")
        out[key.strip().lower()] = val.strip()
    try:
        _registry().check_choices(out, "--impl", variants=True)
    except SelectionError as exc:
        # argparse already says "argument --impl:"
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--impl: ")) from None
    return out


def parse_shape(text: str) -> tuple:
    """``"64,3,32,32"`` (also ``64x3x32x32`` or ``(64, 3, 32, 32)``) -> ``(64, 3, 32, 32)``."""
    body = re.sub(r"\s+", "", text).strip("()[]")
    if not re.fullmatch(r"\d+([,x]\d+)*", body) or min(
            int(p) for p in re.split("[,x]", body)) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a shape of positive integers with the batch first, like 64,3,32,32; "
            f"got {text!r}")
    return tuple(int(p) for p in re.split("[,x]", body))


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets (``padding=(1,2),stride=2``)."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _parse_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: padding=same


def parse_layer_args(text: str) -> dict:
    """``"kernel_size=3,padding=(1,2),bias=false"`` -> keyword arguments of the layer."""
    out = {}
    for item in _split_top_level(text):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier() or not value.strip():
            raise argparse.ArgumentTypeError(
                f"expected name=value[,name=value...] (like kernel_size=3,padding=1), got "
                f"{item!r} in {text!r}")
        out[key] = _parse_value(value.strip())
    return out


def _dtype_arg(parser):
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="input dtype (default: float32)")
