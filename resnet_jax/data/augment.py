"""On-device augmentation and mixup: pure jax.numpy, traced into the compiled train step.

`train_preprocess` applies, in this order, each op that `config.augment` turns on (an op that is
off is skipped at trace time and costs nothing):

  uint8 pixels:      1. random crop of the zero-padded image (black padding, as torchvision pads
                        before ToTensor)  2. horizontal flip  3. vertical flip
  [0, 1] pixels:     4. rotation (bilinear, zero fill)  5. colour jitter: brightness, contrast,
                        saturation, hue, always in this fixed order (torchvision's ColorJitter
                        draws a random order per image)
                     6. normalisation, (x - mean) / std
  normalised pixels: 7. random erasing (value 0)  8. cutout (value 0)  9. Gaussian noise
                     10. mixup of images and soft labels

Randomness is per example, from one key per op split off the step's key, so turning one op on or
off leaves the draws of the others unchanged.

Nothing here loops: XLA:TPU runs a gather that slices each image at its own offset (a vmap of
dynamic_slice) as a while loop over the images, and jax.random.beta rejects in while loops, so the
crop selects among static shifts and mixup's Beta sample draws its proposals at once.
"""

import math

import jax
from jax import lax
import jax.numpy as jnp
from jax.scipy import ndimage

from resnet_jax.errors import UserError

# torchvision's rgb_to_grayscale weights.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
# torchvision RandomErasing's attempts at a box that fits.
ERASING_ATTEMPTS = 10
# Gamma proposals drawn at once for mixup's Beta sample; each is accepted with probability > 0.95.
GAMMA_PROPOSALS = 16
_OPS = ('crop', 'hflip', 'vflip', 'rotation', 'jitter', 'erasing', 'cutout', 'noise', 'mixup')


def check_config(aug_cfg) -> None:
  """Raises UserError for a `config.augment` value out of range."""
  def fail(key, rule):
    raise UserError(f'config.augment.{key}={aug_cfg[key]!r} is invalid: {rule}')

  for key in ('hflip', 'vflip', 'erasing_prob'):
    if not 0 <= aug_cfg[key] <= 1:
      fail(key, 'a probability must be in [0, 1]')
  for key in ('crop_padding', 'cutout_size'):
    if aug_cfg[key] < 0 or int(aug_cfg[key]) != aug_cfg[key]:
      fail(key, 'use a whole number of pixels >= 0')
  for key in ('rotation_degrees', 'brightness', 'contrast', 'saturation', 'noise_std',
              'mixup_alpha'):
    if not aug_cfg[key] >= 0:
      fail(key, 'must be >= 0 (0 turns it off)')
  if not 0 <= aug_cfg.hue <= 0.5:
    fail('hue', 'must be in [0, 0.5], as in torchvision')
  scale, ratio = tuple(aug_cfg.erasing_scale), tuple(aug_cfg.erasing_ratio)
  if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
    fail('erasing_scale', 'use (min, max) area fractions with 0 < min <= max <= 1')
  if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
    fail('erasing_ratio', 'use (min, max) aspect ratios with 0 < min <= max')


def _per_example(values, x):
  """(B,) values shaped to broadcast over (B, H, W, C)."""
  return jnp.reshape(values, (-1,) + (1,) * (x.ndim - 1))


def _to_unit(images):
  """uint8 -> float32 in [0, 1], as torchvision's ToTensor."""
  return images.astype(jnp.float32) / 255.0


def normalize(x, mean, std):
  """(x - mean) / std per channel, for x in [0, 1]."""
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _shift_window(x, offset, padding: int, axis: int, unit: int):
  """Each example's window of x along axis, zero-padded by padding * unit on both sides, starting
  at offset * unit: a select among the 2 * padding + 1 static windows, as a gather (a vmap of
  dynamic_slice) compiles to a loop over the examples on a TPU."""
  size = x.shape[axis]
  pads = [(0, 0)] * x.ndim
  pads[axis] = (padding * unit, padding * unit)
  padded = jnp.pad(x, pads)
  out = lax.slice_in_dim(padded, 0, size, axis=axis)
  for shift in range(1, 2 * padding + 1):
    window = lax.slice_in_dim(padded, shift * unit, shift * unit + size, axis=axis)
    out = jnp.where(_per_example(offset == shift, x), window, out)
  return out


