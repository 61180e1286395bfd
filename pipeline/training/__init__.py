"""Training and evaluation of a network with a fixed activation: the loop, its config and schedules, top-1/top-5,
atomic checkpoints, device choice and RNG capture.
May import: space, kernels."""
