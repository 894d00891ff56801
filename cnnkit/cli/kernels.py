"""``cnnkit kernels [LAYER_TYPE] [--json]``: layer types and their variants (plugin, priority,
dtypes, capabilities); with ``--explain --shape N,C,H,W [--args k=v,...]`` it builds the layer
as real use does and says which variant would compute it and why each other one would not
(including when the choice comes from the autotuning cache)."""
from __future__ import annotations

import json
import sys
import textwrap

from ._args import _dtype_arg, parse_layer_args, parse_shape
from ._common import CommandError, _fail, _format_table, _registry
from ._layer import build_layer


def add_parser(sub) -> None:
    """Add ``kernels`` to the ``cnnkit`` subcommands."""
    kernels = sub.add_parser(
        "kernels", help="list layer types and their variants; explain which variant a layer uses",
        description="List every layer type with its registered variants (plugin, priority, "
        "dtypes, capabilities). With --explain, build LAYER_TYPE for an input shape and say "
        "which variant would compute it and why each other variant would not.")
    kernels.add_argument("layer_type", nargs="?", metavar="LAYER_TYPE",
                         help="only this layer type (required with --explain)")
    kernels.add_argument("--explain", action="store_true",
                         help="explain the variant selection for --shape/--args")
    kernels.add_argument("--shape", type=parse_shape, metavar="N,C,H,W",
                         help="input shape, batch first (with --explain)")
    kernels.add_argument("--args", type=parse_layer_args, default={}, metavar="K=V,...",
                         help="layer arguments, e.g. kernel_size=3,padding=1 (in_channels, "
                         "in_features, num_features and channels come from the shape; "
                         "out_channels/out_features default to the same)")
    kernels.add_argument("--impl", metavar="VARIANT", default=None,
                         help="explain an explicit choice, as impl= would (CNNKIT_IMPL is "
                         "honoured too)")
    _dtype_arg(kernels)
    kernels.add_argument("--json", action="store_true", help="machine-readable output")
    kernels.set_defaults(func=cmd_kernels, _parser=kernels)



_WIDTH = 100


def _fold(label: str, text: str) -> str:
    """``label`` + ``text`` folded to 100 columns, continuation lines under the text."""
    return textwrap.fill(text, width=_WIDTH, initial_indent=label,
                         subsequent_indent=" " * len(label), break_on_hyphens=False,
                         break_long_words=False)


def _config_text(config: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items()) or "-"


def cmd_kernels(args) -> int:
    reg = _registry()
    layer_type = args.layer_type.lower() if args.layer_type else None
    if layer_type is not None and layer_type not in reg.layer_types \
            and layer_type not in reg.variants:
        return _fail("kernels", f"unknown layer type {args.layer_type!r}; registered: "
                     + ", ".join(sorted(reg.layer_types)))
    if args.explain:
        if layer_type is None or args.shape is None:
            args._parser.error("--explain needs LAYER_TYPE and --shape "
                               "(e.g. cnnkit kernels conv2d --explain --shape 64,3,32,32)")
        try:
            return _explain(reg, layer_type, args)
        except CommandError as exc:
            return _fail("kernels", str(exc))
    if args.shape is not None or args.args or args.impl:
        args._parser.error("--shape, --args and --impl go with --explain")
    return _list_kernels(reg, layer_type, args.json)


def _list_kernels(reg, only, as_json) -> int:
    types = sorted(set(reg.layer_types) | set(reg.variants))
    if only is not None:
        types = [only]
    rows = []
    for t in types:
        cls, plugin = reg.layer_types.get(t, (None, None))
        rows.append({
            "layer_type": t,
            "class": f"{cls.__module__}.{cls.__qualname__}" if cls is not None else None,
            "plugin": plugin,
            "features": list(getattr(cls, "FEATURES", ()) or ()),
            "variants": [v.describe() for v in reg.variants_for(t)],
        })
    if as_json:
        json.dump({"layer_types": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for r in rows:
        origin = f"{r['class']}, plugin {r['plugin']}" if r["class"] else "no layer class"
        print(f"{r['layer_type']}  ({origin})")
        if r["features"]:
            print(f"  features: {', '.join(r['features'])}")
        if not r["variants"]:
            print("  no variants: the layer computes itself")
            continue
        # one row per variant, its capabilities and description folded beneath it, so the
        # listing fits 100 columns however long a plugin's description is
        table = [("variant", "plugin", "priority", "dtypes")]
        for v in r["variants"]:
            table.append((v["name"], v["plugin"], str(v["priority"]), ",".join(v["dtypes"])))
        lines = _format_table(table, right={2})
        print("  " + lines[0])
        for line, v in zip(lines[1:], r["variants"]):
            print("  " + line)
            for label, text in (("capabilities: ", ", ".join(v["capabilities"]) or "-"),
                                ("", v["description"] or "")):
                if text:
                    print(textwrap.fill(text, width=_WIDTH, initial_indent=" " * 6 + label,
                                        subsequent_indent=" " * (6 + len(label)),
                                        break_on_hyphens=False))
        print()
    return 0


def _explain(reg, layer_type, args) -> int:
    from ..plugins import SelectionError

    layer, out_shape = build_layer(reg, layer_type, args.shape, args.args, args.dtype)
    resolved = layer.resolution(tuple(args.shape))  # what the variants would receive
    features, config = tuple(resolved.features), resolved.config
    variants = reg.variants_for(layer_type)
    choice, source = reg.explicit_choice(layer_type, args.impl)
    result = {
        "layer_type": layer_type,
        "layer": repr(layer),
        "input_shape": list(args.shape),
        "output_shape": list(out_shape),
        "dtype": args.dtype,
        "features": list(features),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()},
        "explicit_choice": None if choice is None else {"variant": choice, "source": source},
        "chosen": None,
        "how": None,
        "error": None,
        "variants": [],
    }
    status = 0
    try:
        winner, how, reasons = reg.explain(layer_type, dtype=args.dtype, features=features,
                                           config=config, impl=args.impl,
                                           shape=tuple(args.shape))
    except SelectionError as exc:
        winner, how, status = None, None, 1
        result["error"] = str(exc)
        # what each variant would say about this request on its own
        reasons = {}
        for v in variants:
            refusal = v.refusal(args.dtype, features, config)
            reasons[v.name] = refusal if refusal else "can serve this request"
    if winner is not None:
        result["chosen"], result["how"] = winner.name, how
    for v in variants:
        result["variants"].append({
            "name": v.name, "plugin": v.plugin, "priority": v.priority,
            "chosen": winner is not None and v.name == winner.name,
            "reason": how if winner is not None and v.name == winner.name else reasons.get(v.name),
        })
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return status
    print(_fold("layer:    ", repr(layer)))
    print(f"input:    {tuple(args.shape)} {args.dtype} -> output {out_shape}")
    print(f"features: {', '.join(features) or 'none'}")
    print(_fold("config:   ", _config_text(config)))
    if choice is not None:
        print(f"explicit choice: {choice!r} (by {source})")
    if winner is not None:
        print(_fold("chosen:   ", f"{winner.name} (plugin {winner.plugin}, priority "
                                  f"{winner.priority}): {how}"))
    else:
        print(f"chosen:   none: {result['error']}")
    others = [v for v in result["variants"] if not v["chosen"]]
    if others:
        print("not chosen:" if winner is not None else "variants:")
        width = max(len(v["name"]) for v in others)
        for v in others:
            print(_fold(f"  {v['name']:<{width}}  ", f"(plugin {v['plugin']}, priority "
                                                     f"{v['priority']}): {v['reason']}"))
    return status
