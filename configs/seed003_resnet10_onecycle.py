"""Seed 003: ResNet-10 ([2,1,1,1], 64-512 channels) with SGD and OneCycle; 93.54% in its paper.

Its best run: SGD at learning rate 0.001 with OneCycleLR (taken here as the cycle's peak),
Kaiming-normal convolutions and a Xavier head, batch 128; augmentation: rotation of up to 5
degrees, horizontal flip, random crop with 2 pixels of padding; a 90:10 train/validation split.
The paper gives neither the momentum nor the weight decay nor the number of epochs: momentum
0.9, weight decay 5e-4 and 50 epochs here.
"""

from resnet_jax import defaults
from resnet_jax import models


def get_config():
  config = defaults.base_config()
  config.model = models.preset('resnet10')
  config.data.validation = '0.1'
  config.augment.crop_padding = 2
  config.augment.rotation_degrees = 5.0
  config.optim.learning_rate = 0.001
  config.optim.clip_mode = 'none'
  config.optim.lookahead_k = 0
  config.schedule.name = 'onecycle'
  config.num_epochs = 50
  config.reference.system = 'seed 003 ResNet-10 (SGD, OneCycle)'
  config.reference.paper_accuracy = 93.54
  return config
