"""GRAFS's operator definitions (automl/GRAFS, rn/activation_cell/ac_cell.py) and the legacy ones, at chosen points:
exact values and derivatives worked out by hand, through the reference operator (autograd through `Op.fn`) and
through the fused kernel with both formula sets (one-pass native and the compiled formulas, run eagerly)."""
import math

import pytest
import torch

from pipeline.kernels import fused, fused_ops
from pipeline.space.ops import BINARY, OP_SETS, UNARY, LEGACY_NAMES

SQRT10 = math.sqrt(10.0)
SIG2 = 1.0 / (1.0 + math.exp(-2.0))  # sigmoid(2)

# (operator, x, value, d value / dx), each value by hand
UNARY_POINTS = [
    # GRAFS: sqrt(max(x, 1e-3)); flat (derivative 0) below 1e-3, 1/(2 sqrt(x)) from 1e-3 on (at most 15.8)
    ("sqrt", 0.0, math.sqrt(1e-3), 0.0),
    ("sqrt", -2.0, math.sqrt(1e-3), 0.0),
    ("sqrt", 5e-4, math.sqrt(1e-3), 0.0),
    ("sqrt", 2e-3, math.sqrt(2e-3), 0.5 / math.sqrt(2e-3)),
    ("sqrt", 0.25, 0.5, 1.0),
    # legacy: a ramp of slope 100 on [0, 1e-4], then sqrt
    ("sqrt_ramp", 5e-5, 5e-3, 100.0),
    ("sqrt_ramp", 0.25, 0.5, 1.0),
    ("sqrt_ramp", -1.0, 0.0, 0.0),
    # bounded at 10: the input is clipped where the output would pass 10
    ("square", 3.0, 9.0, 6.0),
    ("square", 4.0, 10.0, 0.0),
    ("square", -4.0, 10.0, 0.0),
    ("cube", 2.0, 8.0, 12.0),
    ("cube", 3.0, 10.0, 0.0),
    ("cube", -3.0, -10.0, 0.0),
    ("exp", 2.0, math.exp(2.0), math.exp(2.0)),
    ("exp", 3.0, 10.0, 0.0),
    ("sinh", 2.0, math.sinh(2.0), math.cosh(2.0)),
    ("sinh", 3.0, 10.0, 0.0),
    ("sinh", -3.0, -10.0, 0.0),
    # legacy: bounded at 20
    ("square_b20", 4.0, 16.0, 8.0),
    ("square_b20", 5.0, 20.0, 0.0),
    ("cube_b20", 2.5, 15.625, 18.75),
    ("cube_b20", 3.0, 20.0, 0.0),
    ("exp_b20", 2.9, math.exp(2.9), math.exp(2.9)),
    ("exp_b20", 3.1, 20.0, 0.0),
    ("sinh_b20", 3.0, math.sinh(3.0), math.cosh(3.0)),
    ("sinh_b20", 4.0, 20.0, 0.0),
]

# (operator, x1, x2, beta, value, d/dx1, d/dx2, d/dbeta)
BINARY_POINTS = [
    # GRAFS: each factor clamped to +-sqrt(10): a factor beyond the clamp gets no gradient, and the other factor's
    # partial is the clamped value, never more than sqrt(10)
    ("mul", 1.0, 2.0, None, 2.0, 2.0, 1.0, None),
    ("mul", 5.0, 2.0, None, 2.0 * SQRT10, 0.0, SQRT10, None),
    ("mul", -5.0, -5.0, None, 10.0, 0.0, 0.0, None),
    ("mul", 0.5, -9.0, None, -0.5 * SQRT10, -SQRT10, 0.0, None),
    # legacy: only the product clipped at 20, so d/dx1 = x2 is unbounded inside
    ("mul_b20", 5.0, 2.0, None, 10.0, 2.0, 5.0, None),
    ("mul_b20", 0.1, 150.0, None, 15.0, 150.0, 0.1, None),
    ("mul_b20", 5.0, 5.0, None, 20.0, 0.0, 0.0, None),
    # GRAFS's BetaMix: sigmoid(b) x1 + (1 - sigmoid(b)) x2; d/db = s (1 - s) (x1 - x2)
    ("interp", 3.0, 1.0, 0.0, 2.0, 0.5, 0.5, 0.5),
    ("interp", 3.0, 1.0, 2.0, 3.0 * SIG2 + (1 - SIG2), SIG2, 1 - SIG2, SIG2 * (1 - SIG2) * 2.0),
    # legacy: b x1 + (1 - b) x2, d/db = x1 - x2
    ("interp_lin", 3.0, 1.0, 0.25, 1.5, 0.25, 0.75, 2.0),
]


