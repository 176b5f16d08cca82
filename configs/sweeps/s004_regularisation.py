"""Seed 004, section 2.1.4 (figure 6): L2 (weight decay) and L1 penalties of different weights.

ResNet24 with Nesterov SGD, 50 epochs without mixup (configs/seed004_resnet24.py without mixup);
both penalties are added to the gradient (`optim.weight_decay` coupled, `optim.l1`). Its pick:
L2 1e-3, no L1. Shorter runs: --config.base.num_epochs=15.
"""

from resnet_jax import sweep

from configs import seed004_resnet24


def get_config():
  return sweep.sweep_config(seed004_resnet24.get_config_without_mixup(), grid={
      'optim.weight_decay': (0.0, 1e-4, 1e-3),
      'optim.l1': (0.0, 1e-5, 1e-4),
  })