def crop(images, offsets, padding: int):
  """Crops each zero-padded image at its offset, without a loop over the images.

  Args:
    images: (B, H, W, C), any dtype.
    offsets: int (B, 2), the (row, column) of each crop's corner in the padded image, each in
      [0, 2 * padding].
    padding: zero padding on every side.

  Returns:
    (B, H, W, C), image b = pad(images[b])[rows oy:oy+H, columns ox:ox+W].
  """
  batch, height, width, channels = images.shape
  # As rows (B, H, W * C), a column shift moves whole pixels along the minor axis; columns go
  # first, on the unpadded rows (XLA:CPU runs the other order ~20x slower).
  rows = images.reshape(batch, height, width * channels)
  rows = _shift_window(rows, offsets[:, 1], padding, axis=2, unit=channels)
  rows = _shift_window(rows, offsets[:, 0], padding, axis=1, unit=1)
  return rows.reshape(images.shape)


def random_crop(key, images, padding: int):
  """torchvision RandomCrop(size, padding): pad with zeros, crop at a uniform random offset."""
  offsets = jax.random.randint(key, (images.shape[0], 2), 0, 2 * padding + 1)
  return crop(images, offsets, padding)


def random_flip(key, images, prob: float, axis: int):
  """Flips each image along `axis` (2: horizontal, 1: vertical) with probability prob."""
  flip = jax.random.bernoulli(key, prob, (images.shape[0],))
  return jnp.where(_per_example(flip, images), jnp.flip(images, axis), images)


def rotate(images, angles):
  """Rotates each image counter-clockwise by its angle (radians) about the image centre.

  Bilinear interpolation; pixels from outside the image are 0 (grid_sample's zeros padding).

  Args:
    images: float (B, H, W, C).
    angles: (B,) radians.

  Returns:
    float32 (B, H, W, C).
  """
  _, height, width, _ = images.shape
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                            jnp.arange(width, dtype=jnp.float32), indexing='ij')
  dy, dx = rows - (height - 1) / 2, cols - (width - 1) / 2

  def rotate_one(image, angle):
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    # Each output pixel samples the source pixel that the rotation carries onto it.
    src = [(height - 1) / 2 + cos * dy + sin * dx, (width - 1) / 2 - sin * dy + cos * dx]
    return jax.vmap(lambda channel: ndimage.map_coordinates(channel, src, order=1, cval=0.0),
                    in_axes=-1, out_axes=-1)(image)

  return jax.vmap(rotate_one)(images.astype(jnp.float32), angles)


def random_rotation(key, images, degrees: float):
  """torchvision RandomRotation(degrees) with bilinear interpolation and zero fill."""
  angles = jax.random.uniform(key, (images.shape[0],), minval=-degrees, maxval=degrees)
  return rotate(images, jnp.deg2rad(angles))


def grayscale(x):
  """Luma of RGB x (B, H, W, 3) with torchvision's weights, (B, H, W, 1)."""
  return jnp.tensordot(x, jnp.asarray(GRAY_WEIGHTS, x.dtype), axes=1)[..., None]


def _blend(x, other, factor):
  """torchvision's _blend: factor * x + (1 - factor) * other, clipped to [0, 1]."""
  factor = _per_example(factor, x)
  return jnp.clip(factor * x + (1 - factor) * other, 0.0, 1.0)


def adjust_brightness(x, factor):
  return _blend(x, 0.0, factor)


def adjust_contrast(x, factor):
  return _blend(x, jnp.mean(grayscale(x), axis=(1, 2, 3), keepdims=True), factor)


def adjust_saturation(x, factor):
  return _blend(x, grayscale(x), factor)


def _rgb_to_hsv(x):
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  maxc, minc = jnp.max(x, axis=-1), jnp.min(x, axis=-1)
  chroma = maxc - minc
  gray = chroma == 0
  s = chroma / jnp.where(gray, 1.0, maxc)
  divisor = jnp.where(gray, 1.0, chroma)
  rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
  h = jnp.where(maxc == r, bc - gc, jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
  h = jnp.mod(h / 6.0 + 1.0, 1.0)
  return h, s, maxc


def _hsv_to_rgb(h, s, v):
  sector = jnp.floor(h * 6.0)
  f = h * 6.0 - sector
  sector = sector.astype(jnp.int32) % 6
  p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
  q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  # A select among the sectors' values (jnp.choose is a gather, slow on a TPU).
  channels = [lax.select_n(sector, *options) for options in
              ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))]
  return jnp.stack(channels, axis=-1)


def adjust_hue(x, shift):
  """Shifts the hue of each image by shift (in turns, [-0.5, 0.5]) in HSV space."""
  h, s, v = _rgb_to_hsv(x)
  return _hsv_to_rgb(jnp.mod(h + shift[:, None, None], 1.0), s, v)


