"""Seed 000, section 3.2 (figure 9): learning-rate schedulers with SGD on its best model.

Seed 000's best recipe (configs/best.py: SGD 0.1 + Lookahead, 200 epochs) under PyTorch's
CosineAnnealingLR (its pick), StepLR, MultiStepLR, ExponentialLR, OneCycleLR and
CosineAnnealingWarmRestarts, and a constant rate. The paper gives none of their settings; these
are PyTorch's usual CIFAR ones. Shorter runs: --config.base.num_epochs=30 (the step and
multistep epochs below assume 200).
"""

from resnet_jax import sweep

from configs import best

SCHEDULES = (
    dict(name='cosine'),
    dict(name='step', step_size=60, gamma=0.2),
    dict(name='multistep', milestones=(100, 150), gamma=0.1),
    dict(name='exponential', gamma=0.98),
    dict(name='onecycle'),
    dict(name='cosine_restarts', t_0=10, t_mult=2),
    dict(name='constant'),
)


def get_config():
  return sweep.sweep_config(best.get_config(), grid={'schedule': SCHEDULES})
