"""Repository-level checks: the README's commands, CI and the docs build."""

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md must open with a bash block of commands"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines()]


def test_readme_opens_with_study_and_test_commands():
    study, tests = _readme_commands()[:2]
    # The study runs as a module of the `examples` package (no sys.path edits).
    module = re.search(r"python -m examples\.(\w+)", study)
    assert module, study
    assert (ROOT / "examples" / f"{module.group(1)}.py").is_file()
    assert (ROOT / "examples" / "__init__.py").is_file()
    assert "pytest" in tests


def test_examples_import_their_helpers_without_path_edits():
    for script in sorted((ROOT / "examples").rglob("*.py")):
        text = script.read_text()
        assert "sys.path" not in text, script
        assert "import common" not in text, script


def test_ci_runs_exactly_the_readme_test_command():
    test_command = _readme_commands()[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert test_command in ci_lines
    assert any(line.startswith("ruff check") for line in ci_lines)
    assert any(line.startswith("ruff format --check") for line in ci_lines)


def test_docs_build_without_warnings(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
        + [str(ROOT / "docs"), str(tmp_path / "html")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _loaded_after(module: str) -> set[str]:
    """The modules ``import module`` loads, in a fresh interpreter."""
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def _under(modules: set[str], *packages: str) -> set[str]:
    return {
        m for m in modules if any(m == p or m.startswith(p + ".") for p in packages)
    }


def test_import_jaxreg_does_not_import_flax_or_equinox():
    loaded = _loaded_after("jaxreg")
    assert not _under(loaded, "flax", "equinox", "jaxreg.linen", "jaxreg.nnx")


def test_each_adapter_loads_only_its_own_framework():
    # The adapters share the framework-free core (jaxreg._layers), never each
    # other. `import flax` itself loads flax.linen (Flax's package __init__), so
    # jaxreg.nnx may load no more of flax.linen than `import flax.nnx` does.
    core = _loaded_after("jaxreg._layers")
    assert not _under(core, "flax", "equinox")
    linen = _loaded_after("jaxreg.linen")
    assert "flax.linen" in linen
    assert not _under(linen, "flax.nnx", "equinox", "jaxreg.nnx", "jaxreg.equinox")
    nnx = _loaded_after("jaxreg.nnx")
    assert "flax.nnx" in nnx
    assert not _under(nnx, "equinox", "jaxreg.linen", "jaxreg.equinox")
    assert _under(nnx, "flax.linen") <= _under(_loaded_after("flax.nnx"), "flax.linen")
    eqx = _loaded_after("jaxreg.equinox")
    assert "equinox" in eqx
    assert not _under(eqx, "flax", "jaxreg.linen", "jaxreg.nnx")


def test_every_public_name_is_in_the_api_reference():
    import importlib

    import jaxreg

    pages = "\n".join(p.read_text() for p in (ROOT / "docs/api").glob("*.md"))
    documented = re.findall(r"automodule:: ([\w.]+)\n((?:\s+:[^\n]*\n)*)", pages)
    covered = set()
    for module_name, options in documented:
        module = importlib.import_module(module_name)
        explicit = re.search(r":members:\s*(\S[^\n]*)", options)
        if explicit:
            covered |= {n.strip() for n in explicit.group(1).split(",")}
        else:
            covered |= set(getattr(module, "__all__", ()))
    missing = sorted(set(jaxreg.__all__) - covered)
    assert not missing, f"public names missing from docs/api: {missing}"
