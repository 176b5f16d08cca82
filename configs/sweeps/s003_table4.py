"""Seed 003, table 4: learning rate {0.1, 0.01, 0.001} x optimizer {Adam, SGD, AdaDelta} x its five
architectures (45 runs).

Every run uses seed 003's recipe (configs/seed003_resnet10_onecycle.py: OneCycle, rotation 5,
crop with 2 pixels of padding, a 90:10 split). ResNet-18 (11.2M parameters) is part of the study:
its preset raises the parameter budget on purpose. Its best point in the paper is ResNet-10, SGD,
0.001 (93.55%). Shorter runs: --config.base.num_epochs=10.
"""

from resnet_jax import models
from resnet_jax import sweep

from configs import seed003_resnet10_onecycle

ARCHITECTURES = ('s003_resnet12', 's003_resnet14_4', 's003_resnet14_5', 'resnet10', 'resnet18')


def get_config():
  return sweep.sweep_config(seed003_resnet10_onecycle.get_config(), grid={
      'model': tuple(models.preset(name) for name in ARCHITECTURES),
      'optim.learning_rate': (0.1, 0.01, 0.001),
      'optim.optimizer': ('adam', 'sgd', 'adadelta'),
  })
