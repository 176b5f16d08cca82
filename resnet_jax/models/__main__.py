"""Lists the named models (every system of the five papers) with their exact parameter counts.

  python -m resnet_jax.models              # the table
  python -m resnet_jax.models --name best  # one model's per-layer summary
"""

import argparse
from typing import Sequence

from resnet_jax import models


def main(argv: Sequence[str] | None = None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--name', choices=tuple(models.PRESETS), help="print this model's summary")
  args = parser.parse_args(argv)
  if args.name:
    print(models.summary_table(models.preset(args.name)))
    return
  width = max(map(len, models.PRESETS))
  for name in models.PRESETS:
    print(f'{name:<{width}}  {models.model_size(models.preset(name)):>12,}')


if __name__ == '__main__':
  main()
