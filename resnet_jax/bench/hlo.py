"""What a compiled call's optimised HLO holds that costs time on an accelerator, in numbers.

`summarize(hlo_text, ...)` counts, in the text of `jitted.lower(...).compile().as_text()` (the
HLO after XLA's passes, as an `--xla_dump_to` dump shows it):
- copies, and those of parameter-sized buffers (a copy of the weights each step is memory
  traffic for nothing);
- collectives (all-reduce, all-gather, ...), one after another in the forward pass when
  BatchNorm's statistics are global;
- float32 buffers the size of a batch of activations (rank 4, the batch leading) in a bfloat16
  step: each is an upcast the step pays for in memory bandwidth;
- kernels (fusions, convolutions, custom calls) and command buffers (CUDA graphs, on a GPU);
- while loops: a multi-step call's scan is one; any other runs its body one iteration after
  another (XLA:TPU makes one of a gather that slices each example at its own offset), and XLA's
  cost analysis counts a loop's body once, whatever its trip count.
`collective_groups(hlo_text)` gives each collective's groups of devices (its replica_groups),
which say whether devices that should be apart (a population's members) talk.
The benchmark records it for the first variant's one-step call; tests use it to hold the step
to what it should cost.
"""

import collections
import math
import re
from typing import Iterable, Optional

import numpy as np

# `name = f32[128,32,32,64]{3,2,1,0} opcode(` : the result's type, shape and opcode; a tuple
# result, `(f32[16]{0}, f32[10]{0}) all-reduce(`, has no one shape.
_INSTRUCTION = re.compile(r'=\s+(?:(\w+)\[([\d,]*)\]\S*|\(.*?\))\s+([a-z][\w-]*)\(')
COLLECTIVES = ('all-reduce', 'all-gather', 'all-to-all', 'reduce-scatter', 'collective-permute')
KERNELS = ('fusion', 'convolution', 'custom-call')


def instructions(hlo_text: str) -> Iterable[tuple[str, tuple[int, ...], str]]:
  """(element type, shape, opcode) of every instruction of the text ('tuple', () for a tuple)."""
  for match in _INSTRUCTION.finditer(hlo_text):
    dtype, dims, opcode = match.groups()
    yield dtype or 'tuple', tuple(int(d) for d in (dims or '').split(',') if d), opcode


def summarize(hlo_text: str, *, parameter_shapes: Iterable[tuple[int, ...]] = (),
              batch_size: Optional[int] = None) -> dict:
  """The counts of the module docstring, as a JSON-ready dict."""
  parameter_shapes = {tuple(shape) for shape in parameter_shapes}
  counts = collections.Counter()
  for dtype, shape, opcode in instructions(hlo_text):
    base = opcode.removesuffix('-start').removesuffix('-done')
    if opcode == 'copy':
      counts['copies'] += 1
      if shape in parameter_shapes:
        counts['parameter_sized_copies'] += 1
    if base in COLLECTIVES and not opcode.endswith('-done'):
      counts[base] += 1
    if base in KERNELS:
      counts['kernels'] += 1
    if opcode == 'while':
      counts['while_loops'] += 1
    if (dtype == 'f32' and batch_size and len(shape) == 4 and shape[0] == batch_size):
      counts['f32_activation_buffers'] += 1
  counts['command_buffers'] = len(re.findall(r'^\s*%?command_buffer\S*\s.*\{\s*$', hlo_text,
                                             re.MULTILINE))
  keys = ('copies', 'parameter_sized_copies', *COLLECTIVES, 'kernels', 'f32_activation_buffers',
          'command_buffers', 'while_loops')
  return {key: counts[key] for key in keys}


# A collective's groups: `replica_groups={{0,1},{2,3}}`, `={}` (every device), the iota form
# `=[4,2]<=[8]` or `=[2,4]<=[4,2]T(1,0)`; a collective-permute's `source_target_pairs={{0,1}}`.
_GROUPS = re.compile(r'(?:replica_groups|source_target_pairs)=(\{(?:\{[\d,]*\},?)*\}|'
                     r'\[[\d,]+\]<=\[[\d,]+\](?:T\([\d,]+\))?)')
_COLLECTIVE = re.compile(r'\s(' + '|'.join(COLLECTIVES) + r')(?:-start)?\(')


def parse_groups(text: str) -> Optional[list[list[int]]]:
  """A replica_groups value as lists of device ids (None: every device, `{}`)."""
  if text.startswith('{'):
    groups = [[int(i) for i in group.split(',') if i] for group in re.findall(r'\{([\d,]*)\}',
                                                                                text[1:-1])]
    return groups or None
  shape, dims, perm = re.fullmatch(r'\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?', text).groups()
  ids = np.arange(math.prod(int(d) for d in dims.split(','))).reshape(
      [int(d) for d in dims.split(',')])
  if perm:
    ids = ids.transpose([int(p) for p in perm.split(',')])
  return ids.reshape([int(d) for d in shape.split(',')]).tolist()


def collective_groups(hlo_text: str) -> list[tuple[str, str, Optional[list[list[int]]]]]:
  """(opcode, replica_groups as written, groups of device ids or None for every device) of each
  collective of a compiled call (the start of an asynchronous one)."""
  found = []
  for line in hlo_text.splitlines():
    collective = _COLLECTIVE.search(line)
    if collective:
      groups = _GROUPS.search(line)
      written = groups.group(1) if groups else '{}'
      found.append((collective.group(1), written, parse_groups(written)))
  return found
