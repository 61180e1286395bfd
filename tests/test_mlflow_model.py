"""A retrained network logged as an MLflow model loads back with mlflow.pytorch.load_model and computes the
same logits as the saved weights; the registry holds a registered model with its tags."""
import copy
from pathlib import Path

import pytest
import torch

from pipeline.kernels.fused_genotype import fast_forward
from pipeline.space.genotype import Genotype
from pipeline.space.models import build_resnet
from pipeline.study.tracking import StageRun, model_requirements

ROOT = Path(__file__).resolve().parents[1]
# A searched-like genotype with a trainable beta, on the retraining fast path, as the evaluate stage builds it.
FOUND = Genotype.from_dict({"space": "simple", "ops": {"u1": "identity", "u2": "sigmoid", "b1": "mul"},
                            "betas": {}})


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def network() -> torch.nn.Module:
    return build_resnet("resnet8", FOUND.factory("scalar", True, fast_forward))


def test_a_logged_network_loads_back_with_the_same_logits_as_its_saved_weights(tmp_path, tracking_uri):
    import mlflow.pytorch

    torch.manual_seed(0)
    model = network()
    with torch.no_grad():  # weights and BatchNorm statistics away from their initial values
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        model(torch.randn(16, 3, 32, 32))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    batch = torch.randn(4, 3, 32, 32)
    with StageRun("evaluate-searched@x", experiment="e", tracking_uri=tracking_uri, project_root=ROOT) as run:
        uri = run.log_model(copy.deepcopy(model).eval(), "network", batch[:2].numpy(), [str(ROOT / "pipeline")],
                            model_requirements())
        version = run.register_model(uri, "best", {"verdict": "better than relu", "formula": "x*sigmoid(x)"})
    mlflow.set_tracking_uri(tracking_uri)
    loaded = mlflow.pytorch.load_model(uri)
    saved = network()
    saved.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    with torch.no_grad():
        expected = saved.eval()(batch)
        assert torch.equal(loaded.eval()(batch), expected)
    declared = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text().split()
    assert {line.split("==")[0] for line in declared} <= {"mlflow", "torch", "cloudpickle", "sympy"}  # no DVC, Ray
    info = mlflow.models.get_model_info(uri)
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, 32, 32)
    registered = mlflow.MlflowClient(tracking_uri).get_model_version("best", version)
    assert registered.tags == {"verdict": "better than relu", "formula": "x*sigmoid(x)"}
    assert registered.run_id == run.run_id
