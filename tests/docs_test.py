"""The CPU figures README.md and docs/ quote are the ones docs/cpu_figures.py last measured.

docs/cpu_figures.json records, for each figure, the documented command it ran and what it
measured; a figure in the docs changes only with a new measurement (`python docs/cpu_figures.py`).
"""

import json
import re
import runpy

import pytest

from conftest import REPO  # pylint: disable=g-bad-import-order

RECORD = json.loads((REPO / 'docs' / 'cpu_figures.json').read_text())
README = (REPO / 'README.md').read_text()
COMPARE = (REPO / 'docs' / 'compare.md').read_text()


def flat(text: str) -> str:
  """Text with shell line continuations joined and runs of white space made one space."""
  return re.sub(r'\s+', ' ', text.replace('\\\n', ' '))


def command_pattern(command: str) -> str:
  """A regex of a recorded command, its scratch workdir W standing for any documented one."""
  return r'\s+'.join(re.escape(part) if part != 'W' else r'\S+' for part in command.split())


@pytest.mark.parametrize('name,doc', [
    ('quick_start', README), ('smoke', README), ('sweep_tiny', README),
    ('compare_smoke', COMPARE), ('compare_narrow', COMPARE)])
def test_every_figure_is_printed_with_its_command(name, doc):
  assert re.search(command_pattern(RECORD[name]['command']), flat(doc)), name


def test_readme_training_figures_are_the_measured_ones():
  quick = RECORD['quick_start']['figures']
  assert f"`final test accuracy {quick['final_test_accuracy']:.2f}%`" in README
  assert f"{quick['wall_seconds']} s wall" in README
  smoke = RECORD['smoke']['figures']
  assert (f"{smoke['final_test_accuracy']:.2f}% test accuracy on {smoke['test_examples']:,} "
          f"test images, {smoke['wall_seconds']} s wall") in flat(README)


def test_readme_sweep_table_is_the_measured_one():
  for point in RECORD['sweep_tiny']['figures']['points']:
    row = (f"| {point['model.channels']} | {point['optim.learning_rate']} | "
           f"{int(point['parameters']):,} | {100 * float(point['final_test_accuracy']):.2f}% |")
    assert row in README, row


def test_compare_figures_are_the_measured_ones():
  for name in ('compare_smoke', 'compare_narrow'):
    figures = RECORD[name]['figures']
    for framework, label in (('jax', 'JAX'), ('torch', 'PyTorch')):
      mean, std = figures[framework]['final']
      row = f'| {label} | {mean:.2f} ± {std:.2f} |'
      assert row in COMPARE, (name, row)


@pytest.mark.parametrize('name', ['cpu_smoke', 'cpu_best', 'cpu_smoke_variants'])
def test_benchmark_tables_are_the_measured_ones(name):
  measured = json.loads((REPO / 'docs' / 'benchmarks' / f'{name}.json').read_text())['table']
  assert measured in (REPO / 'docs' / 'benchmarks.md').read_text()


@pytest.mark.parametrize('name', ['benchmark_smoke', 'benchmark_best', 'benchmark_variants',
                                  'numerics'])
def test_every_benchmark_is_printed_with_its_command(name):
  benchmarks = (REPO / 'docs' / 'benchmarks.md').read_text()
  assert re.search(command_pattern(RECORD[name]['command']), flat(benchmarks)), name


def test_tpu_table_is_the_compiled_one():
  tpu_figures = runpy.run_path(str(REPO / 'docs' / 'tpu_figures.py'))
  records = sorted((REPO / 'docs' / 'tpu').glob('*.json'))
  assert records
  text = (REPO / 'docs' / 'tpu.md').read_text()
  for path in records:
    assert tpu_figures['row'](json.loads(path.read_text())) in text, path.name
