"""Speed candidates for one GPU: `python -m resnet_jax.benchmark --variants` (docs/benchmarks.md).

Each is measured on the benchmark's grid (--batch_sizes x --dtypes). `numerics` says what
`--check_numerics` expects of its training against the config alone on a CPU; variants with
`env` run in a fresh process each (XLA reads its flags once) and train, on a CPU, as the default.
"""

from resnet_jax.bench.variants import CLOSE, DIFFERS, SAME, Variant


def _xla(name: str, flags: str, note: str) -> Variant:
  return Variant(name, env={'XLA_FLAGS': flags}, numerics=SAME, note=note)


def get_variants():
  return [
      Variant('default', note='the config as given: ~32 steps a call (lax.scan), resident set'),
      # Steps per compiled call: fewer host round trips against a longer scan.
      Variant('steps_1', {'steps_per_call': 1}, note='one step a call, no lax.scan'),
      Variant('steps_8', {'steps_per_call': 8}),
      Variant('steps_epoch', {'steps_per_call': 1_000_000}, note='every full step of an epoch in '
              'one call (epoch_plan caps it at the full steps)'),
      # Input path: the streamed host batches against the resident gather.
      Variant('streamed', {'data.placement': 'host'}, note='host batches sent every call'),
      # BatchNorm's normalisation in bfloat16 (statistics stay float32): no float32 copies in
      # the elementwise, memory-bound part; the same as the default in float32.
      Variant('bn_compute', {'model.bn_dtype': 'compute'}, numerics=CLOSE),
      Variant('batch_1024', {'batch_size': 1024}, numerics=DIFFERS,
              note='another recipe: a larger batch than the grid, for the ceiling'),
      _xla('latency_hiding', '--xla_gpu_enable_latency_hiding_scheduler=true',
           'XLA schedules to overlap independent work (JAX GPU performance tips)'),
      # XLA:GPU runs a while loop's condition on the host each iteration (jax#2491); WHILE and
      # CONDITIONAL command buffers put the whole scan in one CUDA graph.
      _xla('graphs_while', '--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL',
           'WHILE and CONDITIONAL only: the loop stays on the host while its body has '
           'convolutions, which need +CONVOLUTION (graphs_while_conv)'),
      # A while loop becomes a CUDA graph only when every thunk of its body converts: the step's
      # convolutions must be command buffers too.
      _xla('graphs_while_conv', '--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL,+CONVOLUTION',
           'the lax.scan loop, convolutions included, as one CUDA graph'),
      _xla('graphs_off', '--xla_gpu_enable_command_buffer=',
           'no command buffers (CUDA graphs) at all'),
      _xla('graph_min_1', '--xla_gpu_graph_min_graph_size=1',
           'CUDA graphs for regions of any size (default 5 instructions)'),
      _xla('while_double_buffering', '--xla_gpu_enable_while_loop_double_buffering=true',
           'the scan body unrolled twice, overlapping consecutive steps'),
      _xla('autotune_0', '--xla_gpu_autotune_level=0',
           'no conv/GEMM autotuning: the compile time it costs against its gain'),
  ]
