"""``cnnkit export MODEL OUT.onnx [--opset N]``: write a one-file model (``model.save``,
``cnnkit train --output``) as an ONNX model (:func:`cnnkit.onnx.export`; needs
``cnnkit[onnx]``)."""
from __future__ import annotations

from ._args import _positive_int
from ._common import _registry


def add_parser(sub) -> None:
    """Add ``export`` to the ``cnnkit`` subcommands."""
    from ..onnx.export import DEFAULT_OPSET, MIN_OPSET

    export = sub.add_parser(
        "export", help="write a saved model as an ONNX model",
        description="Read MODEL, a one-file cnnkit model (written by model.save or cnnkit train), "
        "and write it to OUT as an ONNX model in inference form with a dynamic batch axis "
        "(needs the onnx package: pip install \"cnnkit[onnx]\"). The file is written atomically.")
    export.add_argument("model", metavar="MODEL", help="a cnnkit model file (.safetensors or .npz)")
    export.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write")
    export.add_argument("--opset", type=_positive_int, default=DEFAULT_OPSET,
                        help=f"ONNX opset to write (from {MIN_OPSET}; default {DEFAULT_OPSET})")
    export.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from ..modelfile import load_model
    from ..onnx import export
    from ..onnx.export import require_onnx

    require_onnx()  # before reading the model: the missing package is the first thing to fix
    _registry()  # a broken third-party plugin is for `cnnkit plugins` to report, not a warning
    model = load_model(args.model)
    export(model, args.out, opset=args.opset)
    shapes = ", ".join("(N, " + ", ".join(map(str, n.shape[1:])) + ")" for n in model.inputs)
    print(f"wrote {args.out}: {model.name}, {len(model.layers)} layers, input {shapes}, "
          f"opset {args.opset}")
    return 0
