"""``cnnkit train [CONFIG]``: LeNet-5 on MNIST, or the model and ``[training]`` section of a
config file; the options override the config."""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from functools import partial

from ._args import _impl_choices, _positive_float, _positive_int
from ._common import CommandError, _fail, _registry


def add_parser(sub) -> None:
    """Add ``train`` to the ``cnnkit`` subcommands."""
    train = sub.add_parser(
        "train", help="train LeNet-5 on MNIST (the embedded sample by default), or the model of "
        "a config file",
        description="Without CONFIG: train LeNet-5 (conv 6@5x5 pad 2, ReLU, max-pool 2, conv "
        "16@5x5, ReLU, max-pool 2, dense 120, 84, 10) with SGD + momentum.  With CONFIG (a .toml "
        "or .json model config, see cnnkit.config and examples/): train the model it describes "
        "with its [training] section; the options below override that section.")
    train.add_argument("config", nargs="?", metavar="CONFIG", default=None,
                       help="model config file (.toml or .json) with an optional [training] "
                       "section")
    train.add_argument("--epochs", type=_positive_int, default=None, help="default: 10")
    train.add_argument("--batch-size", type=_positive_int, default=None, help="default: 64")
    train.add_argument("--lr", type=_positive_float, default=None, help="default: 0.05")
    train.add_argument("--momentum", type=float, default=None, help="default: 0.9")
    train.add_argument("--weight-decay", type=float, default=None, help="default: 0")
    train.add_argument("--seed", type=int, default=None, help="random seed (default: 0)")
    train.add_argument("--data", metavar="PATH", default=None,
                       help="a folder of MNIST or Fashion-MNIST IDX files (plain or .gz), a "
                       "CIFAR-10 binary folder (with a config), or an .npz of your arrays "
                       "(x_train, y_train, x_test, y_test); default: the 5,000-image MNIST "
                       "sample embedded in cnnkit, or the config's data")
    train.add_argument("--augment", metavar="NAME[:K=V...]", action="append", default=None,
                       help="augment training batches (repeatable), e.g. random_crop:padding=4, "
                       "random_horizontal_flip, random_affine:degrees=10:translate=0.1/0.1; "
                       "added after the config's augment list (see cnnkit.transforms)")
    train.add_argument("--output", "-o", metavar="FILE", default=None,
                       help="where to save the trained model: one safetensors file with the "
                       "config and weights, read back by cnnkit.load_model (default: "
                       "lenet5.safetensors, or the config's name with .safetensors); a .npz "
                       "name writes an .npz instead")
    train.add_argument("--impl", type=_impl_choices, default=None, metavar="TYPE=VARIANT,...",
                       help="pick variants, e.g. conv2d=numpy,relu=cython")
    train.add_argument("--dtype", choices=("float32", "float64"), default=None,
                       help="default: float32 (or the config's dtype)")
    train.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    train.add_argument("--checkpoint", metavar="FILE", default=None,
                       help="write a resumable training checkpoint (.npz) after every epoch")
    train.add_argument("--checkpoint-every", type=_positive_int, default=None, metavar="N",
                       help="write the checkpoint every N epochs (and after the last)")
    train.add_argument("--resume", metavar="FILE", default=None,
                       help="continue training from a checkpoint (same recipe and seed)")
    train.add_argument("--plot", metavar="DIR", default=None,
                       help="write PNGs of the loss/accuracy curves, of the first convolution "
                       "layer's filters and of every convolution and pooling layer's feature "
                       "maps for the first test image to DIR (needs matplotlib: pip install "
                       "\"cnnkit[plot]\")")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel training over MPI: run as mpiexec -n N cnnkit train "
                       "... --distributed; --batch-size is the global batch, shared by the "
                       "ranks (needs mpi4py: pip install \"cnnkit[mpi]\")")
    train.add_argument("--sync-batchnorm", action="store_true",
                       help="with --distributed: BatchNorm statistics over the global batch "
                       "(default: each rank's own)")

    train.set_defaults(func=cmd_train)


