"""Train/validation/test splits, normalisation constants, each epoch's order and host batches.

`load_splits` reads the source named by `config.data.source` (`sources.py`), checks every split
with `sources.validate_split`, cuts subsets, holds out validation and computes the normalisation;
augmentation happens later, on the device (`augment.py`).

Each epoch's order comes from `epoch_permutation` alone, whichever path consumes it: the host
iterators here (NumPy, or tf.data where TensorFlow is installed) and the trainer's device-resident
path, which gathers batches by the same indices inside the compiled step.
"""

from typing import Iterator, NamedTuple

import numpy as np

from resnet_jax import defaults
from resnet_jax.data import sources
from resnet_jax.data import tf_host
from resnet_jax.errors import UserError

HOST_BACKENDS = ('auto', 'numpy', 'tf')
NORMALIZATIONS = ('constants', 'computed')  # config.data.mean/std, or from the training split
PLACEMENTS = ('auto', 'device', 'host')  # where the training set lies (feed.resident_placement)


class Splits(NamedTuple):
  """The data of one run: uint8 NHWC images, int32 labels, normalisation in [0, 1] units."""
  train_images: np.ndarray
  train_labels: np.ndarray
  val_images: np.ndarray
  val_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  class_names: tuple[str, ...]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  source: str


# ------------------------------------------------------------------------------------------------
# Splits and normalisation.


def validation_fraction(validation) -> float | None:
  """None for 'test' (the test set validates), else the held-out fraction of train."""
  if defaults.validates_on_test(validation):
    return None
  text = str(validation).strip()
  try:
    fraction = float(text)
  except ValueError:
    fraction = float('nan')
  if not 0 < fraction < 1:
    raise UserError(f"config.data.validation={validation!r} is invalid; use 'test' or a "
                    "fraction of the training set in (0, 1), e.g. '0.1'")
  return fraction


def _hold_out(images, labels, fraction, seed):
  """Splits train into (train, validation), deterministically for the seed; order is kept."""
  n = len(labels)
  n_val = int(round(fraction * n))
  if not 0 < n_val < n:
    raise UserError(f'config.data.validation={fraction} leaves {n_val} of {n} training images '
                    'for validation; use a larger fraction or more data')
  perm = sources.random_stream(sources.HOLDOUT_STREAM, seed).permutation(n)
  val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
  return images[train], labels[train], images[val], labels[val]


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[tuple, tuple]:
  """Per-channel mean and (population) std of uint8 images, in [0, 1] units."""
  channels = images.shape[-1]
  total, total_sq = np.zeros(channels), np.zeros(channels)
  for start in range(0, len(images), chunk):
    x = images[start:start + chunk].reshape(-1, channels).astype(np.float64)
    total += x.sum(axis=0)
    total_sq += np.square(x).sum(axis=0)
  count = images.size // channels
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
  return tuple(float(m) for m in mean / 255), tuple(float(s) for s in std / 255)


def _normalization(data_cfg, train_images) -> tuple[tuple, tuple]:
  if data_cfg.normalization == 'computed':
    return channel_stats(train_images)
  mean, std = tuple(float(m) for m in data_cfg.mean), tuple(float(s) for s in data_cfg.std)
  channels = train_images.shape[-1]
  if len(mean) != channels or len(std) != channels or min(std) <= 0:
    raise UserError(f'config.data.mean and config.data.std need {channels} values each (std > 0), '
                    f'got {mean} and {std}')
  return mean, std


def _checked(split: sources.Split, subset_key: str, data_cfg, num_classes: int):
  """A split validated, cut to config.data.<subset_key> (0: all) and resized to image_size."""
  images, labels = sources.validate_split(split.images, split.labels, num_classes=num_classes,
                                          where=split.where)
  subset = data_cfg[subset_key]
  if subset > len(labels):
    raise UserError(f'config.data.{subset_key}={subset} asks for more than the {len(labels)} '
                    f'examples of {split.where}; use at most {len(labels)}, or 0 for all')
  if subset > 0:
    images, labels = images[:subset], labels[:subset]
  return sources.resize_images(images, data_cfg.image_size), labels


