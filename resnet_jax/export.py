r"""A trained run's checkpoint -> a PyTorch checkpoint in the kuangliu layout, and its module.

  python -m resnet_jax.export --workdir runs/best --output model.pt [--checkpoint best]

The run's own config comes from its config.json (a --config given must agree with it).

model.pt is what kuangliu/pytorch-cifar's main.py saves (`{'net': state_dict, 'acc': ...,
'epoch': ...}`) plus `model_config` (config.model as a dict) and `normalize` (the mean and std
the inputs were normalised with). model.py beside it is `pytorch/torch_resnet.py`, the PyTorch
module that loads it, needing nothing but torch; its docstring (and the README's "Coming from
PyTorch") shows how, with the input layout, tested against a real export.

`torch_import` reads model.pt back bitwise (and `evaluate --torch_state_dict model.pt` scores it).
Needs PyTorch (the `torch` extra).
"""

import io
import os
import pathlib

from absl import logging
import ml_collections

from resnet_jax import cli
from resnet_jax import errors
from resnet_jax import files
from resnet_jax import pytorch
from resnet_jax.pytorch import torch_import
from resnet_jax.training import checkpoints
from resnet_jax.training import run_config
from resnet_jax.training import runs
from resnet_jax.training import workdir_lock

_CHECKPOINT = cli.checkpoint_flag(checkpoints.CHECKPOINTS)
_TO = cli.output_flag(None, 'File the PyTorch checkpoint goes to, e.g. model.pt (model.py goes '
                      'beside it).')


def restore_variables(config: ml_collections.ConfigDict, workdir: str,
                      checkpoint: str) -> tuple[dict, checkpoints.CheckpointMeta, dict]:
  """(evaluated variables, checkpoint meta, normalisation) of a run's checkpoint."""
  run = runs.setup_run(config, workdir)
  state, meta = runs.restore(run, checkpoint)
  normalize = {'mean': [float(m) for m in run.splits.mean],
               'std': [float(s) for s in run.splits.std]}
  return state.eval_variables(), meta, normalize


def definition_path(path: str) -> str:
  """Where the module definition of an exported checkpoint goes: model.pt -> model.py."""
  return os.path.splitext(path)[0] + '.py'


def check_destination(path: str) -> str:
  """UserError unless --output=path and the module beside it can be written; that module's path."""
  definition = definition_path(path)
  if os.path.abspath(definition) == os.path.abspath(path):
    raise errors.UserError(f'--output={path} must not end in .py (model.py goes beside it)')
  files.check_writable(path, '--output', is_file=True)
  if os.path.isdir(definition):
    raise errors.UserError(f'--output={path}: {definition} (the module written beside it) is a '
                           'folder; pick another --output')
  return definition


def save_torch_checkpoint(variables: dict, model_cfg: ml_collections.ConfigDict, path: str, *,
                          acc: float | None = None, epoch: int | None = None,
                          normalize: dict | None = None) -> dict:
  """Writes variables as a kuangliu-layout PyTorch checkpoint at path, the module beside it.

  Returns:
    {'path', 'definition', 'keys', 'acc', 'epoch'}.
  """
  import torch  # pylint: disable=g-import-not-at-top  # Only export needs PyTorch.
  from resnet_jax.pytorch import torch_resnet  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  definition = check_destination(path)
  state_dict = {key: torch.tensor(value)
                for key, value in torch_import.state_dict_from_variables(variables).items()}
  buffer = io.BytesIO()
  torch.save({'net': state_dict, 'acc': acc, 'epoch': epoch,
              'model_config': model_cfg.to_dict(), 'normalize': normalize}, buffer)
  files.write_atomic(path, buffer.getvalue())
  files.write_atomic(definition, pathlib.Path(torch_resnet.__file__).read_bytes())
  return {'path': path, 'definition': definition, 'keys': len(state_dict), 'acc': acc,
          'epoch': epoch}


def export_run(config: ml_collections.ConfigDict, workdir: str, path: str,
               checkpoint: str = 'latest') -> dict:
  """Exports a run's latest or best checkpoint to a PyTorch checkpoint at path.

  `acc` is the checkpoint's validation accuracy (%) at its epoch.

  Raises:
    UserError: no such checkpoint, or one the config cannot restore.
  """
  variables, meta, normalize = restore_variables(config, workdir, checkpoint)
  epoch = meta.epoch
  scored = [r['val_accuracy'] for r in meta.history
            if r.get('epoch') == epoch and 'val_accuracy' in r]
  acc = 100 * float(scored[-1]) if scored else None
  return save_torch_checkpoint(variables, config.model, path, acc=acc, epoch=epoch,
                               normalize=normalize)


def main(argv):
  del argv  # cli.run refuses positional arguments.

  def run(config, workdir):
    if not _TO.value:
      raise errors.UserError('--output is required, e.g. --output=model.pt')
    check_destination(_TO.value)  # Before any work, as is PyTorch.
    pytorch.require_torch('export')
    cli.say_outputs(f'{_TO.value} and {definition_path(_TO.value)}')
    with workdir_lock.hold(workdir, 'export', cli.command_line()):  # Not while a run rotates its checkpoints.
      config = run_config.load_run_config(workdir, config)  # The run's own, by default.
      exported = export_run(config, workdir, _TO.value, _CHECKPOINT.value)
    logging.info('wrote %s (%d tensors, epoch %s) and its module %s', exported['path'],
                 exported['keys'], exported['epoch'], exported['definition'])

  run(cli.CONFIG.value, cli.WORKDIR.value)


if __name__ == '__main__':
  cli.run(main, 'export', require_config=False)
