"""platforms: the run's devices decide, not the process's backend (a TPU slice from a CPU)."""

import importlib.util
import os

import jax
import pytest

from resnet_jax import platforms
from resnet_jax.data import input_pipeline
from resnet_jax.training import runs

from conftest import synthetic_config  # pylint: disable=g-bad-import-order

NO_LIBTPU = 'libtpu is not installed (the [tpu] extra): no TPU topology to compile for'


def test_the_cpu_devices_of_this_process_decide_as_a_cpu():
  platform = platforms.Platform.of(jax.devices())
  assert (platform.name, platform.device_count, platform.process_count) == (
      'cpu', jax.device_count(), 1)
  assert platform.is_cpu


@pytest.mark.skipif(importlib.util.find_spec('libtpu') is None, reason=NO_LIBTPU)
def test_a_tpu_slices_devices_give_the_tpu_decisions_in_a_cpu_process(monkeypatch):
  monkeypatch.setenv('ALLOW_MULTIPLE_LIBTPU_LOAD', os.environ.get('ALLOW_MULTIPLE_LIBTPU_LOAD', '1'))
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  devices = topologies.get_topology_desc(topology_name='v5e:2x4', platform='tpu',
                                         chips_per_host_bounds=(2, 4, 1)).devices
  config = synthetic_config(**{'batch_size': 128, 'data.train_subset': 50 * 128})
  splits = input_pipeline.load_splits(config.data, config.seed)
  run = runs.setup_run(config, '', splits=splits, devices=devices)
  assert jax.default_backend() == 'cpu'
  assert run.platform == platforms.Platform(name='tpu', device_kind='TPU v5 lite', device_count=8,
                                            process_count=1, memory_bytes=16 << 30)
  assert run.compute_dtype == 'bfloat16'
  assert run.plan.steps_per_call == 25  # 50 full steps fused (a CPU: 1 a call)
  assert not run.ctx.platform.is_cpu  # lax.scan over a call's steps, not a Python unroll
  assert run.resident  # judged by the chip's 16 GiB of HBM
  assert run.mesh.devices.size == 8
  # The same config on this process's CPU devices decides as a CPU.
  cpu_run = runs.setup_run(config, '', splits=splits)
  assert (cpu_run.compute_dtype, cpu_run.plan.steps_per_call) == ('float32', 1)
