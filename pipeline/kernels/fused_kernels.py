"""The fused cell's forward and backward kernels: pure functions of a static description and tensors.

`pipeline/kernels/fused.py` runs them eagerly or compiles them (torch.compile traces exactly this Python). Everything
that decides the shape of the computation (graph, candidates, which gradients are needed) is static, in
`CellSpec` and `Plan`, so one compiled kernel serves every call with the same description.

Forward computes the cell's value and, in forward mode, its derivative with respect to x: the cell is
elementwise, so d output / dx is one tensor and grad_x = grad * (d output / dx). Backward only has to reach the
parameters: it walks the edges in reverse, multiplying the adjoint by the local derivatives forward saved, and
sums grad * d op / d beta (and grad * op(x) for the weights). A weight step's backward thus evaluates no
operator, and the intermediates several operators share (exp(x), sigmoid(x), ...) are computed once per step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.kernels.fused_ops import BINARY_GRADS, UNARY_GRADS, Terms


@dataclass(frozen=True)
class CellSpec:
    """The cell: its wiring, each edge's candidates and which weights and betas are given."""

    candidates: tuple[tuple[str, ...], ...]  # per edge in evaluation order
    weighted: tuple[bool, ...]  # per edge: a weight vector is given (False: one candidate of weight 1)
    has_beta: tuple[tuple[bool, ...], ...]  # per edge and candidate: a beta tensor is given
    graph: tuple[tuple[tuple[int, ...], int], ...]  # per edge: (input nodes, output node); node 0 is x
    result: int  # the output node


@dataclass(frozen=True)
class Plan:
    """Which gradients backward computes and, from that, what forward keeps for it."""

    need_x: bool
    need_w: tuple[bool, ...]  # per edge
    need_beta: tuple[tuple[bool, ...], ...]  # per edge and candidate
    keep_nodes: tuple[bool, ...]  # per node: backward reads its value
    keep_local: tuple[tuple[bool, ...], ...]  # per edge and input: backward needs d edge / d input
    keep_dbeta: tuple[tuple[bool, ...], ...]  # per edge and candidate: forward saves d edge / d beta


def make_plan(spec: CellSpec, need_x: bool, need_w, need_beta) -> Plan:
    need_w, need_beta = tuple(need_w), tuple(tuple(row) for row in need_beta)
    registries = [UNARY_GRADS if len(inputs) == 1 else BINARY_GRADS for inputs, _ in spec.graph]
    keep_nodes = [False] * (len(spec.graph) + 1)
    needs_adjoint = [False] * (len(spec.graph) + 1)  # per node, beyond x: some parameter upstream needs it
    keep_local, keep_dbeta = [], []
    for e, (inputs, out) in enumerate(spec.graph):
        reads = [needed and registries[e][name].dbeta_reads_input
                 for name, needed in zip(spec.candidates[e], need_beta[e])]
        # A unary beta's derivative (scale: the input) is a node value backward keeps anyway; a binary one
        # (interp: x1 - x2) is one tensor where its inputs would be two. With weight gradients every input
        # value is needed, and the derivative is recomputed from them.
        save_dbeta = len(inputs) == 2 and not need_w[e]
        keep_dbeta.append(tuple(save_dbeta and r for r in reads))
        for node in inputs:
            keep_nodes[node] = keep_nodes[node] or need_w[e] or (not save_dbeta and any(reads))
        keep_local.append(tuple(node != 0 and needs_adjoint[node] for node in inputs))
        needs_adjoint[out] = need_w[e] or any(need_beta[e]) or any(keep_local[-1])
    return Plan(need_x, need_w, need_beta, tuple(keep_nodes), tuple(keep_local), tuple(keep_dbeta))


