"""The file formats figures are written in: PNG, or PDF and SVG (vector, for papers).

Apart from plots.py so that the params models can name them without importing matplotlib: every stage validates
its params at start-up, and most of them draw nothing.
"""
FIGURE_FORMATS = ("png", "pdf", "svg")
