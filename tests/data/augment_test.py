"""Tests for augment: exact pins where an op is deterministic, statistics where it is random."""

import colorsys
import os

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from scipy import stats

from resnet_jax import defaults
from resnet_jax.bench import hlo
from resnet_jax.data import augment
from resnet_jax.errors import UserError

MEAN, STD = defaults.CIFAR10_MEAN, defaults.CIFAR10_STD


def augment_config(**overrides):
  """config.augment with every op off, then the overrides."""
  cfg = defaults.base_config().augment
  cfg.update(dict(crop_padding=0, hflip=0.0))
  cfg.update(overrides)
  return cfg


def random_images(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def position_images(batch, size=32):
  """uint8 images whose channel 0 is row + 1 and channel 1 is column + 1 (0 marks padding)."""
  rows, cols = np.meshgrid(np.arange(size) + 1, np.arange(size) + 1, indexing='ij')
  image = np.stack([rows, cols, np.full_like(rows, 7)], axis=-1).astype(np.uint8)
  return np.broadcast_to(image, (batch, size, size, 3))


def dynamic_slice_crop(images, offsets, padding):
  """The straightforward crop (a vmap of dynamic_slice: a loop over the images on a TPU)."""
  _, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  return jax.vmap(lambda image, offset: lax.dynamic_slice(
      image, (offset[0], offset[1], 0), (height, width, channels)))(padded, offsets)


@pytest.mark.parametrize('dtype', [np.uint8, np.float32])
def test_crop_is_bitwise_the_dynamic_slice_crop_at_every_offset(dtype):
  for padding, size, seed in ((4, 32, 0), (2, 7, 1)):
    span = np.arange(2 * padding + 1)
    offsets = np.stack(np.meshgrid(span, span, indexing='ij'), axis=-1).reshape(-1, 2)
    images = random_images((len(offsets), size, size, 3), seed).astype(dtype)
    out = jax.jit(augment.crop, static_argnums=2)(images, offsets, padding)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, dynamic_slice_crop(images, offsets, padding))


def test_crop_at_known_offsets_equals_slicing():
  images = random_images((3, 8, 8, 3))
  offsets = np.array([[0, 0], [4, 1], [2, 3]])
  out = np.asarray(augment.crop(jnp.asarray(images), jnp.asarray(offsets), 2))
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for b, (oy, ox) in enumerate(offsets):
    np.testing.assert_array_equal(out[b], padded[b, oy:oy + 8, ox:ox + 8])
  assert out[0, :2].max() == 0 and out[0, :, :2].max() == 0  # Black padding, before normalising.


def test_random_crop_offsets_cover_the_range():
  padding, batch = 4, 512
  images = position_images(batch)
  out = np.asarray(jax.jit(augment.random_crop, static_argnums=2)(
      jax.random.key(0), jnp.asarray(images), padding))
  # The centre pixel always comes from the image; it tells the offset.
  rows = out[:, 16, 16, 0].astype(int) - 1 - 16 + padding
  cols = out[:, 16, 16, 1].astype(int) - 1 - 16 + padding
  assert set(rows) == set(cols) == set(range(2 * padding + 1))
  assert np.abs(np.bincount(rows) / batch - 1 / 9).max() < 0.06  # Uniform, roughly.
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  for b in range(0, batch, 37):
    np.testing.assert_array_equal(out[b], padded[b, rows[b]:rows[b] + 32, cols[b]:cols[b] + 32])


def test_flips():
  images = jnp.asarray(random_images((4, 5, 6, 3)))
  key = jax.random.key(1)
  np.testing.assert_array_equal(augment.random_flip(key, images, 1.0, axis=2), images[:, :, ::-1])
  np.testing.assert_array_equal(augment.random_flip(key, images, 1.0, axis=1), images[:, ::-1])
  np.testing.assert_array_equal(augment.random_flip(key, images, 0.0, axis=2), images)


def test_flip_rate_is_near_half():
  images = jnp.asarray(position_images(4000, size=4))
  out = np.asarray(augment.random_flip(jax.random.key(2), images, 0.5, axis=2))
  flipped = np.all(out == np.asarray(images)[:, :, ::-1], axis=(1, 2, 3))
  kept = np.all(out == np.asarray(images), axis=(1, 2, 3))
  assert np.all(flipped ^ kept)  # Each image is either mirrored or left alone.
  assert abs(flipped.mean() - 0.5) < 0.03  # 4000 draws: std 0.008.


