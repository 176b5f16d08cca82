"""Cross-entropy on soft targets, with PyTorch's label smoothing."""

import numbers
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from resnet_jax import errors


def cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: Any = 0.0,
                  weights: Optional[jax.Array] = None) -> jax.Array:
  """Mean cross-entropy, as torch.nn.CrossEntropyLoss(label_smoothing=eps) on probabilities.

  Computed in float32 whatever the logits' dtype.

  Args:
    logits: (B, C).
    targets: (B, C) class probabilities (one-hot, or mixed by mixup).
    label_smoothing: eps; the targets become targets * (1 - eps) + eps / C. A number is checked
      and skipped where 0; a jax scalar (traced, e.g. a population member's) is always applied.
    weights: optional (B,) example weights (e.g. 0 for padding); the mean is
      sum(w * loss) / sum(w), and 0 where every weight is 0.

  Returns:
    The scalar loss.
  """
  is_number = isinstance(label_smoothing, numbers.Real)
  if is_number and not 0.0 <= label_smoothing <= 1.0:
    raise errors.UserError(f'config.label_smoothing={label_smoothing!r}: must be in [0, 1]')
  targets = targets.astype(jnp.float32)
  if not is_number or label_smoothing:
    # optax.smooth_labels' eps / C, written eps * (1 / C): XLA computes the quotient of a number
    # but turns a traced eps's into that product, and a member's loss must be its single run's.
    eps = jnp.asarray(label_smoothing, jnp.float32)
    targets = (1 - eps) * targets + eps * (1 / targets.shape[-1])
  losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
  if weights is None:
    return jnp.mean(losses)
  weights = weights.astype(jnp.float32)
  return jnp.sum(weights * losses) / jnp.maximum(jnp.sum(weights), jnp.finfo(jnp.float32).tiny)
