"""The fused cell: the whole mixed activation as one autograd node, its compiled kernels, closed-form derivatives,
cheaper float32 math, and the fast path of a retrained genotype.
May import: space."""