_DEFAULTS = {"epochs": 10, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0,
             "seed": 0, "output": "lenet5.safetensors", "dtype": "float32"}


def cmd_train(args) -> int:
    args.dist = None
    if args.sync_batchnorm and not args.distributed:
        return _fail("train", "--sync-batchnorm applies to --distributed training")
    if args.distributed:
        from .. import distributed

        try:
            args.dist = distributed.context(True, args.sync_batchnorm)
        except distributed.DistributedError as exc:
            return _fail("train", str(exc))
        line = args.dist.describe()
        if args.dist.is_root:
            print(line, flush=True)
    status = _cmd_train(args)
    if status and args.dist is not None and args.dist.size > 1:
        sys.stderr.flush()
        args.dist.comm.Abort(status)  # the other ranks may wait in a collective call
    return status


def _is_root(args) -> bool:
    return args.dist is None or args.dist.is_root


def _streams(args):
    """(out, err): the terminal on rank 0, nowhere on the other ranks."""
    if _is_root(args):
        return sys.stdout, sys.stderr
    quiet = open(os.devnull, "w")
    return quiet, quiet


def _cmd_train(args) -> int:
    # --impl is checked while the arguments are parsed; everything else that can be checked
    # without the data is checked here or, for a config, right after reading it
    try:
        reg = _registry()
        reg.check_choices(reg.impl_env(), "CNNKIT_IMPL", variants=True)
        if args.plot:
            from ..plot import require_matplotlib

            require_matplotlib()  # fail before training, not after
        if args.augment:
            from ..transforms import from_spec

            try:
                from_spec(args.augment)
            except ValueError as exc:
                raise CommandError(f"--augment: {exc}") from None
        import numpy as np  # noqa: PLC0415 - the command's own imports stay lazy

        # a diverging run overflows on its way to NaN; the loss check below says so in one
        # line with a hint instead of NumPy's warnings from inside the kernels
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            try:
                if args.config is not None:
                    return _train_config(args)
                return _train_default(args)
            except FloatingPointError as exc:
                lr = f"; --lr was {args.lr}" if args.lr is not None else ""
                raise CommandError(f"{exc}{lr}") from None
    except CommandError as exc:
        where = f"rank {args.dist.rank}: " if args.dist is not None and args.dist.size > 1 else ""
        return _fail("train", where + str(exc))


def _train_default(args) -> int:
    """LeNet-5 with the defaults of the options not given (remembered, for --resume)."""
    args.explicit = {k for k in _DEFAULTS if getattr(args, k) is not None}
    for key, value in _DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    _check_outputs(args)
    _check_resume(args, args.epochs)
    return _train_lenet5(args)


def _check_outputs(args) -> None:
    """Every file or folder the run will write must be writable now, not after training."""
    for option, path in (("--output", args.output), ("--checkpoint", args.checkpoint)):
        if path is None:
            continue
        if os.path.isdir(path):
            raise CommandError(f"{option} {path}: is a folder; give a file name")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise CommandError(f"{option} {path}: folder {folder} does not exist")
        _probe(option, path, folder, tempfile.TemporaryFile)
    if args.plot is not None:
        # the plot folder is created if missing, so its nearest existing ancestor must be a
        # folder in which one can be created
        folder = os.path.abspath(args.plot)
        while not os.path.exists(folder):
            folder = os.path.dirname(folder)
        if not os.path.isdir(folder):
            raise CommandError(f"--plot {args.plot}: {folder} is not a folder")
        _probe("--plot", args.plot, folder, lambda dir: os.rmdir(tempfile.mkdtemp(dir=dir)))
    if args.data is not None and not os.path.exists(args.data):  # after the outputs: a bad
        raise CommandError(f"--data {args.data}: no such file or folder")  # output is worse


