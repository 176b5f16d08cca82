"""Seed 000, section 2.2 (figure 2): channels (n, 2n, 4n, 8n) for n in {16, 32, 48, 64}.

Four residual layers of blocks [2, 1, 1, 1] (so n = 64 is ResNet-10, 4,977,806 parameters with the
stem SE, under the 5M budget), otherwise seed 000's best recipe (configs/best.py).
Shorter runs: --config.base.num_epochs=30.
"""

from resnet_jax import sweep

from configs import best


def get_config():
  base = best.get_config()
  base.model.name = 'seed000_4_layers'
  base.model.num_blocks = (2, 1, 1, 1)
  base.model.kernel_sizes = (3, 3, 3, 3)
  base.model.shortcut_kernel_sizes = (1, 1, 1, 1)
  base.model.channels = (64, 128, 256, 512)
  return sweep.sweep_config(base, grid={
      'model.channels': tuple((n, 2 * n, 4 * n, 8 * n) for n in (16, 32, 48, 64)),
  })
