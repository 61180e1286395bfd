"""The search space: operators, genotypes (one concrete activation, its formula) and the CIFAR ResNets.
The pure description of what is searched, shared by every layer above.
May import: nothing in pipeline."""
