"""Equivalence of searched activations with known ones, and the PNG plots."""
import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.analysis.equivalence import equivalence_warning, find_equivalent, finite_on_grid
from pipeline.analysis.known_activations import KNOWN_ACTIVATIONS, Equivalence
from pipeline.analysis.plots import plot_activations, plot_lines, values_and_derivative

BETA = 0.37
GRID = torch.linspace(-5, 5, 2001, dtype=torch.float64)


def searched_formula(x: torch.Tensor) -> torch.Tensor:
    """min(-x, sqrt(x)) + beta + x exactly as the search writes it, with sqrt guarded to sqrt(max(x, 0))."""
    return torch.minimum(-x, torch.sqrt(torch.clamp(x, min=0.0))) + BETA + x


def assert_reproduces(found: Equivalence, f) -> None:
    """The reported expression is f itself on the grid, not just something that passed the tolerance."""
    assert torch.allclose(found(GRID), f(GRID).to(torch.float64), atol=1e-6, rtol=0)


def test_registry_holds_the_documented_activations():
    expected = {"identity", "relu", "leaky_relu", "swish", "gelu", "elu", "softplus", "sigmoid", "tanh", "abs",
                "square"}
    assert set(KNOWN_ACTIVATIONS) == expected
    assert torch.allclose(KNOWN_ACTIVATIONS["swish"](GRID), GRID * torch.sigmoid(GRID))
    assert torch.equal(KNOWN_ACTIVATIONS["square"](GRID), GRID * GRID)


def test_shifted_min_is_a_sign_flipped_shifted_relu():
    f = lambda x: BETA + torch.minimum(x, torch.zeros_like(x))  # noqa: E731
    found = find_equivalent(f)
    assert found is not None and found.name == "relu"
    assert found.a == pytest.approx(-1) and found.c == pytest.approx(-1)
    assert found.b == pytest.approx(BETA) and found.d == pytest.approx(0, abs=1e-9)
    sentence = found.describe()
    assert "sign-flipped" in sentence and "shifted by 0.37" in sentence and "ReLU" in sentence
    assert found.formula() == "-relu(-x) + 0.37"
    assert_reproduces(found, f)


def test_literal_search_formula_gives_the_same_relu():
    literal, direct = find_equivalent(searched_formula), find_equivalent(lambda x: BETA + x.clamp(max=0.0))
    assert literal is not None and literal.name == "relu"
    for field in "abcd":
        assert getattr(literal, field) == pytest.approx(getattr(direct, field), abs=1e-9)


def test_unguarded_sqrt_gives_nan_so_no_match_but_reported():
    unguarded = lambda x: torch.minimum(-x, torch.sqrt(x)) + BETA + x  # noqa: E731  (nan for x < 0)
    assert find_equivalent(unguarded) is None
    assert not finite_on_grid(unguarded)
    assert "not finite" in equivalence_warning(unguarded)


def test_swish_is_swish_not_relu():
    found = find_equivalent(lambda x: x * torch.sigmoid(x))
    assert found is not None and found.name == "swish"
    assert (found.a, found.c) == (pytest.approx(1, abs=1e-6), pytest.approx(1, abs=1e-6))
    assert "ReLU" not in found.describe() and "Swish" in found.describe()


def test_swish_written_as_a_product_of_two_inputs():
    def product(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x1) * x2

    found = find_equivalent(lambda x: product(x, x))
    assert found is not None and found.name == "swish"


def test_scaled_shifted_tanh():
    f = lambda x: 2 * torch.tanh(x / 2) + 1  # noqa: E731  (also 4*sigmoid(x) - 1: tanh needs less scaling)
    found = find_equivalent(f)
    assert found is not None and found.name == "tanh"
    assert (found.a, found.b, found.c) == (pytest.approx(2, abs=1e-6), pytest.approx(1, abs=1e-6),
                                           pytest.approx(0.5, abs=1e-6))
    assert "scaled by 0.5" in found.describe()
    assert_reproduces(found, f)


def test_sigmoid_of_negated_input_is_a_sign_flipped_sigmoid():
    found = find_equivalent(lambda x: torch.sigmoid(-x))
    assert found is not None and found.name == "sigmoid"
    assert (found.a, found.b, found.c) == (pytest.approx(1, abs=1e-6), pytest.approx(0, abs=1e-6),
                                           pytest.approx(-1, abs=1e-6))
    assert "input sign-flipped" in found.describe() and "output" not in found.describe()


def test_affine_function_is_identity():
    found = find_equivalent(lambda x: 3 * x + 1)
    assert found is not None and found.name == "identity"
    assert (found.a, found.b) == (pytest.approx(3), pytest.approx(1))
    assert "affine" in found.describe()


@pytest.mark.parametrize("f", [lambda x: torch.full_like(x, 0.5), lambda x: 0.5, lambda x: 0.5 + 0 * x])
def test_constant(f):
    found = find_equivalent(f)
    assert found is not None and found.name == "constant" and found.b == pytest.approx(0.5)
    assert "constant" in found.describe()


def test_scaled_relu():
    found = find_equivalent(lambda x: torch.relu(x) * 2)
    assert found is not None and found.name == "relu"
    assert (found.a, found.b, found.c) == (pytest.approx(2), pytest.approx(0, abs=1e-9), 1.0)
    assert "scaled by 2" in found.describe() and "sign-flipped" not in found.describe()


def test_leaky_relu_slope_is_fitted():
    found = find_equivalent(lambda x: F.leaky_relu(x, 0.2))
    assert found is not None and found.name == "leaky_relu" and found.slope == pytest.approx(0.2)
    flipped = find_equivalent(lambda x: 3 * F.leaky_relu(-(x - 1), 0.1))
    assert flipped is not None and flipped.name == "leaky_relu"
    assert (flipped.slope, flipped.a, flipped.c) == (pytest.approx(0.1), pytest.approx(3), -1.0)
    assert_reproduces(flipped, lambda x: 3 * F.leaky_relu(-(x - 1), 0.1))