def check_config(data_cfg) -> None:
  """UserError, naming the key, for the first `config.data` setting no data could satisfy.

  Reads no data: what `load_splits` checks first, and every command before it loads any.
  """
  choices = {'source': sources.SOURCES, 'normalization': NORMALIZATIONS,
             'host_backend': HOST_BACKENDS, 'placement': PLACEMENTS}
  for key, allowed in choices.items():
    if data_cfg[key] not in allowed:
      raise UserError(f'config.data.{key}={data_cfg[key]!r} is unknown; use one of '
                      f'{", ".join(allowed)}')
  for key in ('train_subset', 'test_subset'):
    if data_cfg[key] < 0:
      raise UserError(f'config.data.{key}={data_cfg[key]} must be >= 0 (0 = all)')
  if data_cfg.image_size <= 0:
    raise UserError(f'config.data.image_size={data_cfg.image_size} must be positive')
  validation_fraction(data_cfg.validation)


def load_splits(data_cfg, seed: int, num_classes: int = 0) -> Splits:
  """Loads config.data's source and returns train/validation/test splits.

  Args:
    data_cfg: `config.data` (see defaults.py).
    seed: the run's seed; picks the held-out validation examples.
    num_classes: `config.model.num_classes`: the data's class count, which labels must be
      below; 0: the data's class count alone.

  Returns:
    `Splits`; with validation='test' the validation arrays are the test arrays.

  Raises:
    UserError: unknown settings, data that is missing, corrupt or out of range, or of another
      class count than num_classes.
  """
  check_config(data_cfg)
  fraction = validation_fraction(data_cfg.validation)
  loaded = sources.load_source(data_cfg)
  classes = min(num_classes or len(loaded.class_names), len(loaded.class_names))
  train_x, train_y = _checked(loaded.train, 'train_subset', data_cfg, classes)
  test_x, test_y = _checked(loaded.test, 'test_subset', data_cfg, classes)
  if num_classes and num_classes != len(loaded.class_names):
    names = ', '.join(loaded.class_names[:12]) + (', ...' if len(loaded.class_names) > 12 else '')
    raise UserError(f'config.model.num_classes={num_classes}, but {loaded.source} has '
                    f'{len(loaded.class_names)} classes ({names}); set '
                    f'--config.model.num_classes={len(loaded.class_names)}')
  if fraction is None:
    val_x, val_y, validation = test_x, test_y, 'the test set'
  else:
    train_x, train_y, val_x, val_y = _hold_out(train_x, train_y, fraction, seed)
    validation = f'{fraction:g} of train held out (seed {seed})'
  mean, std = _normalization(data_cfg, train_x)
  source = (f'{loaded.source}: {len(train_y)} train, {len(val_y)} validation '
            f'({validation}), {len(test_y)} test')
  return Splits(train_x, train_y, val_x, val_y, test_x, test_y, tuple(loaded.class_names),
                mean, std, source)


# ------------------------------------------------------------------------------------------------
# Epoch order and host batches.


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order of the n training examples in an epoch: the one definition every path uses."""
  rng = sources.random_stream(sources.EPOCH_ORDER_STREAM, seed, epoch)
  return rng.permutation(n).astype(np.int32)


def steps_per_epoch(n: int, batch_size: int, drop_remainder: bool = False,
                    multiple_of: int = 1) -> int:
  """Batches in an epoch; a partial last batch counts if, cut to `multiple_of`, it is not empty."""
  full, rest = divmod(n, batch_size)
  return full + int(not drop_remainder and rest >= multiple_of)


def epoch_batch_indices(n: int, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True,
                        drop_remainder: bool = False, multiple_of: int = 1) -> list[np.ndarray]:
  """The global example indices of every batch of an epoch, in `epoch_permutation` order.

  The last partial batch is kept unless drop_remainder, cut to a multiple of `multiple_of`
  (the process or device count), so up to multiple_of - 1 examples an epoch can be skipped.

  Returns:
    A list of int32 index arrays, one per step.
  """
  order = (epoch_permutation(seed, epoch, n) if shuffle else np.arange(n, dtype=np.int32))
  batches = [order[i * batch_size:(i + 1) * batch_size]
             for i in range(steps_per_epoch(n, batch_size, drop_remainder, multiple_of))]
  if batches and len(batches[-1]) % multiple_of:
    batches[-1] = batches[-1][:len(batches[-1]) // multiple_of * multiple_of]
  return batches


def _numpy_batches(images, labels, local_batches):
  for indices in local_batches:
    yield images[indices], labels[indices]


def tf_tensors(images, labels):
  """TensorFlow's copy of the arrays, which tf.data gathers from (0.4 s for 50,000 images)."""
  tf = tf_host.import_tensorflow()
  return tf.constant(images), tf.constant(labels)


