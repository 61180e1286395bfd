"""The fused cell: a whole activation cell (every edge, every candidate) as one autograd node.

The plain mixed cell, sum_k w_k * op_k(x) per edge through autograd, keeps every candidate's output and
autograd's intermediates alive until backward (10x ReLU's memory) and runs each operator as its own passes over
memory. Here one node computes the cell's value and its derivative with respect to x in one pass, from
closed-form operator derivatives (`pipeline/kernels/fused_ops.py`, kernels in `pipeline/kernels/fused_kernels.py`), and saves
only what backward will read (decided per call from which parameters need a gradient):
    grad_x   = grad * d output / dx             (saved by forward)
    grad_w_k = sum(grad_e * op_k(input_e))      (only when the weights need a gradient: the arch step)
    grad_b_k = w_k * sum(grad_e * d op_k / d beta_k)  (summed to beta's shape: scalar or per channel)
with grad_e the gradient at edge e's output, reached through the saved local derivatives. The kernels run as
plain PyTorch (eager) or compiled by torch.compile (inductor: one vectorized C++ loop on CPU, Triton on CUDA).
Values and gradients equal the plain cell's within float rounding (tests/test_fused.py).

Mode, `set_mode` or the environment variable ACTSEARCH_FUSED:
- "auto" (default): compile for batches of AUTO_COMPILE_MIN_BATCH samples and more, run eagerly below (tests:
  a compile costs 5-60 s on a 2-core CPU, more than a few small steps gain). Compiled means one kernel for the
  whole cell when its operators are fixed for the run (DARTS, DrNAS, a genotype), and for GDAS, whose cell
  changes every step, the cell run eagerly with one compiled kernel per operator (compiled the first time the
  operator is drawn, ~1 s each, reused from then on). A search with progressive shrinking runs, compiled, the
  kernel of its full candidate set throughout, the mask a runtime input (never recompiled); eager, the remaining
  candidates only.
- "compile" / "eager": always that. "off": the plain autograd cell (the reference).
Compiled kernels are saved whole on disk, under inductor's cache directory (TORCHINDUCTOR_CACHE_DIR): a second
process loads them in about a second each instead of tracing and compiling them (`pipeline.kernels.saved`). A
kernel that fails to compile (no C++ compiler, no Triton) logs a warning and runs eagerly from then on.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, Optional, Sequence

import torch

from pipeline.space.genotype import edges_of, run_cell
from pipeline.kernels.fused_kernels import CellSpec, Plan, cell_backward, cell_forward, edge_kernel, make_plan
from pipeline.kernels.saved import SavedKernel, error_line

log = logging.getLogger(__name__)
MODES = ("auto", "compile", "eager", "off")
AUTO_COMPILE_MIN_BATCH = 64
# All kernels come from three functions; dynamo keeps compiled variants per code object and by default runs
# eagerly after 8. Variants differ by cell, candidates, operator, needed gradients and tensor ranks; progressive
# shrinking adds the kernels of every candidate set it passes through (GRAFS: ~47 sets x ~5 variants).
_RECOMPILE_LIMIT = 1024

_state = {"mode": os.environ.get("ACTSEARCH_FUSED", "auto")}


def set_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"fused cell mode must be one of {MODES}, got {mode!r} (check ACTSEARCH_FUSED)")
    _state["mode"] = mode


def get_mode() -> str:
    set_mode(_state["mode"])  # validates a value that came from the environment
    return _state["mode"]


def enabled() -> bool:
    return get_mode() != "off"


@contextlib.contextmanager
def using(mode: str):
    """Temporarily run cells in `mode` (tests and benchmarks compare the modes)."""
    previous = get_mode()
    set_mode(mode)
    try:
        yield
    finally:
        set_mode(previous)


_GRAPHS: dict[str, tuple] = {}


def _graph(space: str):
    """((input nodes, output node) per edge, result node); node 0 is x. Read off `run_cell`, the one place the
    cell's wiring is written down."""
    if space not in _GRAPHS:
        edges, names = [], []

        def record(edge, *inputs):
            names.append(edge)
            edges.append((tuple(inputs), len(edges) + 1))
            return len(edges)

        result = run_cell(space, 0, record)
        # Callers list per-edge data in edges_of order: the wiring must evaluate edges in that order.
        assert tuple(names) == edges_of(space), (names, edges_of(space))
        _GRAPHS[space] = (tuple(edges), result)
    return _GRAPHS[space]


