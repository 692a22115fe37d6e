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
    assert "examples/" in study
    assert "pytest" in tests


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


def test_import_jaxreg_does_not_import_flax():
    code = "import sys, jaxreg; print('flax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


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
