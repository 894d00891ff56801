"""ck.plot.feature_maps and `cnnkit train --plot`: one PNG grid per convolution and pooling
layer, of what that layer outputs for one image."""
import numpy as np
import pytest

import cnnkit as ck
from cnnkit.layers import AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Subsampling

pytest.importorskip("matplotlib", reason="matplotlib is not installed (the plot extra)")


def _model():
    model = ck.Sequential([Conv2D(1, 3, 3, padding=1, name="c1"), ReLU(name="r"),
                           MaxPool2D(2, name="p1"), Conv2D(3, 5, 3, name="c2"),
                           Subsampling(5, 2, name="s"), AvgPool2D(1, name="a"),
                           Flatten(), Dense(20, 2, name="d")])
    model.build((1, 12, 12))
    return model


def test_one_png_per_convolution_and_pooling_layer(tmp_path):
    model = _model()
    x = np.random.default_rng(0).standard_normal((1, 12, 12)).astype(np.float32)
    paths = ck.plot.feature_maps(model, x, tmp_path / "maps")
    names = [p.rsplit("/", 1)[-1] for p in paths]
    assert names == ["featuremaps_01_c1.png", "featuremaps_02_p1.png", "featuremaps_03_c2.png",
                     "featuremaps_04_s.png", "featuremaps_05_a.png"]
    for p in paths:
        data = open(p, "rb").read()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


def test_the_grid_shows_each_layers_own_maps(tmp_path):
    """The figure's tiles hold the layer's output maps, each scaled to its own range
    (oracle: the layers run one by one by hand)."""
    from matplotlib.figure import Figure

    from cnnkit import plot

    model = _model()
    x = np.random.default_rng(1).standard_normal((1, 1, 12, 12)).astype(np.float32)
    c1 = model.get_layer("c1").forward(x, training=False)
    p1 = model.get_layer("p1").forward(np.maximum(c1, 0), training=False)
    fig = plot._maps_figure(Figure, model.get_layer("p1"), p1[0], 64)
    shown = [ax.images[0].get_array() for ax in fig.axes]
    assert len(shown) == 3
    for i, img in enumerate(shown):
        m = p1[0, i].astype(np.float64)
        np.testing.assert_allclose(img, (m - m.min()) / (m.max() - m.min()))
    assert "[%.2g, %.2g]" % (p1[0, 0].min(), p1[0, 0].max()) in fig.axes[0].get_title()


def test_feature_maps_checks_its_arguments(tmp_path):
    model = _model()
    with pytest.raises(ValueError, match="one image"):
        ck.plot.feature_maps(model, np.zeros((2, 1, 12, 12), np.float32), tmp_path)
    dense = ck.Sequential([Dense(4, 2)])
    dense.build((4,))
    with pytest.raises(ValueError, match="one image|no convolution"):
        ck.plot.feature_maps(dense, np.zeros((1, 4), np.float32), tmp_path)
