"""Seed 004, section 2.1.5 (figure 8): ReLU, ReLU6, LeakyReLU, ELU and Swish in ResNet24.

50 epochs without mixup (configs/seed004_resnet24.py without mixup).
Shorter runs: --config.base.num_epochs=15.
"""

from resnet_jax import sweep

from configs import seed004_resnet24


def get_config():
  return sweep.sweep_config(seed004_resnet24.get_config_without_mixup(), grid={
      'model.activation': ('relu', 'relu6', 'leaky_relu', 'elu', 'swish'),
  })
