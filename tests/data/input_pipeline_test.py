"""Tests for input_pipeline: splits, normalisation, epoch order and host batches."""

import itertools

from conftest import assert_user_error
from conftest import data_config
from conftest import image_keys
import numpy as np
import pytest

from resnet_jax import defaults
from resnet_jax.data import input_pipeline
from resnet_jax.data import sources
from resnet_jax.data import tf_host


# --- Splits and normalisation -----------------------------------------------------------------


def test_unknown_split_settings():
  for validation in ('abc', '1.5', '0', 'train', '-0.1'):
    assert_user_error(lambda: input_pipeline.load_splits(data_config(
        source='synthetic', validation=validation), seed=0), 'config.data.validation')
  assert_user_error(lambda: input_pipeline.load_splits(data_config(
      source='synthetic', train_subset=50, test_subset=5, normalization='batch'), seed=0),
                    'config.data.normalization')
  assert_user_error(lambda: input_pipeline.load_splits(data_config(
      source='synthetic', train_subset=50, test_subset=5, mean=(0.5, 0.5)), seed=0),
                    'config.data.mean')


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
  orders.update({f'hold-out seed {s}': sources.random_stream(
      sources.HOLDOUT_STREAM, s).permutation(n) for s in range(3)})
  orders['synthetic'] = sources.random_stream(
      sources.SYNTHETIC_STREAM).permutation(n)
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
    not tf_host.tf_importable(), reason='TensorFlow is not installed')))


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
  tf_tensors = input_pipeline.tf_tensors
  monkeypatch.setattr(input_pipeline, 'tf_tensors', lambda *a: copies.append(1) or tf_tensors(*a))
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
