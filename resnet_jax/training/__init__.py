"""Training a run: the pure step, placement and feeds, the epoch loop, evaluation, checkpoints and
resume, a run's record and identity, progress lines, the workdir lock, multi-process start."""
