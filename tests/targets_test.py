"""targets: Cloud TPU slices by their names, laid out on hosts as Cloud TPU does; GPU configs."""

import importlib.util

import pytest

from resnet_jax import errors
from resnet_jax import targets

NO_LIBTPU = 'libtpu is not installed (the [tpu] extra): no TPU topology to compile for'


@pytest.mark.parametrize('name,jax_name,shape', [
    ('v4-8', 'v4', (2, 2, 1)),            # 8 TensorCores: 4 chips
    ('v5p-8', 'v5p', (2, 2, 1)),
    ('v5p-512', 'v5p', (4, 8, 8)),        # 256 chips
    ('v4-128', 'v4', (4, 4, 4)),
    ('v5litepod-8', 'v5e', (2, 4)),       # chips
    ('v5e-8', 'v5e', (2, 4)),
    ('v5litepod-256', 'v5e', (16, 16)),
    ('v5litepod-32', 'v5e', (4, 8)),
    ('v6e-8', 'v6e', (2, 4)),
    ('v5e:2x4', 'v5e', (2, 4)),           # jax's own form
    ('v4:2x2x2', 'v4', (2, 2, 2)),
])
def test_slices_are_read_as_cloud_tpu_names_them(name, jax_name, shape):
  generation, parsed = targets.parse_slice(name)
  assert (generation.jax_name, parsed) == (jax_name, shape)


@pytest.mark.parametrize('name,message', [
    ('v5p-6', 'counts TensorCores'),
    ('v5litepod-12', 'power of two'),
    ('v9-8', 'is not a Cloud TPU slice'),
    ('v5e:2x4x1', '2-D shape'),
])
def test_a_wrong_slice_name_is_one_line_naming_the_forms(name, message):
  with pytest.raises(errors.UserError, match=message):
    targets.parse_slice(name)


@pytest.mark.skipif(importlib.util.find_spec('libtpu') is None, reason=NO_LIBTPU)
@pytest.mark.parametrize('name,devices,hosts,kind', [
    ('v5litepod-8', 8, 1, 'TPU v5 lite'),   # one host of 8 (libtpu's default for 2x4: two)
    ('v5litepod-32', 32, 8, 'TPU v5 lite'),
    ('v4-8', 4, 1, 'TPU v4'),               # megacore: a device a chip
    ('v5p-16', 8, 2, 'TPU v5'),
    ('v6e-8', 8, 1, 'TPU v6 lite'),
])
def test_slices_have_the_hosts_and_devices_of_cloud_tpu(name, devices, hosts, kind):
  target = targets.tpu_slice(name)
  assert (len(target.devices), target.hosts, target.devices[0].device_kind) == (
      devices, hosts, kind)


def test_gpu_target_configs_carry_the_published_memory():
  text = targets.gpu_target_config('h200')
  assert 'device_memory_size: 151397597184' in text
  assert 'device_description_str: "NVIDIA H200 141GB HBM3e"' in text
  assert 'core_count: 132' in targets.gpu_target_config('h100')


@pytest.mark.skipif(importlib.util.find_spec('jax_cuda12_plugin') is not None,
                    reason="jax's CUDA plugin is installed")
def test_without_the_cuda_plugin_one_line_says_how_to_install_it():
  with pytest.raises(errors.UserError, match=r"needs jax's CUDA plugin.*pip install 'jax\[cuda12\]'"):
    targets.gpus('h100', 1)
