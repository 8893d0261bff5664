"""Training and evaluation: the loop, checkpoints, run folders, losses and metrics."""
