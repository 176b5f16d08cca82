"""A seconds-long run on a CPU: a tiny ResNet, 512 training images, 2 epochs.

Real CIFAR-10 images where `data.source='auto'` finds a copy (../shared/data/cifar10_jpeg, data/,
$RESNET_JAX_DATA), else synthetic ones (`--config.data.source=synthetic`); the run logs and
reports which (results.json: data_source).
"""

from resnet_jax import defaults


def get_config():
  config = defaults.base_config()
  config.model = defaults.model_config(
      name='smoke', num_blocks=(1, 1), channels=(8, 16), kernel_sizes=(3, 3),
      shortcut_kernel_sizes=(1, 1), stem_channels=8, se='none')
  config.data.train_subset = 512
  config.data.test_subset = 256
  config.batch_size = 64
  config.eval_batch_size = 256
  config.num_epochs = 2
  config.optim.learning_rate = 0.05
  config.reference.system = 'smoke test (tiny model)'
  return config
