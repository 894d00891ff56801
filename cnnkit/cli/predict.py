"""``cnnkit predict MODEL DATA --out FILE``: a saved model's outputs on an array of inputs,
written atomically; under ``mpiexec`` with ``--distributed`` the ranks share the inputs."""
from __future__ import annotations

import os
import sys

from ._args import _positive_int
from ._common import CommandError, _fail

_FORMATS = (".npy", ".npz", ".csv")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict", help="run a saved model on an array of inputs and write its predictions",
        description="Run MODEL (a file written by cnnkit train or model.save) in inference mode "
        "on DATA and write the predictions to --out: .npy (the outputs), .npz (outputs, and "
        "labels = the arg-max class for (N, classes) outputs) or .csv (index,label per row).  "
        "With --distributed under mpiexec -n N the ranks share the inputs; the file holds "
        "them in DATA's order.")
    p.add_argument("model", metavar="MODEL", help="a cnnkit model file (.safetensors or .npz)")
    p.add_argument("data", metavar="DATA",
                   help="inputs: a .npy array, or an .npz holding x (or x_test)")
    p.add_argument("--out", "-o", metavar="FILE", required=True,
                   help="where to write the predictions (.npy, .npz or .csv)")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="default: 256")
    p.add_argument("--distributed", action="store_true",
                   help="share the inputs across the ranks of mpiexec -n N (needs mpi4py)")
    p.set_defaults(func=cmd_predict)


def _inputs(path, dtype):
    import numpy as np

    if not os.path.isfile(path):
        raise CommandError(f"{path}: no such file")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as data:
                key = next((k for k in ("x", "x_test") if k in data.files), None)
                if key is None:
                    raise CommandError(f"{path}: the .npz holds no array x or x_test (it "
                                       f"holds {', '.join(data.files) or 'nothing'})")
                x = data[key]
        else:
            x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path}: cannot read the inputs: {exc}") from None
    if x.dtype.kind not in "fiu":
        raise CommandError(f"{path}: expected numeric inputs, got dtype {x.dtype}")
    if x.ndim < 2 or len(x) == 0:
        raise CommandError(f"{path}: expected a non-empty batch of inputs (N, ...), got shape "
                           f"{x.shape}")
    return np.ascontiguousarray(x, dtype=dtype)


def _write(path, outputs):
    import numpy as np

    from ..io import atomic_open

    labels = outputs.argmax(axis=1) if outputs.ndim == 2 else None
    if path.endswith(".npy"):
        with atomic_open(path, "wb") as f:
            np.save(f, outputs)
    elif path.endswith(".npz"):
        with atomic_open(path, "wb") as f:
            np.savez(f, outputs=outputs, **({} if labels is None else {"labels": labels}))
    else:
        if labels is None:
            raise CommandError(f"--out {path}: a .csv holds class labels, and the model's "
                               f"outputs have shape {outputs.shape}; write .npy or .npz")
        with atomic_open(path, "w") as f:
            f.write("index,label\n")
            f.writelines(f"{i},{label}\n" for i, label in enumerate(labels.tolist()))


def cmd_predict(args) -> int:
    dist = None
    try:
        if not args.out.endswith(_FORMATS):
            raise CommandError(f"--out {args.out}: name a .npy, .npz or .csv file")
        folder = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(folder):
            raise CommandError(f"--out {args.out}: folder {folder} does not exist")
        from .. import distributed
        from ..modelfile import load_model

        if args.distributed:
            dist = distributed.context(True)
        model = load_model(args.model)
        x = _inputs(args.data, model.dtype)
        outputs = distributed.predict(model, x, batch_size=args.batch_size,
                                      distributed=dist or False)
        if dist is None or dist.is_root:
            _write(args.out, outputs)
            print(f"predictions for {len(x)} inputs written to {os.path.abspath(args.out)}")
        return 0
    except (CommandError, ValueError, TypeError, OSError) as exc:
        where = f"rank {dist.rank}: " if dist is not None and dist.size > 1 else ""
        status = _fail("predict", where + str(exc))
        if dist is not None and dist.size > 1:
            sys.stderr.flush()
            dist.comm.Abort(status)
        return status
