r"""Scores a trained model on the test set and writes the run's report for it.

  python -m resnet_jax.evaluate --workdir runs/best [--checkpoint=best]
  python -m resnet_jax.evaluate --config configs/best.py --workdir runs/torch \
      --torch_state_dict=model.pt

The first scores the workdir's latest (or best) checkpoint, with the config the run was trained
with (its config.json; a --config given must agree with it, see `run_config`); the second a
PyTorch `state_dict` of the same network (through `torch_import`, which reads the namings of
kuangliu/pytorch-cifar and Nikunj-Gupta/Efficient_ResNets and their checkpoint files; torch is
imported only then). `--model NAME` (python -m resnet_jax.models) replaces config.model, e.g.
`--model senet18`.
The report (results.json, confusion.png, report.md, and curves.png where the checkpoint has a
history) goes to --output, by default <workdir>/evaluate_<latest|best|torch>.
"""

import os
import time

from absl import flags
from absl import logging
import jax
import ml_collections

from resnet_jax import cli
from resnet_jax import console_logs
from resnet_jax import models
from resnet_jax import pytorch
from resnet_jax.pytorch import torch_import
from resnet_jax.reporting import report
from resnet_jax.training import checkpoints
from resnet_jax.training import distributed
from resnet_jax.training import evaluator
from resnet_jax.training import feed
from resnet_jax.training import run_config
from resnet_jax.training import runs
from resnet_jax.training import workdir_lock

CHECKPOINT = cli.checkpoint_flag(checkpoints.CHECKPOINTS)
OUTPUT_DIR = cli.output_dir_flag('<workdir>/evaluate_<latest|best|torch>')
_TORCH_STATE_DICT = flags.DEFINE_string(
    'torch_state_dict', None, 'Score this PyTorch state_dict (torch.save file: a state_dict or '
    "a training script's checkpoint, e.g. kuangliu's ckpt.pth) instead.")
_MODEL = flags.DEFINE_enum('model', None, list(models.PRESETS),
                           'Use this named model instead of config.model (e.g. the network '
                           'a PyTorch checkpoint holds).')


def with_named_model(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """A copy of config whose model is the named model `name` (python -m resnet_jax.models)."""
  config = config.copy_and_resolve_references()
  config.model = models.preset(name)
  return config


def evaluate_run(config: ml_collections.ConfigDict, workdir: str, *,
                 checkpoint: str = 'latest', torch_state_dict: str | None = None,
                 output_dir: str | None = None) -> dict:
  """Scores a checkpoint of workdir (or a PyTorch state_dict) on the test set; writes the report.

  Args:
    config: the config the model was trained with.
    workdir: the run's folder.
    checkpoint: 'latest' or 'best' (ignored with torch_state_dict).
    torch_state_dict: path of a PyTorch state_dict to score instead.
    output_dir: where the report goes; default <workdir>/evaluate_<checkpoint|torch>.

  Returns:
    The results written to results.json: 'test_accuracy' is the score, also given as
    'best_test_accuracy' for the best checkpoint and as 'final_test_accuracy' otherwise.

  Raises:
    UserError: no such checkpoint, an incompatible checkpoint or state_dict, missing data.
  """
  start = time.time()
  run = runs.setup_run(config, workdir)
  history = []
  if torch_state_dict:
    variables = torch_import.variables_from_torch(
        torch_import.load_state_dict(torch_state_dict), config.model, config.data.image_size)
    variables = jax.device_put(variables, feed.replicated(run.mesh))
    source = 'torch'
  else:
    state, meta = runs.restore(run, checkpoint)
    directory = os.path.join(workdir, 'checkpoints', checkpoint)
    variables = state.eval_variables()
    history = meta.history
    source = checkpoint
  with console_logs.phase(f'scoring {len(run.splits.test_labels):,} test images (compiling, '
                          'then one call)'):
    test, predictions = evaluator.Evaluator(run.ctx, run.mesh, config.eval_batch_size
                                            ).score_split(variables, run.splits.test_images,
                                                          run.splits.test_labels)
  results = runs.run_results(run, models.count_params(variables['params']), test,
                             cli.command_line()) | {
      'evaluated': torch_state_dict if torch_state_dict else directory,
      'test_accuracy': test['accuracy'],  # what was scored, whichever it is
      'wall_seconds': time.time() - start,
  }
  if source == 'best':  # The best model's score, not the final one's.
    results.update(final_test_accuracy=None, final_test_loss=None,
                   best_test_accuracy=test['accuracy'])
  if jax.process_index() == 0:
    report.write_report(
        output_dir or os.path.join(workdir, f'evaluate_{source}'), results, history,
        report.confusion_matrix(run.splits.test_labels, predictions, config.model.num_classes),
        write_plots=config.write_plots)
  return results


def run_evaluation(config, workdir: str) -> None:
  cli.check_output_writable(workdir, OUTPUT_DIR.value)
  if _TORCH_STATE_DICT.value:
    pytorch.require_torch('--torch_state_dict')
  source = 'torch' if _TORCH_STATE_DICT.value else CHECKPOINT.value
  distributed.initialize_from_env()
  cli.say_outputs(OUTPUT_DIR.value or os.path.join(workdir, f'evaluate_{source}'))
  with workdir_lock.hold(workdir, 'evaluate', cli.command_line()):  # Not while a run writes its checkpoints.
    config = run_config.load_run_config(workdir, config)
    if _MODEL.value:
      config = with_named_model(config, _MODEL.value)
    results = evaluate_run(config, workdir, checkpoint=CHECKPOINT.value,
                           torch_state_dict=_TORCH_STATE_DICT.value, output_dir=OUTPUT_DIR.value)
  logging.info('test accuracy %.2f%% (%s, %s)', 100 * results['test_accuracy'],
               report.counted(results['test_examples'], 'image'), results['evaluated'])


def main(argv):
  del argv  # cli.run refuses positional arguments.
  run_evaluation(cli.CONFIG.value, cli.WORKDIR.value)


if __name__ == '__main__':
  cli.run(main, 'evaluate', require_config=False)
