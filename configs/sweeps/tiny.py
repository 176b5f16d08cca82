"""A 2 x 2 sweep of smoke-sized runs (seconds each on a CPU): learning rate x widths.

  python -m resnet_jax.sweep --config configs/sweeps/tiny.py --workdir runs/sweep_tiny

The runs are configs/smoke.py's (real CIFAR-10 images where `data.source='auto'` finds them; add
`--config.base.data.source=synthetic` otherwise) on 256 training and 128 test images.
"""

from resnet_jax import sweep

from configs import smoke


def get_config():
  base = smoke.get_config()
  base.data.train_subset = 256
  base.data.test_subset = 128
  base.eval_batch_size = 128
  return sweep.sweep_config(base, grid={
      'optim.learning_rate': (0.05, 0.2),
      'model.channels': ((4, 8), (8, 16)),
  })
