import sys
from pathlib import Path

import pytest

PLUGIN_DIR = Path(__file__).parent / "plugin_pkgs"

# (distribution name, version, entry-point name, module)
TEST_PLUGINS = [
    ("cnnkit-demo", "1.2.3", "demo", "cnnkit_demo_plugin"),
    ("cnnkit-broken-import", "0.1", "broken_import", "cnnkit_broken_import"),
    ("cnnkit-broken-hook", "0.1", "broken_hook", "cnnkit_broken_hook"),
    ("cnnkit-duplicate", "0.1", "duplicate", "cnnkit_duplicate"),
    ("cnnkit-wrong-shape", "0.1", "wrong_shape", "cnnkit_wrong_shape"),
]

ENV_VARS = ("CNNKIT_IMPL", "CNNKIT_LOAD_PLUGINS", "CNNKIT_DISABLE_PLUGINS", "CNNKIT_STRICT_PLUGINS")


def write_dist_infos(root: Path, plugins=TEST_PLUGINS) -> Path:
    """Expose the test plugins as installed distributions with real ``cnnkit`` entry points
    (a ``.dist-info`` folder each, as pip writes them) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for dist, version, ep, module in plugins:
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[cnnkit]\n{ep} = {module}\n")
    return root


@pytest.fixture(autouse=True)
def _clean_plugin_env(monkeypatch, tmp_path_factory):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    # never read or write the user's autotuning cache: every test starts with an empty one
    monkeypatch.delenv("CNNKIT_AUTOTUNE", raising=False)
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(tmp_path_factory.mktemp("cnnkit-cache")))
    # a loaded test machine must not shrink the team under tests that count its threads; the
    # policy's own tests (test_threads_contention.py) turn it back on
    monkeypatch.setenv("CNNKIT_ADAPTIVE_THREADS", "0")
    from cnnkit._threads import _contention
    _contention.reset()


@pytest.fixture
def plugin_env(tmp_path, monkeypatch):
    """Install the test plugins (real entry points) for one test; the global registry is
    reloaded lazily with them and forgotten afterwards."""
    from cnnkit.plugins import reset_registry

    site = write_dist_infos(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    for _, _, _, module in TEST_PLUGINS:
        sys.modules.pop(module, None)
    reset_registry()
    yield site
    reset_registry()
    for _, _, _, module in TEST_PLUGINS:
        sys.modules.pop(module, None)
