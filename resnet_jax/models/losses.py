"""Cross-entropy on soft targets, with PyTorch's label smoothing."""

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from resnet_jax import errors


def cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0,
                  weights: Optional[jax.Array] = None) -> jax.Array:
  """Mean cross-entropy, as torch.nn.CrossEntropyLoss(label_smoothing=eps) on probabilities.

  Computed in float32 whatever the logits' dtype.

  Args:
    logits: (B, C).
    targets: (B, C) class probabilities (one-hot, or mixed by mixup).
    label_smoothing: eps; the targets become targets * (1 - eps) + eps / C.
    weights: optional (B,) example weights (e.g. 0 for padding); the mean is
      sum(w * loss) / sum(w), and 0 where every weight is 0.

  Returns:
    The scalar loss.
  """
  if not 0.0 <= label_smoothing <= 1.0:
    raise errors.UserError(f'config.label_smoothing={label_smoothing!r}: must be in [0, 1]')
  targets = targets.astype(jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
  if weights is None:
    return jnp.mean(losses)
  weights = weights.astype(jnp.float32)
  return jnp.sum(weights * losses) / jnp.maximum(jnp.sum(weights), jnp.finfo(jnp.float32).tiny)
