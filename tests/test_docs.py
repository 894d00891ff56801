"""Every hook in cnnkit/hookspecs.py is documented in docs/plugin-guide.md with its exact
signature, and exercised by a test (its name appears in a tests/test_*.py file)."""
import inspect
import re
from pathlib import Path

import pytest

from cnnkit import hookspecs

ROOT = Path(__file__).parent.parent
GUIDE = ROOT / "docs" / "plugin-guide.md"
TESTS = Path(__file__).parent


class _Source(str):
    """A string annotation shown as written (``Callable[..., None]``, not quoted)."""

    __repr__ = str.__str__


def hook_signature(fn) -> str:
    """``name(param: Annotation, ...) -> Return`` as written in hookspecs.py."""
    sig = inspect.signature(fn)
    params = [p.replace(annotation=_Source(p.annotation)) if isinstance(p.annotation, str) else p
              for p in sig.parameters.values()]
    ret = sig.return_annotation
    sig = sig.replace(parameters=params,
                      return_annotation=_Source(ret) if isinstance(ret, str) else ret)
    return f"{fn.__name__}{sig}"


def _hooks():
    hooks = sorted(name for name, obj in vars(hookspecs).items()
                   if name.startswith("cnnkit_") and inspect.isfunction(obj))
    assert hooks, "no hooks found in cnnkit/hookspecs.py"
    return hooks


HOOKS = _hooks()


def test_hook_signature_helper_matches_the_source():
    source = inspect.getsource(hookspecs)
    for name in HOOKS:
        sig = hook_signature(getattr(hookspecs, name))
        assert f"def {sig}:" in re.sub(r"\s+", " ", source).replace("( ", "(").replace(", )", ")")


def test_all_lists_every_hook():
    assert set(HOOKS) <= set(hookspecs.__all__)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_its_signature(hook):
    guide = GUIDE.read_text(encoding="utf-8")
    sig = hook_signature(getattr(hookspecs, hook))
    assert f"`{sig}`" in guide, (f"{GUIDE.relative_to(ROOT)} must document hook {hook} with its "
                                 f"exact signature: `{sig}`")


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    found = [p.name for p in sorted(TESTS.glob("test_*.py"))
             if p.name != Path(__file__).name and hook in p.read_text(encoding="utf-8")]
    assert found, f"no test exercises hook {hook} (its name appears in no tests/test_*.py file)"


def test_guide_documents_every_environment_variable_and_builtin_capability():
    import cnnkit.testing
    from cnnkit.plugins import Registry

    guide = GUIDE.read_text(encoding="utf-8")
    for var in ("CNNKIT_IMPL", "CNNKIT_LOAD_PLUGINS", "CNNKIT_DISABLE_PLUGINS",
                "CNNKIT_STRICT_PLUGINS"):
        assert f"`{var}`" in guide, var
    reg = Registry()
    reg.load(entry_points=False)
    for layer_type, (cls, plugin) in reg.layer_types.items():
        if plugin.startswith("cnnkit.builtin") and reg.variants.get(layer_type):
            row = next((line for line in guide.splitlines()
                        if line.startswith("| ") and f"`{layer_type}`" in line.split("|")[1]),
                       None)
            assert row is not None, f"no capability row for {layer_type}"
            for feature in cls.FEATURES:
                assert f"`{feature}`" in row, (layer_type, feature)
    assert cnnkit.testing.check_variant.__name__ in guide