# --- compiled kernels ---------------------------------------------------------------------------------------
_KERNELS: dict[tuple, Callable] = {}


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    for name, limit in (("recompile_limit", _RECOMPILE_LIMIT), ("accumulated_recompile_limit", 4 * _RECOMPILE_LIMIT)):
        if getattr(config, name, limit) < limit:
            setattr(config, name, limit)


def _kernel(kind: str, static: tuple, compiled: bool, op_kernels: bool = False) -> Callable:
    """A cell kernel: the whole cell compiled, or run eagerly (with compiled per-operator kernels if
    `op_kernels`)."""
    base = cell_forward if kind == "forward" else cell_backward

    def eager(*tensors):
        return base(*static, *tensors, op_kernels=_op_kernel if op_kernels else None)

    if not compiled:
        return eager
    return _compiled(kind, static, lambda *tensors: base(*static, *tensors))


def _op_kernel(name: str, unary: bool, keep: tuple, with_tangent: bool) -> Callable:
    """A lone operator's value and derivatives in one compiled pass (for GDAS's changing cells)."""
    static = (name, unary, keep, with_tangent)
    return _compiled("operator", static, lambda inputs, tangents, beta: edge_kernel(*static, inputs, tangents, beta))


def _compiled(kind: str, static: tuple, eager: Callable) -> Callable:
    key = (kind, static)
    if key not in _KERNELS:
        _raise_recompile_limit()
        # dynamic: one kernel for every batch size and site; the views below leave 2 or 3 symbolic sizes. Saved
        # whole on disk: a later process loads it without dynamo's tracing (pipeline.kernels.saved).
        compiled_fn = SavedKernel(kind, static, eager)

        def guarded(*tensors):
            try:
                # Python floats stay constants (dynamo's symbolic floats would only restart the analysis).
                with torch._dynamo.config.patch(specialize_float=True):
                    return compiled_fn(*tensors)
            except Exception as err:  # noqa: BLE001 - any compiler failure: fall back, the math is the same
                log.warning("compiling the fused %s kernel failed (%s); running it eagerly", kind, error_line(err))
                _KERNELS[key] = eager
                return eager(*tensors)

        _KERNELS[key] = guarded
    return _KERNELS[key]


# --- the autograd node --------------------------------------------------------------------------------------
def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # bf16/fp16 inputs (autocast) are computed in float32: sums of many candidates would round badly otherwise.
    return torch.promote_types(x.dtype, torch.float32)


