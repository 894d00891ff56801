"""Pictures of a training run: loss and accuracy curves, the first convolution layer's
filters, and the feature maps every convolution and pooling layer makes of one image, as PNG
files (matplotlib's Agg renderer, no display needed; files written atomically).

matplotlib is optional: ``pip install "cnnkit[plot]"``.  Without it every function here raises
:class:`MissingDependencyError` saying so.
"""
from __future__ import annotations

import io
import math
import os

import numpy as np

__all__ = ["MissingDependencyError", "require_matplotlib", "plot_curves", "plot_filters",
           "first_conv_layer", "plot_training", "feature_maps", "FEATURE_MAP_LAYER_TYPES"]

#: The layer types :func:`feature_maps` draws: the convolutions and the poolings.
FEATURE_MAP_LAYER_TYPES = ("conv2d", "convtranspose2d", "maxpool2d", "avgpool2d", "subsampling")

INSTALL_HINT = 'pip install "cnnkit[plot]"'


class MissingDependencyError(ImportError):
    """An optional dependency (matplotlib) is not installed."""


def require_matplotlib():
    """Import matplotlib's object-oriented API (no pyplot, no global backend switch)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError(f"plotting needs matplotlib, which is not installed "
                                     f"({exc}); install it with: {INSTALL_HINT}") from None
    return Figure, FigureCanvasAgg


def _save(fig, canvas_cls, path):
    from .io import atomic_write_bytes

    canvas_cls(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())
    return str(path)


def _history_rows(history):
    return list(history.epochs) if hasattr(history, "epochs") else list(history)


def plot_curves(history, path, metric: str = "loss", *, title: str | None = None) -> str:
    """One PNG of ``metric`` and ``val_<metric>`` per epoch (a :class:`cnnkit.train.History` or
    a list of per-epoch dicts)."""
    Figure, Canvas = require_matplotlib()
    return _save(_curves_figure(Figure, history, metric, title), Canvas, path)


def _curves_figure(Figure, history, metric, title):
    rows = _history_rows(history)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    plotted = False
    for key, label in ((metric, "training"), (f"val_{metric}", "validation")):
        pts = [(r.get("epoch", i + 1), r[key]) for i, r in enumerate(rows)
               if r.get(key) is not None]
        if pts:
            ex, ey = zip(*pts)
            ax.plot(ex, ey, marker="o", markersize=3, label=label)
            plotted = True
    if not plotted:
        ax.text(0.5, 0.5, f"no {metric} recorded", ha="center", va="center",
                transform=ax.transAxes)
    from matplotlib.ticker import FixedLocator, MaxNLocator

    epochs = sorted({r.get("epoch", i + 1) for i, r in enumerate(rows)})
    if 0 < len(epochs) <= 12:
        # a few epochs: a tick on each and no other (a single epoch would otherwise get
        # fractional ticks around it)
        ax.xaxis.set_major_locator(FixedLocator(epochs))
        ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(title or metric)
    ax.grid(True, alpha=0.3)
    if plotted:
        ax.legend()
    fig.tight_layout()
    return fig


def first_conv_layer(model):
    """The first layer with a 4-D ``weight`` (a convolution), or None."""
    for layer in model.layers:
        w = layer.params.get("weight") if hasattr(layer, "params") else None
        if w is not None and np.ndim(w) == 4:
            return layer
    return None


def plot_filters(model_or_layer, path, *, max_filters: int = 64) -> str:
    """A grid of the first convolution layer's filters.  Three input channels are shown as
    colour images, otherwise one tile per (filter, input channel) up to 8 channels; each tile is
    scaled to its own range (grey: low is dark)."""
    Figure, Canvas = require_matplotlib()
    layer = model_or_layer if hasattr(model_or_layer, "params") and not hasattr(
        model_or_layer, "layers") else first_conv_layer(model_or_layer)
    if layer is None or np.ndim(layer.params.get("weight")) != 4:
        raise ValueError("plot_filters: the model has no convolution layer (no 4-D weight)")
    w = np.asarray(layer.params["weight"], dtype=np.float64)[:max_filters]
    out_c, in_c = w.shape[:2]
    rgb = in_c == 3
    cols_per = 1 if rgb else min(in_c, 8)
    n_tiles = out_c * cols_per
    ncols = cols_per if cols_per > 1 else min(out_c, 8)
    nrows = out_c if cols_per > 1 else math.ceil(out_c / ncols)
    fig = Figure(figsize=(max(ncols, 2) * 1.1, max(nrows, 1) * 1.1 + 0.4))
    fig.suptitle(f"{layer.name}: {out_c} filters {w.shape[2]}x{w.shape[3]}", fontsize=9)

    def norm(a):
        lo, hi = a.min(), a.max()
        return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a) + 0.5

    for t in range(n_tiles):
        ax = fig.add_subplot(nrows, ncols, t + 1)
        if rgb:
            ax.imshow(norm(np.transpose(w[t], (1, 2, 0))), interpolation="nearest")
        else:
            f, c = divmod(t, cols_per)
            ax.imshow(norm(w[f, c]), cmap="gray", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, Canvas, path)


def _norm_tile(a):
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a) + 0.5


def _maps_figure(Figure, layer, maps, max_maps):
    """One grid of a layer's output maps (C, H, W) for one image, each tile scaled to its own
    range, with the range in the tile's title."""
    c = min(len(maps), max_maps)
    ncols = min(c, 8)
    nrows = math.ceil(c / ncols)
    fig = Figure(figsize=(max(ncols, 2) * 1.2, nrows * 1.35 + 0.5))
    fig.suptitle(f"{layer.name} ({type(layer).__name__}): {len(maps)} maps "
                 f"{maps.shape[1]}x{maps.shape[2]}", fontsize=9)
    for i in range(c):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        m = np.asarray(maps[i], dtype=np.float64)
        ax.imshow(_norm_tile(m), cmap="gray", interpolation="nearest")
        ax.set_title(f"{i}: [{m.min():.2g}, {m.max():.2g}]", fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def feature_maps(model, x, path, *, max_maps: int = 64) -> list[str]:
    """For one input image ``x`` (C, H, W, or a batch of one (1, C, H, W)), one PNG per
    convolution and pooling layer (:data:`FEATURE_MAP_LAYER_TYPES`) in the folder ``path``
    (created if needed), ``featuremaps_<NN>_<layer name>.png`` in model order: the grid of the
    maps the layer outputs (up to ``max_maps``), each scaled to its own range (grey: low is
    dark; the tile title gives the range).  The model runs in inference mode.  Returns the
    paths written."""
    Figure, Canvas = require_matplotlib()
    from ._walk import run_layers

    x = np.asarray(x)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"feature_maps: expected one image (C, H, W) or (1, C, H, W), got "
                         f"shape {x.shape}")
    if not isinstance(max_maps, int) or isinstance(max_maps, bool) or max_maps < 1:
        raise ValueError(f"feature_maps: max_maps must be a positive int, got {max_maps!r}")
    outputs = [(layer, y) for layer, y in run_layers(model, x, who="feature_maps")
               if layer.layer_type in FEATURE_MAP_LAYER_TYPES and np.ndim(y) == 4]
    if not outputs:
        raise ValueError("feature_maps: the model has no convolution or pooling layer")
    os.makedirs(path, exist_ok=True)
    paths = []
    for i, (layer, y) in enumerate(outputs, 1):
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in layer.name)
        fig = _maps_figure(Figure, layer, y[0], max_maps)
        paths.append(_save(fig, Canvas, os.path.join(path, f"featuremaps_{i:02d}_{safe}.png")))
    return paths


def plot_training(history, model, folder, x=None) -> list[str]:
    """``loss.png``, ``accuracy.png`` (when recorded) and ``filters.png`` (when the model has a
    convolution) in ``folder`` (created if needed), and with an image ``x`` its feature maps
    (:func:`feature_maps`); returns the paths written."""
    require_matplotlib()
    os.makedirs(folder, exist_ok=True)
    paths = [plot_curves(history, os.path.join(folder, "loss.png"), "loss")]
    rows = _history_rows(history)
    if any(r.get("accuracy") is not None or r.get("val_accuracy") is not None for r in rows):
        paths.append(plot_curves(history, os.path.join(folder, "accuracy.png"), "accuracy"))
    if first_conv_layer(model) is not None:
        paths.append(plot_filters(model, os.path.join(folder, "filters.png")))
        if x is not None:
            paths += feature_maps(model, x, folder)
    return paths
