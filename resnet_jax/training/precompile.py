"""Ahead-of-time compiles on worker threads, so that a run's later shapes never stall it.

The first train call's shape compiles alone (on a GPU, XLA times candidate kernels while it
compiles, and those timings should not be taken beside other compiles); the others a run needs
(the partial last batch, evaluation) then compile while the devices train, instead of stalling
them when first called.
"""

import concurrent.futures
import time
from typing import Optional

import jax

from resnet_jax import console_logs


def _abstract(leaf):
  if isinstance(leaf, jax.Array):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding,
                                weak_type=leaf.weak_type)
  return leaf


class Compiler:
  """Compiled functions, one per name and batch shapes, compiled ahead on worker threads.

  Attributes:
    wait_seconds: the time callers waited for a compile to finish.
  """

  def __init__(self):
    self.wait_seconds = 0.0
    self._futures = {}
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4,
                                                       thread_name_prefix='compile')

  @staticmethod
  def _key(name: str, args) -> tuple:
    # args[0] (the state or the variables) has one shape a run; the batches vary.
    return name, tuple((leaf.shape, leaf.dtype) for leaf in jax.tree.leaves(args[1:]))

  @property
  def num_prepared(self) -> int:
    """Compiles started so far (one per name and batch shapes)."""
    return len(self._futures)

  def prepare(self, name: str, jitted, *args,
              after: Optional[concurrent.futures.Future] = None) -> concurrent.futures.Future:
    """Starts compiling jitted for args (arrays or ShapeDtypeStructs) unless it has been.

    `after`: a compile to finish first (see the module docstring).
    """
    key = self._key(name, args)
    if key not in self._futures:
      abstract_args = jax.tree.map(_abstract, args)

      def lower_and_compile():
        if after is not None:
          concurrent.futures.wait([after])
        return jitted.lower(*abstract_args).compile()

      self._futures[key] = self._pool.submit(lower_and_compile)
    return self._futures[key]

  def __call__(self, name: str, jitted, *args):
    future = self.prepare(name, jitted, *args)
    if not future.done():
      start = time.perf_counter()
      with console_logs.phase(f'compiling the {name} call'):
        concurrent.futures.wait([future])
      self.wait_seconds += time.perf_counter() - start
    return future.result()(*args)

  def close(self) -> None:
    self._pool.shutdown(wait=False, cancel_futures=True)
