"""ResNet-18, the baseline of seeds 000 and 003 (11,173,962 parameters, over the 5M budget).

Seed 000 trains it as its baseline "without any of the training strategies": SGD 0.1 (momentum
0.9, weight decay 5e-4), cosine over 200 epochs, batch 128, no augmentation, no normalisation, no
clipping, no Lookahead; about 89% in its paper (figure 16).
"""

from resnet_jax import defaults
from resnet_jax import models


def get_config():
  config = defaults.base_config()
  config.model = models.preset('resnet18')  # Its preset raises param_budget to 12M on purpose.
  config.data.mean = (0.0, 0.0, 0.0)  # No normalisation: pixels in [0, 1].
  config.data.std = (1.0, 1.0, 1.0)
  config.augment.crop_padding = 0
  config.augment.hflip = 0.0
  config.optim.clip_mode = 'none'
  config.optim.lookahead_k = 0
  config.reference.system = 'seed 000 ResNet-18 baseline'
  config.reference.paper_accuracy = 89.0
  return config
