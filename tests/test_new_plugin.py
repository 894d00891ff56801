"""`cnnkit new-plugin NAME` writes a package that installs into an environment that has cnnkit
and passes its own tests as generated."""
import os
import subprocess
import sys

import pytest

from test_cli import ROOT, run_cli


def test_generated_plugin_installs_and_passes_its_tests(tmp_path):
    pytest.importorskip("Cython", reason="Cython is not installed (test extra): the generated "
                        "plugin builds its kernel with it")
    res = run_cli("new-plugin", "cnnkit-fastrelu", "--dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    pkg = tmp_path / "cnnkit-fastrelu"
    assert (pkg / "cnnkit_fastrelu" / "_kernels.pyx").is_file()
    site = tmp_path / "site"
    # installed next to this cnnkit, with the build tools this environment has
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                          "--no-build-isolation", "--target", str(site), str(pkg)],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(site)]))
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(pkg / "tests"), str(pkg / "benchmarks"), "--benchmark-disable"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "test_conformance[relu/fastrelu] PASSED" in subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", str(pkg / "tests")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900).stdout
    listed = run_cli("plugins", env={"PYTHONPATH": str(site)})
    assert "fastrelu  [entrypoint]  cnnkit-fastrelu 0.1.0  ok" in listed.stdout


def test_new_plugin_refuses_bad_names_and_existing_folders(tmp_path):
    res = run_cli("new-plugin", "9lives", "--dir", str(tmp_path))
    assert res.returncode == 1 and "not a valid package name" in res.stderr
    assert run_cli("new-plugin", "cnnkit-x", "--dir", str(tmp_path)).returncode == 0
    res = run_cli("new-plugin", "cnnkit-x", "--dir", str(tmp_path))
    assert res.returncode == 1 and "already exists" in res.stderr
    res = run_cli("new-plugin", "cnnkit-y", "--dir", str(tmp_path / "nowhere"))
    assert res.returncode == 1 and "no such folder" in res.stderr
