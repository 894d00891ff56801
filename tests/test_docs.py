"""Every hook in cnnkit/hookspecs.py is documented in docs/plugin-guide.md with its exact
signature, and exercised by a test (a test function uses its name in code, not in a comment)."""
import ast
import inspect
import re
import textwrap
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


def code_references(fn: ast.AST) -> set:
    """Names, attributes, definitions and string constants used as code in a function's body:
    comments are not in the tree, and docstrings and other bare string statements are
    skipped, so a name that is only mentioned does not count."""
    found = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Expr) and isinstance(child.value, ast.Constant):
                continue
            if isinstance(child, ast.Name):
                found.add(child.id)
            elif isinstance(child, ast.Attribute):
                found.add(child.attr)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.add(child.name)
            elif isinstance(child, ast.Constant) and isinstance(child.value, str):
                found.add(child.value)
    return found


def functions_using(hook: str) -> list:
    """``file::test`` for every test function whose code (not a comment or docstring) uses
    ``hook``: calls or implements it, or passes it in a string (plugin source, hook names)."""
    found = []
    for path in sorted(TESTS.glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and node.name.startswith("test_")
                    and any(hook in ref for ref in code_references(node))):
                found.append(f"{path.name}::{node.name}")
    return found


def test_code_references_ignore_comments_and_docstrings():
    tree = ast.parse(textwrap.dedent('''
        def test_a():
            """cnnkit_hook_doc"""
            # cnnkit_hook_comment
            "cnnkit_hook_bare"
            register("cnnkit_hook_string")
            plugins.cnnkit_hook_attribute
            class P:
                def cnnkit_hook_impl(register):
                    """cnnkit_hook_inner_doc"""
    '''))
    refs = {r for r in code_references(tree.body[0]) if r.startswith("cnnkit_")}
    assert refs == {"cnnkit_hook_string", "cnnkit_hook_attribute", "cnnkit_hook_impl"}


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    assert functions_using(hook), (f"no test exercises hook {hook}: no test_* function in "
                               "tests/test_*.py uses it in code (a comment or docstring does "
                               "not count)")


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
            # the guide's table documents the built-ins; a family added later may document its
            # features in its own layer class instead (its file carries the family's name)
            where = row if row is not None else inspect.getdoc(cls) or ""
            for feature in cls.FEATURES:
                assert f"`{feature}`" in where, (
                    f"{layer_type}: feature {feature!r} is documented neither in a capability "
                    f"row of docs/plugin-guide.md nor in {cls.__name__}'s docstring")
    assert cnnkit.testing.check_variant.__name__ in guide


def test_a_new_family_documents_its_features_in_its_own_class(monkeypatch):
    """A layer type without a row in the guide passes when its class documents every feature
    and fails when it does not."""
    from cnnkit.layers import Layer
    from cnnkit.plugins import Registry

    class PixelShuffle2D(Layer):
        """Sub-pixel rearrangement; capabilities: `scale`."""

        layer_type = "pixelshuffle2d"
        FEATURES = ("scale",)

    class Variant:
        forward = backward = staticmethod(lambda *a, **k: None)

    real_load = Registry.load

    def load(self, *args, **kwargs):
        real_load(self, *args, **kwargs)
        self.layer_types["pixelshuffle2d"] = (PixelShuffle2D, "cnnkit.builtin.shuffle")
        self.variants["pixelshuffle2d"] = {"numpy": Variant}

    monkeypatch.setattr(Registry, "load", load)
    test_guide_documents_every_environment_variable_and_builtin_capability()
    PixelShuffle2D.__doc__ = "Sub-pixel rearrangement."
    with pytest.raises(AssertionError, match="pixelshuffle2d: feature 'scale'"):
        test_guide_documents_every_environment_variable_and_builtin_capability()
