r"""Looks inside a trained run: summary, Grad-CAM maps, parameter histograms, confusion matrix.

  python -m resnet_jax.inspect --workdir runs/best [--gradcam_layers=layer1,layer3_0]
      [--num_images=8] [--checkpoint=latest|best] [--output=DIR] [--config=configs/best.py]

Restores the run's checkpoint (the config it was trained with is read from <workdir>/config.json;
a --config given must agree with it, see `run_config`) and writes into <workdir>/inspect (or
--output):
- summary.txt: the model summary table (also printed);
- gradcam.png: Grad-CAM maps (seed 004, figure 13) of the chosen layers on sample test images,
  one of each class in turn; a layer is a top-level module (`conv1`, `se`, `layer3_1`) or
  `layerL`, the last block of residual layer L; by default the last block of every layer;
- tensorboard/: a histogram of every parameter array (seed 004, figure 12) at the checkpoint's
  step (the trainer writes them every epoch with `gradcam.write_param_histograms`);
- confusion.png: the test-set confusion matrix, drawn by `report.plot_confusion`.
"""

import functools
import os
from typing import Optional, Sequence

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_dict
import numpy as np

from resnet_jax import cli
from resnet_jax import console_logs
from resnet_jax import files
from resnet_jax import models
from resnet_jax.data import augment
from resnet_jax.reporting import gradcam
from resnet_jax.reporting import report
from resnet_jax.reporting import writers
from resnet_jax.training import checkpoints
from resnet_jax.training import distributed
from resnet_jax.training import evaluator
from resnet_jax.training import run_config
from resnet_jax.training import runs
from resnet_jax.training import workdir_lock

GRADCAM_FILE = 'gradcam.png'
SUMMARY_FILE = 'summary.txt'

_CHECKPOINT = cli.checkpoint_flag(checkpoints.CHECKPOINTS)
_OUTPUT_DIR = cli.output_dir_flag('<workdir>/inspect')
_GRADCAM_LAYERS = flags.DEFINE_list(
    'gradcam_layers', [], 'Layers to map: conv1, se, layer3_1, or layerL for the last block of '
    'residual layer L; default: the last block of every residual layer.')
_NUM_IMAGES = flags.DEFINE_integer(
    'num_images', 8, f'Test images in the Grad-CAM grid (at most {gradcam.MAX_GRID_IMAGES}).')


def sample_indices(labels: np.ndarray, num_images: int) -> np.ndarray:
  """Indices of num_images examples: the first of each class, then the second of each, ..."""
  labels = np.asarray(labels)
  rank_in_class = np.zeros(len(labels), np.int64)
  for label in np.unique(labels):
    members = labels == label
    rank_in_class[members] = np.arange(members.sum())
  return np.lexsort((labels, rank_in_class))[:num_images]


def inspect_run(config: config_dict.ConfigDict, workdir: str, *,
                gradcam_layers: Sequence[str] = (), num_images: int = 8,
                checkpoint: str = 'latest', output_dir: Optional[str] = None) -> dict:
  """Writes the summary, Grad-CAM grid, parameter histograms and confusion matrix of a run.

  Args:
    config: the config the run was trained with (`run_config.load_run_config`).
    workdir: the run's folder.
    gradcam_layers: layers to map (see the module docstring); empty: every residual layer's last.
    num_images: test images in the Grad-CAM grid, at most gradcam.MAX_GRID_IMAGES.
    checkpoint: 'latest' or 'best'.
    output_dir: where the files go; default <workdir>/inspect.

  Returns:
    {'output_dir', 'step', 'layers', 'test_accuracy', 'summary'}.

  Raises:
    UserError: no checkpoint, a checkpoint of another config, unknown layers, missing data.
  """
  gradcam.check_grid_images(num_images)
  run = runs.setup_run(config, workdir)
  state, _ = runs.restore(run, checkpoint)
  variables = state.eval_variables()
  splits, image_size = run.splits, config.data.image_size
  model = run.ctx.model
  layers = gradcam.resolve_layers(
      gradcam_layers, gradcam.feature_layers(model, variables, (image_size, image_size, 3)))
  output_dir = output_dir or os.path.join(workdir, 'inspect')
  os.makedirs(output_dir, exist_ok=True)

  summary = models.summary_table(config.model, image_size)
  files.write_atomic(os.path.join(output_dir, SUMMARY_FILE), summary + '\n')

  writer = writers.create_writer(output_dir, is_main=jax.process_index() == 0)
  gradcam.write_param_histograms(writer, int(state.step), variables['params'])
  writer.close()

  with console_logs.phase(f'scoring {len(splits.test_labels):,} test images (compiling, then '
                          'one call)'):
    test, predictions = evaluator.Evaluator(run.ctx, run.mesh, config.eval_batch_size
                                            ).score_split(variables, splits.test_images,
                                                          splits.test_labels)
  confusion = report.confusion_matrix(splits.test_labels, predictions, config.model.num_classes)
  report.plot_confusion(confusion, splits.class_names,
                        os.path.join(output_dir, report.CONFUSION_FILE))

  chosen = sample_indices(splits.test_labels, num_images)
  images_u8 = splits.test_images[chosen]
  images = augment.eval_preprocess(jnp.asarray(images_u8), run.ctx.mean, run.ctx.std,
                                   jnp.float32)
  grad_cam = jax.jit(functools.partial(gradcam.grad_cam, model), static_argnames='layer')
  maps = {}
  with console_logs.phase(f'Grad-CAM of {len(layers)} layers (a compile each)'):
    for layer in layers:
      layer_maps, logits = grad_cam(variables, images, layer=layer)
      maps[layer] = np.asarray(layer_maps)
  gradcam.save_gradcam_grid(os.path.join(output_dir, GRADCAM_FILE), images_u8, maps,
                            np.argmax(np.asarray(logits), axis=-1), splits.test_labels[chosen],
                            splits.class_names)
  return {'output_dir': output_dir, 'step': int(state.step), 'layers': layers,
          'test_accuracy': test['accuracy'], 'summary': summary}


def _run(config, workdir: str) -> None:
  cli.check_output_writable(workdir, _OUTPUT_DIR.value)
  distributed.initialize_from_env()
  cli.say_outputs(_OUTPUT_DIR.value or os.path.join(workdir, 'inspect'))
  with workdir_lock.hold(workdir, 'inspect', cli.command_line()):  # Not while a run writes its checkpoints.
    config = run_config.load_run_config(workdir, config)
    inspected = inspect_run(config, workdir, gradcam_layers=_GRADCAM_LAYERS.value,
                            num_images=_NUM_IMAGES.value, checkpoint=_CHECKPOINT.value,
                            output_dir=_OUTPUT_DIR.value)
  logging.info('%s', inspected['summary'])
  logging.info('step %d: test accuracy %.2f%%; Grad-CAM of %s; files in %s', inspected['step'],
               100 * inspected['test_accuracy'], ', '.join(inspected['layers']),
               inspected['output_dir'])


def main(argv):
  del argv  # cli.run refuses positional arguments.
  _run(cli.CONFIG.value, cli.WORKDIR.value)


if __name__ == '__main__':
  cli.run(main, 'inspect', require_config=False)