def _tf_batches(tensors, local_batches):
  """tf.data: the permuted indices, batched, gathered in parallel, prefetched."""
  tf = tf_host.import_tensorflow()
  images_t, labels_t = tensors
  ds = tf.data.Dataset.from_tensor_slices(np.concatenate(local_batches))
  ds = ds.batch(len(local_batches[0]))
  ds = ds.map(lambda i: (tf.gather(images_t, i), tf.gather(labels_t, i)),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


class HostBatcher:
  """Host batches of one training set, epoch after epoch.

  The tf.data backend copies the arrays into TensorFlow on the first epoch that needs them and
  reuses that copy for every later epoch.

  Attributes:
    images: uint8 (N, H, W, C).
    labels: int32 (N,).
    backend: 'numpy' or 'tf' (tf.data), as resolved from the `backend` argument: 'numpy', 'tf'
      or 'auto' (tf where TensorFlow is installed); both yield identical batches.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, backend: str = 'auto'):
    if backend not in HOST_BACKENDS:
      raise UserError(f'config.data.host_backend={backend!r} is unknown; use one of '
                      f'{", ".join(HOST_BACKENDS)}')
    if backend == 'tf' and not tf_host.tf_importable():
      raise UserError("config.data.host_backend='tf' needs tensorflow (pip install "
                      "'resnet-jax[tf]'); or use 'numpy' or 'auto'")
    self.images = images
    self.labels = np.asarray(labels, np.int32)
    use_tf = backend == 'tf' or (backend == 'auto' and tf_host.tf_importable())
    self.backend = 'tf' if use_tf else 'numpy'
    self._tensors = None

  def epoch(self, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True,
            drop_remainder: bool = False, start_step: int = 0, process_index: int = 0,
            process_count: int = 1,
            multiple_of: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of uint8 NHWC batches for this process, in `epoch_permutation` order.

    Every process computes the same global batches (`epoch_batch_indices`) and yields its own
    contiguous share, batch_size // process_count examples. Without drop_remainder each example
    is seen exactly once an epoch, except that the partial last batch is cut to a multiple of
    `multiple_of`; with it, the n % batch_size examples at the end of the permutation (different
    ones each epoch) are skipped.

    Args:
      batch_size: the global batch, across every process.
      seed: the run's seed.
      epoch: the epoch number (picks the permutation).
      shuffle: False keeps the stored order (evaluation).
      drop_remainder: drop the partial last batch.
      start_step: batches already trained this epoch, skipped (mid-epoch resume).
      process_index: this process.
      process_count: processes sharing each global batch.
      multiple_of: what the partial last batch is cut to a multiple of: the global device count,
        so that the batch is the one the resident path trains (`epoch_batch_indices` with the
        same argument); a multiple of process_count. 0: process_count.

    Returns:
      An iterator of (images uint8, labels int32), this process's share of each batch.
    """
    if batch_size <= 0 or batch_size % process_count:
      raise UserError(f'config.batch_size={batch_size} must be a positive multiple of the '
                      f'process count ({process_count})')
    multiple_of = multiple_of or process_count
    if multiple_of % process_count:
      raise ValueError(f'multiple_of={multiple_of} is not a multiple of the {process_count} '
                       'processes')
    global_batches = epoch_batch_indices(len(self.labels), batch_size, seed=seed, epoch=epoch,
                                         shuffle=shuffle, drop_remainder=drop_remainder,
                                         multiple_of=multiple_of)
    local_batches = []
    for indices in global_batches[start_step:]:
      share = len(indices) // process_count
      local_batches.append(indices[process_index * share:(process_index + 1) * share])
    if self.backend == 'numpy' or not local_batches:
      return _numpy_batches(self.images, self.labels, local_batches)
    if self._tensors is None:
      self._tensors = tf_tensors(self.images, self.labels)
    return _tf_batches(self._tensors, local_batches)
