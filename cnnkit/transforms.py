"""Data augmentation on batches of images ``(N, C, H, W)``: random crops with padding,
horizontal flips, small random affine maps (for digits) and normalisation, composable.

Every random transform draws from the generator it is called with, one draw per call, so a
training run is reproducible from its seed (``fit`` passes its own shuffling generator, which
checkpoints save and restore)::

    aug = ck.transforms.Compose([ck.transforms.RandomCrop(32, padding=4),
                                 ck.transforms.RandomHorizontalFlip()])
    fit(model, (x, y), optimizer=opt, transform=aug)        # training batches only
    aug(x_batch, rng=0)                                     # standalone: an int seed works

Deterministic transforms (:class:`Normalize`) are also what :meth:`Transform.inference`
keeps: ``fit`` applies that part to the validation data, and you apply it to the inputs you
predict on.  Configs name transforms in ``[training] augment = [{name = "random_crop",
padding = 4}, "random_horizontal_flip"]``; the command line takes ``--augment
random_crop:padding=4 --augment random_horizontal_flip``.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["Transform", "Compose", "RandomCrop", "RandomHorizontalFlip", "RandomAffine",
           "Normalize", "TRANSFORMS", "from_spec"]


def _batch(x, who):
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype.kind != "f":
        got = (f"{x.shape} {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__)
        raise ValueError(f"{who}: expected a float batch of images (N, C, H, W), got {got}")
    return x


def _number(value, who, name, low=None, high=None, integer=False):
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise ValueError(f"{who}: {name} must be {'an int' if integer else 'a number'}, got "
                         f"{value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{who}: {name} must lie in [{low}, {high}], got {value!r}")
    return value


def _part(x, part):
    """(draws, first): a random transform draws for ``draws`` images and uses those from
    ``first`` on, so a shard of a global batch gets the numbers the whole batch would give it."""
    if part is None:
        return len(x), 0
    start, total = part
    if not 0 <= start <= start + len(x) <= total:
        raise ValueError(f"transform: part {part!r} does not hold a batch of {len(x)} images")
    return total, start


class Transform:
    """Base class: ``transform(x, rng)`` returns a new batch; ``rng`` is a
    ``numpy.random.Generator`` or an int seed.

    ``apply(x, rng, part=(start, total))`` transforms images ``start ..`` of a batch of
    ``total`` (data-parallel training): the built-in transforms draw for all ``total`` images
    and keep the shard's numbers, as one process would.  Subclasses whose ``apply`` takes no
    ``part`` leave ``supports_part`` False and get the whole batch instead."""

    random = True
    supports_part = False

    def __call__(self, x, rng=None):
        x = _batch(x, type(self).__name__)
        return self.apply(x, np.random.default_rng(rng))

    def apply(self, x, rng):  # pragma: no cover - the subclasses' job
        raise NotImplementedError

    def inference(self):
        """The deterministic part of this transform (``None`` if there is none)."""
        return None if self.random else self

    def get_config(self) -> dict:
        return dict(self._config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply ``transforms`` in order."""

    def __init__(self, transforms):
        transforms = list(transforms)
        for t in transforms:
            if not isinstance(t, Transform):
                raise TypeError(f"Compose: expected cnnkit.transforms.Transform objects, got "
                                f"{t!r}")
        self.transforms = transforms
        self.random = any(t.random for t in transforms)
        self.supports_part = all(t.supports_part or not t.random for t in transforms)
        self._config = {}

    def apply(self, x, rng, part=None):
        for t in self.transforms:
            x = t.apply(x, rng, part=part) if t.random else t.apply(x, rng)
        return x

    def inference(self):
        kept = [t.inference() for t in self.transforms]
        kept = [t for t in kept if t is not None]
        return Compose(kept) if kept else None

    def get_config(self):
        return {"transforms": [{"name": _NAMES[type(t)], **t.get_config()}
                               for t in self.transforms]}

    def __repr__(self):
        return f"Compose({self.transforms!r})"

    def describe(self) -> str:
        """One short line: each transform's name and options, e.g. for a training log."""
        return ", ".join(_NAMES[type(t)] + "(" + ", ".join(
            f"{k}={v}" for k, v in t.get_config().items() if v not in (None, 0.0, [0.0, 0.0],
                                                                       [1.0, 1.0])) + ")"
            for t in self.transforms)