def _is_full(value, like: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == like.dim() and value.shape == like.shape


class _Sum:
    """Accumulates full-size tensors (in place once it owns its buffer) and broadcast terms (betas, constants)."""

    def __init__(self):
        self.full, self.owned, self.small = None, False, None

    def add(self, weight, value, like: torch.Tensor, keep=None) -> None:
        """Adds weight * value; with `keep` (a 0-d bool tensor: the candidate remains), only where it is true, by
        selection rather than by product, so a dropped candidate's inf or NaN never reaches the sum."""
        if isinstance(value, float) and value == 0.0:
            return
        if keep is not None:
            term = _as_tensor(value, like) if weight is None else weight * value
            value, weight = torch.where(keep, term, 0.0), None
        if not _is_full(value, like):  # a constant or a beta-shaped tensor
            term = value if weight is None else weight * value
            self.small = term if self.small is None else self.small + term
        elif self.full is None:
            self.full, self.owned = (value, False) if weight is None else (weight * value, True)
        elif not self.owned:
            self.full = self.full + (value if weight is None else weight * value)
            self.owned = True
        elif weight is None:
            self.full.add_(value)
        else:
            self.full.addcmul_(weight, value)

    def result(self):
        """Full-size, or broadcast-shaped when only constants were added (the float 0.0 when nothing was)."""
        if self.full is None:
            return self.small if self.small is not None else 0.0
        return self.full if self.small is None else self.full + self.small


def _mul(a, b):
    """a * b where either may be a plain float (1.0 and 0.0 cost nothing)."""
    if isinstance(a, float) and isinstance(b, float):
        return a * b
    if (isinstance(a, float) and a == 0.0) or (isinstance(b, float) and b == 0.0):
        return 0.0
    if isinstance(a, float) and a == 1.0:
        return b
    return a if isinstance(b, float) and b == 1.0 else a * b


def _add(a, b):
    if isinstance(a, float) and a == 0.0:
        return b
    return a if isinstance(b, float) and b == 0.0 else a + b


def _as_tensor(value, x: torch.Tensor) -> torch.Tensor:
    return x.new_full((), value) if isinstance(value, float) else value


def _weight(ws, e: int, k: int):
    return None if ws[e] is None else ws[e][k]


def _keep(masks, e: int, k: int):
    """Candidate k of edge e remains: a 0-d bool tensor, or None when the cell has no mask (all remain)."""
    return None if masks is None or masks[e] is None else masks[e][k]


def _masked(keep, value):
    """`value` where the candidate remains, else 0 (selected, not multiplied: a dropped NaN stays out)."""
    return value if keep is None else torch.where(keep, value, 0.0)


def value_and_partials(name: str, unary: bool, t, a, c, beta, with_partials: bool):
    """One candidate: (value, its partial derivatives wrt each input, or () without `with_partials`)."""
    op = UNARY_GRADS[name] if unary else BINARY_GRADS[name]
    if not unary:
        return op.value(a, c, beta), (op.partials(a, c, beta) if with_partials else ())
    if beta is None:  # the same for every edge reading this input (u1, u2 and u4 all read x): compute once
        value = t.get(f"value:{name}", lambda: op.value(t, beta))
        return value, ((t.get(f"dx:{name}", lambda: op.dx(t, beta)),) if with_partials else ())
    return op.value(t, beta), ((op.dx(t, beta),) if with_partials else ())


def edge_kernel(name: str, unary: bool, keep: tuple, with_tangent: bool, inputs, tangents, beta):
    """A lone candidate on an edge (GDAS), unweighted: (value, the partials flagged in `keep`, and with
    `with_tangent` its derivative with respect to x, sum_i partial_i * tangents[i], else None). Compiled per
    operator, it replaces a dozen eager passes over memory by one."""
    t = Terms(inputs[0]) if unary else None
    a, c = (None, None) if unary else inputs
    value, partials = value_and_partials(name, unary, t, a, c, beta, with_tangent or any(keep))
    tangent = None
    if with_tangent:
        tangent = 0.0
        for partial, input_tangent in zip(partials, tangents):
            tangent = _add(tangent, _mul(partial, input_tangent))
    return value, [p for p, k in zip(partials, keep) if k], tangent


def cell_forward(spec: CellSpec, plan: Plan, x, ws, betas, masks=None, op_kernels=None):
    """(output, the kept inner node values, [d output / dx if needed] + the kept local and beta derivatives).
    `masks`, if given: per edge a bool tensor over its candidates (or None), false for a dropped one, which then
    adds nothing to any value or derivative; a runtime input, so one compiled kernel serves every candidate set
    of a shrinking search. `op_kernels(name, unary, keep, with_tangent)`, if given, returns a compiled
    `edge_kernel` for edges with a single candidate."""
    values, tangents, terms, kept_local, kept_dbeta = [x], [1.0], {}, [], []
    for e, ((inputs, _), names) in enumerate(zip(spec.graph, spec.candidates)):
        unary = len(inputs) == 1
        if op_kernels is not None and len(names) == 1:
            w, beta, edge_inputs = _weight(ws, e, 0), betas[e][0], [values[n] for n in inputs]
            tangents_in = [tangents[n] for n in inputs] if plan.need_x else []
            value, kept, tangent = op_kernels(names[0], unary, plan.keep_local[e], plan.need_x)(
                edge_inputs, tangents_in, beta)
            if w is not None:  # GDAS's one-hot weight, when the arch step needs its gradient
                value, kept = _mul(w, value), [_mul(w, d) for d in kept]
                tangent = None if tangent is None else _mul(w, tangent)
            values.append(x.new_zeros(()) if isinstance(value, float) else value)
            tangents.append(tangent)
            kept_local += [_as_tensor(d, x) for d in kept]
            if plan.keep_dbeta[e][0]:
                kept_dbeta.append(_as_tensor(BINARY_GRADS[names[0]].dbeta(*edge_inputs, beta), x))
            continue
        with_partials = plan.need_x or any(plan.keep_local[e])
        total, partial_sums = _Sum(), [_Sum() for _ in inputs]
        t = terms.setdefault(inputs[0], Terms(values[inputs[0]])) if unary else None
        a, c = (None, None) if unary else (values[inputs[0]], values[inputs[1]])
        for k, name in enumerate(names):
            w, beta, keep = _weight(ws, e, k), betas[e][k], _keep(masks, e, k)
            value, partials = value_and_partials(name, unary, t, a, c, beta, with_partials)
            total.add(w, value, x, keep)
            if plan.keep_dbeta[e][k]:
                kept_dbeta.append(_masked(keep, _as_tensor(BINARY_GRADS[name].dbeta(a, c, beta), x)))
            for partial_sum, partial in zip(partial_sums, partials):
                partial_sum.add(w, partial, x, keep)
        value = total.result()
        values.append(x.new_zeros(()) if isinstance(value, float) else value)
        derivatives = [partial_sum.result() for partial_sum in partial_sums]
        if plan.need_x:
            tangent = 0.0
            for node, derivative in zip(inputs, derivatives):
                tangent = _add(tangent, _mul(derivative, tangents[node]))
            tangents.append(tangent)
        kept_local += [_as_tensor(d, x) for d, keep in zip(derivatives, plan.keep_local[e]) if keep]
    out = values[-1]
    if not _is_full(out, x):  # a constant function: broadcast it to the input's shape
        out = out + torch.zeros_like(x)
    kept_nodes = [v for n, v in enumerate(values[1:-1], start=1) if plan.keep_nodes[n]]
    return out, kept_nodes, ([_as_tensor(tangents[-1], x)] if plan.need_x else []) + kept_local + kept_dbeta


def cell_backward(spec: CellSpec, plan: Plan, reduce_dim: int, x, kept_nodes, kept_local, ws, betas, grad,
                  masks=None, op_kernels=None):
    """(weight grads per edge, beta grads per edge and candidate); None where not needed, 0 for a candidate
    `masks` marks dropped (see `cell_forward`). Beta grads are summed
    over `reduce_dim` only (the caller sums the rest: a reduction over one dimension parallelizes over the batch
    when compiled). `x` is None unless `plan.keep_nodes[0]`; grad_x is the caller's grad * d output / dx."""
    kept_nodes, kept_local = iter(kept_nodes), iter(kept_local)
    values = [x] + [next(kept_nodes) if keep else None for keep in plan.keep_nodes[1:]]
    local = [[next(kept_local) if keep else None for keep in row] for row in plan.keep_local]
    saved_dbeta = [[next(kept_local) if keep else None for keep in row] for row in plan.keep_dbeta]
    adjoints = {spec.result: grad}
    grad_w = [None] * len(spec.graph)
    grad_b = [[None] * len(names) for names in spec.candidates]
    for e in reversed(range(len(spec.graph))):
        (inputs, out), names = spec.graph[e], spec.candidates[e]
        g = adjoints.pop(out, None)
        if not isinstance(g, torch.Tensor):
            continue  # nothing upstream of this edge needs a gradient, or the output ignores the edge
        unary = len(inputs) == 1
        t = Terms(values[inputs[0]]) if unary else None
        a, c = (None, None) if unary else (values[inputs[0]], values[inputs[1]])
        edge_grad_w, beta_sums = [], {}
        for k, name in enumerate(names):
            w, beta, keep = _weight(ws, e, k), betas[e][k], _keep(masks, e, k)
            op = UNARY_GRADS[name] if unary else BINARY_GRADS[name]
            if plan.need_w[e]:  # sum(g * value) for each candidate (a stacked matrix-vector product measured 3x slower)
                value = (value_and_partials(name, unary, t, a, c, beta, False)[0] if op_kernels is None else
                         op_kernels(name, unary, (False,) * len(inputs), False)([values[n] for n in inputs], [],
                                                                                 beta)[0])
                edge_grad_w.append(_masked(keep, (g * value).sum()) if isinstance(value, torch.Tensor)
                                   else g.new_zeros(()))
            if plan.need_beta[e][k]:
                dbeta = saved_dbeta[e][k]
                if dbeta is None:
                    dbeta = op.dbeta(t, beta) if unary else op.dbeta(a, c, beta)
                # shift and const share sum(g): an adjoint read once more would be stored to memory by inductor.
                # (No id() here: in a compiled kernel it would guard on tensor identity and recompile each call.)
                key = ("tensor", k) if isinstance(dbeta, torch.Tensor) else dbeta
                if key not in beta_sums:
                    beta_sums[key] = (g * dbeta if isinstance(dbeta, torch.Tensor) else g).sum(reduce_dim)
                grad_b[e][k] = _masked(keep, beta_sums[key] if w is None else w * beta_sums[key])
        if plan.need_w[e]:
            grad_w[e] = torch.stack(edge_grad_w)  # (candidates,)
        for node, derivative in zip(inputs, local[e]):
            if derivative is not None:
                adjoints[node] = _add(adjoints.get(node, 0.0), _mul(g, derivative))
    return grad_w, grad_b