def test_rotation_matches_scipy():
  images = np.random.default_rng(3).random((3, 9, 11, 2)).astype(np.float32)
  degrees = np.array([90.0, 30.0, -17.0], np.float32)
  out = np.asarray(augment.rotate(jnp.asarray(images), jnp.deg2rad(degrees)))
  for b, angle in enumerate(degrees):
    # scipy: counter-clockwise for positive angles, as torchvision; bilinear, zeros outside.
    expected = ndimage.rotate(images[b], angle, axes=(1, 0), reshape=False, order=1,
                              mode='grid-constant')
    np.testing.assert_allclose(out[b], expected, atol=1e-5)
  square = images[:1, :9, :9]
  np.testing.assert_allclose(augment.rotate(jnp.asarray(square), jnp.array([np.pi / 2])),
                             np.rot90(square, k=1, axes=(1, 2)), atol=1e-5)


def test_colour_adjustments_match_torchvision_formulas():
  x = np.random.default_rng(4).random((2, 4, 5, 3)).astype(np.float32)
  factor = np.array([0.6, 1.7], np.float32)
  gray = (0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]
  f = factor[:, None, None, None]
  expected = {
      augment.adjust_brightness: np.clip(f * x, 0, 1),
      augment.adjust_contrast: np.clip(f * x + (1 - f) * gray.mean(axis=(1, 2, 3), keepdims=True),
                                       0, 1),
      augment.adjust_saturation: np.clip(f * x + (1 - f) * gray, 0, 1),
  }
  for adjust, reference in expected.items():
    np.testing.assert_allclose(adjust(jnp.asarray(x), jnp.asarray(factor)), reference, atol=1e-6)
  shift = np.array([0.3, -0.45], np.float32)
  hue = np.asarray(augment.adjust_hue(jnp.asarray(x), jnp.asarray(shift)))
  for b in range(2):
    for i in range(4):
      for j in range(5):
        h, s, v = colorsys.rgb_to_hsv(*x[b, i, j])
        np.testing.assert_allclose(hue[b, i, j], colorsys.hsv_to_rgb((h + shift[b]) % 1, s, v),
                                   atol=1e-5)


def test_colour_jitter_factor_ranges():
  x = jnp.full((2000, 1, 1, 3), 0.4)
  out = np.asarray(augment.color_jitter(jax.random.key(5), x, 0.2, 0.0, 0.0, 0.0))
  ratio = out[:, 0, 0, 0] / 0.4
  assert ratio.min() >= 0.8 - 1e-6 and ratio.max() <= 1.2 + 1e-6
  assert ratio.min() < 0.81 and ratio.max() > 1.19  # Spans all of [0.8, 1.2].


def box_of_zeros(image):
  """(top, left, height, width) of the zero pixels of an (H, W, C) image; they must be a box."""
  rows, cols = np.nonzero(np.all(image == 0, axis=-1))
  if not len(rows):
    return None
  top, left = rows.min(), cols.min()
  height, width = rows.max() - top + 1, cols.max() - left + 1
  assert len(rows) == height * width
  return top, left, height, width


def test_random_erasing_boxes():
  x = jnp.ones((600, 32, 32, 3))
  scale, ratio = (0.02, 0.33), (0.3, 3.3)
  erase = jax.jit(augment.random_erasing, static_argnums=(2, 3, 4))
  out = np.asarray(erase(jax.random.key(6), x, 0.5, scale, ratio))
  boxes = [box_of_zeros(image) for image in out]
  erased = [b for b in boxes if b is not None]
  assert abs(len(erased) / len(boxes) - 0.5) < 0.07
  for top, left, height, width in erased:
    assert 0 <= top and top + height <= 32 and 0 <= left and left + width <= 32
    # Rounded sides: area and aspect within the ranges, up to half a pixel on each side.
    assert scale[0] * 1024 * 0.75 <= height * width <= scale[1] * 1024 * 1.1
    assert ratio[0] * 0.7 <= height / width <= ratio[1] / 0.7
  tops = [b[0] for b in erased]
  assert min(tops) == 0 and max(b[0] + b[2] for b in erased) == 32  # Positions reach the edges.
  always = np.asarray(erase(jax.random.key(7), x, 1.0, scale, ratio))
  assert all(box_of_zeros(image) is not None for image in always)


