"""`cnnkit kernels` and `cnnkit bench`: listings, the selection explanation, timings with the
reference check, JSON and errors."""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

import cnnkit as ck

from cnnkit.cli import main
from cnnkit.cli._args import parse_layer_args, parse_shape
from cnnkit.cli.bench import CONV2D_SHAPES, DEFAULT_SHAPES
from conftest import PLUGIN_DIR, write_dist_infos


def cli(capsys, *args):
    """Run the command in this process; return (exit status, stdout, stderr)."""
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def run_cli(*args, env=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "cnnkit.cli", *args], capture_output=True,
                          text=True, env=full_env, timeout=600)


# ------------------------------------------------------------------------------ argument parsing
def test_shape_and_args_parsing():
    assert parse_shape("64,3,32,32") == (64, 3, 32, 32)
    assert parse_shape("(8, 16)") == (8, 16)
    assert parse_shape("2x3x4x5") == (2, 3, 4, 5)
    for bad in ("8,x", "", "8,0,3", "a,b", "3.5,2"):
        with pytest.raises(Exception, match="positive integers"):
            parse_shape(bad)
    assert parse_layer_args("kernel_size=3,padding=(1,2),bias=false,padding_mode=same") == {
        "kernel_size": 3, "padding": (1, 2), "bias": False, "padding_mode": "same"}
    with pytest.raises(Exception, match="name=value"):
        parse_layer_args("kernel_size")


# ------------------------------------------------------------------------------ cnnkit kernels
def test_kernels_lists_layer_types_and_variants(capsys):
    status, out, _ = cli(capsys, "kernels")
    assert status == 0
    assert "conv2d  (cnnkit.layers.Conv2D, plugin cnnkit.builtin.conv)" in out
    assert "features: stride, padding, asymmetric_padding, dilation, groups, bias" in out
    cython_row = next(line for line in out.splitlines()
                      if line.split()[:2] == ["cython", "cnnkit.builtin.conv"])
    assert " 100 " in cython_row and "float32,float64" in cython_row
    assert "flatten" in out and "no variants: the layer computes itself" in out


def test_kernels_json_for_one_layer_type(capsys):
    status, out, _ = cli(capsys, "kernels", "conv2d", "--json")
    assert status == 0
    (entry,) = json.loads(out)["layer_types"]
    assert entry["layer_type"] == "conv2d" and entry["class"] == "cnnkit.layers.Conv2D"
    by_name = {v["name"]: v for v in entry["variants"]}
    assert by_name["cython"]["priority"] == 100 and by_name["numpy"]["priority"] == 0
    assert by_name["numpy"]["plugin"] == "cnnkit.builtin.conv"
    assert "dilation" in by_name["cython"]["capabilities"]
    assert by_name["cython"]["dtypes"] == ["float32", "float64"]
    # highest priority first, as selection sees them
    priorities = [v["priority"] for v in entry["variants"]]
    assert priorities == sorted(priorities, reverse=True)


def test_explain_names_the_winner_and_why_the_others_lost(capsys):
    # 32 channels x 5x5 taps: beyond the direct variants' automatic range, im2col's case
    status, out, _ = cli(capsys, "kernels", "conv2d", "--explain", "--shape", "64,32,16,16",
                         "--args", "kernel_size=5,padding=2")
    assert status == 0, out
    assert max(len(line) for line in out.splitlines()) <= 100
    out = " ".join(out.split()).replace("input: ", "input:    ").replace(
        "chosen: ", "chosen:   ")  # lines folded at 100 columns, read as one text
    assert "in_channels=32" in out and "out_channels=32" in out  # from the shape, and defaulted
    assert "input:    (64, 32, 16, 16) float32 -> output (64, 32, 16, 16)" in out
    assert "features: padding, bias" in out
    assert ("chosen:   cython (plugin cnnkit.builtin.conv, priority 100): highest "
            "priority among variants that support the request") in out
    assert "lower priority (0) than 'cython' (100)" in out


