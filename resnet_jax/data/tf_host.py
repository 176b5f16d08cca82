"""TensorFlow for host-side work only (tf.data, TFDS), where it is installed."""

import importlib.util


def import_tensorflow():
  """Imports TensorFlow for host-side work only: it must not take the accelerators from JAX."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TensorFlow already initialised its devices.
    pass
  return tf


def tf_importable() -> bool:
  return importlib.util.find_spec('tensorflow') is not None
