"""Seed 001: ResNet-10 ([2,1,1,1] basic blocks, 64-512 channels, 4,977,226 parameters).

Adam (lr 0.001, betas 0.9/0.999), dropout before the fully connected layer, batch 128, 20
epochs; random crop and horizontal flip; normalisation by the training set's own mean and std;
an 80:20 train/validation split; 87.5% test accuracy in its paper. The paper gives no dropout
rate (PyTorch's default 0.5 here), no crop padding (4, the common CIFAR setting, here), no weight
decay and no schedule (none here).
"""

from resnet_jax import defaults
from resnet_jax import models


def get_config():
  config = defaults.base_config()
  config.model = models.preset('resnet10')
  config.model.init = 'pytorch'  # Seed 001 keeps PyTorch's default initialisation.
  config.model.head_dropout = 0.5
  config.data.validation = '0.2'
  config.data.normalization = 'computed'
  config.optim.optimizer = 'adam'
  config.optim.learning_rate = 0.001
  config.optim.weight_decay = 0.0
  config.optim.clip_mode = 'none'
  config.optim.lookahead_k = 0
  config.schedule.name = 'constant'
  config.num_epochs = 20
  config.reference.system = 'seed 001 ResNet-10 (Adam, dropout)'
  config.reference.paper_accuracy = 87.5
  return config
