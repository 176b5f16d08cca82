"""Seed 000, section 2.1 (figure 1): the number of residual layers N and blocks B_i.

Seed 000's best recipe (configs/best.py) with basic blocks, 3x3 convs and 1x1 shortcuts; the
layouts go from 2 to 4 layers. ResNet-18's [2,2,2,2] (11.2M parameters) is over the 5M budget:
the sweep reports it skipped. Shorter runs: --config.base.num_epochs=30.
"""

from resnet_jax import sweep

from configs import best

# name -> (B_i, C_i)
LAYOUTS = {
    'N2_2x2': ((2, 2), (64, 128)),
    'N3_2x2x2': ((2, 2, 2), (64, 128, 256)),
    'N3_3x3x3': ((3, 3, 3), (64, 128, 256)),
    'N3_4x4x3': ((4, 4, 3), (64, 128, 256)),
    'N4_1x1x1x1': ((1, 1, 1, 1), (64, 128, 256, 512)),
    'N4_2x1x1x1': ((2, 1, 1, 1), (64, 128, 256, 512)),
    'N4_2x2x2x2': ((2, 2, 2, 2), (64, 128, 256, 512)),
}


def get_config():
  layouts = tuple(
      dict(name=name, num_blocks=blocks, channels=channels, kernel_sizes=(3,) * len(blocks),
           shortcut_kernel_sizes=(1,) * len(blocks))
      for name, (blocks, channels) in LAYOUTS.items())
  return sweep.sweep_config(best.get_config(), grid={'model': layouts})
