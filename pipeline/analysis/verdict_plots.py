"""The figures that tell the study's story: what the searched functions look like and how they did, whether the
search's own accuracy predicted the retrained one, and how ranks move from the search network to deeper ones.

Colours follow the verdict against ReLU (Okabe-Ito, colour-blind safe); references are black with their own line
styles; legends sit outside the axes or labels sit beside the lines, and figures are saved with a tight box.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pipeline.analysis.plots import (OKABE_ITO, Activation, _figure_path, _finite_or_nan, _save, reference_axes,
                                     robust_limits, values_and_derivative)

VERDICT_COLOURS = {"better": OKABE_ITO["bluish green"], "no difference": OKABE_ITO["blue"],
                   "worse": OKABE_ITO["vermillion"], "failed": OKABE_ITO["reddish purple"],
                   "too few": OKABE_ITO["orange"]}
VERDICT_LABELS = {"better": "better than ReLU", "no difference": "no difference from ReLU detected",
                  "worse": "worse than ReLU", "failed": "failed on some seed",
                  "too few": "not testable (one seed, or no spread)"}
REFERENCE_STYLES = ("-", "--", ":", "-.")
MAX_POINT_LABELS = 15  # beyond this many points, names beside them overlap into noise


def plot_verdicts(searched: Mapping[str, tuple[Activation, str]], references: Mapping[str, Activation],
                  path: str | Path, x_range: tuple[float, float] = (-5.0, 5.0), points: int = 801) -> Path:
    """f(x) and f'(x) of every searched function, coloured by its verdict class (pipeline.analysis.stats.
    verdict_class), beside the references (black, one line style each). `searched`: name -> (function, class)."""
    if not searched and not references:
        raise ValueError("plot_verdicts needs at least one function")
    unknown = {kind for _, kind in searched.values()} - set(VERDICT_COLOURS)
    if unknown:
        raise ValueError(f"unknown verdict classes {sorted(unknown)}; use one of {sorted(VERDICT_COLOURS)}")
    path = _figure_path(path)
    x = torch.linspace(*map(float, x_range), points, dtype=torch.float64)
    figure = Figure(figsize=(8, 3.8), layout="constrained")
    value_axes, slope_axes = figure.subplots(1, 2)
    curves = {value_axes: [], slope_axes: []}

    def draw(f: Activation, **style) -> None:
        values, derivative = values_and_derivative(f, x)
        for axes, ys in ((value_axes, values), (slope_axes, derivative)):
            curves[axes].append(_finite_or_nan(ys))
            axes.plot(x.tolist(), curves[axes][-1], **style)

    counts = {}
    for function, kind in searched.values():
        counts[kind] = counts.get(kind, 0) + 1
        draw(function, color=VERDICT_COLOURS[kind], linewidth=1.3, alpha=0.8)
    handles = [Line2D([], [], color=VERDICT_COLOURS[kind], linewidth=2,
                      label=f"{VERDICT_LABELS[kind]} ({counts[kind]})") for kind in VERDICT_COLOURS if kind in counts]
    for (name, function), style in zip(references.items(), REFERENCE_STYLES * 4):
        draw(function, color="black", linestyle=style, linewidth=1.6, zorder=3)
        handles.append(Line2D([], [], color="black", linestyle=style, linewidth=1.6, label=name))
    for axes, title, cap in ((value_axes, "f(x)", 10.0), (slope_axes, "f'(x)", 5.0)):
        reference_axes(axes, title)
        limits = robust_limits(curves[axes], cap)
        if limits:
            axes.set_ylim(*limits)
    figure.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)), fontsize="small",
                  frameon=False)
    figure.suptitle("Searched activation functions, coloured by their verdict against ReLU")
    return _save(figure, path)


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


# label offsets tried in turn (points from the marker): right-above, right-below, left-above, left-below
_LABEL_OFFSETS = ((4, 3, "left", "bottom"), (4, -3, "left", "top"), (-4, 3, "right", "bottom"),
                  (-4, -3, "right", "top"))
_LABEL_HEIGHT, _CHAR_WIDTH = 8.0, 4.6  # an x-small label, in points (estimates: enough to avoid overlaps)


def _label_points(axes, points: Sequence[tuple[str, float, float]], panel_inches: tuple[float, float]) -> None:
    """Name each point beside it, at the first offset whose label box overlaps no label placed before."""
    axes.autoscale_view()
    (x_low, x_high), (y_low, y_high) = axes.get_xlim(), axes.get_ylim()
    width, height = 72 * 0.8 * panel_inches[0], 72 * 0.75 * panel_inches[1]  # the axes' share of the panel
    placed = []
    for name, x, y in sorted(points, key=lambda point: -point[2]):
        px = (x - x_low) / (x_high - x_low or 1) * width
        py = (y - y_low) / (y_high - y_low or 1) * height
        label_width = _CHAR_WIDTH * len(name)
        for dx, dy, ha, va in _LABEL_OFFSETS:
            left = px + dx - (label_width if ha == "right" else 0)
            bottom = py + dy - (_LABEL_HEIGHT if va == "top" else 0)
            box = (left, bottom, left + label_width, bottom + _LABEL_HEIGHT)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        axes.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize="x-small")


def plot_search_vs_retrained(points: Sequence[dict], network: str, relu_top1: float | None,
                             correlations: Mapping[str, tuple[float, float, int]], path: str | Path) -> Path:
    """Does the search's own signal predict the outcome? One panel per search signal in `correlations`
    ("supernet_val_top1", "discretized_val_top1"), each point a searched function: that signal against its
    retrained top-1 on `network`, coloured by verdict. `points`: dicts with name, kind, top1 and the signals;
    `correlations`: signal -> (Spearman rho, p, pairs), shown in the panel's title."""
    if not correlations:
        raise ValueError("plot_search_vs_retrained needs at least one search signal, e.g. supernet_val_top1")
    path = _figure_path(path)
    titles = {"supernet_val_top1": "supernet val top-1 (%)", "discretized_val_top1": "discretized val top-1 (%)"}
    figure = Figure(figsize=(4.2 * len(correlations), 3.8), layout="constrained")
    panels = figure.subplots(1, len(correlations), squeeze=False)[0]
    for axes, (signal, (rho, p, pairs)) in zip(panels, correlations.items()):
        shown = [point for point in points if _finite(point.get(signal)) and _finite(point["top1"])]
        for point in shown:
            axes.scatter(point[signal], point["top1"], color=VERDICT_COLOURS[point["kind"]], s=36, zorder=3,
                         edgecolor="white", linewidth=0.5)
        axes.margins(0.15)
        if len(shown) <= MAX_POINT_LABELS:
            _label_points(axes, [(p["name"], p[signal], p["top1"]) for p in shown],
                          (figure.get_figwidth() / len(correlations), figure.get_figheight()))
        if _finite(relu_top1):
            axes.axhline(relu_top1, color="black", linestyle="--", linewidth=1)
            axes.annotate("ReLU", (1.0, relu_top1), xycoords=("axes fraction", "data"), xytext=(-2, 3),
                          textcoords="offset points", ha="right", fontsize="small")
        correlation = (f"Spearman ρ = {rho:.2f} (p = {p:.2g}, n = {pairs})" if math.isfinite(rho)
                       else f"n = {pairs}: too few points for a rank correlation")
        axes.set_title(correlation, fontsize="medium")
        axes.set_xlabel(titles.get(signal, signal))
        axes.set_ylabel(f"retrained test top-1 on {network} (%)")
        axes.grid(True, alpha=0.3)
    plotted = [point for point in points if _finite(point["top1"])]
    kinds = [kind for kind in VERDICT_COLOURS if any(point["kind"] == kind for point in plotted)]
    if len(plotted) < len(points):
        figure.text(0.01, 0.0, f"not shown: {len(points) - len(plotted)} function(s) that failed on every seed",
                    fontsize="x-small", va="bottom")
    figure.legend(handles=[Line2D([], [], linestyle="", marker="o", color=VERDICT_COLOURS[kind],
                                  label=VERDICT_LABELS[kind]) for kind in kinds],
                  loc="outside lower center", ncols=max(1, min(3, len(kinds))), fontsize="small", frameon=False)
    return _save(figure, path)