@pytest.fixture(params=["native", "compiled"])
def formulas(request, monkeypatch):
    monkeypatch.setattr(fused_ops, "_compiled", lambda: request.param == "compiled")
    return request.param


def scalar(value):
    return torch.tensor(value, dtype=torch.float64, requires_grad=True)


def unary_reference(name, x):
    return UNARY[name].fn(x, None)


def unary_fused(name, x):
    # a simple cell b1(u1(x), zero) with b1 = left: the kernel computes exactly u1(x)
    return fused.fused_cell("simple", [(name,), ("zero",), ("left",)], [None, None, None], [[None], [None], [None]],
                            x, compile_as="operator")


@pytest.mark.parametrize("path", [unary_reference, unary_fused], ids=["reference", "fused"])
@pytest.mark.parametrize("name,x,value,slope", UNARY_POINTS, ids=[f"{p[0]}@{p[1]}" for p in UNARY_POINTS])
def test_unary_value_and_derivative_at_chosen_points(name, x, value, slope, path, formulas):
    xs = scalar(x).reshape(1, 1, 1, 1).detach().requires_grad_(True)
    out = path(name, xs)
    (grad,) = torch.autograd.grad(out.sum(), xs)
    assert out.item() == pytest.approx(value, rel=1e-12, abs=1e-12)
    assert grad.item() == pytest.approx(slope, rel=1e-12, abs=1e-12)


def binary_reference(name, a, c, beta):
    return BINARY[name].fn(a, c, beta)


def binary_closed_form(name, a, c, beta):
    """The fused kernel's value and partials for a binary operator (pipeline.kernels.fused_ops), as a function
    with a custom backward, so that autograd reads exactly the kernel's derivatives. (A cell has one input, so
    it cannot feed chosen x1 and x2; tests/test_fused.py checks the whole kernel against autograd.)"""
    op = fused_ops.BINARY_GRADS[name]

    class Closed(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, c, beta):
            ctx.save_for_backward(a, c, beta)
            return op.value(a, c, beta)

        @staticmethod
        def backward(ctx, grad):
            a, c, beta = ctx.saved_tensors
            da, dc = op.partials(a, c, beta)
            return grad * da, grad * dc, None if beta is None else grad * op.dbeta(a, c, beta)

    return Closed.apply(a, c, beta)


@pytest.mark.parametrize("path", [binary_reference, binary_closed_form], ids=["reference", "fused"])
@pytest.mark.parametrize("name,a,c,beta,value,da,dc,db", BINARY_POINTS,
                         ids=[f"{p[0]}@{p[1]},{p[2]},{p[3]}" for p in BINARY_POINTS])
def test_binary_value_and_partials_at_chosen_points(name, a, c, beta, value, da, dc, db, path, formulas):
    ta, tc, tb = scalar(a), scalar(c), scalar(0.0 if beta is None else beta)
    out = path(name, ta, tc, tb) if BINARY[name].has_beta else path(name, ta, tc, None) + 0 * tb
    ga, gc, gb = torch.autograd.grad(out, (ta, tc, tb), allow_unused=True)
    assert out.item() == pytest.approx(value, rel=1e-12, abs=1e-12)
    assert (0.0 if ga is None else ga.item()) == pytest.approx(da, rel=1e-12, abs=1e-12)
    assert (0.0 if gc is None else gc.item()) == pytest.approx(dc, rel=1e-12, abs=1e-12)
    if db is not None:
        assert gb.item() == pytest.approx(db, rel=1e-12, abs=1e-12)


def test_grafs_interp_starts_as_an_even_mix_and_legacy_keeps_its_start():
    assert BINARY["interp"].beta_init == 0.0 and BINARY["interp_lin"].beta_init == 0.5


def test_legacy_set_swaps_exactly_the_changed_operators():
    grafs_unary, grafs_binary = OP_SETS["grafs"]
    legacy_unary, legacy_binary = OP_SETS["grafs_legacy"]
    swapped = {(g, l) for g, l in zip(grafs_unary + grafs_binary, legacy_unary + legacy_binary) if g != l}
    assert swapped == set(LEGACY_NAMES.items())
