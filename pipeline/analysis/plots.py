"""Figures for the analysis and report stages: activation shapes, training curves, weight trajectories.

PNG by default; PDF and SVG (vector, for papers: the report's `report.figure_format`) are written without a
creation date and with a fixed SVG id salt, so the same data gives the same bytes and a DVC output does not change
from one run to the next.

Figures are drawn on matplotlib's object API (`Figure` + Agg canvas), never through pyplot, so no display, no
global backend switch and no figure left open between calls.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from matplotlib import cycler, rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.analysis.figure_formats import FIGURE_FORMATS

Activation = Callable[[torch.Tensor], torch.Tensor]

# Okabe & Ito (2008): eight colours told apart with every common colour-vision deficiency (yellow left out: it
# vanishes on white). Past seven lines the line style changes too, so 28 lines stay distinguishable.
OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky blue": "#56B4E9", "bluish green": "#009E73",
             "blue": "#0072B2", "vermillion": "#D55E00", "reddish purple": "#CC79A7"}
LINE_CYCLE = cycler(linestyle=["-", "--", ":", "-."]) * cycler(color=list(OKABE_ITO.values()))
DPI = 150


# Each format's timestamp entry, left out: matplotlib would otherwise stamp the time of writing into the file.
_NO_DATE = {"png": {}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}


def _figure_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower().lstrip(".") not in FIGURE_FORMATS:
        raise ValueError(f"figures are written as {', '.join(FIGURE_FORMATS)}: give a path ending in one of them, "
                         f"got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    kind = path.suffix.lower().lstrip(".")
    with rc_context({"svg.hashsalt": "actsearch"}):  # SVG element ids from a fixed salt, not a random one
        figure.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.05,  # tight: no label or legend cut off
                       format=kind, metadata=_NO_DATE[kind])
    return path


def robust_limits(curves: Sequence[Sequence[float]], cap: float) -> tuple[float, float] | None:
    """y-limits that show every curve but stop at +-cap, so one exploding function cannot flatten the others."""
    finite = [v for curve in curves for v in curve if math.isfinite(v)]
    if not finite:
        return None
    low, high = max(min(finite), -cap), min(max(finite), cap)
    pad = 0.05 * (high - low) if high > low else 1.0
    return low - pad, high + pad


def reference_axes(axes, title: str, xlabel: str = "x") -> None:
    """Title, x label, zero lines and a light grid: the frame of every function panel."""
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.axhline(0.0, color="0.7", linewidth=0.8, zorder=0)
    axes.axvline(0.0, color="0.7", linewidth=0.8, zorder=0)
    axes.grid(True, alpha=0.3)


def _finite_or_nan(values: torch.Tensor) -> list[float]:
    """Non-finite points (overflow) become gaps in the line instead of wrecking the axis limits."""
    values = values.detach().to("cpu", torch.float64)
    return torch.where(torch.isfinite(values), values, torch.full_like(values, math.nan)).tolist()


def values_and_derivative(f: Activation, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f(x) and df/dx on a 1-D float64 grid; by autograd, or by central differences when f is opaque to it."""
    x = x.detach().clone().requires_grad_(True)
    y = torch.broadcast_to(torch.as_tensor(f(x)).to(torch.float64), x.shape)
    if y.requires_grad:
        (derivative,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
        if derivative is not None:
            return y.detach(), derivative
    # no graph back to x: a constant, or a function computed outside autograd (numpy, .item(), ...)
    return y.detach(), torch.gradient(y.detach(), spacing=(x.detach(),))[0]


def plot_activations(functions: Mapping[str, Activation], path: str | Path,
                     x_range: tuple[float, float] = (-5.0, 5.0), points: int = 801) -> Path:
    """Two panels, the functions and their derivatives, one line per named function; returns the figure's path.

    Pass the searched function(s) together with references (e.g. {"searched": f, "ReLU": torch.relu,
    "Swish": F.silu}) to show them side by side. Each function gets a 1-D float64 tensor.
    """
    if not functions:
        raise ValueError("plot_activations needs at least one function, e.g. {'ReLU': torch.relu}")
    low, high = map(float, x_range)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"x_range must be two finite numbers (low, high) with low < high, got {x_range}")
    path = _figure_path(path)
    x = torch.linspace(low, high, points, dtype=torch.float64)
    figure = Figure(figsize=(8, 3.6), layout="constrained")
    value_axes, slope_axes = figure.subplots(1, 2)
    curves = {"f(x)": [], "f'(x)": []}
    for axes in (value_axes, slope_axes):
        axes.set_prop_cycle(LINE_CYCLE)
    for name, f in functions.items():
        values, derivative = values_and_derivative(f, x)
        curves["f(x)"].append(_finite_or_nan(values))
        curves["f'(x)"].append(_finite_or_nan(derivative))
        value_axes.plot(x.tolist(), curves["f(x)"][-1], label=name)
        slope_axes.plot(x.tolist(), curves["f'(x)"][-1], label=name)
    for axes, title, cap in ((value_axes, "f(x)", 10.0), (slope_axes, "f'(x)", 5.0)):
        reference_axes(axes, title)
        limits = robust_limits(curves[title], cap)
        if limits:
            axes.set_ylim(*limits)
    # one legend for both panels, below them: it never covers a curve
    figure.legend(*value_axes.get_legend_handles_labels(), loc="outside lower center", ncols=1 if len(
        functions) > 4 else len(functions), fontsize="small", frameon=False)
    return _save(figure, path)


def plot_lines(series: Mapping[str, Sequence[float]], path: str | Path, xlabel: str, ylabel: str, title: str,
               x_values: Sequence[float] | None = None) -> Path:
    """One line per named series (training curves, operator-weight trajectories); returns the figure's path.

    Series are plotted against their index (0, 1, ...) unless `x_values` (shared by all series) is given.
    """
    if not series:
        raise ValueError("plot_lines needs at least one series, e.g. {'train loss': [2.3, 1.9, 1.5]}")
    empty = [name for name, values in series.items() if len(values) == 0]
    if empty:
        raise ValueError(f"series {empty} have no values; drop them or record at least one point")
    if x_values is not None and any(len(values) != len(x_values) for values in series.values()):
        raise ValueError(f"every series needs len(x_values) = {len(x_values)} values, got "
                         f"{ {name: len(values) for name, values in series.items()} }")
    path = _figure_path(path)
    figure = Figure(figsize=(7, 4.2), layout="constrained")
    axes = figure.subplots()
    axes.set_prop_cycle(LINE_CYCLE)
    for name, values in series.items():
        ys = _finite_or_nan(torch.as_tensor(list(values), dtype=torch.float64))
        xs = list(x_values) if x_values is not None else list(range(len(ys)))
        axes.plot(xs, ys, label=name, marker="o" if len(ys) == 1 else None)
    if x_values is None or all(float(v).is_integer() for v in x_values):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, not epoch 1.2
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    if len(series) <= 28:  # more than the line cycle tells apart: a legend would only mislead
        figure.legend(loc="outside right upper", fontsize="small", frameon=False)
    return _save(figure, path)