def plot_rank_transfer(ranks: Mapping[str, Sequence[int]], kinds: Mapping[str, str], networks: Sequence[str],
                       path: str | Path) -> Path:
    """A bump chart: each function's rank (1 = best, at the top) on every network in depth order, labelled by
    name at both ends; baselines (kind "reference") black, searched functions coloured by their verdict."""
    if not ranks:
        raise ValueError("plot_rank_transfer needs at least one function's ranks")
    wrong = {name: list(r) for name, r in ranks.items() if len(r) != len(networks)}
    if wrong:
        raise ValueError(f"each function needs one rank per network {list(networks)}, got {wrong}")
    path = _figure_path(path)
    height = max(2.5, 0.35 * len(ranks) + 1.2)
    figure = Figure(figsize=(2.0 + 1.6 * len(networks), height), layout="constrained")
    axes = figure.subplots()
    positions = list(range(len(networks)))
    for name, rank in ranks.items():
        colour = "black" if kinds[name] == "reference" else VERDICT_COLOURS[kinds[name]]
        axes.plot(positions, list(rank), marker="o", markersize=15, color=colour, linewidth=1.6,
                  linestyle="--" if kinds[name] == "reference" else "-")
        for position, value in zip(positions, rank):  # the rank inside its marker: no y-axis needed
            axes.annotate(str(value), (position, value), ha="center", va="center", color="white", fontsize="small",
                          fontweight="bold")
        ends = ((positions[-1], "left", 12), (positions[0], "right", -12))[:1 if len(positions) == 1 else 2]
        for position, side, offset in ends:
            axes.annotate(name, (position, rank[positions.index(position)]), xytext=(offset, 0),
                          textcoords="offset points", va="center", ha=side, fontsize="small", color=colour,
                          annotation_clip=False)
    axes.set_xticks(positions, list(networks))
    axes.set_ylim(len(ranks) + 0.6, 0.4)
    axes.set_xlim(-0.2, positions[-1] + 0.2 if len(positions) > 1 else 0.2)
    axes.set_yticks([])
    axes.set_title("Rank per evaluation network\n(1 = best; a failure on any seed ranks last)",
                   fontsize="medium")
    for side in ("top", "right", "left"):
        axes.spines[side].set_visible(False)
    shown = [kind for kind in VERDICT_COLOURS if kind in kinds.values()]
    handles = [Line2D([], [], color=VERDICT_COLOURS[kind], linewidth=2, label=VERDICT_LABELS[kind]) for kind in shown]
    if "reference" in kinds.values():
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1.6, label="baseline"))
    figure.legend(handles=handles, loc="outside lower center", ncols=min(2, len(handles)), fontsize="small",
                  frameon=False, title=f"colour: verdict on {networks[-1]}", title_fontsize="small")
    return _save(figure, path)