def _check_resume(args, epochs):
    """With --resume: the checkpoint must be readable and hold fewer epochs than asked for."""
    if not args.resume:
        return
    from ..io import load_weights

    try:
        _, meta = load_weights(args.resume)
    except (OSError, ValueError) as exc:
        raise CommandError(f"--resume {args.resume}: {exc}") from None
    done = meta.get("epoch")
    if not isinstance(done, int):
        raise CommandError(f"--resume {args.resume}: not a cnnkit training checkpoint")
    if epochs <= done:
        raise CommandError(f"--resume {args.resume}: the checkpoint is at epoch {done}, so "
                           f"--epochs {epochs} leaves nothing to train; ask for more than "
                           f"{_plural(done, 'epoch')}")


def _overrides(args, explicit):
    """{optimizer hyper-parameter: (option, value)} for the options given on the command line,
    which win over a resumed checkpoint's values."""
    return {key: (f"--{key.replace('_', '-')}", getattr(args, key))
            for key in ("lr", "momentum", "weight_decay")
            if key in explicit and getattr(args, key) is not None}


def _probe(option, path, folder, make):
    # os.access says yes to root even where writing fails (/proc, read-only mounts): try it
    try:
        handle = make(dir=folder)
    except OSError as exc:
        raise CommandError(f"{option} {path}: cannot write in folder {folder}: "
                           f"{exc.strerror or exc}") from None
    if handle is not None:
        handle.close()


def _plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def _epoch_line(e):
    parts = [f"epoch {e['epoch']:>3}: loss {e['loss']:.4f}"]
    for key in ("accuracy", "val_loss", "val_accuracy"):
        if e.get(key) is not None:
            parts.append(f"{key} {e[key]:.4f}")
    return "  ".join(parts) + f"  ({e['time']:.1f}s)"


def _reporter(out, err, quiet, resume, overrides):
    """The callback that prints the run: on a terminal a live bar per epoch on ``err``, replaced
    by the epoch's line on ``out`` when it ends; elsewhere only that line, flushed at once.  On
    resume it says what it resumed and applies the options given explicitly (``overrides``:
    {hyper-parameter: (option, value)}) over the checkpoint's, printing each."""
    from ..schedules import CosineAnnealingLR
    from ..train import Callback, ProgressBar

    class Reporter(Callback):
        bar = None

        def on_train_begin(self, logs):
            self.epochs = logs["epochs"]
            self.steps = logs["steps_per_epoch"]
            if resume:
                opt = self.trainer.optimizer
                first = logs["initial_epoch"] + 1
                todo = (f"epoch {first}" if first == self.epochs
                        else f"epochs {first}-{self.epochs}")
                print(f"resumed from {resume} after epoch {logs['initial_epoch']}; training "
                      f"{todo}", file=out)
                sched = self.trainer.scheduler
                if isinstance(sched, CosineAnnealingLR) and sched.T_max < self.epochs:
                    sched.T_max = self.epochs  # the decay ends at the new last epoch
                    sched.refresh()
                for key, (option, value) in overrides.items():
                    # with a schedule, --lr sets its base rate (the rate it decays from)
                    scheduled = key == "lr" and sched is not None
                    now = sched.base_lr if scheduled else opt.hyper.get(key)
                    if key in opt.hyper and now != value:
                        print(f"{option} {value} overrides the checkpoint's {key} {now}",
                              file=out)
                        if scheduled:
                            sched.base_lr = value
                            sched.refresh()
                        elif key == "lr":
                            opt.lr = value
                        else:
                            opt.hyper[key] = value
                shown = dict(opt.hyper, **({"lr": sched.base_lr} if sched is not None else {}))
                hyper = ", ".join(f"{k} {v}" for k, v in shown.items()
                                  if k in ("lr", "momentum", "weight_decay", "betas"))
                if sched is not None:
                    hyper += f" ({type(sched).__name__}: lr {opt.lr:.4g} for the next epoch)"
                print(f"optimizer: {type(opt).__name__} {hyper}", file=out)
                out.flush()

        def on_epoch_begin(self, epoch, logs):
            live = not quiet and hasattr(err, "isatty") and err.isatty()
            self.bar = ProgressBar(self.steps, f"epoch {epoch}/{self.epochs}", err) if live \
                else None

        def on_batch_end(self, batch, logs):
            if self.bar is not None:
                self.bar.update(batch, f"loss {logs['loss']:.4f}")

        def on_epoch_end(self, epoch, logs):
            if self.bar is not None:
                err.write("\r\033[K")  # the bar gives way to the epoch's line
                err.flush()
            print(_epoch_line(logs), file=out, flush=True)

    return Reporter()


