"""Genotypes: JSON round trip, formulas, fixed modules, baselines."""
import json
import math

import pytest
import sympy
import torch
import torch.nn.functional as F

from pipeline.space.genotype import BASELINES, RELU, SWISH, Genotype
from pipeline.space.models import build_resnet, count_parameters
from pipeline.space.ops import x_


def test_json_round_trip(tmp_path):
    g = Genotype("complex", ("neg", "sqrt", "min", "shift", "identity", "add"), (None, None, None, 0.25, None, None))
    g.save(tmp_path / "g.json")
    assert Genotype.load(tmp_path / "g.json") == g
    assert json.loads((tmp_path / "g.json").read_text())["betas"] == {"u3": 0.25}


def test_formula_is_simplified():
    double_relu = Genotype("simple", ("relu", "relu", "add"), (None, None, None))
    assert double_relu.formula() == "2*relu(x)"
    assert RELU.formula() == "relu(x)"
    assert SWISH.formula() == "x*sigmoid(x)"
    assert Genotype("simple", ("scale", "abs", "add"), (1.0, None, None)).formula() == "x + abs(x)"
    assert Genotype("simple", ("shift", "zero", "left"), (0.123456, None, None)).formula() == "x + 0.1235"
    assert "\\operatorname{relu}" in double_relu.latex()
    assert Genotype("simple", ("min0", "abs", "max"), (None, None, None)).formula() == "abs(x)"  # merged


def test_sigmoid_evaluates_where_a_reader_would():
    # sigmul(zero(x), x) = sigmoid(0) * x: once printed unevaluated as x*sigmoid(0)
    assert Genotype("simple", ("zero", "identity", "sigmul"), (None, None, None)).formula() == "x/2"
    assert Genotype("simple", ("const", "identity", "sigmul"), (0.5, None, None)).formula() == "0.6225*x"
    assert Genotype("simple", ("identity", "identity", "sigmul"), (None, None, None)).formula() == "x*sigmoid(x)"
    d = sympy.diff(SWISH.expr(), x_)  # d/dx x*sigmoid(x), compared numerically with the closed form
    for value in (-2.0, 0.0, 1.5):
        s = 1 / (1 + math.exp(-value))
        assert float(d.subs(x_, value)) == pytest.approx(s + value * s * (1 - s), rel=1e-12)


def test_symbolic_betas():
    g = Genotype("simple", ("scale", "identity", "mul"), (2.0, None, None))
    assert str(g.expr(symbolic_betas=True)) == "beta_u1*x**2"


def test_invalid_genotypes_are_rejected_clearly():
    with pytest.raises(ValueError, match="edge b1 needs a binary operator, got 'relu'"):
        Genotype("simple", ("relu", "relu", "relu"), (None, None, None))
    with pytest.raises(ValueError, match="needs a beta value"):
        Genotype("simple", ("scale", "relu", "add"), (None, None, None))
    with pytest.raises(ValueError, match="unknown search space"):
        Genotype("medium", ("relu",), (None,))
    with pytest.raises(ValueError, match="not a genotype"):
        Genotype.from_dict({"ops": {}})


def test_unreadable_genotype_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read genotype file .*bad.json"):
        Genotype.load(tmp_path / "bad.json")


def test_baseline_modules_compute_relu_and_swish():
    x = torch.linspace(-4, 4, 101)
    assert torch.equal(BASELINES["relu"].build()(x), F.relu(x))
    assert torch.allclose(BASELINES["swish"].build()(x), F.silu(x), atol=1e-6)


@pytest.mark.parametrize("beta_mode,shape", [("scalar", ()), ("channel", (16, 1, 1))])
def test_betas_are_parameters(beta_mode, shape):
    g = Genotype("simple", ("relu", "const", "add"), (None, 0.5, None))
    module = g.build(channels=16, beta_mode=beta_mode)
    (beta,) = module.parameters()
    assert beta.shape == shape and beta.requires_grad
    x = torch.randn(2, 16, 4, 4)
    assert torch.allclose(module(x), F.relu(x) + 0.5)
    frozen = g.build(channels=16, beta_mode=beta_mode, train_betas=False)
    assert not next(frozen.parameters()).requires_grad


def test_resnet_parameter_counts_and_logits():
    counts = {name: count_parameters(build_resnet(name)) for name in ("resnet8", "resnet20", "resnet32", "resnet56")}
    assert counts["resnet20"] == 269722  # He et al.: "0.27M" (option-A shortcuts have no parameters)
    assert counts["resnet8"] < counts["resnet20"] < counts["resnet32"] < counts["resnet56"]
    assert 0.85e6 <= counts["resnet56"] <= 0.86e6  # He et al.: "0.85M"
    net = build_resnet("resnet8", SWISH.factory())
    out = net(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 10)
    assert not torch.allclose(out.softmax(1).sum(1), out.sum(1))  # logits, not probabilities
    with pytest.raises(ValueError, match="unknown network"):
        build_resnet("resnet9")
