"""Tests for input_pipeline: sources, splits, normalisation, epoch order and host batches."""

import io
import itertools
import os
import pickle

import conftest
import numpy as np
from PIL import Image
import pytest

from resnet_jax import defaults
from resnet_jax import input_pipeline
from resnet_jax.errors import UserError


def data_config(**overrides):
  cfg = defaults.base_config().data
  cfg.update(overrides)
  return cfg


def assert_user_error(fn, *fragments):
  """fn raises a one-line UserError whose message holds every fragment."""
  with pytest.raises(UserError) as info:
    fn()
  message = str(info.value)
  assert '\n' not in message
  for fragment in fragments:
    assert fragment in message


def random_images(n, size=32, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def write_cifar_batches(root, images, labels, test_images, test_labels):
  """A small `cifar-10-batches-py` folder in the site's pickled, channel-planar layout."""
  folder = root / input_pipeline.CIFAR_BATCHES_FOLDER
  folder.mkdir(parents=True)

  def dump(name, x, y):
    rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    with open(folder / name, 'wb') as f:
      pickle.dump({b'data': rows, b'labels': [int(v) for v in y]}, f)

  for i, (x, y) in enumerate(zip(np.array_split(images, 5), np.array_split(labels, 5))):
    dump(f'data_batch_{i + 1}', x, y)
  dump('test_batch', test_images, test_labels)
  return folder


def write_jpeg_npz(path, images, labels):
  blobs = []
  for image in images:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format='JPEG', quality=95)
    blobs.append(np.frombuffer(buffer.getvalue(), np.uint8))
  offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
  np.savez_compressed(path, jpeg=np.concatenate(blobs), offsets=offsets, labels=np.asarray(labels))


def image_keys(images):
  return {image.tobytes() for image in images}


# --- Real images (the JPEG copy in ../shared) -------------------------------------------------


