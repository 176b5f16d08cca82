"""Scoring a model's variables on a split: the one evaluator of training, evaluate and inspect.

A split is padded to whole batches (a mask marks the real examples) and put on the devices
once (`EvalSet`); one compiled call scores all its batches (`steps.evaluate_batches`), summing
loss and accuracy on the device. `dispatch` starts it and `read` waits for its results, so the
trainer can queue the next epoch's calls in between.
"""

import dataclasses
import functools
from typing import Callable, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np

from resnet_jax.training import feed
from resnet_jax.training import steps


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """A split padded to whole batches and placed on the devices, batches along axis 0.

  The images are lane-dense rows [num_batches, batch, H * W * C] (`steps.image_rows`).
  """
  images: jax.Array
  labels: jax.Array
  mask: jax.Array
  size: int

  def arrays(self) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The evaluate call's arguments after the variables."""
    return self.images, self.labels, self.mask


def batches(size: int, batch_size: int, num_devices: int) -> tuple[int, int]:
  """(batches, batch size) a split of `size` is scored in: config.eval_batch_size (at most the
  split) rounded up to a multiple of the devices, the last batch padded."""
  batch_size = -(-min(batch_size, size) // num_devices) * num_devices
  return -(-size // batch_size), batch_size


def eval_set_specs(size: int, batch_size: int, image_size: int,
                   mesh: jax.sharding.Mesh) -> tuple:
  """The evaluate call's arguments after the variables (`EvalSet.arrays`), as shapes."""
  num_batches, batch_size = batches(size, batch_size, mesh.shape[feed.DATA])
  sharding = feed.batch_sharded(mesh)
  spec = lambda shape, dtype: jax.ShapeDtypeStruct((num_batches, batch_size) + shape, dtype,
                                                   sharding=sharding)
  return spec((image_size * image_size * 3,), np.uint8), spec((), np.int32), spec((), np.bool_)


def make_eval_set(images: np.ndarray, labels: np.ndarray, batch_size: int,
                  mesh: jax.sharding.Mesh) -> EvalSet:
  """Pads a split to a whole number of batches (mask 0 on padding) and puts it on the devices."""
  size = len(labels)
  num_batches, batch_size = batches(size, batch_size, mesh.shape[feed.DATA])
  padding = num_batches * batch_size - size

  def stack(array):
    padded = np.concatenate([array, np.zeros((padding,) + array.shape[1:], array.dtype)])
    return padded.reshape((num_batches, batch_size) + array.shape[1:])

  sharding = feed.batch_sharded(mesh)
  return EvalSet(images=feed.put_global(stack(np.asarray(steps.image_rows(images))), sharding),
                 labels=feed.put_global(stack(labels.astype(np.int32)), sharding),
                 mask=feed.put_global(stack(np.ones(size, bool)), sharding), size=size)


def compile_evaluate(ctx: steps.StepContext, mesh: jax.sharding.Mesh) -> Callable:
  """The jitted evaluate call: (variables, images, labels, mask) -> (summed Metrics, classes)."""
  return jax.jit(functools.partial(steps.evaluate_batches, ctx=ctx),
                 out_shardings=(feed.replicated(mesh), feed.batch_sharded(mesh)))


@dataclasses.dataclass(frozen=True)
class Scoring:
  """An evaluation dispatched to the devices and not read yet (`read` waits for it)."""
  summed: steps.Metrics
  predictions: jax.Array
  size: int


def dispatch(evaluate_fn: Callable, variables: dict, eval_set: EvalSet) -> Scoring:
  """Starts scoring a split and returns at once; the devices run it in order with other calls."""
  summed, predictions = evaluate_fn(variables, *eval_set.arrays())
  return Scoring(summed, predictions, eval_set.size)


def read(scoring: Scoring, *,
         with_predictions: bool = True) -> tuple[dict, Optional[np.ndarray]]:
  """{'loss', 'accuracy'} of a dispatched scoring and the predicted class of each example
  (None without with_predictions: they stay on the devices)."""
  computed = {name: float(value) for name, value in scoring.summed.compute().items()}
  if not with_predictions:
    return computed, None
  predictions = np.asarray(multihost_utils.process_allgather(scoring.predictions, tiled=True))
  return computed, predictions.reshape(-1)[:scoring.size]


class Evaluator:
  """Scores variables on splits of one model and mesh, with one compiled evaluate function.

  Attributes:
    evaluate_fn: the jitted call (`compile_evaluate`).
  """

  def __init__(self, ctx: steps.StepContext, mesh: jax.sharding.Mesh, batch_size: int, *,
               call: Optional[Callable] = None, evaluate_fn: Optional[Callable] = None):
    """`call(jitted, *args)` runs the jitted function (default: directly), e.g. a Compiler's;
    `evaluate_fn`: another compiled evaluate call than `compile_evaluate`'s (a population's)."""
    self._mesh, self._batch_size = mesh, batch_size
    self.evaluate_fn = evaluate_fn or compile_evaluate(ctx, mesh)
    self._call = call

  def eval_set(self, images: np.ndarray, labels: np.ndarray) -> EvalSet:
    return make_eval_set(images, labels, self._batch_size, self._mesh)

  def dispatch(self, variables: dict, eval_set: EvalSet) -> Scoring:
    """`dispatch` with this evaluator's function (through `call` where given)."""
    evaluate_fn = (self.evaluate_fn if self._call is None
                   else functools.partial(self._call, self.evaluate_fn))
    return dispatch(evaluate_fn, variables, eval_set)

  def score(self, variables: dict, eval_set: EvalSet, *,
            with_predictions: bool = True) -> tuple[dict, Optional[np.ndarray]]:
    """{'loss', 'accuracy'} over a split and each example's predicted class (None without
    with_predictions): dispatched, then read."""
    return read(self.dispatch(variables, eval_set), with_predictions=with_predictions)

  def score_split(self, variables: dict, images: np.ndarray,
                  labels: np.ndarray) -> tuple[dict, np.ndarray]:
    """Metrics and predictions of a split given as host arrays."""
    return self.score(variables, self.eval_set(images, labels))
