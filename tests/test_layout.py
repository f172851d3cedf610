"""The house rules, read from the source: what stands on the top floor, and which way
imports point (stage scripts -> quantization -> vaiq -> dpu -> flow; nothing imports a
stage script; the packages never import the top floor's modules)."""
import ast
import glob
import os

import pytest

from conftest import REPO

STAGES = ("generate_data", "run", "vai_q_pytorch_quant", "vai_q_pytorch_qat", "simulate", "hls4ml_project",
          "report")
SHARED = ("model", "preprocessors", "losses", "runner", "set_seed")
# Each package, and the packages it may import (lower floors only).
PACKAGES = {
    "quantization": ("vaiq", "dpu", "flow"),
    "hls": ("dpu", "flow"),
    "reporting": ("dpu", "flow"),
    "vaiq": ("dpu", "flow"),
    "dpu": ("flow",),
    "flow": (),
}
TOP_FLOOR = {name + ".py" for name in STAGES + SHARED} | {
    "compile.sh", "Makefile", "README.md", "requirements.txt", "requirements-test.txt", "pytest.ini", ".gitignore"}
FOLDERS = set(PACKAGES) | {"tools", "tests", "docs", "data", "checkpoints", "logs", "quantize_result", "qat_result",
                           "report", ".ci", ".git"}


def project_modules(path):
    """The first component of every module `path` imports (absolute imports; relative ones
    stay inside their package)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def tracked(pattern):
    return sorted(glob.glob(os.path.join(REPO, pattern)))


def test_the_top_floor_holds_only_what_a_user_runs_or_edits():
    entries = set(os.listdir(REPO)) - {".venv", ".pytest_cache", "__pycache__", "compile_output", "hls_project",
                                        "hls_outputs.npy", "benchmark_results", ".vai_qat"}
    files = {e for e in entries if os.path.isfile(os.path.join(REPO, e))}
    folders = entries - files
    assert files <= TOP_FLOOR, sorted(files - TOP_FLOOR)
    assert folders <= FOLDERS, sorted(folders - FOLDERS)


@pytest.mark.parametrize("path", [p for pattern in ("*.py", "tools/*.py") + tuple(p + "/*.py" for p in PACKAGES)
                                  for p in tracked(pattern)], ids=lambda p: os.path.relpath(p, REPO))
def test_nothing_imports_a_stage_script(path):
    assert not project_modules(path) & set(STAGES), os.path.relpath(path, REPO)


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_packages_import_only_the_floors_below(package):
    allowed = set(PACKAGES[package]) | {package}
    for path in tracked(package + "/*.py"):
        imported = project_modules(path)
        assert not imported & set(SHARED), (os.path.relpath(path, REPO), sorted(imported & set(SHARED)))
        above = imported & (set(PACKAGES) - allowed)
        assert not above, (os.path.relpath(path, REPO), sorted(above))


def test_the_rule_is_checked_on_every_package():
    assert {name for name in os.listdir(REPO) if os.path.isfile(os.path.join(REPO, name, "__init__.py"))} == \
        set(PACKAGES)
