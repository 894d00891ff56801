"""Build and packaging behaviour: OpenMP detection, the missing-extension message."""
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def setup_module(monkeypatch):
    monkeypatch.chdir(ROOT)
    return runpy.run_path(str(ROOT / "setup.py"), run_name="cnnkit_setup")


def test_openmp_is_detected_when_the_compiler_has_it(setup_module, monkeypatch):
    if not shutil.which("gcc"):
        pytest.skip("gcc not available")
    monkeypatch.setenv("CC", "gcc")
    monkeypatch.delenv("CNNKIT_NO_OPENMP", raising=False)
    assert setup_module["_openmp_flags"]() == (["-fopenmp"], ["-fopenmp"])


def test_build_goes_on_without_openmp(setup_module, monkeypatch, tmp_path):
    # a "compiler" that rejects everything, as one without OpenMP rejects -fopenmp
    fake = tmp_path / "nocc"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    assert setup_module["_openmp_flags"]() == ([], [])
    monkeypatch.setenv("CC", "gcc")
    monkeypatch.setenv("CNNKIT_NO_OPENMP", "1")
    assert setup_module["_openmp_flags"]() == ([], [])


def test_import_without_compiled_kernels_says_how_to_build(tmp_path):
    src = ROOT / "cnnkit"
    dst = tmp_path / "cnnkit"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.c",
                                                            "__pycache__"))
    res = subprocess.run([sys.executable, "-c", "import cnnkit"], capture_output=True, text=True,
                         cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert res.returncode != 0
    assert "compiled kernels are missing" in res.stderr
    assert "pip install" in res.stderr and "build_ext --inplace" in res.stderr
