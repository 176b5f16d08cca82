"""Looking inside a trained ResNet: Grad-CAM maps and parameter histograms.

Grad-CAM (Selvaraju et al. 2017; seed 004, figure 13) weighs channel c of a layer's activation A
by alpha_c, the spatial mean of d(class logit)/dA_c, keeps ReLU(sum_c alpha_c A_c), upsamples it
bilinearly to the image and scales it to [0, 1]. The gradient with respect to A is taken by adding
a zero tensor to the layer's output through `nn.intercept_methods` and differentiating with
respect to that tensor, so any top-level module of the network (`conv1`, `se`, `layer3_1`, ...)
can be inspected without changing the model.

`write_param_histograms` (seed 004, figure 12) lives here, not in `inspect.py`, so that the
trainer can call it every epoch without importing the command line that imports the trainer.
"""

import re
from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from matplotlib import figure

from resnet_jax.errors import UserError
from resnet_jax.reporting import report

# Rows of a Grad-CAM grid: its figure, and the batch of maps behind it, grow with every image.
MAX_GRID_IMAGES = 64


def feature_layers(model: nn.Module, variables: Mapping, image_shape: Sequence[int]) -> list[str]:
  """Names of the model's top-level modules whose output is a feature map, in call order.

  Args:
    model: a Flax module called as `model.apply(variables, images, train=False)`.
    variables: its variables ({'params', 'batch_stats'}), arrays or shapes.
    image_shape: (H, W, C) of one input image.
  """
  images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  top_level = lambda module, method_name: len(module.path) == 1 and method_name == '__call__'
  names = []

  def collect(v, x):  # traced once; the captured outputs are in call order only inside the trace
    _, state = model.apply(v, x, train=False, capture_intermediates=top_level,
                           mutable=['intermediates'])
    names.extend(name for name, captured in state['intermediates'].items()
                 if captured['__call__'][0].ndim == 4)

  jax.eval_shape(collect, variables, images)
  return names


def resolve_layers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
  """Module names for requested layers; `layerL` means the last block of residual layer L.

  Empty `requested` picks the last block of every residual layer. Unknown names raise UserError.
  """
  blocks = [name for name in available if re.fullmatch(r'layer\d+_\d+', name)]
  last_block = {name.rsplit('_', 1)[0]: name for name in blocks}
  if not requested:
    return list(last_block.values())
  resolved = []
  for name in requested:
    if name in available:
      resolved.append(name)
    elif name in last_block:
      resolved.append(last_block[name])
    else:
      raise UserError(f'--gradcam_layers: no layer {name!r} in this model; choose from '
                      f"{', '.join([*last_block, *available])}")
  return resolved


def grad_cam(model: nn.Module, variables: Mapping, images: jax.Array, layer: str,
             class_index: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """Grad-CAM maps of one layer for a batch of images.

  Args:
    model: a Flax module called as `model.apply(variables, images, train=False)`.
    variables: its variables ({'params', 'batch_stats'}).
    images: (B, H, W, C) preprocessed (normalised) images.
    layer: name of a top-level module of `model` whose output is (B, h, w, channels).
    class_index: (B,) class whose evidence to map; None maps each image's predicted class.

  Returns:
    (maps, logits): maps (B, H, W) float32 in [0, 1] (all zero where no location supports the
    class), logits (B, num_classes).
  """
  target = (layer,)
  is_target = lambda module, method_name: module.path == target and method_name == '__call__'

  def apply(delta):
    def add_delta(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if is_target(context.module, context.method_name):
        out = out + delta.astype(out.dtype)
      return out
    with nn.intercept_methods(add_delta):
      return model.apply(variables, images, train=False, capture_intermediates=is_target,
                         mutable=['intermediates'])

  def class_score(delta):
    logits, state = apply(delta)
    classes = jnp.argmax(logits, axis=-1) if class_index is None else class_index
    score = jnp.take_along_axis(logits, classes[:, None], axis=-1).sum()
    return score, (logits, state['intermediates'][layer]['__call__'][0])

  _, shapes = jax.eval_shape(apply, jnp.zeros((), jnp.float32))
  if layer not in shapes['intermediates']:
    raise UserError(f'--gradcam_layers: no top-level module {layer!r} in this model')
  activation_shape = shapes['intermediates'][layer]['__call__'][0].shape
  if len(activation_shape) != 4:
    raise UserError(f'--gradcam_layers: {layer!r} outputs shape {activation_shape}, not a '
                    'feature map; pick a conv, SE or residual block layer')
  gradients, (logits, activation) = jax.grad(class_score, has_aux=True)(
      jnp.zeros(activation_shape, jnp.float32))
  alpha = jnp.mean(gradients, axis=(1, 2))
  cam = nn.relu(jnp.einsum('bhwc,bc->bhw', activation.astype(jnp.float32), alpha))
  cam = jax.image.resize(cam, (cam.shape[0], *images.shape[1:3]), method='bilinear')
  peak = jnp.max(cam, axis=(1, 2), keepdims=True)
  return jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1.0), 0.0), logits


