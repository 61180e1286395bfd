"""Operators: values against their sympy forms, gradients by gradcheck, finiteness at extreme inputs."""
import math

import numpy as np
import pytest
import sympy
import torch

from pipeline.space.ops import BINARY, BOUND, OP_SETS, UNARY, beta_, resolve_op_set, x1_, x2_, x_

SYMPY_MODULES = [{"sigmoid": lambda v: 1 / (1 + np.exp(-v))}, "scipy", "numpy"]


def reference(op, *inputs, beta):
    """Evaluate the operator's sympy form with numpy: an independent check of the torch implementation."""
    symbols = (x_,) if op.arity == 1 else (x1_, x2_)
    expr = op.sym(*symbols, beta_)
    fn = sympy.lambdify((*symbols, beta_), expr, modules=SYMPY_MODULES)
    out = fn(*[t.numpy() for t in inputs], beta)
    return torch.as_tensor(np.broadcast_to(np.asarray(out, dtype=np.float64), inputs[0].shape).copy())


def unary_inputs():
    # Inside every operator's bounds and away from kinks (0 for abs/relu/sign/sqrt/log).
    x = torch.linspace(-1.9, 1.9, 77, dtype=torch.float64)
    return x[x.abs() > 0.05]


def binary_inputs():
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand(200, generator=g, dtype=torch.float64) * 3.6 - 1.8
    x2 = torch.rand(200, generator=g, dtype=torch.float64) * 3.6 - 1.8
    keep = ((x1 - x2).abs() > 0.05) & (x2.abs() > 0.2) & (x1.abs() > 0.05)
    return x1[keep], x2[keep]


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_value_matches_formula(name):
    op, x = UNARY[name], unary_inputs()
    beta = torch.tensor(0.7, dtype=torch.float64)
    got = op.fn(x, beta)
    assert torch.allclose(got, reference(op, x, beta=0.7), rtol=1e-9, atol=1e-9), name


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_value_matches_formula(name):
    op, (x1, x2) = BINARY[name], binary_inputs()
    beta = torch.tensor(0.7, dtype=torch.float64)
    got = op.fn(x1, x2, beta)
    want = reference(op, x1, x2, beta=0.7)
    inside = want.abs() < BOUND  # the division is clipped to +-BOUND by design
    assert torch.allclose(got[inside], want[inside], rtol=1e-9, atol=1e-9), name


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_gradcheck(name):
    op = UNARY[name]
    x = unary_inputs()[::4].clone().requires_grad_(True)
    beta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: op.fn(a, b), (x, beta), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_gradcheck(name):
    op = BINARY[name]
    x1, x2 = binary_inputs()
    x1, x2 = x1[::5].clone().requires_grad_(True), x2[::5].clone().requires_grad_(True)
    beta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c, b: op.fn(a, c, b), (x1, x2, beta), eps=1e-6, atol=1e-5)


EXTREMES = torch.tensor([-1e4, -1e3, -50.0, -3.0, -1.0, -1e-3, -1e-6, 0.0, 1e-6, 1e-3, 1.0, 3.0, 50.0, 1e3, 1e4])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_finite_at_extremes(name, dtype):
    x = EXTREMES.to(dtype).clone().requires_grad_(True)
    beta = torch.tensor(-3.0, dtype=dtype, requires_grad=True)
    out = UNARY[name].fn(x, beta)
    (out + 0 * x).sum().backward()  # `+ 0 * x`: constant operators still get a (zero) gradient
    beta_ok = beta.grad is None or torch.isfinite(beta.grad)  # operators without beta leave it unused
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all() and beta_ok, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_finite_at_extremes(name, dtype):
    x1 = EXTREMES.to(dtype).repeat_interleave(len(EXTREMES)).requires_grad_(True)
    x2 = EXTREMES.to(dtype).repeat(len(EXTREMES)).requires_grad_(True)
    beta = torch.tensor(-3.0, dtype=dtype, requires_grad=True)
    out = BINARY[name].fn(x1, x2, beta)
    (out + 0 * (x1 + x2)).sum().backward()
    finite = [torch.isfinite(t).all() for t in (out, x1.grad, x2.grad, beta.grad) if t is not None]
    assert all(finite), name


def test_guards_behave_as_documented():
    x = torch.tensor([-4.0, 0.0, 4.0])
    assert UNARY["sqrt"].fn(x).tolist() == pytest.approx([math.sqrt(1e-3), math.sqrt(1e-3), 2.0])
    assert UNARY["sqrt_ramp"].fn(x).tolist() == [0.0, 0.0, 2.0]
    assert torch.isfinite(UNARY["log"].fn(x)).all()
    assert UNARY["exp"].fn(torch.tensor([1e4])).item() == pytest.approx(BOUND)
    assert BINARY["div"].fn(torch.tensor([1.0]), torch.tensor([0.0])).item() == BOUND


def test_named_sets_have_the_documented_sizes():
    sizes = {name: (len(u), len(b)) for name, (u, b) in OP_SETS.items()}
    assert sizes == {"poster": (18, 7), "ramachandran": (25, 10), "grafs": (23, 9), "grafs_legacy": (23, 9)}
    for unary, binary in OP_SETS.values():
        assert set(unary) <= set(UNARY) and set(binary) <= set(BINARY)


def test_op_set_from_lists_and_errors():
    assert resolve_op_set({"unary": ["relu", "identity"], "binary": ["add"]}) == (("relu", "identity"), ("add",))
    with pytest.raises(ValueError, match="unknown operator set 'nope'"):
        resolve_op_set("nope")
    with pytest.raises(ValueError, match=r"unknown unary operator\(s\) \['relux'\]"):
        resolve_op_set({"unary": ["relux"], "binary": ["add"]})
    with pytest.raises(ValueError, match="empty"):
        resolve_op_set({"unary": [], "binary": ["add"]})


def test_every_op_has_a_documented_text_and_beta_declaration():
    for op in list(UNARY.values()) + list(BINARY.values()):
        assert op.text and (op.beta_init is None or math.isfinite(op.beta_init))
    assert {n for n, op in {**UNARY, **BINARY}.items() if op.has_beta} == {
        "scale", "shift", "const", "gauss_sq", "gauss_abs", "interp", "interp_lin"}