def test_explain_resolves_same_padding_and_honours_cnnkit_impl(capsys, monkeypatch):
    monkeypatch.setenv("CNNKIT_IMPL", "conv2d=numpy")
    status, out, _ = cli(capsys, "kernels", "conv2d", "--explain", "--shape", "2,4,9,9",
                         "--args", "out_channels=8,kernel_size=(2,4),padding=same", "--json")
    assert status == 0
    doc = json.loads(out)
    assert doc["config"]["padding"] == [0, 1, 1, 2]           # resolved for a 9x9 input
    assert "asymmetric_padding" in doc["features"]
    assert doc["chosen"] == "numpy" and doc["how"] == "CNNKIT_IMPL"
    assert doc["explicit_choice"] == {"variant": "numpy", "source": "CNNKIT_IMPL"}
    cython = next(v for v in doc["variants"] if v["name"] == "cython")
    assert cython["reason"] == "not chosen: CNNKIT_IMPL asks for 'numpy'"


def test_explain_an_explicit_choice_that_cannot_serve(capsys, plugin_env):
    # the demo plugin's conv2d/demo_fast: priority 500, float32 only, no dilation or groups
    status, out, _ = cli(capsys, "kernels", "conv2d", "--explain", "--shape", "8,4,16,16",
                         "--args", "kernel_size=3")
    assert status == 0
    assert "chosen:   demo_fast (plugin demo, priority 500)" in out

    status, out, _ = cli(capsys, "kernels", "conv2d", "--explain", "--shape", "8,4,16,16",
                         "--args", "kernel_size=3,dilation=2")
    assert status == 0
    assert "chosen:   cython" in out
    assert re.search(r"demo_fast +\(plugin demo, priority 500\): does not support dilation", out)

    status, out, _ = cli(capsys, "kernels", "conv2d", "--explain", "--shape", "8,4,16,16",
                         "--args", "kernel_size=3,dilation=2", "--impl", "demo_fast")
    assert status == 1
    assert "chosen:   none: " in out and "cannot serve this request: does not support dilation" \
        in out
    assert "cython" in out and "can serve this request" in out

    status, out, _ = cli(capsys, "kernels", "conv2d", "--explain", "--shape", "8,4,16,16",
                         "--impl", "demo_fast", "--dtype", "float64", "--json")
    assert status == 1
    doc = json.loads(out)
    assert doc["chosen"] is None
    assert "dtype float64 not supported (supports float32)" in doc["error"]


def test_kernels_errors(capsys):
    status, _, err = cli(capsys, "kernels", "convolution")
    assert status == 1 and "unknown layer type 'convolution'; registered: " in err
    assert "conv2d" in err
    status, _, err = cli(capsys, "kernels", "conv2d", "--explain", "--shape", "2,3,8,8",
                         "--args", "kernel_size=3,colour=red")
    assert status == 1 and "cannot build Conv2D(" in err and "colour" in err
    status, _, err = cli(capsys, "kernels", "conv2d", "--explain", "--shape", "2,3,4,4",
                         "--args", "kernel_size=7")
    assert status == 1 and "does not fit" in err and "larger than the padded input" in err
    status, _, err = cli(capsys, "kernels", "conv2d", "--explain", "--shape", "2,3",
                         "--args", "kernel_size=3")
    assert status == 1 and "conv2d expects a 4-D input shape N,C,H,W, got 2,3" in err
    with pytest.raises(SystemExit) as exc:
        main(["kernels", "conv2d", "--explain", "--shape", "8,x"])
    assert exc.value.code == 2
    assert "expected a shape of positive integers" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["kernels", "conv2d", "--explain"])
    assert exc.value.code == 2 and "--explain needs LAYER_TYPE and --shape" in \
        capsys.readouterr().err


# ------------------------------------------------------------------------------ cnnkit bench
def _table_rows(out):
    """{(shape, variant): check text} from the bench table (shape cells are blank below the
    first row of a shape)."""
    rows, shape = {}, None
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("shape "))
    for line in lines[start + 1:]:
        if not line.strip():
            break
        if not line.startswith(" "):
            shape, line = line.split()[0], line[len(line.split()[0]):]
        variant = line.split()[0]
        rows[(shape, variant)] = line.split(None, 7)[-1]
    return rows


