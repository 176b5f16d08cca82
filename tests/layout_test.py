"""The package's floors: every import of resnet_jax runs down (or within a folder), never up.

Ground level (errors, defaults, files, accelerators, platforms, targets, compile_cache,
console_logs, cli) serves all; data, models and reporting stand on it; training and pytorch on
those; bench on training; the commands at the top import anything. Reporting receives what it reports and imports nothing of training.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'resnet_jax'
GROUND = ('errors', 'defaults', 'files', 'accelerators', 'platforms', 'targets', 'compile_cache',
          'console_logs', 'cli')
FLOORS = {
    'ground': 0,
    'data': 1, 'models': 1, 'reporting': 1,
    'training': 2, 'pytorch': 2,
    'bench': 3,
    'commands': 4,
}
COMMANDS = ('main', 'evaluate', 'inspect', 'export', 'compare', 'sweep', 'benchmark',
            'platform_check', 'compile_check')


def room(module: str) -> str:
  """The folder (or 'ground', 'commands') that holds a module named `resnet_jax.x[.y]`."""
  parts = module.split('.')[1:]
  if not parts:
    return 'ground'
  if (PACKAGE / parts[0]).is_dir():
    return parts[0]
  if parts[0] in GROUND:
    return 'ground'
  assert parts[0] in COMMANDS, f'{module} is neither a folder, ground level nor a command'
  return 'commands'


def imported_modules(path: pathlib.Path) -> set[str]:
  """Every resnet_jax module a file imports (`from resnet_jax import x` names x)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('resnet_jax'):
      if node.module == 'resnet_jax':
        found.update(f'resnet_jax.{alias.name}' for alias in node.names)
      else:
        found.add(node.module)
    elif isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith('resnet_jax'))
  return found


def modules() -> list[pathlib.Path]:
  return sorted(p for p in PACKAGE.rglob('*.py') if '__pycache__' not in p.parts)


@pytest.mark.parametrize('path', modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_down_the_floors(path):
  name = '.'.join(('resnet_jax',) + path.relative_to(PACKAGE).with_suffix('').parts)
  here = room(name.removesuffix('.__init__').removesuffix('.__main__'))
  for imported in imported_modules(path):
    there = room(imported)
    assert there == here or FLOORS[there] < FLOORS[here], (
        f'{name} ({here}) imports {imported} ({there}), which stands on the same floor or above')


def test_top_level_holds_only_commands_and_ground():
  top = {p.stem for p in PACKAGE.glob('*.py')} - {'__init__'}
  assert top == set(COMMANDS) | set(GROUND)
  assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != '__pycache__'} == (
      set(FLOORS) - {'ground', 'commands'})


def test_only_the_commands_read_the_command_line():
  # A library module is given what it needs (a run started from Python records what it was
  # given, not the command line of the process that runs it).
  readers = {'.'.join(path.relative_to(PACKAGE).with_suffix('').parts) for path in modules()
             if 'resnet_jax.cli' in imported_modules(path)}
  assert readers and readers <= set(COMMANDS) | {'models.__main__'}, readers
