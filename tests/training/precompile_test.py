"""precompile: compiles started ahead are the ones calls use, in the order asked."""

import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.training import precompile


def test_compiles_started_ahead_are_the_ones_calls_use():
  compiled = precompile.Compiler()
  scale = jax.jit(lambda state, batch: state * batch.sum())
  state = jnp.float32(2.0)
  compiled.prepare('scale', scale, state, jax.ShapeDtypeStruct((3,), jnp.float32))
  compiled.prepare('scale', scale, state, jax.ShapeDtypeStruct((5,), jnp.float32))
  # A shape prepared but never called costs a compile, never a wrong result.
  compiled.prepare('scale', scale, state, jax.ShapeDtypeStruct((4, 2), jnp.float32))
  assert float(compiled('scale', scale, state, jnp.ones(3))) == 6.0
  assert float(compiled('scale', scale, state, jnp.ones(5))) == 10.0
  assert float(compiled('scale', scale, state, jnp.ones(7))) == 14.0  # Not prepared: compiled now.
  assert compiled.num_prepared == 4
  assert compiled.wait_seconds > 0  # The unprepared shape was waited for.
  compiled.close()


def test_a_compile_prepared_after_another_starts_once_that_one_is_done():
  compiled = precompile.Compiler()
  gate, order = threading.Event(), []

  class Jitted:  # What prepare uses of a jitted function: lower(...).compile().

    def __init__(self, name, wait=False):
      self.name, self.wait = name, wait

    def lower(self, *args):
      del args
      if self.wait:
        gate.wait(timeout=30)
      order.append(self.name)
      return self

    def compile(self):
      return lambda *args: self.name

  first = compiled.prepare('a', Jitted('first', wait=True), None, np.zeros(1))
  later = compiled.prepare('b', Jitted('later'), None, np.zeros(2), after=first)
  time.sleep(0.2)
  assert order == [] and not later.done()  # Held back while the first is still compiling.
  gate.set()
  assert compiled('b', None, None, np.zeros(2)) == 'later'
  assert order == ['first', 'later']
  compiled.close()
