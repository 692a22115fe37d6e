"""The package's layering rule: no module reaches into a sibling's private names.

Private names (``_name``) may be shared only through the private helper layer
(``_checks``, ``_numerics``, ``_trees``, ``_sampler``, ``_keys``, ``_layers``);
every other module keeps its private names to itself.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxreg"
HELPERS = {"_checks", "_numerics", "_trees", "_sampler", "_keys", "_layers"}


def _sibling(module: str | None, level: int) -> str | None:
    """The sibling module an import names (``jaxreg.x`` or ``.x``), else None."""
    if module is None:
        return None
    if level == 1:
        return module.split(".")[0]
    if level == 0 and module.startswith("jaxreg."):
        return module.split(".")[1]
    return None


def private_reaches(source: str) -> list[str]:
    """Where ``source`` uses a private name of a non-helper sibling module.

    Catches ``from jaxreg.x import _y`` (and the relative form) and attribute
    access ``m._y`` on a name bound to a sibling by ``import jaxreg.x as m`` or
    ``from jaxreg import x``.
    """
    tree = ast.parse(source)
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            sibling = _sibling(node.module, node.level)
            if sibling is not None and sibling not in HELPERS:
                found += [
                    f"line {node.lineno}: from {sibling} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                ]
            if (node.module == "jaxreg" and node.level == 0) or (
                node.module is None and node.level == 1
            ):
                for a in node.names:
                    aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("jaxreg.") and a.asname:
                    aliases[a.asname] = a.name.split(".")[1]
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and aliases[node.value.id] not in HELPERS
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            sibling = aliases[node.value.id]
            found.append(f"line {node.lineno}: {sibling}.{node.attr}")
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_no_module_imports_a_siblings_private_name(path):
    assert private_reaches(path.read_text()) == []


@pytest.mark.parametrize(
    "source",
    [
        "from jaxreg.penalties import _is_mask_fn",
        "from .penalties import l1, _f32",
        "import jaxreg.bayesian as b\nb._check_threshold(1.0)",
        "from jaxreg import uncertainty\nuncertainty._check_count(1)",
    ],
)
def test_the_checker_catches_each_form_of_reach(source):
    assert len(private_reaches(source)) == 1


@pytest.mark.parametrize(
    "source",
    [
        "from jaxreg._checks import check_int",
        "from jaxreg._sampler import _bits",
        "from jaxreg import _layers\n_layers._private",
        "import jaxreg.stochastic as s\ns.dropout\ns.__doc__",
        "from jaxreg.penalties import l1",
    ],
)
def test_the_checker_allows_helpers_and_public_names(source):
    assert private_reaches(source) == []
