"""The devices of a machine this one compiles for: a Cloud TPU slice, or NVIDIA GPUs.

`tpu_slice(name)` reads a slice as Cloud TPU names it (`gcloud compute tpus tpu-vm create
--accelerator-type`: v4-8, v5litepod-8, v5p-8, v6e-8, pods such as v5litepod-256 or v5p-512;
v4 and v5p count TensorCores, two a chip, v5e and v6e count chips), the short form v5e-8, or
jax's own form (v5e:2x4), and lays its chips out on hosts as Cloud TPU does: one host up to 8
chips of v5e and v6e and 4 of v4 and v5p, hosts of 4 chips (2x2) beyond; v4 and v5p chips are
megacore devices (one device a chip). libtpu (the [tpu] extra) gives the devices, on any
machine: `jax.experimental.topologies.get_topology_desc`.

`gpus(name, count)` does the same for one host of H100 or H200 GPUs, from target configs written
here from the specifications XLA publishes (xla/backends/gpu/target_config/specs/); it needs
jax's CUDA plugin (not a GPU, nor a driver).
"""

import dataclasses
import importlib.util
import math
import os
import re

import jax

from resnet_jax.errors import UserError, one_line

INSTALL_TPU = "pip install 'jax[tpu]' (the [tpu] extra: pip install -e '.[tpu]')"
INSTALL_CUDA = ("pip install 'jax[cuda12]' (the [cuda12] extra: pip install -e '.[cuda12]'); "
                'no GPU or driver is needed to compile')


@dataclasses.dataclass(frozen=True)
class Generation:
  """A TPU generation as Cloud TPU sells it and libtpu names it."""
  jax_name: str        # libtpu's topology prefix: v5e:2x4
  cores_per_chip: int  # what the accelerator type's number counts per chip (v4, v5p: 2 cores)
  dims: int            # 2: a 2-D torus of chips (v5e, v6e); 3: 3-D (v4, v5p)
  single_host_chips: int  # the most chips one host holds
  megacore: bool       # one device a chip (two TensorCores)


GENERATIONS = {
    'v4': Generation('v4', 2, 3, 4, True),
    'v5p': Generation('v5p', 2, 3, 4, True),
    'v5litepod': Generation('v5e', 1, 2, 8, False),
    'v5e': Generation('v5e', 1, 2, 8, False),
    'v6e': Generation('v6e', 1, 2, 8, False),
}
# Hosts of a multi-host slice hold 4 chips each, 2x2.
HOST_BOUNDS = (2, 2, 1)
TOPOLOGY_FORMS = ('v4-8', 'v5litepod-8 (or v5e-8)', 'v5p-8', 'v6e-8', 'v5litepod-256', 'v5p-512',
                  'v5e:2x4')


@dataclasses.dataclass(frozen=True)
class Target:
  """Devices to compile for, and how they were named."""
  name: str            # as given: v5litepod-8, h100
  devices: tuple       # jax devices (of a topology: no process holds them)
  hosts: int
  description: str     # e.g. 'v5e:2x4, 1 host of 8 chips'


