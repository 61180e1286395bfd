"""What a found activation function is: its simplified formula (text and LaTeX, known activations by name), a warning when it is a known activation in disguise (checked numerically), and a plot of the
function and its derivative beside ReLU and Swish."""
from __future__ import annotations

from pathlib import Path

from pipeline.analysis.equivalence import equivalence_warning, find_equivalent
from pipeline.analysis.plots import plot_activations
from pipeline.space.genotype import RELU, SWISH, Genotype


def describe_genotype(genotype: Genotype, out_dir: Path) -> dict:
    """Write genotype.json, formula.txt, formula.tex and activation.png into out_dir; return the description."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fn = genotype.function()
    equivalent = find_equivalent(fn)
    description = {
        "genotype": genotype.to_dict(),
        "formula": genotype.formula(),
        "latex": genotype.latex(),
        "equivalence": equivalence_warning(fn),
        "equivalent_to": equivalent.name if equivalent else None,
    }
    genotype.save(out_dir / "genotype.json")
    (out_dir / "formula.txt").write_text(description["formula"] + "\n")
    (out_dir / "formula.tex").write_text(description["latex"] + "\n")
    plot_activations({f"searched: {description['formula']}": fn, "ReLU": RELU.function(),
                      "Swish": SWISH.function()}, out_dir / "activation.png")
    return description
