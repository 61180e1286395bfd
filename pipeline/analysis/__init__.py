"""What a found function is and how it did: equivalence to known activations, plots, the results report.
Reads DVC outputs only.
May import: space."""
