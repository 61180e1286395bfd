"""The one-shot search: relaxations (softmax, hard Gumbel, Dirichlet), the architect, the supernet and its mixed
cell, the bilevel loop and discretization.
May import: space, kernels, training, data."""