class RandomCrop(Transform):
    """Pad every side by ``padding`` pixels of ``fill``, then cut a ``size`` window (an int,
    (h, w), or ``None`` for the input's own size) at a random place, drawn per image."""

    def __init__(self, size=None, padding=0, fill=0.0):
        who = "RandomCrop"
        if size is not None:
            size = (size, size) if isinstance(size, numbers.Integral) else tuple(size)
            if len(size) != 2:
                raise ValueError(f"{who}: size must be an int or (h, w), got {size!r}")
            size = tuple(int(_number(s, who, "size", 1, integer=True)) for s in size)
        self.size = size
        self.padding = int(_number(padding, who, "padding", 0, integer=True))
        self.fill = float(_number(fill, who, "fill"))
        self._config = {"size": list(size) if size else None, "padding": self.padding,
                        "fill": self.fill}

    supports_part = True

    def apply(self, x, rng, part=None):
        n, c, h, w = x.shape
        draws, first = _part(x, part)
        oh, ow = self.size or (h, w)
        p = self.padding
        if oh > h + 2 * p or ow > w + 2 * p:
            raise ValueError(f"RandomCrop: crop {oh}x{ow} is larger than the padded image "
                             f"{h + 2 * p}x{w + 2 * p}")
        xp = np.full((n, c, h + 2 * p, w + 2 * p), self.fill, dtype=x.dtype)
        xp[:, :, p:p + h, p:p + w] = x
        top = rng.integers(0, h + 2 * p - oh + 1, size=draws)[first:first + n]
        left = rng.integers(0, w + 2 * p - ow + 1, size=draws)[first:first + n]
        out = np.empty((n, c, oh, ow), dtype=x.dtype)
        for i in range(n):
            out[i] = xp[i, :, top[i]:top[i] + oh, left[i]:left[i] + ow]
        return out


class RandomHorizontalFlip(Transform):
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p=0.5):
        self.p = float(_number(p, "RandomHorizontalFlip", "p", 0, 1))
        self._config = {"p": self.p}

    supports_part = True

    def apply(self, x, rng, part=None):
        draws, first = _part(x, part)
        flip = (rng.random(draws) < self.p)[first:first + len(x)]
        out = x.copy()
        out[flip] = x[flip, :, :, ::-1]
        return out


class RandomAffine(Transform):
    """A small random affine map per image, about its centre: a rotation by up to
    ``degrees``, a shift by up to ``translate`` (fractions of the height and width), a scale in
    ``scale`` = (low, high); bilinear interpolation, ``fill`` outside the image.  Suited to
    digits (no flips)."""

    def __init__(self, degrees=0.0, translate=(0.0, 0.0), scale=(1.0, 1.0), fill=0.0):
        who = "RandomAffine"
        self.degrees = float(_number(degrees, who, "degrees", 0, 180))
        if isinstance(translate, numbers.Real):
            translate = (translate, translate)
        translate = tuple(translate)
        scale = tuple(scale) if not isinstance(scale, numbers.Real) else (scale, scale)
        if len(translate) != 2 or len(scale) != 2:
            raise ValueError(f"{who}: translate and scale are pairs, got {translate!r}, "
                             f"{scale!r}")
        self.translate = tuple(float(_number(t, who, "translate", 0, 1)) for t in translate)
        self.scale = tuple(float(_number(s, who, "scale", 1e-3)) for s in scale)
        if self.scale[0] > self.scale[1]:
            raise ValueError(f"{who}: scale must be (low, high) with low <= high, got {scale!r}")
        self.fill = float(_number(fill, who, "fill"))
        self._config = {"degrees": self.degrees, "translate": list(self.translate),
                        "scale": list(self.scale), "fill": self.fill}

    supports_part = True

    def apply(self, x, rng, part=None):
        n, c, h, w = x.shape
        draws, first = _part(x, part)
        rows = slice(first, first + n)
        angle = np.deg2rad(rng.uniform(-self.degrees, self.degrees, draws)[rows])
        s = rng.uniform(self.scale[0], self.scale[1], draws)[rows]
        ty = rng.uniform(-self.translate[0], self.translate[0], draws)[rows] * h
        tx = rng.uniform(-self.translate[1], self.translate[1], draws)[rows] * w
        cy, cx = (h - 1) / 2, (w - 1) / 2
        yy, xx = np.meshgrid(np.arange(h, dtype=np.float64) - cy,
                             np.arange(w, dtype=np.float64) - cx, indexing="ij")
        # inverse map: where in the input each output pixel comes from
        cos, sin = (np.cos(angle) / s)[:, None, None], (np.sin(angle) / s)[:, None, None]
        dy, dx = yy[None] - ty[:, None, None], xx[None] - tx[:, None, None]
        src_y = cos * dy - sin * dx + cy
        src_x = sin * dy + cos * dx + cx
        y0, x0 = np.floor(src_y).astype(np.int64), np.floor(src_x).astype(np.int64)
        wy, wx = (src_y - y0).astype(x.dtype), (src_x - x0).astype(x.dtype)
        padded = np.full((n, c, h + 2, w + 2), self.fill, dtype=x.dtype)
        padded[:, :, 1:-1, 1:-1] = x
        img = np.arange(n)[:, None, None]

        def tap(yi, xi):  # out-of-image taps read the fill border
            yi, xi = np.clip(yi + 1, 0, h + 1), np.clip(xi + 1, 0, w + 1)
            return padded[img, :, yi, xi].transpose(0, 3, 1, 2)  # (n, c, h, w)

        wy, wx = wy[:, None], wx[:, None]
        out = ((1 - wy) * ((1 - wx) * tap(y0, x0) + wx * tap(y0, x0 + 1))
               + wy * ((1 - wx) * tap(y0 + 1, x0) + wx * tap(y0 + 1, x0 + 1)))
        return np.ascontiguousarray(out, dtype=x.dtype)


