"""Seed 002: ImprovedResNet (bottleneck [3,3,3], planes 64-256, stem 32, LeakyReLU, dropout).

4,903,082 parameters. SGD lr 0.05 (momentum 0.9, weight decay 1e-4) inside Lookahead (k=5,
alpha=0.5), cosine annealing with T_max 400 over 400 epochs, cross-entropy with label smoothing
0.1; augmentation: random crop (pad 4), horizontal flip, rotation 15 degrees, colour jitter
(0.2, 0.2, 0.2, 0.1), random erasing (p 0.5, scale 0.02-0.33, ratio 0.3-3.3), CIFAR-10
normalisation. 86.968% test accuracy in its paper. No clipping is mentioned (none here).
"""

from resnet_jax import defaults
from resnet_jax import models


def get_config():
  config = defaults.base_config()
  config.model = models.preset('improved_resnet')
  config.augment.rotation_degrees = 15.0
  config.augment.brightness = 0.2
  config.augment.contrast = 0.2
  config.augment.saturation = 0.2
  config.augment.hue = 0.1
  config.augment.erasing_prob = 0.5
  config.augment.erasing_scale = (0.02, 0.33)
  config.augment.erasing_ratio = (0.3, 3.3)
  config.optim.learning_rate = 0.05
  config.optim.weight_decay = 1e-4
  config.optim.clip_mode = 'none'
  config.label_smoothing = 0.1
  config.num_epochs = 400
  config.reference.system = 'seed 002 ImprovedResNet'
  config.reference.paper_accuracy = 86.968
  return config