def test_cutout_squares():
  x = jnp.ones((400, 16, 16, 1))
  out = np.asarray(augment.cutout(jax.random.key(8), x, 6))
  boxes = [box_of_zeros(image) for image in out]
  assert all(b is not None for b in boxes)
  for top, left, height, width in boxes:
    if 0 < top and top + height < 16 and 0 < left and left + width < 16:
      assert height == width == 6  # Clipped only at the border.
    assert height <= 6 and width <= 6
  clipped = [b for b in boxes if b[0] == 0 or b[1] == 0 or b[0] + b[2] == 16 or b[1] + b[3] == 16]
  assert 0 < len(clipped) < len(boxes)


def test_gaussian_noise():
  x = jnp.zeros((64, 16, 16, 3))
  noise = np.asarray(augment.gaussian_noise(jax.random.key(9), x, 0.3))
  assert abs(noise.std() - 0.3) < 0.01 and abs(noise.mean()) < 0.01


@pytest.mark.parametrize('alpha', [0.2, 1.0, 3.0])
def test_random_beta_is_beta_distributed_without_a_loop(alpha):
  sample = jax.jit(augment.random_beta, static_argnums=(1, 2))
  values = np.asarray(sample(jax.random.key(0), alpha, (40_000,)), np.float64)
  assert np.all((values >= 0) & (values <= 1))
  # The empirical CDF against scipy's inside (0, 1) (float32 rounds a small alpha's tails onto 0
  # and 1): 40,000 draws put it within 0.01 with probability above 0.99.
  grid = np.linspace(0.01, 0.99, 99)
  empirical = np.mean(values[:, None] <= grid, axis=0)
  assert np.abs(empirical - stats.beta(alpha, alpha).cdf(grid)).max() < 0.01
  assert 'while' not in str(jax.make_jaxpr(lambda key: augment.random_beta(key, alpha))(
      jax.random.key(0)))


def test_random_beta_of_a_traced_alpha_is_that_of_the_number():
  # A population's member reads its alpha traced; its lambdas must be its single run's, bitwise.
  key = jax.random.key(3)
  traced = jax.jit(lambda key, alpha: augment.random_beta(key, alpha, (8,)))
  for alpha in np.random.default_rng(0).uniform(0.05, 5, 24).astype(np.float32):
    number = jax.jit(lambda key, alpha=float(alpha): augment.random_beta(key, alpha, (8,)))
    np.testing.assert_array_equal(traced(key, alpha), number(key))


def test_mixup_targets_follow_the_mixed_images():
  batch = 16
  # Image i is one-hot at pixel i, label i: the mix of images reveals lambda and the partner.
  x = jnp.eye(batch).reshape(batch, 4, 4, 1)
  targets = jax.nn.one_hot(jnp.arange(batch), batch)
  mix = jax.jit(augment.mixup, static_argnums=3)
  for seed in range(3):
    mixed, soft = map(np.asarray, mix(jax.random.key(seed), x, targets, 0.4))
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-6)
    lambdas = set()
    for i in range(batch):
      pixels = mixed[i].reshape(-1)
      lam = pixels[i] if np.count_nonzero(pixels) > 1 else 1.0
      partner = np.argmax(np.where(np.arange(batch) == i, -1, pixels)) if lam < 1 else i
      lambdas.add(round(float(min(lam, 1.0)), 5))
      np.testing.assert_allclose(soft[i], pixels, atol=1e-6)  # Same lambda, same partner.
      assert np.count_nonzero(soft[i] > 1e-7) <= 2 and soft[i, partner] > 0
    assert len(lambdas - {1.0}) <= 1  # One lambda for the whole batch.


def test_eval_preprocess_numerics():
  images = random_images((2, 3, 4, 3))
  expected = (images.astype(np.float64) / 255 - np.array(MEAN)) / np.array(STD)
  out = augment.eval_preprocess(jnp.asarray(images), MEAN, STD, jnp.float32)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
  assert augment.eval_preprocess(jnp.asarray(images), MEAN, STD, 'bfloat16').dtype == jnp.bfloat16