class Normalize(Transform):
    """``(x - mean) / std`` per channel (scalars apply to every channel).  Deterministic:
    :meth:`inference` keeps it."""

    random = False

    def __init__(self, mean, std):
        mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        std = np.atleast_1d(np.asarray(std, dtype=np.float64))
        if mean.ndim != 1 or std.ndim != 1 or not (np.isfinite(mean).all()
                                                    and np.isfinite(std).all()):
            raise ValueError(f"Normalize: mean and std must be finite numbers or per-channel "
                             f"lists, got {mean!r}, {std!r}")
        if (std <= 0).any():
            raise ValueError(f"Normalize: std must be positive, got {std.tolist()}")
        self.mean, self.std = mean, std
        self._config = {"mean": mean.tolist(), "std": std.tolist()}

    def apply(self, x, rng):
        c = x.shape[1]
        for name, v in (("mean", self.mean), ("std", self.std)):
            if v.size not in (1, c):
                raise ValueError(f"Normalize: {v.size} {name} values for {c} channels")
        mean = self.mean.astype(x.dtype).reshape(1, -1, 1, 1)
        std = self.std.astype(x.dtype).reshape(1, -1, 1, 1)
        return (x - mean) / std


TRANSFORMS = {"random_crop": RandomCrop, "random_horizontal_flip": RandomHorizontalFlip,
              "random_affine": RandomAffine, "normalize": Normalize}
_NAMES = {cls: name for name, cls in TRANSFORMS.items()}
_ALIASES = {"crop": "random_crop", "hflip": "random_horizontal_flip", "flip":
            "random_horizontal_flip", "affine": "random_affine"}


def _parse_value(text):
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    if "/" in text:
        return [_parse_value(t) for t in text.split("/")]
    return text


def from_spec(spec) -> Compose | None:
    """A :class:`Compose` from a config's ``augment`` list (names or ``{name = ..., options}``
    tables) or the command line's ``NAME[:key=value[:key=value]]`` strings (a list value is
    written ``a/b``, e.g. ``random_affine:degrees=10:translate=0.1/0.1``)."""
    if spec is None:
        return None
    if isinstance(spec, (str, dict)):
        spec = [spec]
    made = []
    for item in spec:
        if isinstance(item, str):
            name, *pairs = item.split(":")
            opts = {}
            for pair in pairs:
                key, eq, value = pair.partition("=")
                if not eq or not key:
                    raise ValueError(f"augment {item!r}: options are key=value, got {pair!r}")
                opts[key.strip()] = _parse_value(value.strip())
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            opts = dict(item)
            name = opts.pop("name")
        else:
            raise ValueError(f"augment: expected a transform name or a table with a 'name', got "
                             f"{item!r}")
        key = _ALIASES.get(name.strip().lower(), name.strip().lower())
        if key not in TRANSFORMS:
            import difflib

            close = difflib.get_close_matches(key, list(TRANSFORMS) + list(_ALIASES), n=2)
            hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
            raise ValueError(f"augment: unknown transform {name!r}{hint}; known: "
                             f"{', '.join(TRANSFORMS)}")
        try:
            made.append(TRANSFORMS[key](**opts))
        except TypeError as exc:
            raise ValueError(f"augment {name!r}: {exc}") from None
    return Compose(made)
