"""Seed 000's best model and recipe, as its public PyTorch code runs it (docs/reference.md).

4,697,742 parameters: basic blocks [4, 4, 3], channels [64, 128, 256], one SE block after the stem.
SGD 0.1 (momentum 0.9, coupled weight decay 5e-4), value clipping 0.1, Lookahead k=5 alpha=0.5,
cosine over 200 epochs stepped per epoch, batch 128, crop (pad 4) + horizontal flip.
"""

from resnet_jax import defaults
from resnet_jax import models


def get_config():
  config = defaults.base_config()
  config.model = models.preset('best')
  config.reference.update(defaults.seed000_reference())
  return config