def test_bench_relu_quick(capsys, tmp_path):
    path = tmp_path / "relu.json"
    status, out, err = cli(capsys, "bench", "relu", "--quick", "--json", str(path))
    assert status == 0, out + err
    assert out.startswith("cnnkit bench relu: float32, best of 1 interleaved rounds after 1 "
                          "warm-up")
    rows = _table_rows(out)
    names = [s.name for s in DEFAULT_SHAPES["relu"]]
    for shape in names:
        for variant in ("cython", "numpy"):
            assert rows[(shape, variant)].startswith("ok "), out
    doc = json.loads(path.read_text())
    assert doc["layer_type"] == "relu" and doc["repeat"] == 1
    assert doc["cnnkit_version"] and doc["numpy_version"]
    assert doc["threads"]["cnnkit_openmp"] >= 1
    assert doc["requirements"][0].startswith("cnnkit==")
    assert {r["variant"] for r in doc["results"]} >= {"cython", "numpy"}
    unavailable = {v.name: v.unavailable() for v in ck.get_registry().variants_for("relu")}
    for r in doc["results"]:
        if unavailable[r["variant"]]:  # an instruction-set build this CPU cannot run
            assert r["status"] == "refused" and r["message"] == unavailable[r["variant"]], r
            continue
        assert r["status"] == "ok" and r["forward_ms"] > 0 and r["forward_backward_ms"] > 0
        assert r["input_shape"][0] <= 2  # --quick cuts the batch
        assert r["forward_gflops"] is None  # not defined for an activation
    assert min(r["forward_ratio"] for r in doc["results"] if r["status"] == "ok") == 1.0


def test_bench_conv2d_custom_shape(capsys, tmp_path):
    path = tmp_path / "conv.json"
    status, out, err = cli(capsys, "bench", "conv2d", "--quick", "--shape", "2,3,8,8",
                           "--args", "out_channels=4,kernel_size=3,padding=1",
                           "--variants", "cython,numpy", "--json", str(path))
    assert status == 0, out + err
    rows = _table_rows(out)
    assert set(rows) == {("custom", "cython"), ("custom", "numpy")}
    assert all(check.startswith("ok ") for check in rows.values())
    assert "custom = (2,3,8,8) out_channels=4, kernel_size=3, padding=1" in out
    doc = json.loads(path.read_text())
    for r in doc["results"]:
        assert r["kwargs"] == {"out_channels": 4, "kernel_size": 3, "padding": 1}
        assert r["forward_gflops"] > 0 and r["forward_backward_gflops"] > 0
        assert r["max_rel_err"] < 1e-4


def test_bench_default_conv2d_shapes_are_the_benchmark_suites():
    assert [s.name for s in DEFAULT_SHAPES["conv2d"]] == [
        "lenet-conv1", "lenet-conv2", "cifar-3x3", "64ch-32px", "128ch-28px", "64to128-s2",
        "lenet-conv1-p2", "lenet-conv2-14px"]
    assert CONV2D_SHAPES[0].input_shape == (64, 1, 28, 28)


def test_bench_errors(capsys):
    status, _, err = cli(capsys, "bench", "nope")
    assert status == 1 and "unknown layer type 'nope'" in err
    status, _, err = cli(capsys, "bench", "relu", "--quick", "--variants", "cython,fast")
    assert status == 1 and "relu has no variant(s) fast" in err
    status, _, err = cli(capsys, "bench", "conv2d", "--quick", "--shape", "2,3,4,4",
                         "--args", "kernel_size=9")
    assert status == 1 and "does not fit" in err
    with pytest.raises(SystemExit) as exc:
        main(["bench", "relu", "--repeat", "0"])
    assert exc.value.code == 2


def test_bench_plot(capsys, tmp_path):
    png = tmp_path / "relu.png"
    args = ("bench", "relu", "--quick", "--shape", "2,8", "--plot", str(png))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        status, _, err = cli(capsys, *args)
        assert status == 1
        assert "--plot needs matplotlib" in err and "pip install 'cnnkit[plot]'" in err
        assert not png.exists()
    else:
        status, out, _ = cli(capsys, *args)
        assert status == 0 and f"chart written to {png}" in out
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


