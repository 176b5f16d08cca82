"""Seed 004, section 2.1.6 (figure 9): the order of conv, BN, activation and addition in a block.

original (conv-BN-act, conv-BN, add, act), preact (BN-act-conv twice, add) and bn_after_add
(conv-BN-act, conv, add, BN, act) in ResNet24, 50 epochs without mixup
(configs/seed004_resnet24.py without mixup). Its finding: the original order is best.
Shorter runs: --config.base.num_epochs=15.
"""

from resnet_jax import sweep

from configs import seed004_resnet24


def get_config():
  return sweep.sweep_config(seed004_resnet24.get_config_without_mixup(), grid={
      'model.block_order': ('original', 'preact', 'bn_after_add'),
  })