def _finish(args, model, history, n_test, t0, out, metadata, image=None):
    if not _is_root(args):
        return
    final = history.epochs[-1] if history.epochs else {}
    elapsed = time.perf_counter() - t0
    meta = {"epochs": len(history), "seed": args.seed, **metadata}
    if final.get("val_accuracy") is not None:
        meta["val_accuracy"] = final["val_accuracy"]
    model.save(args.output, meta)
    if final.get("val_accuracy") is not None:
        print(f"held-out accuracy: {final['val_accuracy'] * 100:.2f}% on {n_test} test images "
              f"({elapsed:.1f}s in all)", file=out)
    elif final.get("val_loss") is not None:
        print(f"held-out loss: {final['val_loss']:.4f} on {n_test} test samples "
              f"({elapsed:.1f}s in all)", file=out)
    if history.stop_reason:
        print(f"stopped early: {history.stop_reason}", file=out)
    print(f"model saved to {os.path.abspath(args.output)}", file=out)
    if args.plot:
        from ..plot import plot_training

        for path in plot_training(history, model, args.plot, image):
            print(f"plot written to {os.path.abspath(path)}", file=out)


def _train_lenet5(args) -> int:
    import numpy as np

    from .. import optim
    from ..plugins import _use
    from ..datasets import detect_dataset, load_dataset, load_mnist
    from ..models import lenet5
    from ..schedules import CosineAnnealingLR
    from ..train import fit
    from ..transforms import from_spec

    out, err = _streams(args)
    dtype = np.dtype(args.dtype)
    t0 = time.perf_counter()
    if args.data is not None and detect_dataset(args.data) != "mnist":
        kind = detect_dataset(args.data)
        (x_train, y_train), (x_test, y_test), source = load_dataset(kind, path=args.data,
                                                                    dtype=dtype)
        if x_train.shape[1:] != (1, 28, 28):
            raise CommandError(f"--data {args.data}: LeNet-5 takes (1, 28, 28) images, this "
                               f"data holds {x_train.shape[1:]}; train it with a model config "
                               "(cnnkit train CONFIG --data ...; see examples/)")
    else:
        (x_train, y_train), (x_test, y_test) = load_mnist(args.data, dtype=dtype)
        source = args.data or "embedded MNIST sample"
    print(f"data: {source}: {len(x_train)} training, {len(x_test)} test images", file=out)
    transform = from_spec(args.augment) if args.augment else None
    if transform is not None:
        print(f"augment: {transform.describe()}", file=out)
    rng = np.random.default_rng(args.seed)
    with _use(args.impl or {}, "--impl"):
        model = lenet5(dtype=dtype, rng=rng)
        print(model.summary(), file=out)
        opt = optim.SGD(model, lr=args.lr, momentum=args.momentum,
                        weight_decay=args.weight_decay)
        # the rate decays along a cosine to 0 at the last epoch, so the run settles instead of
        # ending on whatever step a constant rate took last (a resumed run stretches the decay
        # to its new last epoch)
        scheduler = CosineAnnealingLR(opt, T_max=args.epochs)
        if not args.resume:
            print(f"training: {_plural(args.epochs, 'epoch')}, batch {args.batch_size}, SGD lr "
                  f"{args.lr} momentum {args.momentum} (cosine decay), seed {args.seed}",
                  file=out)
        out.flush()
        report = _reporter(out, err, args.quiet, args.resume,
                           _overrides(args, args.explicit))
        history = fit(model, (x_train, y_train), (x_test, y_test), optimizer=opt,
                      epochs=args.epochs, batch_size=args.batch_size, rng=rng,
                      verbose=False, callbacks=[report], checkpoint=args.checkpoint,
                      checkpoint_every=args.checkpoint_every or 1, resume_from=args.resume,
                      transform=transform, distributed=args.dist or False,
                      scheduler=scheduler)
    _finish(args, model, history, len(x_test), t0, out, {}, x_test[:1])
    return 0


