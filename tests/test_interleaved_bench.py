"""``benchmarks/interleaved.py``: the speed targets timed side by side with PyTorch.

The script imports the benchmark suite's modules (and their ``conftest``), which would clash
with this folder's ``conftest`` inside one pytest process, so it runs in a subprocess here, as
a user runs it.
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "interleaved.py"


def _python(code):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_rounds_alternate_the_order_and_ratios_come_from_the_best_and_median_samples():
    """Fake rows whose calls return their own 'time': the order of the calls within each
    round, and the ratios from the samples."""
    res = _python("""
        import json, sys
        sys.path.insert(0, "benchmarks")
        import interleaved
        calls = []
        def build(ours, theirs):
            def make(torch):
                def run():
                    calls.append("ck")
                    return ours.pop(0)
                def peer():
                    calls.append("peer")
                    return theirs.pop(0)
                return run, peer, None, None
            return make
        interleaved._sample = lambda fn, repeat: fn()
        rows = [("a", "row a", 0.6, build([1.0, 3.0, 4.0], [4.0, 2.0, 4.0])),
                ("b", "row b", None, build([3.0, 3.0, 3.0], [1.0, 2.0, 3.0]))]
        out = interleaved.measure(rows, torch=None, rounds=3, repeat=1)
        print(json.dumps({"calls": calls, "out": out}))
        print(interleaved.format_table(out), file=sys.stderr)
    """)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["calls"] == ["ck", "peer", "ck", "peer",   # round 1: cnnkit first
                            "peer", "ck", "peer", "ck",   # round 2: PyTorch first
                            "ck", "peer", "ck", "peer"]
    a, b = got["out"]
    assert (a["cnnkit_best_s"], a["peer_best_s"], a["ratio_best"]) == (1.0, 2.0, 0.5)
    assert (a["ratio_median"], a["met"]) == (0.75, True)  # met by the best rounds
    assert a["ratio_paired"] == 1.0  # the rounds' own ratios: 1/4, 3/2, 4/4
    assert (b["ratio_best"], b["ratio_median"], b["met"]) == (3.0, 1.5, None)
    assert b["ratio_paired"] == 1.5  # 3/1, 3/2, 3/3
    assert "| row a |  | 1000.000 | 2000.000 | 0.50 | 0.75 | 1.00 | <= 0.6 | yes |" in res.stderr


def test_unknown_rows_are_refused_with_the_list():
    res = subprocess.run([sys.executable, str(SCRIPT), "--rows", "nosuchrow"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert "no row matches --rows 'nosuchrow'" in res.stderr and "conv-s2" in res.stderr


def test_the_command_times_cnnkit_against_pytorch(tmp_path):
    pytest.importorskip("torch", reason="interleaved.py compares against PyTorch "
                                        "(the test extras install it)")
    out = tmp_path / "r.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--rows", "relu,maxpool-fwd",
                          "--rounds", "2", "--repeat", "1", "--json", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "| ReLU (64,32,32,32) fwd+bwd | cython |" in res.stdout
    assert "| MaxPool2D 2x2 (64,32,32,32) forward | cython |" in res.stdout
    record = json.loads(out.read_text())
    assert [r["row"] for r in record["results"]] == ["maxpool-fwd", "relu"]
    for r in record["results"]:
        assert 0 < r["cnnkit_best_s"] <= r["cnnkit_median_s"]
        assert 0 < r["peer_best_s"] <= r["peer_median_s"]
        assert r["ratio_best"] == pytest.approx(r["cnnkit_best_s"] / r["peer_best_s"])
        assert r["met"] == (r["ratio_best"] <= r["target"])
    assert record["threads"] == 2 and record["rounds"] == 2