def test_cifar_batches_real_images(cifar_batches_dir):
  splits = input_pipeline.load_splits(
      data_config(source='cifar_batches', data_dir=str(cifar_batches_dir)), seed=0)
  assert splits.train_images.shape == (conftest.SUBSET, 32, 32, 3)
  assert splits.test_images.shape == (conftest.SUBSET // 5, 32, 32, 3)
  assert splits.train_images.dtype == np.uint8 and splits.train_labels.dtype == np.int32
  assert splits.class_names == input_pipeline.CIFAR10_CLASSES
  for labels in (splits.train_labels, splits.test_labels):
    counts = np.bincount(labels)  # Labels 0..9, none above.
    assert len(counts) == 10
    assert counts.min() > 0.75 * len(labels) / 10 and counts.max() < 1.25 * len(labels) / 10
  assert splits.val_images is splits.test_images
  # Real photographs: pixels use the full range and differ between images.
  assert splits.train_images.min() == 0 and splits.train_images.max() == 255
  assert len(image_keys(splits.train_images[:100])) == 100
  assert str(cifar_batches_dir) in splits.source
  inner = input_pipeline.load_splits(data_config(
      source='cifar_batches', data_dir=str(cifar_batches_dir / 'cifar-10-batches-py')), seed=0)
  np.testing.assert_array_equal(inner.train_labels, splits.train_labels)


def test_jpeg_npz_matches_cifar_batches(shared_data_dir, cifar_batches_dir):
  n_train, n_test = conftest.SUBSET, conftest.SUBSET // 5
  batches = input_pipeline.load_splits(
      data_config(source='cifar_batches', data_dir=str(cifar_batches_dir)), seed=0)
  npz = input_pipeline.load_splits(
      data_config(source='jpeg_npz', data_dir=str(shared_data_dir), train_subset=n_train,
                  test_subset=n_test), seed=0)
  assert npz.train_images.shape == batches.train_images.shape
  assert npz.test_images.shape == batches.test_images.shape
  assert set(npz.train_labels) == set(batches.train_labels) == set(range(10))
  # Same decoder, same fixed order as to_cifar_batches.py: the very same arrays.
  np.testing.assert_array_equal(npz.train_labels, batches.train_labels)
  np.testing.assert_array_equal(npz.train_images, batches.train_images)
  np.testing.assert_array_equal(npz.test_images, batches.test_images)


def test_auto_finds_data_from_environment(cifar_batches_dir, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # No ./data or ../shared from here.
  monkeypatch.setenv(input_pipeline.DATA_ENV_VAR, str(cifar_batches_dir))
  monkeypatch.setattr(input_pipeline, '_tfds_prepared', lambda cfg: False)  # Ignore local TFDS.
  splits = input_pipeline.load_splits(data_config(test_subset=10), seed=0)
  assert splits.source.startswith('cifar_batches')
  assert len(splits.train_labels) == conftest.SUBSET and len(splits.test_labels) == 10


# --- Local files written here -----------------------------------------------------------------


def test_cifar_batches_layout_and_subsets(tmp_path):
  images, labels = random_images(50), np.arange(50) % 10
  test_images, test_labels = random_images(20, seed=1), np.arange(20) % 10
  write_cifar_batches(tmp_path, images, labels, test_images, test_labels)
  splits = input_pipeline.load_splits(
      data_config(source='cifar_batches', data_dir=str(tmp_path), train_subset=35), seed=0)
  # Channel-planar rows come back as the same NHWC images, in file order.
  np.testing.assert_array_equal(splits.train_images, images[:35])
  np.testing.assert_array_equal(splits.train_labels, labels[:35])
  np.testing.assert_array_equal(splits.test_images, test_images)
  assert splits.class_names == input_pipeline.CIFAR10_CLASSES  # No batches.meta: defaults.


def test_cifar_batches_errors(tmp_path):
  assert_user_error(lambda: input_pipeline.load_splits(data_config(
      source='cifar_batches', data_dir=str(tmp_path / 'missing')), seed=0),
                    'config.data.data_dir', 'missing')
  assert_user_error(lambda: input_pipeline.load_splits(data_config(
      source='cifar_batches', data_dir=str(tmp_path)), seed=0),
                    'cifar-10-batches-py', 'config.data.data_dir')
  folder = write_cifar_batches(tmp_path, random_images(10), np.zeros(10), random_images(2),
                               np.zeros(2))
  cfg = data_config(source='cifar_batches', data_dir=str(tmp_path))
  (folder / 'data_batch_3').write_bytes(b'\x80\x04 not a pickle')
  assert_user_error(lambda: input_pipeline.load_splits(cfg, seed=0), 'data_batch_3',
                    'config.data.data_dir')
  with open(folder / 'data_batch_3', 'wb') as f:
    pickle.dump({b'data': np.zeros((2, 100), np.uint8), b'labels': [0, 1]}, f)
  assert_user_error(lambda: input_pipeline.load_splits(cfg, seed=0), 'data_batch_3', '3072')
  (folder / 'test_batch').unlink()
  assert_user_error(lambda: input_pipeline.load_splits(cfg, seed=0), 'test_batch')


class _Exploit:

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (os.mkdir, (self.path,))


def test_cifar_batches_never_run_pickled_code(tmp_path):
  folder = write_cifar_batches(tmp_path, random_images(10), np.zeros(10), random_images(2),
                               np.zeros(2))
  marker = tmp_path / 'exploited'
  with open(folder / 'data_batch_1', 'wb') as f:
    pickle.dump({b'data': _Exploit(str(marker)), b'labels': [0]}, f)
  assert_user_error(lambda: input_pipeline.load_splits(
      data_config(source='cifar_batches', data_dir=str(tmp_path)), seed=0), 'data_batch_1')
  assert not marker.exists()


def test_jpeg_npz_round_trip_and_errors(tmp_path):
  # Flat colours survive JPEG almost exactly; the loader reads them in its fixed order.
  colours = np.arange(12)[:, None] * np.array([20, 10, 5])
  images = np.broadcast_to(colours[:, None, None, :], (12, 32, 32, 3)).astype(np.uint8)
  write_jpeg_npz(tmp_path / 'train.npz', images, np.arange(12) % 10)
  write_jpeg_npz(tmp_path / 'test.npz', images[:4], np.arange(4))
  splits = input_pipeline.load_splits(
      data_config(source='jpeg_npz', data_dir=str(tmp_path)), seed=0)
  order = np.random.default_rng(0).permutation(12)
  np.testing.assert_array_equal(splits.train_labels, (np.arange(12) % 10)[order])
  assert np.abs(splits.train_images.astype(int) - images[order]).max() <= 2
  assert sorted(splits.test_labels) == [0, 1, 2, 3]

  data = (tmp_path / 'train.npz').read_bytes()
  (tmp_path / 'train.npz').write_bytes(data[:len(data) // 2])
  cfg = data_config(source='jpeg_npz', data_dir=str(tmp_path))
  assert_user_error(lambda: input_pipeline.load_splits(cfg, seed=0), 'train.npz',
                    'config.data.data_dir')
  np.savez(tmp_path / 'train.npz', jpeg=np.zeros(10, np.uint8), offsets=np.array([0, 4, 9]),
           labels=np.zeros(2, np.uint8))
  assert_user_error(lambda: input_pipeline.load_splits(cfg, seed=0), 'train.npz', 'offsets')
  (tmp_path / 'test.npz').unlink()
  assert_user_error(lambda: input_pipeline.load_splits(cfg, seed=0), 'test.npz')


def test_folder_source(tmp_path):
  colours = {'cat': (200, 0, 0), 'dog': (0, 0, 200)}
  for split, count in (('train', 5), ('test', 2)):
    for name, colour in colours.items():
      (tmp_path / split / name).mkdir(parents=True)
      for i in range(count):
        Image.new('RGB', (40, 24), colour).save(tmp_path / split / name / f'{i}.png')
  (tmp_path / 'train' / 'cat' / 'notes.txt').write_text('not an image')
  splits = input_pipeline.load_splits(data_config(source='folder', data_dir=str(tmp_path)), seed=0)
  assert splits.class_names == ('cat', 'dog')
  assert splits.train_images.shape == (10, 32, 32, 3)
  assert splits.test_images.shape == (4, 32, 32, 3)
  assert np.bincount(splits.train_labels).tolist() == [5, 5]
  for images, labels in ((splits.train_images, splits.train_labels),
                         (splits.test_images, splits.test_labels)):
    red = images[:, 16, 16, 0] > 100
    np.testing.assert_array_equal(red, labels == 0)  # Every label follows its image.

  (tmp_path / 'train' / 'cat' / '0.png').write_bytes(b'broken')
  assert_user_error(lambda: input_pipeline.load_splits(
      data_config(source='folder', data_dir=str(tmp_path)), seed=0), 'config.data.data_dir')
  empty = tmp_path / 'empty'
  (empty / 'train' / 'cat').mkdir(parents=True)
  (empty / 'test').mkdir()
  assert_user_error(lambda: input_pipeline.load_splits(
      data_config(source='folder', data_dir=str(empty)), seed=0), 'no image files')


def test_auto_reports_where_it_looked(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv(input_pipeline.DATA_ENV_VAR, str(tmp_path / 'env'))
  monkeypatch.setattr(input_pipeline, '_tfds_prepared', lambda cfg: False)
  assert_user_error(lambda: input_pipeline.load_splits(data_config(), seed=0),
                    'data', str(tmp_path / 'env'), os.path.join('..', 'shared'),
                    'config.data.source', 'config.data.data_dir')


def test_an_explicit_data_dir_is_used_or_refused_never_searched_around(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # ./data and $RESNET_JAX_DATA hold data the search would find.
  write_cifar_batches(tmp_path / 'data', random_images(10), np.arange(10), random_images(2),
                      np.arange(2))
  monkeypatch.setenv(input_pipeline.DATA_ENV_VAR, str(tmp_path / 'data'))
  monkeypatch.setattr(input_pipeline, '_tfds_prepared', lambda cfg: False)
  (tmp_path / 'empty').mkdir()
  for data_dir, state in (('empty', 'holds no CIFAR-10'), ('missing', 'is not a folder')):
    assert_user_error(lambda: input_pipeline.load_splits(data_config(data_dir=data_dir), seed=0),
                      f"config.data.data_dir='{data_dir}' {state}", 'looked there only')
  assert input_pipeline.load_splits(data_config(), seed=0).source.startswith('cifar_batches data')
  explicit = input_pipeline.load_splits(data_config(data_dir='data'), seed=0)
  assert len(explicit.train_labels) == 10


@pytest.mark.parametrize('bad_label', [10, 255, -1])
def test_labels_out_of_range_stop_every_source_naming_the_file(tmp_path, bad_label):
  labels = np.arange(10) % 10
  labels[7] = bad_label
  write_cifar_batches(tmp_path, random_images(10), labels, random_images(2), np.arange(2))
  assert_user_error(lambda: input_pipeline.load_splits(data_config(
      source='cifar_batches', data_dir=str(tmp_path)), seed=0),
                    'data_batch_[1-5]', '1 of 10 labels are outside [0, 10)', f'{bad_label} at')
  write_jpeg_npz(tmp_path / 'train.npz', random_images(4), np.arange(4))
  write_jpeg_npz(tmp_path / 'test.npz', random_images(3), [0, bad_label, 1])
  assert_user_error(lambda: input_pipeline.load_splits(data_config(
      source='jpeg_npz', data_dir=str(tmp_path)), seed=0), 'test.npz', 'outside [0, 10)')


def test_labels_must_fit_the_models_classes():
  cfg = data_config(source='synthetic', train_subset=50, test_subset=5)
  assert_user_error(lambda: input_pipeline.load_splits(cfg, seed=0, num_classes=5),
                    'synthetic train split', 'outside [0, 5)', 'config.model.num_classes')
  assert len(input_pipeline.load_splits(cfg, seed=0, num_classes=10).train_labels) == 50


def test_jpeg_npz_labels_must_be_integers(tmp_path):
  write_jpeg_npz(tmp_path / 'train.npz', random_images(4), [0.0, 1.5, 2.0, 3.0])
  write_jpeg_npz(tmp_path / 'test.npz', random_images(2), [0, 1])
  assert_user_error(lambda: input_pipeline.load_splits(data_config(
      source='jpeg_npz', data_dir=str(tmp_path)), seed=0), 'train.npz', 'float64', 'integers')


@pytest.mark.parametrize('images,labels,message', [
    (np.zeros((2, 8, 8, 3), np.float32), np.zeros(2, int), 'images are float32'),
    (np.zeros((2, 8, 8), np.uint8), np.zeros(2, int), 'shape (2, 8, 8)'),
    (np.zeros((2, 8, 8, 4), np.uint8), np.zeros(2, int), 'expected uint8 (N, height, width, 3)'),
    (np.zeros((2, 8, 8, 3), np.uint8), np.zeros(3, int), '3 labels for 2 images'),
    (np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 1), int), 'expected N integers'),
    (np.zeros((0, 8, 8, 3), np.uint8), np.zeros(0, int), 'holds no examples'),
])
def test_validate_split_names_the_source_and_the_fault(images, labels, message):
  assert_user_error(lambda: input_pipeline.validate_split(images, labels, num_classes=10,
                                                          where='my.npz'), 'my.npz', message)


def test_a_subset_larger_than_the_split_is_refused(tmp_path):
  write_cifar_batches(tmp_path, random_images(10), np.arange(10), random_images(4), np.arange(4))
  assert_user_error(lambda: input_pipeline.load_splits(data_config(
      source='cifar_batches', data_dir=str(tmp_path), test_subset=5), seed=0),
                    'config.data.test_subset=5', 'the 4 examples of', 'test_batch')


def test_unknown_settings():
  assert_user_error(lambda: input_pipeline.load_splits(data_config(source='imagenet'), seed=0),
                    'config.data.source')
  for validation in ('abc', '1.5', '0', 'train', '-0.1'):
    assert_user_error(lambda: input_pipeline.load_splits(data_config(
        source='synthetic', validation=validation), seed=0), 'config.data.validation')
  assert_user_error(lambda: input_pipeline.load_splits(data_config(
      source='synthetic', train_subset=50, test_subset=5, normalization='batch'), seed=0),
                    'config.data.normalization')
  assert_user_error(lambda: input_pipeline.load_splits(data_config(
      source='synthetic', train_subset=50, test_subset=5, mean=(0.5, 0.5)), seed=0),
                    'config.data.mean')


# --- Splits and normalisation -----------------------------------------------------------------


def test_synthetic_is_deterministic():
  cfg = data_config(source='synthetic', train_subset=300, test_subset=40)
  a, b = input_pipeline.load_splits(cfg, seed=0), input_pipeline.load_splits(cfg, seed=5)
  assert a.train_images.shape == (300, 32, 32, 3) and a.test_images.shape == (40, 32, 32, 3)
  np.testing.assert_array_equal(a.train_images, b.train_images)
  np.testing.assert_array_equal(a.test_labels, b.test_labels)
  assert set(a.train_labels) == set(range(10))


def test_validation_fraction_is_held_out_deterministically():
  cfg = data_config(source='synthetic', train_subset=1000, test_subset=10)
  full = input_pipeline.load_splits(cfg, seed=1)
  cfg.validation = '0.2'
  split = input_pipeline.load_splits(cfg, seed=1)
  assert len(split.train_labels) == 800 and len(split.val_labels) == 200
  train, val = image_keys(split.train_images), image_keys(split.val_images)
  assert not train & val and train | val == image_keys(full.train_images)
  np.testing.assert_array_equal(split.test_images, full.test_images)
  again = input_pipeline.load_splits(cfg, seed=1)
  np.testing.assert_array_equal(again.val_images, split.val_images)
  other = input_pipeline.load_splits(cfg, seed=3)
  assert image_keys(other.val_images) != val
  assert '0.2 of train' in split.source


def test_normalization():
  cfg = data_config(source='synthetic', train_subset=200, test_subset=10, validation='0.5')
  constants = input_pipeline.load_splits(cfg, seed=0)
  assert constants.mean == defaults.CIFAR10_MEAN and constants.std == defaults.CIFAR10_STD
  cfg.normalization = 'computed'
  splits = input_pipeline.load_splits(cfg, seed=0)
  pixels = splits.train_images.reshape(-1, 3).astype(np.float64) / 255  # Train split only.
  np.testing.assert_allclose(splits.mean, pixels.mean(axis=0), rtol=1e-9)
  np.testing.assert_allclose(splits.std, pixels.std(axis=0), rtol=1e-9)
  mean, std = input_pipeline.channel_stats(splits.train_images, chunk=7)
  np.testing.assert_allclose(mean, splits.mean, rtol=1e-12)
  np.testing.assert_allclose(std, splits.std, rtol=1e-12)


# --- TFDS -------------------------------------------------------------------------------------


def test_tfds_mock_data(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  cfg = data_config(source='tfds', data_dir=str(tmp_path), test_subset=12)
  with tfds.testing.mock_data(num_examples=30):
    splits = input_pipeline.load_splits(cfg, seed=0)
  assert splits.train_images.shape == (30, 32, 32, 3) and splits.train_images.dtype == np.uint8
  assert splits.test_images.shape == (12, 32, 32, 3)
  assert splits.train_labels.dtype == np.int32
  assert splits.train_labels.min() >= 0 and splits.train_labels.max() < 10
  assert len(splits.class_names) == 10
  assert splits.source.startswith('tfds cifar10')
  assert_user_error(lambda: input_pipeline.load_splits(cfg, seed=0), 'not prepared', 'tfds build',
                    'config.data.data_dir')


# --- Epoch order and host batches -------------------------------------------------------------


def test_epoch_permutation():
  perm = input_pipeline.epoch_permutation(0, 0, 1000)
  assert perm.dtype == np.int32 and sorted(perm) == list(range(1000))
  np.testing.assert_array_equal(perm, input_pipeline.epoch_permutation(0, 0, 1000))
  assert not np.array_equal(perm, input_pipeline.epoch_permutation(0, 1, 1000))
  assert not np.array_equal(perm, input_pipeline.epoch_permutation(1, 0, 1000))


def test_random_streams_are_distinct():
  """Epoch orders, hold-outs, synthetic data and the fixed orders of sorted sources never share."""
  n = 1000
  orders = {f'epoch {e} seed {s}': input_pipeline.epoch_permutation(s, e, n)
            for s in range(3) for e in range(4)}
  orders.update({f'hold-out seed {s}': input_pipeline._stream(  # pylint: disable=protected-access
      input_pipeline._HOLDOUT_STREAM, s).permutation(n) for s in range(3)})
  orders['synthetic'] = input_pipeline._stream(  # pylint: disable=protected-access
      input_pipeline._SYNTHETIC_STREAM).permutation(n)
  orders.update({f'fixed order {k}': np.random.default_rng(k).permutation(n) for k in (0, 1)})
  for (name_a, a), (name_b, b) in itertools.combinations(orders.items(), 2):
    assert not np.array_equal(a, b), (name_a, name_b)


def test_held_out_examples_are_not_an_epoch_order():
  cfg = data_config(source='synthetic', train_subset=200, test_subset=10)
  position = {image.tobytes(): i
              for i, image in enumerate(input_pipeline.load_splits(cfg, seed=0).train_images)}
  cfg.validation = '0.5'
  held_out = []
  for seed in range(3):
    val_images = input_pipeline.load_splits(cfg, seed=seed).val_images
    held_out.append({position[image.tobytes()] for image in val_images})
    firsts = [input_pipeline.epoch_permutation(seed, e, 200)[:100] for e in range(4)]
    firsts += [np.random.default_rng(k).permutation(200)[:100] for k in (0, 1)]
    assert all(held_out[-1] != set(first.tolist()) for first in firsts)
  assert held_out[0] != held_out[1] != held_out[2] != held_out[0]


def test_steps_per_epoch():
  assert input_pipeline.steps_per_epoch(50_000, 128) == 391
  assert input_pipeline.steps_per_epoch(50_000, 128, drop_remainder=True) == 390
  for n, batch, drop, multiple in ((103, 10, False, 1), (103, 12, False, 4), (97, 12, False, 2),
                                   (97, 12, True, 2), (12, 12, False, 8), (1, 12, False, 2)):
    batches = input_pipeline.epoch_batch_indices(n, batch, seed=0, epoch=0,
                                                 drop_remainder=drop, multiple_of=multiple)
    assert input_pipeline.steps_per_epoch(n, batch, drop, multiple) == len(batches)
    assert all(len(b) and len(b) % multiple == 0 for b in batches)


BACKENDS = ('numpy', pytest.param('tf', marks=pytest.mark.skipif(
    not input_pipeline.tf_importable(), reason='TensorFlow is not installed')))


def epoch(n=103, batch_size=10, **kwargs):
  """One epoch of HostBatcher batches over images whose pixels and labels are their index."""
  images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 2, 2, 3))
  kwargs.setdefault('seed', 0)
  kwargs.setdefault('epoch', 0)
  backend = kwargs.pop('backend', 'auto')
  return list(input_pipeline.HostBatcher(images, np.arange(n), backend).epoch(batch_size, **kwargs))


@pytest.mark.parametrize('backend', BACKENDS)
def test_host_batches_cover_every_example_once(backend):
  batches = epoch(backend=backend)
  assert [len(y) for _, y in batches] == [10] * 10 + [3]
  for x, y in batches:
    assert x.dtype == np.uint8 and y.dtype == np.int32 and x.shape == (len(y), 2, 2, 3)
    np.testing.assert_array_equal(x[:, 0, 0, 0], y)  # Images follow their labels.
  seen = np.concatenate([y for _, y in batches])
  np.testing.assert_array_equal(seen, input_pipeline.epoch_permutation(0, 0, 103))

  dropped = epoch(backend=backend, drop_remainder=True)
  assert [len(y) for _, y in dropped] == [10] * 10
  np.testing.assert_array_equal(np.concatenate([y for _, y in dropped]), seen[:100])

  assert np.concatenate([y for _, y in epoch(backend=backend, shuffle=False)]).tolist() == list(
      range(103))


@pytest.mark.parametrize('backend', BACKENDS)
def test_host_batches_seed_epoch_and_resume(backend):
  first = np.concatenate([y for _, y in epoch(backend=backend)])
  np.testing.assert_array_equal(first, np.concatenate([y for _, y in epoch(backend=backend)]))
  assert not np.array_equal(first, np.concatenate([y for _, y in epoch(backend=backend, epoch=1)]))
  resumed = epoch(backend=backend, start_step=4)
  np.testing.assert_array_equal(np.concatenate([y for _, y in resumed]), first[40:])
  assert epoch(backend=backend, start_step=11) == []


@pytest.mark.parametrize('backend', BACKENDS)
def test_host_batches_process_shares_partition_global_batches(backend):
  for count in (2, 4):
    global_batches = input_pipeline.epoch_batch_indices(103, 12, seed=0, epoch=0,
                                                        multiple_of=count)
    shares = [epoch(batch_size=12, backend=backend, process_index=i, process_count=count)
              for i in range(count)]
    assert all(len(s) == len(global_batches) == 9 for s in shares)
    for step, indices in enumerate(global_batches):
      np.testing.assert_array_equal(np.concatenate([s[step][1] for s in shares]), indices)
    assert len(global_batches[-1]) == 7 // count * count  # 103 % 12 = 7, cut to the count.


@pytest.mark.parametrize('backend', BACKENDS)
def test_process_shares_cut_to_the_device_count_are_the_resident_batches(backend):
  # 2 processes of 4 devices: the resident path's batches (epoch_batch_indices over the 8
  # devices) are what the streamed path's two shares make up, the partial last one included.
  resident = input_pipeline.epoch_batch_indices(107, 16, seed=0, epoch=0, multiple_of=8)
  assert len(resident[-1]) == 8  # 107 % 16 = 11, cut to 8
  shares = [epoch(107, batch_size=16, backend=backend, process_index=i, process_count=2,
                  multiple_of=8) for i in range(2)]
  for step, indices in enumerate(resident):
    np.testing.assert_array_equal(np.concatenate([s[step][1] for s in shares]), indices)
  assert all(len(s) == len(resident) for s in shares)


def test_tf_and_numpy_backends_agree():
  pytest.importorskip('tensorflow')
  for kwargs in (dict(), dict(drop_remainder=True, epoch=3, seed=7),
                 dict(batch_size=12, process_index=1, process_count=2, start_step=2)):
    numpy_batches, tf_batches = epoch(backend='numpy', **kwargs), epoch(backend='tf', **kwargs)
    assert len(numpy_batches) == len(tf_batches)
    for (x_np, y_np), (x_tf, y_tf) in zip(numpy_batches, tf_batches):
      np.testing.assert_array_equal(x_np, x_tf)
      np.testing.assert_array_equal(y_np, y_tf)


@pytest.mark.parametrize('backend', BACKENDS)
def test_a_reused_host_batcher_matches_fresh_ones(backend, monkeypatch):
  copies = []
  tf_tensors = input_pipeline._tf_tensors  # pylint: disable=protected-access
  monkeypatch.setattr(input_pipeline, '_tf_tensors', lambda *a: copies.append(1) or tf_tensors(*a))
  n = 53
  images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 2, 2, 3))
  batcher = input_pipeline.HostBatcher(images, np.arange(n), backend)
  assert batcher.backend == backend
  for e in range(3):
    for (x, y), (x_ref, y_ref) in itertools.zip_longest(
        batcher.epoch(10, seed=2, epoch=e, start_step=e),
        epoch(n, seed=2, epoch=e, start_step=e, backend='numpy')):
      np.testing.assert_array_equal(x, x_ref)
      np.testing.assert_array_equal(y, y_ref)
  assert len(copies) == (backend == 'tf')  # The arrays are copied into TensorFlow once.


def test_host_batches_errors():
  images, labels = np.zeros((10, 2, 2, 3), np.uint8), np.zeros(10)
  assert_user_error(lambda: input_pipeline.HostBatcher(images, labels).epoch(
      10, seed=0, epoch=0, process_count=3), 'config.batch_size')
  assert_user_error(lambda: input_pipeline.HostBatcher(images, labels, 'torch'),
                    'config.data.host_backend')
  assert_user_error(lambda: input_pipeline.HostBatcher(images, labels).epoch(
      0, seed=0, epoch=0), 'config.batch_size')
