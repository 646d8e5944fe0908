"""The recipe registry: names read from the source, modules imported on first use."""

import subprocess
import sys

import pytest

from neuromorph.recipes import RECIPES, _literal_name, _Registry, get_recipe


def test_every_registered_name_is_the_modules_name():
    assert len(RECIPES) >= 7
    for name in RECIPES:
        assert RECIPES[name].NAME == name


def test_literal_name_reads_plain_and_annotated_assignments(tmp_path):
    (tmp_path / "a.py").write_text('"""doc"""\nimport os\nNAME = "alpha"\nX = 1\n')
    (tmp_path / "b.py").write_text('NAME: str = "beta"\n')
    (tmp_path / "c.py").write_text('NAME = "g" + "amma"\n')
    (tmp_path / "d.py").write_text("def f(:\n")
    assert _literal_name(tmp_path / "a.py") == "alpha"
    assert _literal_name(tmp_path / "b.py") == "beta"
    assert _literal_name(tmp_path / "c.py") is None  # computed: the registry imports the module
    assert _literal_name(tmp_path / "d.py") is None


def test_a_broken_module_fails_only_when_asked_for():
    reg = _Registry({"deep-r": "neuromorph.recipes.deep_r", "broken": "neuromorph.recipes._no_such_module"})
    assert sorted(reg) == ["broken", "deep-r"]
    assert reg["deep-r"].NAME == "deep-r"
    with pytest.raises(ModuleNotFoundError):
        reg["broken"]


def test_a_name_that_disagrees_with_the_module_is_an_error():
    reg = _Registry({"not-deep-r": "neuromorph.recipes.deep_r"})
    with pytest.raises(RuntimeError, match="registered as 'not-deep-r'"):
        reg["not-deep-r"]


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ValueError, match="known recipes: .*deep-r"):
        get_recipe("no-such-recipe")


def test_importing_the_registry_imports_no_recipe():
    code = (
        "import sys, neuromorph.recipes as r; "
        "print(sorted(m for m in sys.modules"
        " if m.startswith('neuromorph.recipes.') and m != 'neuromorph.recipes._common'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
