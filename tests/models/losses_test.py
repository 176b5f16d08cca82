"""Losses: cross-entropy against torch.nn.functional.cross_entropy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from resnet_jax import errors
from resnet_jax.models import losses

NUM_CLASSES = 10


def _batch(seed=0, batch=6):
  rng = np.random.default_rng(seed)
  logits = rng.normal(0, 3, (batch, NUM_CLASSES)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, batch)
  return logits, labels


def _torch_losses(logits, targets, label_smoothing):
  return torch.nn.functional.cross_entropy(
      torch.tensor(np.asarray(logits)), torch.tensor(np.asarray(targets)),
      label_smoothing=label_smoothing, reduction='none').numpy()


@pytest.mark.parametrize('label_smoothing', [0.0, 0.1, 0.35])
def test_one_hot_targets_match_torch_class_indices(label_smoothing):
  logits, labels = _batch()
  ours = losses.cross_entropy(jnp.asarray(logits), jax.nn.one_hot(labels, NUM_CLASSES),
                              label_smoothing)
  expected = _torch_losses(logits, labels, label_smoothing).mean()
  np.testing.assert_allclose(ours, expected, rtol=1e-6)


@pytest.mark.parametrize('label_smoothing', [0.0, 0.2])
def test_soft_targets_match_torch_probabilities(label_smoothing):
  logits, _ = _batch(1)
  targets = np.random.default_rng(2).dirichlet(np.ones(NUM_CLASSES), len(logits)).astype(np.float32)
  ours = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(targets), label_smoothing)
  expected = _torch_losses(logits, targets, label_smoothing).mean()
  np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_weights_give_a_masked_mean():
  logits, labels = _batch(3)
  weights = np.array([1, 0, 1, 1, 0, 0.5], np.float32)
  ours = losses.cross_entropy(jnp.asarray(logits), jax.nn.one_hot(labels, NUM_CLASSES), 0.1,
                              jnp.asarray(weights))
  per_example = _torch_losses(logits, labels, 0.1)
  np.testing.assert_allclose(ours, (weights * per_example).sum() / weights.sum(), rtol=1e-6)
  all_masked = losses.cross_entropy(jnp.asarray(logits), jax.nn.one_hot(labels, NUM_CLASSES),
                                    weights=jnp.zeros(len(logits)))
  assert float(all_masked) == 0.0


def test_bfloat16_logits_are_reduced_in_float32():
  logits, labels = _batch(4)
  low = jnp.asarray(logits, jnp.bfloat16)
  ours = losses.cross_entropy(low, jax.nn.one_hot(labels, NUM_CLASSES))
  assert ours.dtype == jnp.float32
  expected = _torch_losses(np.asarray(low.astype(jnp.float32)), labels, 0.0).mean()
  np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_traced_label_smoothing_is_that_of_the_number():
  # A population's member reads its smoothing traced; its loss must be its single run's, bitwise.
  logits, labels = _batch()
  args = (jnp.asarray(logits), jax.nn.one_hot(labels, NUM_CLASSES))
  traced = jax.jit(losses.cross_entropy)
  for eps in np.random.default_rng(0).uniform(0.001, 0.5, 24).astype(np.float32):
    number = jax.jit(lambda *args, eps=float(eps): losses.cross_entropy(*args, eps))
    assert traced(*args, eps) == number(*args)


def test_label_smoothing_out_of_range_names_the_key():
  logits, labels = _batch()
  with pytest.raises(errors.UserError, match=r'config\.label_smoothing'):
    losses.cross_entropy(jnp.asarray(logits), jax.nn.one_hot(labels, NUM_CLASSES), 1.5)
