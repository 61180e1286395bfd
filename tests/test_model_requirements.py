"""A logged network declares what loading it needs (torch, cloudpickle and what the pickled classes' modules
import), not the project's whole requirements.txt."""
import ast
import sys
from importlib.metadata import version
from pathlib import Path

from pipeline.study.tracking import MODEL_IMPORTS, model_requirements

ROOT = Path(__file__).resolve().parents[1]
# The layers an evaluated network's pickle names classes from (models, genotype activations, fused kernels).
LOADED_LAYERS = ("space", "kernels")


def third_party_imports(folder: Path) -> set[str]:
    names = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name not in ("pipeline", "__future__")}


def test_the_declared_imports_are_those_of_the_modules_a_logged_network_needs():
    imported = set().union(*(third_party_imports(ROOT / "pipeline" / layer) for layer in LOADED_LAYERS))
    assert imported - {"torch"} == set(MODEL_IMPORTS)


def test_model_requirements_pin_torch_cloudpickle_and_the_declared_imports_at_installed_versions():
    pins = dict(line.split("==") for line in model_requirements())
    assert set(pins) == {"torch", "cloudpickle", *MODEL_IMPORTS}
    assert pins["sympy"] == version("sympy") and pins["torch"].split("+")[0] == version("torch").split("+")[0]
