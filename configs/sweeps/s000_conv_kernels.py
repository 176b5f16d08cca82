"""Seed 000, section 2.3 (figure 3): the conv kernel size F_i of every residual layer.

Blocks [2, 1, 1], channels [64, 128, 256] and 1x1 shortcuts as in its figure 3, otherwise seed
000's best recipe (configs/best.py). F = 7 (6.9M parameters) is over the 5M budget and is
reported skipped. Shorter runs: --config.base.num_epochs=30.
"""

from resnet_jax import sweep

from configs import best


def get_config():
  base = best.get_config()
  base.model.name = 'seed000_2x1x1'
  base.model.num_blocks = (2, 1, 1)
  base.model.shortcut_kernel_sizes = (1, 1, 1)
  return sweep.sweep_config(base, grid={
      'model.kernel_sizes': tuple((f, f, f) for f in (1, 3, 5, 7)),
  })