def test_train_preprocess_with_everything_off_is_eval_preprocess():
  cfg = augment_config()
  images, labels = jnp.asarray(random_images((4, 8, 8, 3))), jnp.array([0, 3, 9, 3])
  fn = lambda rng: augment.train_preprocess(rng, images, labels, cfg, MEAN, STD, 10, jnp.float32)
  x, targets = fn(jax.random.key(0))
  np.testing.assert_array_equal(x, augment.eval_preprocess(images, MEAN, STD, jnp.float32))
  np.testing.assert_array_equal(targets, np.eye(10)[[0, 3, 9, 3]])
  assert 'random_bits' not in str(jax.make_jaxpr(fn)(jax.random.key(0)))  # Nothing traced.


def test_train_preprocess_everything_on():
  cfg = augment_config(crop_padding=2, hflip=0.5, vflip=0.5, rotation_degrees=15, brightness=0.2,
                       contrast=0.2, saturation=0.2, hue=0.1, erasing_prob=0.5, cutout_size=4,
                       noise_std=0.1, mixup_alpha=0.2)
  images, labels = jnp.asarray(random_images((8, 16, 16, 3))), jnp.arange(8) % 10
  fn = jax.jit(lambda rng: augment.train_preprocess(rng, images, labels, cfg, MEAN, STD, 10,
                                                    jnp.bfloat16))
  x, targets = fn(jax.random.key(1))
  assert x.shape == (8, 16, 16, 3) and x.dtype == jnp.bfloat16
  assert targets.shape == (8, 10) and targets.dtype == jnp.float32
  np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
  assert np.all(np.isfinite(np.asarray(x, np.float32)))
  np.testing.assert_array_equal(x, fn(jax.random.key(1))[0])
  assert not np.array_equal(x, fn(jax.random.key(2))[0])


@pytest.mark.parametrize('key,value', [('hflip', 1.5), ('hue', 0.6), ('crop_padding', -1),
                                       ('brightness', -0.1), ('erasing_scale', (0.5, 0.1)),
                                       ('erasing_ratio', (0.0, 1.0)), ('mixup_alpha', -1.0)])
def test_bad_config_values(key, value):
  with pytest.raises(UserError, match=f'config.augment.{key}'):
    augment.check_config(augment_config(**{key: value}))


def test_mixup_in_groups_pairs_only_within_each_part():
  batch, groups = 16, 4
  x = jnp.eye(batch).reshape(batch, 4, 4, 1)
  targets = jax.nn.one_hot(jnp.arange(batch), batch)
  for seed in range(3):
    _, soft = map(np.asarray, augment.mixup(jax.random.key(seed), x, targets, 0.4, groups))
    part = batch // groups
    for i in range(batch):
      partners = np.nonzero(soft[i] > 1e-7)[0]
      assert set(partners // part) == {i // part}, (i, partners)
  # One group is the ungrouped mixup, draw for draw.
  np.testing.assert_array_equal(augment.mixup(jax.random.key(0), x, targets, 0.4, 1)[1],
                                augment.mixup(jax.random.key(0), x, targets, 0.4)[1])


@pytest.fixture(scope='module')
def tpu_chip():
  """One v5e chip of libtpu's deviceless topology, to compile for (not run on) a TPU."""
  pytest.importorskip('libtpu', reason='libtpu (the [tpu] extra) is not installed: no TPU '
                      'compiler to check the augmentation with')
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')  # Other test processes may hold it.
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  return topologies.get_topology_desc(topology_name='v5e:1x1', platform='tpu',
                                      chips_per_host_bounds=(1, 1, 1)).devices[0]


def test_augmentation_compiles_without_a_loop_for_a_tpu(tpu_chip):
  sharding = jax.sharding.SingleDeviceSharding(tpu_chip)
  args = [jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for shape, dtype in
          (((), jax.random.key(0).dtype), ((16, 32, 32, 3), jnp.uint8), ((16,), jnp.int32))]
  everything = augment_config(crop_padding=4, hflip=0.5, vflip=0.5, rotation_degrees=15,
                              brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1,
                              erasing_prob=0.5, cutout_size=8, noise_std=0.1, mixup_alpha=0.2)

  def while_loops(fn):
    return hlo.summarize(jax.jit(fn).lower(*args).compile().as_text())['while_loops']

  assert while_loops(lambda key, images, labels: augment.train_preprocess(
      key, images, labels, everything, MEAN, STD, 10, jnp.bfloat16)) == 0
  # XLA:TPU makes a loop over the images of the dynamic_slice crop.
  assert while_loops(lambda key, images, labels: dynamic_slice_crop(
      images, jax.random.randint(key, (16, 2), 0, 9), 4)) == 1
