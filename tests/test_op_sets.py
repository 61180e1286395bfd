"""The named operator sets: no two candidates of an edge are the same function at initialisation, and the `poster`
set follows the original code (jr2021/DARTS_activations): its `Sign` is -x and its shift/constant start at 1."""
import itertools

import pytest
import torch

from pipeline.space.ops import BINARY, OP_SETS, UNARY

GRID = torch.linspace(-3.0, 3.0, 61, dtype=torch.float64)


def at_init(op, *inputs):
    beta = None if op.beta_init is None else torch.tensor(op.beta_init, dtype=torch.float64)
    return torch.broadcast_to(op.fn(*inputs, beta), inputs[0].shape)


@pytest.mark.parametrize("set_name", sorted(OP_SETS))
def test_no_two_candidates_are_the_same_function_at_initialisation(set_name):
    """Identical candidates get identical alpha gradients: their family's weight is split and the argmax biased."""
    unary, binary = OP_SETS[set_name]
    x1, x2 = torch.meshgrid(GRID, GRID.flip(0) * 0.7, indexing="ij")
    outputs = {name: at_init(UNARY[name], GRID) for name in unary}
    outputs |= {name: at_init(BINARY[name], x1, x2) for name in binary}
    for group in (unary, binary):
        for a, b in itertools.combinations(group, 2):
            assert not torch.allclose(outputs[a], outputs[b], atol=1e-6), f"{set_name}: {a} == {b} at init"


def test_the_duplicate_check_would_see_the_old_duplicates():
    """The comparison itself: scale at 1 and shift at 0 are the identity, const at 0 is zero."""
    scale, shift, const = UNARY["scale"], UNARY["shift"], UNARY["const"]
    one, zero = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    assert torch.equal(scale.fn(GRID, one), GRID) and torch.equal(shift.fn(GRID, zero), GRID)
    assert torch.equal(const.fn(GRID, zero), UNARY["zero"].fn(GRID))


def test_poster_sign_is_negation_with_gradient_minus_one():
    unary, _ = OP_SETS["poster"]
    assert "sign" not in unary and "neg" in unary  # torch.sign has zero gradient everywhere: alphas learn nothing
    x = GRID.clone().requires_grad_(True)
    out = UNARY["neg"].fn(x)
    out.sum().backward()
    assert torch.equal(out.detach(), -GRID) and torch.equal(x.grad, -torch.ones_like(GRID))


def test_poster_shift_and_constant_start_at_one_as_in_the_original():
    unary, _ = OP_SETS["poster"]
    assert {"shift", "const"} <= set(unary)
    assert torch.equal(at_init(UNARY["shift"], GRID), GRID + 1.0)
    assert torch.equal(at_init(UNARY["const"], GRID), torch.ones_like(GRID))