def color_jitter(key, x, brightness: float, contrast: float, saturation: float, hue: float):
  """torchvision ColorJitter on [0, 1] pixels, in the fixed order of the module docstring.

  Factors are drawn per image: brightness/contrast/saturation from [max(0, 1 - v), 1 + v],
  the hue shift from [-hue, hue]. A zero setting is skipped.
  """
  keys = jax.random.split(key, 4)
  batch = (x.shape[0],)
  for k, value, adjust in ((keys[0], brightness, adjust_brightness),
                           (keys[1], contrast, adjust_contrast),
                           (keys[2], saturation, adjust_saturation)):
    if value:
      x = adjust(x, jax.random.uniform(k, batch, minval=max(0.0, 1 - value), maxval=1 + value))
  if hue:
    x = adjust_hue(x, jax.random.uniform(keys[3], batch, minval=-hue, maxval=hue))
  return x


def _box_mask(shape, top, left, height, width):
  """Boolean (B, H, W, 1), true inside each example's box (per-example int arrays)."""
  rows = jnp.arange(shape[1])[None, :, None]
  cols = jnp.arange(shape[2])[None, None, :]
  top, left, height, width = (v[:, None, None] for v in (top, left, height, width))
  inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
  return inside[..., None]


def random_erasing(key, x, prob: float, scale, ratio):
  """torchvision RandomErasing(p, scale, ratio, value=0), vectorised over the batch.

  As torchvision: with probability prob, up to ERASING_ATTEMPTS boxes of area
  U(scale) * H * W and aspect ratio exp(U(log ratio)) are drawn, sides rounded; the first that
  fits inside the image is zeroed at a uniform position; when none fits, nothing is erased. The
  only difference: all attempts are drawn at once (the same distribution, other random numbers).
  """
  batch, height, width, _ = x.shape
  k_apply, k_area, k_ratio, k_top, k_left = jax.random.split(key, 5)
  attempts = (batch, ERASING_ATTEMPTS)
  area = height * width * jax.random.uniform(k_area, attempts, minval=scale[0], maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(k_ratio, attempts, minval=math.log(ratio[0]),
                                      maxval=math.log(ratio[1])))
  box_h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  box_w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (box_h < height) & (box_w < width)
  first = jnp.argmax(fits, axis=1)[:, None]
  box_h = jnp.take_along_axis(box_h, first, axis=1)[:, 0]
  box_w = jnp.take_along_axis(box_w, first, axis=1)[:, 0]
  erase = jnp.any(fits, axis=1) & jax.random.bernoulli(k_apply, prob, (batch,))
  top = jax.random.randint(k_top, (batch,), 0, height - box_h + 1)
  left = jax.random.randint(k_left, (batch,), 0, width - box_w + 1)
  mask = _box_mask(x.shape, top, left, box_h * erase, box_w)
  return jnp.where(mask, 0.0, x)


def cutout(key, x, size: int):
  """Cutout (DeVries & Taylor, 2017): a size x size square at a uniform random centre is zeroed.

  The square is clipped at the image border. The original code zeroes [c - size//2,
  c + size//2), which is one pixel short for odd sizes; here the side is always `size`.
  """
  batch, height, width, _ = x.shape
  k_row, k_col = jax.random.split(key)
  top = jax.random.randint(k_row, (batch,), 0, height) - size // 2
  left = jax.random.randint(k_col, (batch,), 0, width) - size // 2
  side = jnp.full((batch,), size)
  return jnp.where(_box_mask(x.shape, top, left, side, side), 0.0, x)


def gaussian_noise(key, x, std: float):
  return x + std * jax.random.normal(key, x.shape, x.dtype)


def random_beta(key, alpha, shape=()):
  """Beta(alpha, alpha) samples, Ga / (Ga + Gb) of two Gamma(alpha) samples, without a loop.

  jax.random.beta's Gamma sampler rejects in a while loop; here Marsaglia and Tsang's method (as
  jax.random.gamma) draws GAMMA_PROPOSALS proposals at once and keeps the first accepted one
  (the first proposal where none is, about once in 1e20 draws). Every alpha is boosted,
  Gamma(alpha + 1) * U^(1/alpha), as jax.random.gamma boosts an alpha < 1: one program for every
  alpha. Logarithms throughout, so that a small alpha cannot underflow.

  alpha may be traced (a population's member). It is float32 from the start, and the steps from
  it are those XLA computes alike for a traced alpha and a number (no logarithm of it, no
  division by it or by its root, which XLA rewrites for one of the two), so that both give the
  same samples. The Gamma samples are scaled by 1 / d, which cancels in the ratio.
  """
  alpha = jnp.asarray(alpha, jnp.float32)
  d = alpha + (1 - 1 / 3)
  c = jnp.sqrt(1 / (9 * d))

  def log_gamma(key):
    k_normal, k_uniform, k_boost = jax.random.split(key, 3)
    x = jax.random.normal(k_normal, shape + (GAMMA_PROPOSALS,))
    u = jax.random.uniform(k_uniform, shape + (GAMMA_PROPOSALS,))
    base = 1 + c * x
    log_v = 3 * jnp.log(jnp.where(base > 0, base, 1.0))
    accept = (base > 0) & (jnp.log(u) < 0.5 * x * x + d - d * jnp.exp(log_v) + d * log_v)
    first = jnp.arange(GAMMA_PROPOSALS) == jnp.argmax(accept, axis=-1)[..., None]
    log_sample = jnp.sum(jnp.where(first, log_v, 0.0), axis=-1)
    return log_sample + jnp.log(jax.random.uniform(k_boost, shape)) * (1 / alpha)

  k_a, k_b = jax.random.split(key)
  return jax.nn.sigmoid(log_gamma(k_a) - log_gamma(k_b))