def _slice_shape(chips: int, dims: int) -> tuple[int, ...]:
  """Cloud TPU's default shape of a slice of `chips` chips (a power of two): 8 -> 2x4 (2-D),
  4 -> 2x2x1, 16 -> 2x2x4, 64 -> 4x4x4 (3-D)."""
  if dims == 2:
    x = 2 ** (int(math.log2(chips)) // 2)
    return x, chips // x
  shape = [1, 1, 1]
  for _ in range(int(math.log2(chips))):
    shape[shape.index(min(shape))] *= 2
  shape.sort()
  return tuple(shape[1:] + shape[:1]) if shape[0] == 1 else tuple(shape)


def parse_slice(name: str) -> tuple[Generation, tuple[int, ...]]:
  """(generation, chip shape) of a slice's name; UserError naming the accepted forms."""
  text = name.strip().lower()
  gcloud = re.fullmatch(r'(v4|v5p|v5litepod|v5e|v6e)-(\d+)', text)
  jax_form = re.fullmatch(r'(v4|v5p|v5e|v6e):(\d+(?:x\d+){1,2})', text)
  if gcloud:
    generation, count = GENERATIONS[gcloud.group(1)], int(gcloud.group(2))
    chips = count // generation.cores_per_chip
    if count % generation.cores_per_chip or chips < 1 or chips & (chips - 1):
      unit = 'TensorCores (2 a chip)' if generation.cores_per_chip == 2 else 'chips'
      raise UserError(f'--topology={name}: {gcloud.group(1)} counts {unit}; the number must give '
                      f'a power of two of chips, e.g. {gcloud.group(1)}-8')
    return generation, _slice_shape(chips, generation.dims)
  if jax_form:
    generation = GENERATIONS[jax_form.group(1)]
    shape = tuple(int(d) for d in jax_form.group(2).split('x'))
    if len(shape) != generation.dims or min(shape) < 1:
      raise UserError(f'--topology={name}: {jax_form.group(1)} chips form a {generation.dims}-D '
                      f'shape, e.g. {generation.jax_name}:'
                      f'{"x".join(map(str, _slice_shape(8, generation.dims)))}')
    return generation, shape
  raise UserError(f'--topology={name} is not a Cloud TPU slice; use an accelerator type as '
                  f'gcloud names it or jax\'s form: {", ".join(TOPOLOGY_FORMS)}')


def tpu_slice(name: str) -> Target:
  """The devices of a Cloud TPU slice, laid out on hosts as Cloud TPU does (module docstring)."""
  generation, shape = parse_slice(name)
  if importlib.util.find_spec('libtpu') is None:
    raise UserError(f'compiling for a TPU needs libtpu, which is not installed: {INSTALL_TPU}')
  chips = math.prod(shape)
  bounds = (tuple(shape) + (1,) * (3 - len(shape)) if chips <= generation.single_host_chips
            else HOST_BOUNDS)
  options = {'chips_per_host_bounds': bounds}
  if generation.megacore:
    options['chip_config_name'] = 'megacore'
  # A second process (a test, another check) may hold libtpu: compiling needs no TPU.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  topology = f'{generation.jax_name}:{"x".join(map(str, shape))}'
  devices = tuple(topologies.get_topology_desc(topology_name=topology, platform='tpu',
                                               **options).devices)
  hosts = len({device.process_index for device in devices})
  return Target(name=name, devices=devices, hosts=hosts,
                description=f'{topology}, {_plural(hosts, "host")} of '
                            f'{_plural(len(devices) // hosts, "chip")}')


def _plural(count: int, noun: str) -> str:
  return f'{count} {noun}' + ('' if count == 1 else 's')


# The GPUs' target configs (XLA's GpuTargetConfigProto as text), from XLA's published specs
# (xla/backends/gpu/target_config/specs/h100_sxm.txtpb and h200.txtpb): the fields this jax's
# compiler reads.
GPU_SPECS = {
    'h100': {'name': 'NVIDIA H100 80GB HBM3', 'memory_bandwidth': 3352320000000,
             'device_memory_size': 84942979072},
    'h200': {'name': 'NVIDIA H200 141GB HBM3e', 'memory_bandwidth': 4800000000000,
             'device_memory_size': 151397597184},
}
_HOPPER = {  # what the H100 SXM and the H200 share (compute capability 9.0, 132 SMs)
    'threads_per_block_limit': 1024, 'threads_per_warp': 32, 'shared_memory_per_block': 49152,
    'shared_memory_per_core': 233472, 'threads_per_core_limit': 2048, 'core_count': 132,
    'fpus_per_core': 128, 'block_dim_limit_x': 2147483647, 'block_dim_limit_y': 65535,
    'block_dim_limit_z': 65535, 'l2_cache_size': 52428800, 'clock_rate_ghz': 1.98,
    'shared_memory_per_block_optin': 232448, 'registers_per_core_limit': 65536,
    'registers_per_block_limit': 65536,
}


def gpu_target_config(gpu: str) -> str:
  """The target config of an 'h100' or 'h200' as the text of a GpuTargetConfigProto."""
  spec = GPU_SPECS[gpu]
  fields = {**_HOPPER, 'memory_bandwidth': spec['memory_bandwidth'],
            'device_memory_size': spec['device_memory_size']}
  info = '\n'.join(f'  {key}: {value}' for key, value in fields.items())
  return (f'gpu_device_info {{\n{info}\n  cuda_compute_capability {{ major: 9 minor: 0 }}\n'
          f'  name: "{spec["name"]}"\n}}\nplatform_name: "CUDA"\n'
          f'dnn_version_info {{ major: 9 minor: 10 }}\n'
          f'device_description_str: "{spec["name"]}"\n')


def gpus(gpu: str, count: int) -> Target:
  """`count` GPUs of one host ('h100' or 'h200'); UserError where jax's CUDA plugin is missing."""
  if gpu not in GPU_SPECS:
    raise UserError(f'--gpu={gpu} is not one of {", ".join(GPU_SPECS)}')
  if count < 1:
    raise UserError(f'--gpus={count} must be at least 1')
  if not any(importlib.util.find_spec(name) for name in ('jax_cuda12_plugin',
                                                          'jax_cuda13_plugin')):
    raise UserError(f"compiling for a GPU needs jax's CUDA plugin, which is not installed: "
                    f'{INSTALL_CUDA}')
  # The plugin checks the CUDA libraries against a driver; compiling needs none.
  os.environ.setdefault('JAX_SKIP_CUDA_CONSTRAINTS_CHECK', '1')
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    devices = tuple(topologies.get_topology_desc(
        'gpu', 'cuda', target_config=gpu_target_config(gpu), topology=f'1x1x{count}').devices)
  except (jax.errors.JaxRuntimeError, ValueError) as e:
    raise UserError(f"jax's CUDA plugin could not make a target of {count} x "
                    f"{GPU_SPECS[gpu]['name']}: {one_line(e)}") from e
  return Target(name=gpu, devices=devices, hosts=1,
                description=f'{count} x {GPU_SPECS[gpu]["name"]}, 1 host')

