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


def test_collective_groups_read_every_form_of_replica_groups():
  text = '''
  %a = f32[16]{0} all-reduce-start(%x), channel_id=1, replica_groups=[4,2]<=[8], to_apply=%sum
  %ad = f32[16]{0} all-reduce-done(%a)
  %b = f32[8]{0} all-reduce(%y), replica_groups=[2,4]<=[4,2]T(1,0), use_global_device_ids=true
  %c = f32[32,10]{1,0} all-gather(%y), replica_groups={{0,1},{2,3}}, dimensions={0}
  %d = f32[8]{0} all-reduce(%z), replica_groups={}, to_apply=%sum
  %e = f32[2]{0} collective-permute(%w), source_target_pairs={{0,1},{1,0}}
  %f = f32[64,32,32,16]{3,2,1,0} fusion(%a), kind=kLoop
  '''
  assert hlo.collective_groups(text) == [
      ('all-reduce', '[4,2]<=[8]', [[0, 1], [2, 3], [4, 5], [6, 7]]),
      ('all-reduce', '[2,4]<=[4,2]T(1,0)', [[0, 2, 4, 6], [1, 3, 5, 7]]),
      ('all-gather', '{{0,1},{2,3}}', [[0, 1], [2, 3]]),
      ('all-reduce', '{}', None),
      ('collective-permute', '{{0,1},{1,0}}', [[0, 1], [1, 0]])]