def mixup(key, x, targets, alpha, groups: int = 1):
  """mixup (Zhang et al., 2018): one lambda ~ Beta(alpha, alpha) for the batch.

  Example i becomes lambda * x[i] + (1 - lambda) * x[perm[i]], its targets likewise, with perm a
  random permutation of the batch; with `groups` > 1, of each of that many equal consecutive
  parts (the devices' shards), so that no pair crosses a device.
  """
  k_lambda, k_perm = jax.random.split(key)
  lam = random_beta(k_lambda, alpha)
  perm = jax.random.permutation(k_perm, x.shape[0] // groups)

  def partner(a):
    # Each example as one row: lane-dense on a TPU, where a minor dimension of 3 pads to 128.
    parts = a.reshape(groups, a.shape[0] // groups, -1)
    return parts[:, perm].reshape(a.shape)

  return lam * x + (1 - lam) * partner(x), lam * targets + (1 - lam) * partner(targets)


def train_preprocess(rng, images, labels, aug_cfg, mean, std, num_classes: int, dtype,
                     groups: int = 1, mixup_alpha=None):
  """Augments and normalises a training batch inside the compiled step.

  Args:
    rng: the step's PRNG key.
    images: uint8 (B, H, W, C).
    labels: int (B,).
    aug_cfg: `config.augment`.
    mean: per-channel mean, [0, 1] units.
    std: per-channel std, [0, 1] units.
    num_classes: width of the targets.
    dtype: dtype of the returned images (the model's compute dtype).
    groups: equal consecutive parts of the batch that mixup keeps apart (the devices' shards).
    mixup_alpha: mixup's alpha, possibly traced (a population's member), where
      aug_cfg.mixup_alpha turns mixup on; None: aug_cfg.mixup_alpha.

  Returns:
    (x, targets): x (B, H, W, C) normalised in dtype; targets float32 (B, num_classes) soft
    labels summing to one.
  """
  keys = dict(zip(_OPS, jax.random.split(rng, len(_OPS))))
  x = images
  if aug_cfg.crop_padding:
    x = random_crop(keys['crop'], x, int(aug_cfg.crop_padding))
  if aug_cfg.hflip:
    x = random_flip(keys['hflip'], x, aug_cfg.hflip, axis=2)
  if aug_cfg.vflip:
    x = random_flip(keys['vflip'], x, aug_cfg.vflip, axis=1)
  x = _to_unit(x)
  if aug_cfg.rotation_degrees:
    x = random_rotation(keys['rotation'], x, aug_cfg.rotation_degrees)
  if aug_cfg.brightness or aug_cfg.contrast or aug_cfg.saturation or aug_cfg.hue:
    x = color_jitter(keys['jitter'], x, aug_cfg.brightness, aug_cfg.contrast,
                     aug_cfg.saturation, aug_cfg.hue)
  x = normalize(x, mean, std)
  if aug_cfg.erasing_prob:
    x = random_erasing(keys['erasing'], x, aug_cfg.erasing_prob, tuple(aug_cfg.erasing_scale),
                       tuple(aug_cfg.erasing_ratio))
  if aug_cfg.cutout_size:
    x = cutout(keys['cutout'], x, int(aug_cfg.cutout_size))
  if aug_cfg.noise_std:
    x = gaussian_noise(keys['noise'], x, aug_cfg.noise_std)
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if aug_cfg.mixup_alpha:
    alpha = aug_cfg.mixup_alpha if mixup_alpha is None else mixup_alpha
    x, targets = mixup(keys['mixup'], x, targets, alpha, groups)
  return x.astype(dtype), targets


def eval_preprocess(images, mean, std, dtype):
  """Normalises uint8 (B, H, W, C) images: (x / 255 - mean) / std, in dtype."""
  return normalize(_to_unit(images), mean, std).astype(dtype)
