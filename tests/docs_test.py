"""The docs speak to a user, and the CPU figures they quote are the ones last measured.

docs/cpu_figures.json records, for each figure, the documented command it ran, what it measured,
when, on which machine and with which versions; a figure in the docs changes only with a new
measurement (`python docs/cpu_figures.py`), and is quoted with its date, machine and versions.
The user docs cite only files of the repository and name no harness of the project's own
development machines.
"""

import importlib.util
import json
import re
import runpy

import pytest

from conftest import REPO  # pylint: disable=g-bad-import-order

RECORD = json.loads((REPO / 'docs' / 'cpu_figures.json').read_text())
README = (REPO / 'README.md').read_text()
COMPARE = (REPO / 'docs' / 'compare.md').read_text()
USER_DOCS = sorted([REPO / 'README.md', REPO / 'launch' / 'README.md',
                    *(REPO / 'docs').rglob('*.md')])
_spec = importlib.util.spec_from_file_location('cpu_figures', REPO / 'docs' / 'cpu_figures.py')
cpu_figures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cpu_figures)


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


@pytest.mark.parametrize('name,doc', [
    ('quick_start', README), ('smoke', README), ('sweep_tiny', README),
    ('compare_smoke', COMPARE), ('compare_narrow', COMPARE)], ids=lambda value: value[:20])
def test_every_figure_names_its_date_machine_and_versions(name, doc):
  assert cpu_figures.provenance(RECORD[name]) in flat(doc), name


def test_the_readme_figures_read_one_data_copy():
  """The README's figures are of one data copy (the JPEG copy), whichever file `auto` read."""
  sources = {RECORD[name]['figures']['data_source'].split(':')[0].split()[0]
             for name in ('quick_start', 'smoke')}
  assert sources <= {'jpeg_npz', 'cifar_batches'}, sources
  assert 'Which data a figure is of' in README


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
  narrow = RECORD['compare_narrow']['figures']
  summary = (f"JAX {narrow['jax']['final'][0]:.2f} ± {narrow['jax']['final'][1]:.2f}%, PyTorch "
             f"{narrow['torch']['final'][0]:.2f} ± {narrow['torch']['final'][1]:.2f}%")
  assert summary in flat(README), summary


@pytest.mark.parametrize('name', ['cpu_smoke', 'cpu_best', 'cpu_smoke_variants',
                                  'cpu8_smoke_population'])
def test_benchmark_tables_are_the_measured_ones(name):
  measured = json.loads((REPO / 'docs' / 'benchmarks' / f'{name}.json').read_text())['table']
  assert measured in (REPO / 'docs' / 'benchmarks.md').read_text()


@pytest.mark.parametrize('name', ['benchmark_smoke', 'benchmark_best', 'benchmark_variants',
                                  'benchmark_population', 'numerics'])
def test_every_benchmark_is_printed_with_its_command(name):
  benchmarks = (REPO / 'docs' / 'benchmarks.md').read_text()
  assert re.search(command_pattern(RECORD[name]['command']), flat(benchmarks)), name


# What only the project's own development harness has: a user has none of it.
HARNESS_WORDS = (r'\$OUT\b', r'\bcarry\b', r'\.device/', r'\brun\.sh\b', r'\btimeout_s\b',
                 r'prepare\.sh', r'REFERENCE\.md', r'\bissue \d+', r'\blent\b', r'\bsessions?\b')


@pytest.mark.parametrize('doc', USER_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_user_docs_name_no_development_harness(doc):
  text = doc.read_text()
  found = [m.group(0) for word in HARNESS_WORDS for m in re.finditer(word, text)]
  assert not found, found
  # ../shared exists on the development machines only: docs may name it as one place the JPEG
  # copy of CIFAR-10 lies, nothing else.
  shared = re.findall(r'\.\./shared\S*', text)
  assert all(path.startswith('../shared/data/cifar10_jpeg') for path in shared), shared


@pytest.mark.parametrize('doc', USER_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_user_docs_cite_only_files_of_the_repository(doc):
  text = doc.read_text()
  links = [link.split('#')[0] for link in re.findall(r'\]\(([^)\s]+)\)', text)
           if not re.match(r'[a-z]+://|#', link)]
  missing = [link for link in links if not (doc.parent / link).exists()]
  paths = re.findall(r'`((?:docs|configs|resnet_jax|launch|tests)/[\w./-]*\w)', text)
  missing += [path for path in paths if not (REPO / path).exists()]
  assert not missing, missing


def test_tpu_table_is_the_compiled_one():
  tpu_figures = runpy.run_path(str(REPO / 'docs' / 'tpu_figures.py'))
  records = sorted((REPO / 'docs' / 'tpu').glob('*.json'))
  assert records
  text = (REPO / 'docs' / 'tpu.md').read_text()
  for path in records:
    assert tpu_figures['row'](json.loads(path.read_text())) in text, path.name