def _train_config(args) -> int:
    import numpy as np

    from .. import config as C
    from ..plugins import _use
    from ..train import fit

    out, err = _streams(args)
    t0 = time.perf_counter()
    cfg = C.load_config(args.config)
    spec = C.training_from_config(cfg)
    for key in ("epochs", "batch_size", "seed"):
        if getattr(args, key) is not None:
            setattr(spec, key, getattr(args, key))
    args.seed = spec.seed
    if args.checkpoint_every is None:
        args.checkpoint_every = spec.checkpoint_every
    if args.output is None:
        args.output = (spec.output or os.path.splitext(os.path.basename(args.config))[0]
                       + ".safetensors")
    _check_outputs(args)
    _check_resume(args, spec.epochs)
    dtype = np.dtype(args.dtype or cfg.get("dtype", "float32"))
    rng = np.random.default_rng(spec.seed)
    with _use(args.impl or {}, "--impl"):
        # everything the config describes is built (and so checked) before the data loads
        model = C.model_from_config(cfg, rng=rng, dtype=dtype)
        model = C.make_boosted(spec, model, rng=rng)  # the same model without [training.boosting]
        opt = C.make_optimizer(spec, model, lr=args.lr, momentum=args.momentum,
                               weight_decay=args.weight_decay)
        scheduler = C.make_schedule(spec, opt, spec.epochs)
        loss = C.make_loss(spec)
        regularizer = C.make_regularizer(spec)
        (x_train, y_train), (x_test, y_test), source = C.load_data(spec, dtype=dtype,
                                                                   path_override=args.data)
        print(f"data: {source}: {len(x_train)} training, {len(x_test)} test samples", file=out)
        print(model.summary(), file=out)
        transform = C.make_transform(spec, args.augment)
        if transform is not None:
            print(f"augment: {transform.describe()}", file=out)
        hyper = ", ".join(f"{k} {v}" for k, v in opt.hyper.items()
                          if k in ("lr", "momentum", "weight_decay", "betas"))
        print(f"training: {_plural(spec.epochs, 'epoch')}, batch {spec.batch_size}, "
              f"{type(opt).__name__} {hyper}"
              + (f", schedule {type(scheduler).__name__}" if scheduler else "")
              + f", loss {type(loss).__name__}, seed {spec.seed}", file=out)
        if spec.boosting:
            print(f"boosting: SAMME over {', '.join(model.head_names)}"
                  + ("" if spec.boosting.get("carry_over", True) else
                     " (weights reset every round)"), file=out)
        out.flush()
        from ..train import _early_stopping

        report = _reporter(out, err, args.quiet, args.resume,
                           _overrides(args, {"lr", "momentum", "weight_decay"}))
        # the early stopper keeps callback slot 0, where checkpoints have always held its state
        stopper = _early_stopping(spec.early_stopping)
        if spec.boosting:
            from ..boosting import fit as boosting_fit

            fit = partial(boosting_fit, carry_over=spec.boosting.get("carry_over", True))
        history = fit(model, (x_train, y_train), (x_test, y_test), optimizer=opt, loss=loss,
                      epochs=spec.epochs, batch_size=spec.batch_size, shuffle=spec.shuffle,
                      rng=rng, scheduler=scheduler, regularizer=regularizer,
                      callbacks=[c for c in (stopper, report) if c is not None], verbose=False,
                      checkpoint=args.checkpoint,
                      checkpoint_every=args.checkpoint_every, resume_from=args.resume,
                      transform=transform, distributed=args.dist or False,
                      sync_batchnorm=args.sync_batchnorm, init_data=spec.init_data)
    _finish(args, model, history, len(x_test), t0, out, {}, x_test[:1])  # model.save stores the config
    return 0
