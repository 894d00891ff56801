"""docs/architecture.md names files; they must exist, and every family it lists must have its
rooms (layers/, builtin/, and testing/ where the family has variants)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "architecture.md"
PKG = ROOT / "cnnkit"

# a path written in the doc: dir/name.ext or name.ext (.py .pyx .pxd .md) or dir/ ; the
# templates `<family>` and the worked example `tile` are not files
_PATH = re.compile(r"(?<![\w<./-])((?:[A-Za-z_]\w*/)*[A-Za-z_]\w*\.(?:pyx|pxd|py|md)|[A-Za-z_]\w*/)"
                   r"(?![\w>])")


def doc_paths(text):
    return sorted({m for m in _PATH.findall(text) if "tile" not in m})


def _exists(path):
    return any((base / path).exists() for base in (PKG, ROOT, ROOT / "docs"))


def test_every_path_named_in_the_architecture_doc_exists():
    names = doc_paths(DOC.read_text(encoding="utf-8"))
    assert len(names) > 25, names  # the parser found the layout, not nothing
    missing = [n for n in names if not _exists(n)]
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_the_families_listed_have_their_rooms():
    text = DOC.read_text(encoding="utf-8")
    line = re.search(r"layers/<family>\.py\s+user-facing classes: ([\w, ]+)", text)
    assert line, "the layout no longer lists the layer families"
    families = [f.strip() for f in line.group(1).split(",")]
    assert "conv" in families and len(families) >= 6
    for family in families:
        assert (PKG / "layers" / f"{family}.py").exists(), family
        assert (PKG / "builtin" / f"{family}.py").exists(), family
    # and no family module exists that the doc does not list
    on_disk = {p.stem for p in (PKG / "layers").glob("*.py") if not p.stem.startswith("_")}
    assert on_disk - {"base"} == set(families)


@pytest.mark.parametrize("text, missing", [
    ("see `layers/nosuch.py` and graph.py", ["layers/nosuch.py"]),
    ("the `_ext/nosuch.pxd` helpers", ["_ext/nosuch.pxd"]),
])
def test_the_checker_reports_a_missing_path(text, missing):
    assert [n for n in doc_paths(text) if not _exists(n)] == missing
