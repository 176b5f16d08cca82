"""resnet-jax: compact CIFAR-10 ResNets in JAX/Flax."""

__version__ = "0.1.0"
