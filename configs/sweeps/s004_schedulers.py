"""Seed 004, section 2.1.3 (figure 5): learning-rate strategies for ResNet24 with Nesterov SGD.

Exponential (gamma 0.9, its pick), step (every 20 epochs, gamma 0.1), cosine annealing with
restarts (period 20 epochs) and reduce-on-plateau (validation loss, patience 3, factor 0.5), as
its text gives them; 50 epochs without mixup (configs/seed004_resnet24.py without mixup).
Shorter runs: --config.base.num_epochs=15.
"""

from resnet_jax import sweep

from configs import seed004_resnet24

SCHEDULES = (
    dict(name='exponential', gamma=0.9),
    dict(name='step', step_size=20, gamma=0.1),
    dict(name='cosine_restarts', t_0=20, t_mult=1),
    dict(name='plateau', patience=3, gamma=0.5, plateau_mode='min'),
)


def get_config():
  return sweep.sweep_config(seed004_resnet24.get_config_without_mixup(), grid={'schedule': SCHEDULES})
