"""The library's layers (pipeline/<subpackage>/__init__.py says each one's place): imports go one way only, nothing
imports `study` but the stages, and no import hides inside a function to dodge a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Each subpackage and the subpackages it may import (besides itself).
LAYERS = {
    "space": set(),
    "data": set(),
    "kernels": {"space"},
    "training": {"space", "kernels"},
    "search": {"space", "kernels", "training", "data"},
    "analysis": {"space"},
    "study": {"space", "data", "kernels", "training", "search", "analysis"},
}


def _imports(tree: ast.AST):
    """(line, imported module, at module level?) for every absolute import of the project's library."""
    top_level = {id(node) for node in tree.body} if isinstance(tree, ast.Module) else set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "pipeline" else [f"pipeline.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("pipeline."):
                yield node.lineno, name, id(node) in top_level


def _layer_violations(module: str, tree: ast.AST) -> list[str]:
    """Upward or sideways imports of `module` (e.g. "pipeline.space.genotype"), and function-level imports."""
    layer = module.split(".")[1]
    problems = []
    for line, imported, top_level in _imports(tree):
        target = imported.split(".")[1]
        if target not in LAYERS:
            problems.append(f"{module} (line {line}) imports {imported}, which is in no layer")
        elif target != layer and target not in LAYERS[layer]:
            problems.append(f"{module} (line {line}) imports {imported}: layer '{layer}' may import only "
                            f"{sorted(LAYERS[layer]) or 'nothing in pipeline'}")
        if not top_level:
            problems.append(f"{module} (line {line}) imports {imported} inside a function or block")
    return problems


def _library_modules():
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if len(parts) >= 3:
            yield ".".join(parts), path


def test_every_library_module_sits_in_a_known_layer():
    top = {p.name for p in (ROOT / "pipeline").iterdir() if p.suffix == ".py"}
    assert top == {"__init__.py"}, f"modules outside the layers: {sorted(top - {'__init__.py'})}"
    folders = {p.name for p in (ROOT / "pipeline").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(LAYERS)
    for layer in LAYERS:
        doc = ast.get_docstring(ast.parse((ROOT / "pipeline" / layer / "__init__.py").read_text()))
        assert doc and "May import" in doc, f"pipeline/{layer}/__init__.py must say what the layer may import"


@pytest.mark.parametrize("module,path", list(_library_modules()), ids=lambda v: str(v).rsplit("/", 1)[-1])
def test_imports_go_down_the_layers_only(module, path):
    problems = _layer_violations(module, ast.parse(path.read_text()))
    assert not problems, "\n".join(problems)


def test_only_stages_import_the_study_layer():
    for folder in ("bench", "pipeline"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.parent.name == "study":
                continue
            for line, imported, _ in _imports(ast.parse(path.read_text())):
                assert not imported.startswith("pipeline.study"), f"{path.relative_to(ROOT)}:{line} imports {imported}"


@pytest.mark.parametrize("source,expected", [
    ("from pipeline.search.cell import Supernet\n",
     "pipeline.space.genotype (line 1) imports pipeline.search.cell: layer 'space' may import only nothing in pipeline"),
    ("from pipeline import kernels\n",
     "pipeline.space.genotype (line 1) imports pipeline.kernels: layer 'space' may import only nothing in pipeline"),
    ("def f():\n    from pipeline.space.ops import UNARY\n",
     "pipeline.space.genotype (line 2) imports pipeline.space.ops inside a function or block"),
])
def test_an_upward_or_hidden_import_is_reported_with_both_modules(source, expected):
    assert expected in _layer_violations("pipeline.space.genotype", ast.parse(source))
