"""Seed 004: ResNet24 ([3,3,2,3] basic blocks, 64/128/128/256 channels, 4,935,242 parameters).

SGD with Nesterov momentum 0.9, lr 0.1, weight decay (L2) 1e-3, exponential decay gamma 0.9 an
epoch, batch 128, 50 epochs, mixup; random crop (pad 4), horizontal and vertical flips (p 0.5),
normalisation mean (0.491, 0.482, 0.447) std (0.247, 0.243, 0.261); a 10% validation split.
94.43% in its paper. The paper gives no mixup alpha (1.0, mixup's CIFAR-10 setting, here); its
Gaussian noise of variance 1 is left out (on normalised images it would drown the signal).
"""

from resnet_jax import defaults
from resnet_jax import models


def get_config():
  config = defaults.base_config()
  config.model = models.preset('s004_resnet24')
  config.data.validation = '0.1'
  config.data.mean = (0.491, 0.482, 0.447)
  config.data.std = (0.247, 0.243, 0.261)
  config.augment.vflip = 0.5
  config.augment.mixup_alpha = 1.0
  config.optim.nesterov = True
  config.optim.weight_decay = 1e-3
  config.optim.clip_mode = 'none'
  config.optim.lookahead_k = 0
  config.schedule.name = 'exponential'
  config.schedule.gamma = 0.9
  config.num_epochs = 50
  config.param_histograms_every_epochs = 1  # its figure 12: weight histograms per epoch
  config.reference.system = 'seed 004 ResNet24 (Nesterov SGD, mixup)'
  config.reference.paper_accuracy = 94.43
  return config


def get_config_without_mixup():
  """The base of seed 004's figure sweeps (configs/sweeps/s004_*.py): this recipe, no mixup."""
  config = get_config()
  config.augment.mixup_alpha = 0.0
  return config