def check_grid_images(num_images: int) -> None:
  """UserError unless num_images is in [1, MAX_GRID_IMAGES]."""
  if not 1 <= num_images <= MAX_GRID_IMAGES:
    raise UserError(f'--num_images={num_images} must be in [1, {MAX_GRID_IMAGES}] (a row of '
                    'the Grad-CAM grid an image)')


def save_gradcam_grid(path: str, images: np.ndarray, maps: Mapping[str, np.ndarray],
                      predicted: Sequence[int], labels: Sequence[int],
                      class_names: Sequence[str]) -> figure.Figure:
  """Writes a PNG: one row an image, its picture then one heat-map overlay a layer.

  A colour bar gives the maps' scale (each map is scaled to its own peak, 1).

  Args:
    path: the PNG to write.
    images: (B, H, W, 3) uint8 images as they are shown.
    maps: layer name -> (B, H, W) maps in [0, 1] (from `grad_cam`).
    predicted: (B,) predicted classes; labels: (B,) true classes.
    class_names: names of the classes.

  Returns:
    The figure saved.
  """
  num_images, columns = len(images), 1 + len(maps)
  check_grid_images(num_images)
  fig = figure.Figure(figsize=(1.8 * columns, 1.9 * num_images), layout='constrained')
  axes = fig.subplots(num_images, columns, squeeze=False)
  heat_map = None
  for row, (image, pred, label) in enumerate(zip(images, predicted, labels)):
    axes[row, 0].imshow(image)
    axes[row, 0].set_title(f'true {class_names[label]}\npred {class_names[pred]}', fontsize=8,
                           color='green' if pred == label else 'red')
    for column, (layer, layer_maps) in enumerate(maps.items(), start=1):
      axes[row, column].imshow(image)
      heat_map = axes[row, column].imshow(layer_maps[row], cmap='jet', alpha=0.5, vmin=0.0,
                                          vmax=1.0)
      if row == 0:
        axes[row, column].set_title(layer, fontsize=8)
  for ax in axes.ravel():
    ax.set_axis_off()
  if heat_map is not None:
    # One scale for every map (all in [0, 1]), about three rows tall.
    scale = fig.colorbar(heat_map, ax=axes[:, 1:], location='right',
                         shrink=min(1.0, 3 / num_images))
    scale.set_label('Grad-CAM (peak = 1)', fontsize=7)
    scale.ax.tick_params(labelsize=7)
  return report.save_figure(fig, path, dpi=100)


def write_param_histograms(writer, step: int, params: Mapping) -> None:
  """Writes a histogram of every parameter array (e.g. `params/layer1_0/conv1/kernel`).

  Args:
    writer: a clu MetricWriter (`writers.create_writer`).
    step: the step (or epoch) to file the histograms under.
    params: the model's parameter tree.
  """
  flat = traverse_util.flatten_dict(params, sep='/')
  writer.write_histograms(step, {f'params/{name}': _host_copy(value)
                                 for name, value in flat.items()})


def _host_copy(array) -> np.ndarray:
  """A NumPy copy of a replicated array, also where it spans other hosts' devices."""
  if isinstance(array, jax.Array) and not array.is_fully_addressable:
    array = array.addressable_data(0)
  return np.asarray(array)