@pytest.mark.parametrize("name, f", [
    ("gelu", F.gelu),  # close to swish with input scale 1.702, but not within the tolerance
    ("elu", lambda x: 3 * F.elu(x - 1)),
    ("softplus", lambda x: -F.softplus(-2 * x + 0.5)),
    ("swish", lambda x: x * torch.sigmoid(1.7 * x)),
    ("abs", lambda x: (x + 0.5).abs()),
    ("square", lambda x: 0.3 * (x - 1) ** 2 - 2),
])
def test_other_known_activations_in_disguise(name, f):
    found = find_equivalent(f)
    assert found is not None and found.name == name
    assert_reproduces(found, f)


@pytest.mark.parametrize("f", [
    lambda x: x + torch.sin(x),
    lambda x: x * torch.atan(x) - 0.3 * torch.cos(3 * x),
    lambda x: torch.exp(-x ** 2) * x,
    lambda x: x * torch.tanh(F.softplus(x)),  # mish: swish-like, ~9x the tolerance away from it
    lambda x: F.silu(x) + 0.02 * torch.sin(3 * x),  # swish plus a 0.4%-of-range wiggle
    torch.exp,  # a sigmoid's or softplus's tail, but their centres must lie inside the grid
], ids=["x+sin", "x*atan-cos", "gaussian-x", "mish", "wiggly-swish", "exp"])
def test_novel_functions_are_not_flagged(f):
    assert find_equivalent(f) is None
    assert finite_on_grid(f)


@pytest.mark.parametrize("f", [
    lambda x: torch.exp(x.float()) ** 30,  # overflows float32 for x > ~2.96
    lambda x: torch.where(x > 4, torch.full_like(x, math.inf), torch.relu(x)),
], ids=["float32-overflow", "inf-on-part"])
def test_non_finite_functions_match_nothing_and_are_reported(f):
    assert find_equivalent(f) is None
    assert not finite_on_grid(f)
    assert "not finite" in equivalence_warning(f)


def test_warning_names_the_known_activation():
    assert "ReLU" in equivalence_warning(searched_formula, x_min=-3.0, x_max=3.0, n=601)


def test_tighter_tolerance_rejects_an_approximate_match():
    approximate = lambda x: torch.relu(x) + 1e-3 * torch.sin(x)  # noqa: E731
    assert find_equivalent(approximate, rtol=1e-2).name == "relu"
    assert find_equivalent(approximate, rtol=1e-5) is None


def test_bad_input_gets_one_clear_error():
    with pytest.raises(ValueError, match="x_min < x_max"):
        find_equivalent(torch.relu, x_min=1.0, x_max=-1.0)
    with pytest.raises(ValueError, match="grid points"):
        find_equivalent(torch.relu, n=3)
    with pytest.raises(ValueError, match="rtol"):
        find_equivalent(torch.relu, rtol=0.0)
    with pytest.raises(TypeError, match="callable"):
        find_equivalent("relu")
    with pytest.raises(ValueError, match="elementwise"):
        find_equivalent(lambda x: x[:10])


def test_derivatives_by_autograd_and_by_differences():
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    _, swish_slope = values_and_derivative(F.silu, x)
    expected = torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x)))
    assert torch.allclose(swish_slope, expected, atol=1e-12)
    opaque = lambda t: torch.from_numpy(t.detach().numpy() ** 2)  # noqa: E731  (no autograd graph)
    _, square_slope = values_and_derivative(opaque, x)
    assert torch.allclose(square_slope[1:-1], 2 * x[1:-1], atol=1e-9)
    _, constant_slope = values_and_derivative(lambda t: torch.full_like(t, 0.5), x)
    assert torch.allclose(constant_slope, torch.zeros_like(x), atol=1e-12)


def test_plots_write_png_files(tmp_path):
    functions = {"searched": searched_formula, "ReLU": torch.relu, "Swish": F.silu,
                 "overflow": lambda x: torch.exp(x.float()) ** 30}
    activations = plot_activations(functions, tmp_path / "figures" / "activations.png")
    curves = plot_lines({"train loss": [2.3, 1.7, 1.2, math.nan], "test loss": [2.2, 1.8]},
                        tmp_path / "curves.png", "epoch", "loss", "training")
    for path in (activations, curves):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


@pytest.mark.parametrize("kind, magic", [("pdf", b"%PDF-"), ("svg", b"<?xml")])
def test_vector_figures_are_their_format_and_the_same_bytes_each_time(tmp_path, kind, magic):
    """report.figure_format: PDF and SVG for papers. Neither may carry the time of writing (matplotlib stamps a
    creation date into both, and SVG ids come from a random salt), or every rerun changes a DVC output."""
    functions = {"ReLU": torch.relu, "Swish": F.silu}
    first = plot_activations(functions, tmp_path / "one" / f"activations.{kind}")
    second = plot_activations(functions, tmp_path / "two" / f"activations.{kind}")
    assert first.read_bytes()[:len(magic)] == magic and first.stat().st_size > 1000
    assert first.read_bytes() == second.read_bytes()
    if kind == "svg":
        assert b"<svg" in first.read_bytes()[:2000]


def test_plot_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="png, pdf, svg"):
        plot_lines({"a": [1.0]}, tmp_path / "curves.jpg", "epoch", "loss", "t")
    with pytest.raises(ValueError, match="at least one"):
        plot_activations({}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="x_values"):
        plot_lines({"a": [1.0, 2.0]}, tmp_path / "b.png", "epoch", "loss", "t", x_values=[1.0])