WRONG_RELU = textwrap.dedent('''
    """A relu variant that is 1% off: `cnnkit bench` must flag it."""
    import numpy as np

    import cnnkit


    class ReluOff:
        @staticmethod
        def forward(x, params, config, need_backward):
            y = np.maximum(x, 0) * x.dtype.type(1.01)
            return y, (x > 0 if need_backward else None)

        @staticmethod
        def backward(dy, mask):
            return np.where(mask, dy, 0).astype(dy.dtype), {}


    @cnnkit.hookimpl
    def cnnkit_register_variants(register):
        register("relu", "off", ReluOff, priority=-10)
''')


def test_bench_flags_a_wrong_variant_as_mismatch(tmp_path):
    """A third-party variant installed through a real entry point, run in a fresh process."""
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "cnnkit_relu_off.py").write_text(WRONG_RELU)
    site = write_dist_infos(tmp_path / "site",
                            [("cnnkit-relu-off", "0.3", "relu_off", "cnnkit_relu_off")])
    path = tmp_path / "off.json"
    res = run_cli("bench", "relu", "--quick", "--shape", "4,16", "--json", str(path),
                  env={"PYTHONPATH": os.pathsep.join([str(site), str(modules), str(PLUGIN_DIR)]),
                       "CNNKIT_LOAD_PLUGINS": "relu_off"})
    assert res.returncode == 1, res.stdout + res.stderr
    rows = _table_rows(res.stdout)
    assert rows[("custom", "off")].startswith("MISMATCH 1.0e-02"), res.stdout
    assert rows[("custom", "cython")].startswith("ok ")
    assert "off = plugin relu_off (cnnkit-relu-off 0.3)" in res.stdout
    assert "off on custom (MISMATCH)" in res.stderr
    doc = json.loads(path.read_text())
    off = next(r for r in doc["results"] if r["variant"] == "off")
    assert off["status"] == "MISMATCH" and off["max_rel_err"] == pytest.approx(0.01, rel=1e-3)
    assert "cnnkit-relu-off==0.3" in doc["requirements"]
    assert doc["plugins"] == [{"name": "relu_off", "distribution": "cnnkit-relu-off",
                               "version": "0.3", "module": "cnnkit_relu_off", "error": None}]



# ------------------------------------------------------------------------------ bench: issue 10
def test_bench_takes_input_sizes_from_the_shape(capsys):
    status, out, err = cli(capsys, "bench", "convtranspose2d", "--quick", "--shape", "2,8,5,5",
                           "--args", "out_channels=4,kernel_size=4,stride=2",
                           "--variants", "cython,numpy")
    assert status == 0, out + err
    assert all(check.startswith("ok ") for check in _table_rows(out).values())
    for layer_type, shape in (("batchnorm2d", "2,3,4,4"), ("batchnorm1d", "4,5"),
                              ("subsampling", "2,3,4,4"), ("dense", "2,7")):
        status, out, err = cli(capsys, "bench", layer_type, "--quick", "--shape", shape,
                               "--variants", "numpy")
        assert status == 0, (layer_type, out + err)
    from cnnkit.cli._layer import build_layer
    from cnnkit.plugins import get_registry

    layer, out_shape = build_layer(get_registry(), "convtranspose2d", (2, 8, 5, 5),
                                   {"out_channels": 4, "kernel_size": 4, "stride": 2})
    assert layer.in_channels == 8 and out_shape == (2, 4, 12, 12)
    status, _, err = cli(capsys, "bench", "flatten", "--quick")
    assert status == 1 and "no variants to time" in err


