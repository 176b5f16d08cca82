"""Tests for sources: each source read, the auto search, validate_split, synthetic data, TFDS."""

import io
import os
import pickle

import conftest
from conftest import assert_user_error
from conftest import data_config
from conftest import image_keys
import numpy as np
from PIL import Image
import pytest

from resnet_jax.data import input_pipeline
from resnet_jax.data import sources


def random_images(n, size=32, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def write_cifar_batches(root, images, labels, test_images, test_labels):
  """A small `cifar-10-batches-py` folder in the site's pickled, channel-planar layout."""
  folder = root / sources.CIFAR_BATCHES_FOLDER
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


# --- Real images (the JPEG copy in ../shared) -------------------------------------------------


def test_cifar_batches_real_images(cifar_batches_dir):
  splits = input_pipeline.load_splits(
      data_config(source='cifar_batches', data_dir=str(cifar_batches_dir)), seed=0)
  assert splits.train_images.shape == (conftest.SUBSET, 32, 32, 3)
  assert splits.test_images.shape == (conftest.SUBSET // 5, 32, 32, 3)
  assert splits.train_images.dtype == np.uint8 and splits.train_labels.dtype == np.int32
  assert splits.class_names == sources.CIFAR10_CLASSES
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
  monkeypatch.setenv(sources.DATA_ENV_VAR, str(cifar_batches_dir))
  monkeypatch.setattr(sources, 'tfds_prepared', lambda cfg: False)  # Ignore local TFDS.
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
  assert splits.class_names == sources.CIFAR10_CLASSES  # No batches.meta: defaults.


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


def test_folder_classes_must_be_the_models_and_none_empty(tmp_path):
  for split in ('train', 'test'):
    for name in ('ant', 'bee', 'cow'):
      (tmp_path / split / name).mkdir(parents=True)
      Image.new('RGB', (32, 32), (9, 9, 9)).save(tmp_path / split / name / '0.png')
  cfg = data_config(source='folder', data_dir=str(tmp_path))
  # Trained a whole run under the default 10 classes, then crashed drawing the confusion matrix.
  assert_user_error(lambda: input_pipeline.load_splits(cfg, seed=0, num_classes=10),
                    'config.model.num_classes=10, but folder', 'has 3 classes (ant, bee, cow)',
                    '--config.model.num_classes=3')
  assert input_pipeline.load_splits(cfg, seed=0, num_classes=3).class_names == ('ant', 'bee',
                                                                                 'cow')
  (tmp_path / 'train' / 'bee' / '0.png').unlink()
  assert_user_error(lambda: input_pipeline.load_splits(cfg, seed=0, num_classes=3),
                    f"{tmp_path / 'train' / 'bee'} holds no image files")


def test_auto_reports_where_it_looked(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv(sources.DATA_ENV_VAR, str(tmp_path / 'env'))
  monkeypatch.setattr(sources, 'tfds_prepared', lambda cfg: False)
  assert_user_error(lambda: input_pipeline.load_splits(data_config(), seed=0),
                    'data', str(tmp_path / 'env'), os.path.join('..', 'shared'),
                    'config.data.source', 'config.data.data_dir')


def test_an_explicit_data_dir_is_used_or_refused_never_searched_around(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # ./data and $RESNET_JAX_DATA hold data the search would find.
  write_cifar_batches(tmp_path / 'data', random_images(10), np.arange(10), random_images(2),
                      np.arange(2))
  monkeypatch.setenv(sources.DATA_ENV_VAR, str(tmp_path / 'data'))
  monkeypatch.setattr(sources, 'tfds_prepared', lambda cfg: False)
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
  assert_user_error(lambda: sources.validate_split(images, labels, num_classes=10,
                                                          where='my.npz'), 'my.npz', message)


def test_a_subset_larger_than_the_split_is_refused(tmp_path):
  write_cifar_batches(tmp_path, random_images(10), np.arange(10), random_images(4), np.arange(4))
  assert_user_error(lambda: input_pipeline.load_splits(data_config(
      source='cifar_batches', data_dir=str(tmp_path), test_subset=5), seed=0),
                    'config.data.test_subset=5', 'the 4 examples of', 'test_batch')


def test_unknown_source():
  assert_user_error(lambda: input_pipeline.load_splits(data_config(source='imagenet'), seed=0),
                    'config.data.source')


def test_synthetic_is_deterministic():
  cfg = data_config(source='synthetic', train_subset=300, test_subset=40)
  a, b = input_pipeline.load_splits(cfg, seed=0), input_pipeline.load_splits(cfg, seed=5)
  assert a.train_images.shape == (300, 32, 32, 3) and a.test_images.shape == (40, 32, 32, 3)
  np.testing.assert_array_equal(a.train_images, b.train_images)
  np.testing.assert_array_equal(a.test_labels, b.test_labels)
  assert set(a.train_labels) == set(range(10))


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
