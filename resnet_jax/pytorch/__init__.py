"""PyTorch, imported only here: the same ResNet in torch, checkpoints read into Flax, the reference
trainer of a config, and the benchmark's torch baseline. Named so that nothing shadows `torch`."""
