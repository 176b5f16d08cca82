"""Grad-CAM: a network whose evidence sits in one image region must light that region."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from resnet_jax import defaults
from resnet_jax import models
from resnet_jax.errors import UserError
from resnet_jax.reporting import gradcam
from resnet_jax.reporting import writers

from conftest import histogram_events  # pylint: disable=g-bad-import-order

SIZE = 16    # image side; quadrants are 8x8
PATCH = 4    # the patch whose colour is the class
COLOURS = np.array([[2.5, -1.0, -1.0], [-1.0, 2.5, -1.0]], np.float32)  # class 0 red, 1 green


def _patch_images(rng, corners, labels):
  """Noise images with one coloured square (the class evidence) at each corner (y, x)."""
  images = rng.normal(0.0, 0.3, (len(labels), SIZE, SIZE, 3)).astype(np.float32)
  for image, (y, x), label in zip(images, corners, labels):
    image[y:y + PATCH, x:x + PATCH] = COLOURS[label]
  return images


def _model_cfg():
  return defaults.model_config(num_blocks=(1, 1), channels=(8, 16), kernel_sizes=(3, 3),
                               shortcut_kernel_sizes=(1, 1), stem_channels=8, se='none',
                               num_classes=2)


@pytest.fixture(scope='module')
def patch_classifier():
  """A tiny ResNet trained to tell the patch colour, the patch anywhere in the image."""
  model = models.build_model(_model_cfg())
  rng = np.random.default_rng(0)
  variables = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False)
  tx = optax.adam(1e-2)
  opt_state = tx.init(variables['params'])

  @jax.jit
  def step(variables, opt_state, images, labels):
    def loss_fn(params):
      logits, state = model.apply({**variables, 'params': params}, images, train=True,
                                  mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), state
    grads, state = jax.grad(loss_fn, has_aux=True)(variables['params'])
    updates, opt_state = tx.update(grads, opt_state)
    return {'params': optax.apply_updates(variables['params'], updates), **state}, opt_state

  for _ in range(60):
    labels = rng.integers(0, 2, 64)
    corners = rng.integers(0, SIZE - PATCH + 1, (64, 2))
    variables, opt_state = step(variables, opt_state, _patch_images(rng, corners, labels), labels)
  return model, variables


def _quadrant_mass(maps):
  """(B, 4) fraction of each map's mass in the top-left, top-right, bottom-left, bottom-right."""
  half = SIZE // 2
  quadrants = [maps[:, :half, :half], maps[:, :half, half:], maps[:, half:, :half],
               maps[:, half:, half:]]
  return np.stack([q.sum(axis=(1, 2)) for q in quadrants], axis=1) / maps.sum(axis=(1, 2))[:, None]


@pytest.mark.parametrize('quadrant,corner', [(0, (2, 2)), (3, (10, 10)), (1, (2, 10))])
def test_map_lights_the_quadrant_holding_the_evidence(patch_classifier, quadrant, corner):
  model, variables = patch_classifier
  labels = np.array([0, 1, 0, 1, 0, 1])
  images = _patch_images(np.random.default_rng(1), [corner] * len(labels), labels)
  maps, logits = gradcam.grad_cam(model, variables, jnp.asarray(images), 'layer2_0')
  np.testing.assert_array_equal(np.argmax(logits, -1), labels)  # the network learnt the task
  mass = _quadrant_mass(np.asarray(maps))
  assert maps.shape == (len(labels), SIZE, SIZE)
  assert np.all(mass[:, quadrant] > 0.7), mass
  assert np.all(np.delete(mass, quadrant, axis=1) < 0.2), mass


def test_map_equals_class_activation_map_before_global_pool(patch_classifier):
  """Before a global average pool and a dense head, Grad-CAM is CAM: ReLU(A @ W[:, k])."""
  model, variables = patch_classifier
  images = jnp.asarray(_patch_images(np.random.default_rng(2), [(5, 7)] * 2, [0, 1]))
  classes = jnp.array([1, 1])  # the second image's class; the first has no evidence for it
  maps, _ = gradcam.grad_cam(model, variables, images, 'layer2_0', class_index=classes)
  _, state = model.apply(variables, images, train=False, mutable=['intermediates'],
                         capture_intermediates=lambda m, name: m.path == ('layer2_0',))
  activation = state['intermediates']['layer2_0']['__call__'][0]
  cam = nn.relu(activation @ variables['params']['linear']['kernel'][:, 1])
  cam = jax.image.resize(cam, (2, SIZE, SIZE), method='bilinear')
  expected = cam / jnp.max(cam, axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(maps, expected, atol=1e-5)


def test_layers_resolve_by_residual_layer_and_reject_unknown_names(patch_classifier):
  model, variables = patch_classifier
  available = gradcam.feature_layers(model, variables, (SIZE, SIZE, 3))
  assert available == ['conv1', 'bn1', 'layer1_0', 'layer2_0']
  assert gradcam.resolve_layers([], available) == ['layer1_0', 'layer2_0']
  assert gradcam.resolve_layers(['layer2', 'conv1'], available) == ['layer2_0', 'conv1']
  with pytest.raises(UserError, match='--gradcam_layers.*layer7'):
    gradcam.resolve_layers(['layer7'], available)


def test_grid_png_has_a_row_an_image_and_a_column_a_layer(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
  maps = {'layer1_0': rng.random((3, SIZE, SIZE)), 'layer2_0': rng.random((3, SIZE, SIZE))}
  gradcam.save_gradcam_grid(str(tmp_path / 'grid.png'), images, maps, [0, 1, 1], [0, 1, 0],
                            ['red', 'green'])
  one_row = tmp_path / 'one_row.png'
  gradcam.save_gradcam_grid(str(one_row), images[:1], {'layer1_0': maps['layer1_0'][:1]}, [0],
                            [0], ['red', 'green'])
  width, height = Image.open(tmp_path / 'grid.png').size
  one_width, one_height = Image.open(one_row).size
  assert width == pytest.approx(one_width * 3 / 2, rel=0.05)
  assert height == pytest.approx(one_height * 3, rel=0.05)


def test_param_histograms_cover_every_parameter_array(tmp_path):
  model = models.build_model(_model_cfg())
  params = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False)['params']
  writer = writers.create_writer(str(tmp_path), is_main=True)
  gradcam.write_param_histograms(writer, 3, params)
  writer.close()
  histograms = histogram_events(tmp_path / 'tensorboard')
  assert len(histograms) == len(jax.tree_util.tree_leaves(params))
  kernel_size = params['layer2_0']['conv1']['kernel'].size
  assert histograms['params/layer2_0/conv1/kernel'] == [(3, kernel_size)]


def test_grid_has_one_colour_scale_for_its_maps(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
  maps = {'layer1_0': rng.random((2, SIZE, SIZE)), 'layer2_0': rng.random((2, SIZE, SIZE))}
  fig = gradcam.save_gradcam_grid(str(tmp_path / 'grid.png'), images, maps, [0, 1], [0, 1],
                                  ['red', 'green'])
  scales = [ax for ax in fig.axes if ax.get_ylabel() == 'Grad-CAM (peak = 1)']
  assert len(fig.axes) == 2 * 3 + 1 and len(scales) == 1
  assert scales[0].get_ylim() == (0.0, 1.0)
