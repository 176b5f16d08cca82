"""Variants: the GPU variants file, applying and checking variants, their CPU numerics check."""

import numpy as np
import pytest

from resnet_jax.bench import variants
from resnet_jax.data import input_pipeline
from resnet_jax.errors import UserError

from conftest import REPO, synthetic_config

GPU_VARIANTS = str(REPO / 'configs' / 'benchmarks' / 'gpu_variants.py')


@pytest.fixture(scope='module')
def gpu_variants():
  return variants.load_variants(GPU_VARIANTS)


def test_gpu_variants_cover_the_issues_candidates(gpu_variants):
  names = [v.name for v in gpu_variants]
  assert names[0] == 'default' and not gpu_variants[0].overrides
  for name in ('steps_1', 'steps_epoch', 'streamed', 'bn_compute', 'latency_hiding',
               'graphs_while', 'graphs_off', 'autotune_0'):
    assert name in names
  # Every override names a key the config has.
  for variant in gpu_variants:
    variants.apply(synthetic_config(), variant)
  # A while loop is one CUDA graph only when its body's convolutions are command buffers too.
  loop_graph = next(v for v in gpu_variants if v.name == 'graphs_while_conv')
  assert set(loop_graph.env['XLA_FLAGS'].split('=', 1)[1].split(',')) == {
      '+WHILE', '+CONDITIONAL', '+CONVOLUTION'}


def test_this_jax_knows_every_xla_flag_of_the_gpu_variants(gpu_variants):
  assert variants.unknown_xla_flags(gpu_variants) is None


def test_an_unknown_xla_flag_is_found_here():
  bogus = variants.Variant('bogus', env={'XLA_FLAGS': '--xla_gpu_no_such_flag=true'})
  assert 'xla_gpu_no_such_flag' in variants.unknown_xla_flags([bogus])


def test_gpu_variants_train_the_defaults_numbers_on_the_cpu(gpu_variants):
  """Each 'same' variant trains what the config alone trains; 'close' near it (2 steps)."""
  config = synthetic_config(**{'data.train_subset': 128})
  splits = input_pipeline.load_splits(config.data, config.seed)
  checks = variants.check_numerics(config, splits, gpu_variants, ['float32'])
  close = [v for v in gpu_variants if v.numerics == variants.CLOSE]
  checks += variants.check_numerics(config, splits, close, ['bfloat16'])
  table = variants.format_checks(checks)
  assert all(c.passed is not False for c in checks), table
  compared = {(c.variant, c.dtype) for c in checks if c.passed}
  assert {('steps_epoch', 'float32'), ('streamed', 'float32'),
          ('bn_compute', 'bfloat16')} <= compared, table
  assert next(c for c in checks if c.variant == 'graphs_while').reason.startswith('environment')
  bn16 = next(c for c in checks if (c.variant, c.dtype) == ('bn_compute', 'bfloat16'))
  assert bn16.param_difference > 0  # bfloat16 rounding, though within the tolerance


def test_compare_fails_beyond_the_tolerance():
  reference = (2.0, [np.ones(100)])
  same = variants.Variant('x', {'steps_per_call': 2})
  assert variants.compare(same, 'float32', (2.0, [np.ones(100) * (1 + 1e-7)]), reference).passed
  check = variants.compare(same, 'float32', (2.01, [np.ones(100)]), reference)
  assert check.passed is False and check.loss_difference == pytest.approx(0.005)


def test_environment_adds_xla_flags_to_the_processes_own():
  variant = variants.Variant('v', env={'XLA_FLAGS': '--b=1', 'OTHER': 'x'})
  env = variants.environment(variant, {'XLA_FLAGS': '--a=1', 'PATH': '/bin'})
  assert env == {'XLA_FLAGS': '--a=1 --b=1', 'OTHER': 'x', 'PATH': '/bin'}


@pytest.mark.parametrize('text, message', [
    ('def get_variants():\n  return [dict(name="a"), dict(name="a")]', 'names repeated: a'),
    ('def get_variants():\n  return [dict(name="a b")]', "variant name 'a b'"),
    ('def get_variants():\n  return [dict(name="a", numerics="equal")]', "numerics='equal'"),
    ('VARIANTS = []', 'defines no get_variants()'),
    # Each of these was a traceback.
    ('def get_variants(:\n  return []', r'cannot be loaded: SyntaxError: .*v\.py, line 1\)'),
    ('def get_variants():\n  return [Variant("a")]',
     r"cannot be loaded: NameError: name 'Variant' is not defined \(.*v\.py, line 2\)"),
    ('import resnet_jax.no_such_module\ndef get_variants():\n  return []',
     r'cannot be loaded: ModuleNotFoundError: .*no_such_module.*line 1\)'),
    ('def get_variants():\n  return [dict(name="a", overides={})]',
     r"item 1 has no field 'overides' \(a misspelling\?\); a Variant's fields are name, "),
    ('def get_variants():\n  return [dict(overrides={})]', r"item 1 has no 'name'"),
    ('def get_variants():\n  return ["a"]', 'item 1 is a str, not a Variant'),
    ('def get_variants():\n  pass', r'get_variants\(\) returned NoneType, not a list'),
])
def test_bad_variants_files_are_one_line_errors(tmp_path, text, message):
  path = tmp_path / 'v.py'
  path.write_text(text)
  with pytest.raises(UserError, match=message) as info:
    variants.load_variants(str(path))
  assert '\n' not in str(info.value)


def test_an_override_of_a_missing_key_names_it():
  with pytest.raises(UserError, match='variant v: config.model.bn_dtypes'):
    variants.apply(synthetic_config(), variants.Variant('v', {'model.bn_dtypes': 'compute'}))