def test_bench_has_default_shapes_for_every_built_in_layer_type():
    from cnnkit.cli._layer import build_layer
    from cnnkit.cli.bench import BenchShape, run_bench
    from cnnkit.plugins import get_registry

    reg = get_registry()
    builtin = {t for t, (_, plugin) in reg.layer_types.items()
               if plugin.startswith("cnnkit.builtin.")}
    with_variants = {t for t in builtin if reg.variants_for(t)}
    assert {"convtranspose2d", "batchnorm2d", "zeropad2d", "subsampling"} <= with_variants
    assert with_variants <= set(DEFAULT_SHAPES), with_variants - set(DEFAULT_SHAPES)
    ct = DEFAULT_SHAPES["convtranspose2d"][0]
    assert ct.input_shape == (32, 64, 16, 16)
    assert ct.kwargs == {"out_channels": 32, "kernel_size": 4, "stride": 2, "padding": 1}
    for t in sorted(with_variants):
        for case in DEFAULT_SHAPES[t]:
            build_layer(reg, t, case.input_shape, case.kwargs)  # every case builds
        case = DEFAULT_SHAPES[t][0]
        small = BenchShape(case.name, (2,) + case.input_shape[1:], case.kwargs)
        rows = run_bench(t, [small], repeat=1, warmup=0, registry=reg,
                         variants=[v.name for v in reg.variants_for(t)
                                   if v.plugin.startswith("cnnkit.builtin.")])
        # a variant for some geometries only (winograd: 3x3) is refused, never wrong
        assert any(r.status == "ok" for r in rows), (t, rows)
        assert all(r.status in ("ok", "refused") for r in rows), (t, rows)


def _bench_json(capsys, path, *extra):
    status, out, err = cli(capsys, "bench", "relu", "--quick", "--shape", "2,8",
                           "--variants", "cython,numpy", "--repeat", "3", "--json", str(path),
                           *extra)
    return status, out, err, json.loads(path.read_text())


def test_bench_compare_flags_a_planted_regression(capsys, tmp_path):
    old_path = tmp_path / "old.json"
    status, _, _, old = _bench_json(capsys, old_path)
    assert status == 0
    assert old["statistic"] == "best of interleaved rounds"
    for r in old["results"]:
        assert r["forward_spread"] is not None and r["forward_backward_spread"] >= 0
    # plant: the old run had cython's forward a thousand times faster, numpy's slower
    for r in old["results"]:
        if r["variant"] == "cython":
            r["forward_ms"] /= 1000
        else:
            r["forward_ms"] *= 1000
    old_path.write_text(json.dumps(old))
    status, out, err, new = _bench_json(capsys, tmp_path / "new.json", "--compare",
                                        str(old_path))
    assert status == 1, out + err
    assert f"compared with {old_path}" in out
    lines = {tuple(line.split()[:3]): line for line in out.splitlines()
             if line.startswith("custom ")}
    assert lines[("custom", "cython", "forward")].endswith("REGRESSION")
    assert not lines[("custom", "numpy", "forward")].endswith("REGRESSION")
    assert "regressed beyond 10%" in err and "cython on custom forward" in err
    rows = {(c["variant"], c["mode"]): c for c in new["comparison"]["rows"]}
    assert rows[("cython", "forward")]["regression"] and rows[("cython", "forward")]["ratio"] > 10
    assert not rows[("numpy", "forward")]["regression"]
    assert len(rows) == 4  # two variants, two modes
    # the results fields of earlier versions are all still there
    for key in ("forward_ms", "forward_backward_ms", "forward_ratio", "forward_backward_ratio",
                "status", "max_rel_err", "shape", "input_shape", "kwargs", "variant", "plugin"):
        assert key in new["results"][0]


def test_bench_compare_errors(capsys, tmp_path):
    status, _, err = cli(capsys, "bench", "relu", "--quick", "--compare",
                         str(tmp_path / "none.json"))
    assert status == 1 and "cannot be read" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    status, _, err = cli(capsys, "bench", "relu", "--quick", "--compare", str(bad))
    assert status == 1 and "not a JSON file" in err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"layer_type": "conv2d", "dtype": "float32", "results": []}))
    status, _, err = cli(capsys, "bench", "relu", "--quick", "--compare", str(other))
    assert status == 1 and "layer type 'conv2d', not 'relu'" in err


@pytest.mark.parametrize("load, busy", [(50.0, True), (0.0, False)])
def test_bench_warns_when_the_machine_is_busy(capsys, tmp_path, monkeypatch, load, busy):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    status, out, err, doc = _bench_json(capsys, tmp_path / "r.json")
    assert status == 0
    assert f"load average at start: {load:.2f}" in out
    assert ("the machine is busy: load average 50.00" in err) == busy
    assert doc["busy"] is busy and doc["load_average"] == load
    assert any("machine is busy" in w for w in doc["warnings"]) == busy
