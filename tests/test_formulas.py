"""One printed form of a found function (Genotype.formula()): registry names for known activations, never their
expansion (no Piecewise, no erf), terms merged and identities dropped; the exact strings a user reads in the logs,
MLflow tags, summary.json and the reports."""
import pytest

from pipeline.space.genotype import Genotype

NAMED = ["elu", "gelu", "silu", "softplus", "leaky_relu", "sigmoid", "tanh"]


def simple(u1, u2, binary, beta=None):
    return Genotype("simple", (u1, u2, binary), (None, None, beta))


@pytest.mark.parametrize("name", NAMED)
def test_each_named_activation_with_itself(name):
    assert Genotype("complex", (name, "zero", "left", name, "zero", "left"), (None,) * 6).formula() == \
        f"{name}({name}(x))"


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("binary", ["max", "min"])
def test_each_named_activation_inside_max_and_min(name, binary):
    assert simple(name, "identity", binary).formula() == f"{binary}(x, {name}(x))"


@pytest.mark.parametrize("name", NAMED)
def test_each_named_activation_inside_interp(name):
    # sigmoid(0.7) = 0.66819: the mix weights print rounded to 4 digits
    assert simple(name, "identity", "interp", 0.7).formula() == f"0.3318*x + 0.6682*{name}(x)"


@pytest.mark.parametrize("genotype, text", [
    (Genotype("complex", ("elu", "identity", "left", "elu", "sqrt", "max"), (None,) * 6),
     "max(elu(elu(x)), sqrt(max(0.001, x)))"),
    (simple("relu", "sqrt_ramp", "interp_lin", 0.6222), "0.6222*relu(x) + 0.3778*sqrt(max(0, x))"),
    (simple("gelu", "gelu", "add"), "2*gelu(x)"),  # terms merged, the activation kept
    (simple("gelu", "elu", "interp", 0.0), "elu(x)/2 + gelu(x)/2"),
    (simple("relu", "zero", "add"), "relu(x)"),  # identities dropped
])
def test_found_functions_print_readably(genotype, text):
    formula = genotype.formula()
    assert formula == text
    assert "Piecewise" not in formula and "erf" not in formula
