"""Seed 004, section 2.1.2 (figure 4): Adagrad, Adadelta, SGD and Nesterov SGD x its 4 models.

Its setting for the comparison: momentum 0.9, weight decay 1e-3, batch 128, exponential decay
(gamma 0.9), 50 epochs, no mixup (configs/seed004_resnet24.py without mixup).
Shorter runs: --config.base.num_epochs=15.
"""

from resnet_jax import models
from resnet_jax import sweep

from configs import seed004_resnet24

ARCHITECTURES = ('s004_resnet10', 's004_resnet16', 's004_resnet24', 's004_resnet48')
OPTIMIZERS = (
    dict(optimizer='adagrad'),
    dict(optimizer='adadelta'),
    dict(optimizer='sgd', nesterov=False),
    dict(optimizer='sgd', nesterov=True),
)


def get_config():
  return sweep.sweep_config(seed004_resnet24.get_config_without_mixup(), grid={
      'model': tuple(models.preset(name) for name in ARCHITECTURES),
      'optim': OPTIMIZERS,
  })