class _Layout:
    """How kernels see a full-size tensor: (batch, rest) when every beta is a scalar, else (batch, channel,
    rest), or (batch, rest, channel) for channels_last. Few symbolic sizes keep compiling quick (a third of
    the time of (N, C, H, W)), and parameter gradients are sums over one dimension, parallel over the batch."""

    def __init__(self, x: torch.Tensor, per_channel: bool):
        self.shape, self.per_channel = x.shape, per_channel
        self.channels_last = (x.dim() == 4 and not x.is_contiguous()
                              and x.is_contiguous(memory_format=torch.channels_last))
        self.reduce_dim = 1 if self.channels_last and per_channel else -1

    def view(self, t: torch.Tensor) -> torch.Tensor:
        t = (t.permute(0, 2, 3, 1) if self.channels_last else t).contiguous()  # no copy in the usual layouts
        batch = t.shape[0] if t.dim() > 1 else 1
        if not self.per_channel:
            return t.reshape(batch, -1)
        if self.channels_last:
            return t.reshape(batch, -1, t.shape[-1])
        return t.reshape(batch, t.shape[1], -1)

    def restore(self, t: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            n, c, h, w = self.shape
            return t.reshape(n, h, w, c).permute(0, 3, 1, 2)
        return t.reshape(self.shape)

    def beta(self, b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if b is None or b.dim() == 0:
            return b
        return b.reshape(-1) if self.channels_last else b.reshape(-1, 1)

    @staticmethod
    def finish(partial: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A kernel's partial sum, (batch,) or (batch, channel), summed to the shape of parameter `like`."""
        total = partial.sum() if like.dim() == 0 or partial.dim() == 1 else partial.sum(0)
        return total.reshape(like.shape)


def _split(spec: CellSpec, params: Sequence[torch.Tensor]):
    """Flat parameters -> (weights per edge, betas per edge and candidate), None where absent."""
    params = iter(params)
    ws = [next(params) if weighted else None for weighted in spec.weighted]
    betas = [[next(params) if present else None for present in row] for row in spec.has_beta]
    return ws, betas


class _FusedCell(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: CellSpec, plan: Plan, compiled: bool, op_kernels: bool, masks, no_grad: tuple, x,
                *params):
        ws, betas = _split(spec, params)
        layout = _Layout(x, per_channel=any(b is not None and b.dim() > 0 for row in betas for b in row))
        ctx.spec, ctx.plan, ctx.layout, ctx.num_params = spec, plan, layout, len(params)
        ctx.compiled, ctx.op_kernels, ctx.masks, ctx.no_grad = compiled, op_kernels, masks, no_grad
        # Kernels see detached views: no autograd inside, and no requires_grad for a compiled kernel to guard on.
        ws = [None if w is None else w.detach() for w in ws]
        betas = [[None if b is None else layout.beta(b.detach()) for b in row] for row in betas]
        out, nodes, derivatives = _kernel("forward", (spec, plan), compiled, op_kernels)(
            layout.view(x.detach()).to(_compute_dtype(x)), ws, betas, masks)
        ctx.num_nodes = len(nodes)
        # Saved: what backward reads (plan), never the candidates' outputs. A weight step of the simple space
        # keeps x, d output / dx, the binary edge's two partials and u1 - u2 (interp's d / d beta).
        ctx.save_for_backward(x if plan.keep_nodes[0] else None, *params, *nodes, *derivatives)
        out = layout.restore(out.to(x.dtype))
        return out.clone() if out is x else out  # an identity cell: autograd needs a new tensor

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        spec, plan, layout = ctx.spec, ctx.plan, ctx.layout
        x, *rest = ctx.saved_tensors
        params, rest = rest[: ctx.num_params], rest[ctx.num_params:]
        nodes, derivatives = rest[: ctx.num_nodes], rest[ctx.num_nodes:]
        dtype = _compute_dtype(grad)
        grad_view = layout.view(grad).to(dtype)
        flat: list = [None] * len(params)
        if any(plan.need_w) or any(any(row) for row in plan.need_beta):
            ws, betas = _split(spec, [p.detach() for p in params])
            betas = [[layout.beta(b) for b in row] for row in betas]
            x_view = None if x is None else layout.view(x).to(dtype)
            local = derivatives[1:] if plan.need_x else derivatives
            grad_w, grad_b = _kernel("backward", (spec, plan, layout.reduce_dim), ctx.compiled, ctx.op_kernels)(
                x_view, nodes, local, ws, betas, grad_view, ctx.masks)
            w_grads = [g for g, weighted in zip(grad_w, spec.weighted) if weighted]
            b_grads = [grad_b[e][k] for e, row in enumerate(spec.has_beta) for k, present in enumerate(row)
                       if present]
            b_grads = [None if g is None else layout.finish(g, p) for g, p in zip(b_grads, params[len(w_grads):])]
            # A dropped candidate's beta gets no gradient at all (as when it was not in the cell): an optimizer
            # then leaves it alone instead of moving it on momentum or weight decay.
            flat = [None if g is None or i in ctx.no_grad else g.to(p.dtype)
                    for i, (g, p) in enumerate(zip(w_grads + b_grads, params))]
        # grad_x outside the kernel: inductor does not fuse this product with the reductions there; it would
        # store and reload every adjoint they share (3 passes over memory instead of 1).
        gx = layout.restore((grad_view * derivatives[0]).to(grad.dtype)) if plan.need_x else None
        return (None, None, None, None, None, None, gx, *flat)


COMPILE_AS = ("cell", "operator", "none")


def compiles(x: torch.Tensor) -> bool:
    """Whether the current mode compiles the kernels of a cell called on `x`."""
    mode = get_mode()
    return mode == "compile" or (mode == "auto" and x.dim() > 0 and x.shape[0] >= AUTO_COMPILE_MIN_BATCH)


def fused_cell(space: str, candidates: Sequence[Sequence[str]], weights: Sequence[Optional[torch.Tensor]],
               betas: Sequence[Sequence[Optional[torch.Tensor]]], x: torch.Tensor, *,
               compile_as: str = "cell", masks: Optional[Sequence[Optional["EdgeMask"]]] = None) -> torch.Tensor:
    """The cell's output for x. Per edge (in `edges_of(space)` order): candidate names, a weight vector (None for a
    single candidate of weight 1) and one beta tensor or None per candidate. `compile_as`, when the mode compiles:
    "cell", one kernel for the whole cell, for a cell called for many steps (DARTS, DrNAS, a genotype);
    "operator", the cell run eagerly with one compiled kernel per operator, reused by every cell (GDAS's sample,
    which changes every step); "none", eager. `masks`: per edge an `EdgeMask` over its candidates (None: all
    remain); a dropped candidate (false) contributes nothing to the output or to any gradient, and its betas get
    no gradient. The mask is a runtime input of the kernel: every candidate set of a shrinking search runs the
    one kernel compiled for the full set, never recompiled (`pipeline.search.fused_site`)."""
    if compile_as not in COMPILE_AS:
        raise ValueError(f"compile_as must be one of {COMPILE_AS}, got {compile_as!r}")
    graph, result = _graph(space)
    spec = CellSpec(tuple(tuple(names) for names in candidates), tuple(w is not None for w in weights),
                    tuple(tuple(b is not None for b in row) for row in betas), graph, result)
    compile_ = compiles(x)
    params = [w for w in weights if w is not None] + [b for row in betas for b in row if b is not None]
    # Which flat parameters belong to dropped candidates: read from the host copy of the mask, never from the
    # device one (that would synchronise a GPU every forward).
    no_grad: tuple = ()
    if masks is not None:
        flat_betas = [(e, k) for e, row in enumerate(betas) for k, b in enumerate(row) if b is not None]
        offset = sum(w is not None for w in weights)
        no_grad = tuple(offset + i for i, (e, k) in enumerate(flat_betas)
                        if masks[e] is not None and not masks[e].keep[k])
    # From requires_grad here, not in forward: there needs_input_grad ignores torch.no_grad() (evaluation).
    track = torch.is_grad_enabled()
    plan = make_plan(spec, track and x.requires_grad,
                     [track and w is not None and w.requires_grad for w in weights],
                     [[track and b is not None and b.requires_grad for b in row] for row in betas])
    return _FusedCell.apply(spec, plan, compile_ and compile_as == "cell", compile_ and compile_as == "operator",
                            None if masks is None else [m if m is None else m.device_mask for m in masks],
                            no_grad, x, *params)


class EdgeMask:
    """One edge's remaining candidates, on the host (what Python decides with) and as a bool tensor on the
    device (what a compiled kernel reads)."""

    __slots__ = ("keep", "device_mask")

    def __init__(self, keep: Sequence[bool], device_mask: torch.Tensor):
        self.keep, self.device_mask = tuple(keep), device_mask
