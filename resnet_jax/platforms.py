"""The devices a run is placed on: the one place every platform decision reads.

`Platform.of(devices)` describes the devices of a run's mesh (`runs.setup_run` builds it once,
from the mesh): their platform, kind, count, processes and memory. Every decision that depends
on the hardware takes it as an argument rather than asking jax for the process's default
backend, so that a run set up for a TPU slice from a CPU machine (`compile_check`) decides as
the slice itself would:
- `models.compute_dtype`: model.dtype='auto' is bfloat16 off a CPU, float32 on one;
- `feed.default_steps_per_call`: steps fused in a compiled call (1 on a CPU);
- `steps.scan`: a lax.scan over a call's steps, or a Python unroll on a CPU;
- `feed.resident_placement`: the training set on the devices, judged by their memory;
- `progress.log_start`: the device line, and the warning for a large model on a CPU;
- `runs.run_results`: the device kind and counts a run's results record.
"""

import dataclasses
from typing import Optional, Sequence

import jax

GIB = 1 << 30

# Memory of one device by jax's device kind, where the device cannot be asked (a TPU topology or
# a GPU target compiled for from another machine) and to decide alike on every machine. From
# the vendors' specifications: Cloud TPU's system architecture pages (v4: 32 GiB HBM2 a chip;
# v5e: 16 GiB; v5p: 95 GiB; v6e: 32 GiB) and, for the GPUs, the device memory of XLA's target
# configs (xla/backends/gpu/target_config/specs/h100_sxm.txtpb, h200.txtpb).
HBM_BYTES = {
    'TPU v4': 32 * GIB,
    'TPU v5 lite': 16 * GIB,
    'TPU v5': 95 * GIB,
    'TPU v5p': 95 * GIB,
    'TPU v6 lite': 32 * GIB,
    'NVIDIA H100 80GB HBM3': 84_942_979_072,
    'NVIDIA H200 141GB HBM3e': 151_397_597_184,
}


@dataclasses.dataclass(frozen=True)
class Platform:
  """What a run's devices are, for the decisions that depend on them.

  Attributes:
    name: 'cpu', 'gpu' or 'tpu'.
    device_kind: jax's `device_kind` of the devices, e.g. 'TPU v5 lite', 'NVIDIA H100 80GB HBM3'.
    device_count: devices of the mesh, over every process.
    process_count: processes (hosts) that hold them.
    memory_bytes: memory of one device (HBM_BYTES by kind, else the runtime's limit); None where
      unknown (a CPU).
  """
  name: str
  device_kind: str
  device_count: int
  process_count: int
  memory_bytes: Optional[int]

  @classmethod
  def of(cls, devices: Sequence) -> 'Platform':
    """The platform of a mesh's devices (real ones, or a topology's compiled for)."""
    first = devices[0]
    name = 'gpu' if first.platform in ('cuda', 'rocm') else first.platform
    return cls(name=name, device_kind=first.device_kind, device_count=len(devices),
               process_count=len({device.process_index for device in devices}),
               memory_bytes=HBM_BYTES.get(first.device_kind) or _memory_limit(first))

  @property
  def is_cpu(self) -> bool:
    return self.name == 'cpu'

  @property
  def devices_per_process(self) -> int:
    return self.device_count // self.process_count


def _memory_limit(device) -> Optional[int]:
  """The runtime's memory limit of a device this process holds; None where it has none."""
  try:
    stats = device.memory_stats()
  except jax.errors.JaxRuntimeError:  # A device of a topology, or of another host.
    return None
  return (stats or {}).get('bytes_limit')
