"""Lists the named models (every system of the five papers) with their exact parameter counts.

  python -m resnet_jax.models              # a line a model, as each is counted
  python -m resnet_jax.models --name best  # one model's per-layer summary
"""

from absl import flags
from absl import logging

from resnet_jax import cli
from resnet_jax import models

_NAME = flags.DEFINE_enum('name', None, list(models.PRESETS), "Print this model's summary.")


def main(argv):
  del argv  # cli.run refuses positional arguments.
  if _NAME.value:
    logging.info('%s', models.summary_table(models.preset(_NAME.value)))
    return
  width = max(map(len, models.PRESETS))
  logging.info('%-*s  %12s', width, 'model', 'parameters')
  for name in models.PRESETS:
    logging.info('%-*s  %12s', width, name, f'{models.model_size(models.preset(name)):,}')


if __name__ == '__main__':
  cli.run(main, 'models', uses_config=False, require_workdir=False, require_config=False)
