"""hlo.summarize: the costs it counts in a compiled call's HLO text."""

import jax
import jax.numpy as jnp

from resnet_jax.bench import hlo

TEXT = '''
ENTRY %main {
  %p0 = f32[3,3,8,16]{3,2,1,0} parameter(0)
  %copy.1 = f32[3,3,8,16]{3,2,1,0} copy(%p0)
  %copy.2 = s32[] copy(%c)
  %ar = f32[16]{0} all-reduce-start(%x), replica_groups={}
  %ard = f32[16]{0} all-reduce-done(%ar)
  %ag = f32[32,10]{1,0} all-gather(%y), dimensions={0}
  %ar2 = (f32[16]{0}, f32[10]{0}) all-reduce(%u, %v), to_apply=%sum
  %fusion.3 = f32[64,32,32,16]{3,2,1,0} fusion(%a), kind=kLoop
  %conv = bf16[64,32,32,16]{3,2,1,0} convolution(%b, %w)
  %while.7 = (s32[]{:T(128)}, u8[128,40,40,3]{3,2,1,0:T(8,128)(4,1)}) while(%t), condition=%c, body=%b
}
%command_buffer.4 (p: f32[2]) -> f32[2] {
  %cc = f32[2]{0} custom-call(%p), custom_call_target="x"
}
'''


def test_summarize_counts_each_cost():
  counts = hlo.summarize(TEXT, parameter_shapes=[(3, 3, 8, 16)], batch_size=64)
  assert counts == {'copies': 2, 'parameter_sized_copies': 1, 'all-reduce': 2, 'all-gather': 1,
                    'all-to-all': 0, 'reduce-scatter': 0, 'collective-permute': 0,
                    'kernels': 3, 'f32_activation_buffers': 1, 'command_buffers': 1,
                    'while_loops': 1}


def test_a_real_compile_has_kernels_and_no_collectives_on_one_device():
  text = jax.jit(lambda x: jnp.tanh(x @ x.T) * 2).lower(jnp.ones((8, 4))).compile().as_text()
  counts = hlo.summarize(text)
  assert counts['kernels'] >= 1 and counts['all-reduce'] == counts['while_loops'] == 0


def test_a_real_loop_is_counted():
  loop = lambda x, n: jax.lax.fori_loop(0, n, lambda i, y: jnp.tanh(y @ x), x)
  text = jax.jit(loop).lower(jnp.ones((4, 4)), 3).compile().as_text()
  assert hlo.summarize(text)['while_loops'] == 1
