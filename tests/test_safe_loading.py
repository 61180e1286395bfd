"""The safe way to a retrained network (docs/cluster.md, "Where pickles are loaded"): weights.pt and genotype.json
as the evaluate stage writes them, loaded with torch.load(weights_only=True), give the trained network back; the
same loader refuses a pickled module. The test runs the docs' own code block, so the docs cannot drift from it."""
import pickle
import re
from pathlib import Path

import pytest
import torch

from pipeline.kernels.fused_genotype import fast_forward
from pipeline.space.genotype import Genotype
from pipeline.space.models import build_resnet

ROOT = Path(__file__).resolve().parents[1]
DOCS_RUN = "results/evaluate/drnas-simple/resnet20/seed0"
SEARCHED = Genotype.from_dict({"space": "simple", "ops": {"u1": "identity", "u2": "sigmoid", "b1": "mul"},
                               "betas": {}})


def documented_block() -> str:
    text = (ROOT / "docs" / "cluster.md").read_text()
    block = re.search(r"<!-- safe-loading -->\n```python\n(.*?)```", text, re.S)
    assert block, "docs/cluster.md lost its safe-loading block"
    return block.group(1)


def trained_run(folder: Path) -> torch.nn.Module:
    """A retraining's output folder, written as stages/evaluate writes it (default evaluate params)."""
    torch.manual_seed(0)
    model = build_resnet("resnet20", SEARCHED.factory("scalar", False, fast_forward, "shared"))
    with torch.no_grad():  # weights and BatchNorm statistics away from their initial values
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        model(torch.randn(16, 3, 32, 32))
    folder.mkdir(parents=True)
    SEARCHED.save(folder / "genotype.json")
    torch.save(model.state_dict(), folder / "weights.pt")
    return model.eval()


def test_the_documented_weights_and_genotype_path_rebuilds_the_trained_network(tmp_path):
    run = tmp_path / "seed0"
    trained = trained_run(run)
    images = torch.randn(4, 3, 32, 32)
    code = documented_block()
    assert "weights_only=True" in code and "load_model" not in code
    namespace = {"images": images}
    exec(compile(code.replace(DOCS_RUN, str(run)), "docs/cluster.md", "exec"), namespace)
    with torch.no_grad():
        assert torch.equal(namespace["logits"], trained(images))


def test_weights_only_loading_refuses_a_pickled_module(tmp_path):
    torch.save(torch.nn.Linear(3, 2), tmp_path / "module.pt")  # a pickled module: classes to import and build
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "module.pt", map_location="cpu", weights_only=True)
