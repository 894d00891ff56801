"""Dropout (variants: ``cnnkit.builtin``, layer type ``dropout``)."""
from __future__ import annotations

from .. import _random
from .._checks import real
from .base import _Elementwise

__all__ = ["Dropout"]


class Dropout(_Elementwise):
    """Inverted dropout: in training each element is zeroed with probability ``p`` and the
    survivors are scaled by 1 / (1 - p); in inference the input is returned unchanged.

    The mask is a pure function of ``config["seed"]`` and the element index (a counter-based
    hash, identical in every built-in variant), and each training forward draws a fresh seed
    from the layer's Generator (``rng=``: None for the global one that ``cnnkit.seed`` sets, an
    int seed or a ``numpy.random.Generator``), so a seeded layer repeats its masks exactly.
    In data-parallel training the mask of a rank's shard continues the counter from the shard's
    place in the global batch, so every sample gets the mask one process would give it.
    """

    layer_type = "dropout"

    def __init__(self, p=0.5, *, rng=None, impl=None, name=None):
        super().__init__(impl=impl, name=name)
        self.p = real(p, "p", f"{self.name} (Dropout)", low=0.0, high=1.0, high_open=True)
        self._rng = _random.generator(rng)
        self.config = {"p": self.p, "seed": self._draw_seed()}

    def _draw_seed(self):
        return int(self._rng.integers(0, 2**63 - 1))

    def get_config(self):
        return {"p": self.p}

    def forward(self, x, training=None):
        training = self.training if training is None else bool(training)
        if not training:
            x = self._validate(x)
            self._ctx = None
            return x
        # The seed changes on every call and nothing resolved depends on it: store it without
        # the config setter (which would forget the resolutions and the selected variant) and
        # hand the variant this call's configuration.
        seed = self._draw_seed()
        x, res = self._prepare(x)
        if _random.sample_offset():  # a shard of a global batch: its samples' own masks
            seed = _random.advance_counter(seed, _random.sample_offset() * (x.size // len(x)))
        self._config = config = dict(self._config, seed=seed)
        return self._compute(x, res, config, True)
