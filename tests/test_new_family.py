"""Adding a layer family touches only files named after it: a copy of the package gains
layers/tile.py, builtin/tile.py and testing/tile.py, and with no other edit the
layer is public, registered, selectable and passes the conformance kit."""
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cnnkit

FILES = {
    "layers/tile.py": '''
        """Nearest-neighbour upsampling."""
        from .base import Layer

        __all__ = ["Tile2D"]


        class Tile2D(Layer):
            """Repeat each pixel ``scale`` times along H and W."""

            layer_type = "tile2d"
            input_rank = 4

            def __init__(self, scale=2, *, impl=None, name=None):
                super().__init__(impl=impl, name=name)
                self.scale = int(scale)
                self.config = {"scale": self.scale}

            def get_config(self):
                return {"scale": self.scale}

            def output_shape(self, input_shape):
                n, c, h, w = input_shape
                return (n, c, h * self.scale, w * self.scale)
        ''',
    "builtin/tile.py": '''
        """The tile family's built-in plugin."""
        import numpy as np

        from cnnkit.layers import Tile2D
        from cnnkit.plugins import hookimpl

        __all__ = ["Tile2dNumpy"]


        class Tile2dNumpy:
            @staticmethod
            def forward(x, params, config, need_backward):
                s = config["scale"]
                y = np.repeat(np.repeat(x, s, axis=2), s, axis=3)
                return y, (s if need_backward else None)

            @staticmethod
            def backward(dy, s):
                n, c, h, w = dy.shape
                return dy.reshape(n, c, h // s, s, w // s, s).sum(axis=(3, 5)), {}


        @hookimpl
        def cnnkit_register_layers(register):
            register("tile2d", Tile2D)


        @hookimpl
        def cnnkit_register_variants(register):
            register("tile2d", "numpy", Tile2dNumpy, capabilities=Tile2D.FEATURES)
        ''',
    "testing/tile.py": '''
        """Conformance cases and loop reference of the tile family."""
        import numpy as np

        from cnnkit.testing._cases import Case

        CASES = {"tile2d": [Case({"scale": 2}, (2, 3, 2, 3)), Case({"scale": 3}, (1, 1, 2, 2))]}


        def loop_tile(x, params, kwargs, config):
            s = kwargs["scale"]
            n, c, h, w = x.shape
            y = np.empty((n, c, h * s, w * s))
            for i in range(h * s):
                for j in range(w * s):
                    y[:, :, i, j] = x[:, :, i // s, j // s]
            return y


        LOOP_REFERENCES = {"tile2d": loop_tile}
        ''',
}

CHECK = '''
import numpy as np
import cnnkit as ck
from cnnkit.testing import builtin_cases, check_variant
layer = ck.layers.Tile2D(2)
x = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
y = layer.forward(x)
assert y.shape == (1, 1, 4, 6) and y[0, 0, 3, 5] == 5, y
assert layer.variant(np.float32).name == "numpy"
assert len(builtin_cases("tile2d")) == 2
report = check_variant("tile2d", "numpy")
assert report.ok, report
print("ok", report.checks_run)
'''


def test_a_new_family_needs_only_its_own_files(tmp_path):
    pkg = Path(cnnkit.__file__).parent
    copy = tmp_path / "cnnkit"
    shutil.copytree(pkg, copy, ignore=shutil.ignore_patterns("__pycache__", "*.c"))
    for rel, text in FILES.items():
        assert not (copy / rel).exists(), rel
        (copy / rel).write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    env = {"PYTHONPATH": str(tmp_path), "CNNKIT_LOAD_PLUGINS": "", "PATH": ""}
    res = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("ok"), res.stdout
