"""What a population writes for people: population.md, population.json and curves.png.

A population is several runs of one network trained at once (`config.population.seeds`, or sweep
points that differ in scalar hyperparameters only); each member leaves an ordinary run's workdir.
`write_population_report` reads them (each member's results.json and metrics.jsonl, and its
config.json for the keys that differ among members) and writes the population's own summary into
the population's workdir: a row a member, the mean and sample standard deviation of the final test
and best validation accuracy, the references the config names, the machine, the versions and the
command; and every member's validation curve, with their mean, on one figure. A member that has
not finished is listed as such and left out of the means.
"""

import json
import statistics
from typing import Mapping, Optional, Sequence

from etils import epath

from resnet_jax import defaults
from resnet_jax import files
from resnet_jax.reporting import report

MARKDOWN_FILE = 'population.md'
JSON_FILE = 'population.json'
CURVES_FILE = report.CURVES_FILE
FINISHED = 'finished'
NOT_FINISHED = 'not finished'
# The results.json figures averaged over the finished members.
AVERAGED = ('final_test_accuracy', 'best_val_accuracy')


def _flat_config(workdir: epath.PathLike) -> dict:
  """A member's config.json as {dotted key: value}; {} where it has none that reads."""
  try:
    return defaults.flat_json(json.loads((files.as_path(workdir) / files.CONFIG_FILE).read_text()))
  except (OSError, ValueError, AttributeError):  # Missing, torn, or no JSON object.
    return {}


def differing_keys(configs: Sequence[dict]) -> list[str]:
  """The dotted config keys whose values differ among configs (flat, as `defaults.flat_json`
  gives them; empty ones, of members without a config.json, aside), the seed excepted: every
  member's seed has its own column."""
  configs = [config for config in configs if config]
  keys = set().union(*configs)
  return sorted(key for key in keys if key != 'seed' and
                len({json.dumps(config.get(key), sort_keys=True) for config in configs}) > 1)


def mean_curve(curves: Sequence[tuple[Sequence[int], Sequence[float]]]
               ) -> tuple[list[int], list[float]]:
  """The mean validation accuracy of curves ((epochs, accuracies) each) at each epoch all of
  them have."""
  by_epoch = [dict(zip(*curve)) for curve in curves]
  if not by_epoch:
    return [], []
  epochs = sorted(set.intersection(*(set(curve) for curve in by_epoch)))
  return epochs, [statistics.fmean(curve[epoch] for curve in by_epoch) for epoch in epochs]


def _spread(members: Sequence[dict], key: str) -> dict:
  """Mean and sample standard deviation (in percent) of a figure over the finished members."""
  values = [m[key] for m in members if m['status'] == FINISHED and m[key] is not None]
  mean, std = report.percent_mean_std(values) if values else (None, None)
  return {'mean_percent': mean, 'std_percent': std, 'n': len(values)}


def _machine(results: dict) -> str:
  processes = report.counted(results.get('process_count') or 1, 'process', 'processes')
  return (f"{results.get('device_count', '?')} x {results.get('device_kind', '?')} "
          f"({results.get('platform', '?')}), {processes}")


def summarise(members: Mapping[str, epath.PathLike], command: Optional[str] = None) -> dict:
  """What population.json holds: a record a member (in the order given), the config keys that
  differ among them, the spread of `AVERAGED` over the finished ones, the mean validation curve,
  and the references, machine, versions and command of the finished members' results."""
  configs = {label: _flat_config(workdir) for label, workdir in members.items()}
  varied = differing_keys(list(configs.values()))
  finished, records = [], []
  for label, workdir in members.items():
    results, config = report.read_results(workdir), configs[label]
    if results is not None and results.get('preempted'):
      results = None
    epochs, accuracy = report.validation_curve(workdir)
    if results is not None:
      finished.append(results)
      on_test = results.get('validates_on_test')
    else:
      on_test = (defaults.validates_on_test(config['data.validation'])
                 if 'data.validation' in config else None)
    known = results or {}
    records.append({
        'label': label,
        'workdir': str(files.as_path(workdir)),
        'status': FINISHED if results is not None else NOT_FINISHED,
        'seed': known.get('seed', config.get('seed')),
        'hyperparameters': {key: config.get(key) for key in varied},
        **{key: known.get(key) for key in AVERAGED},
        'best_epoch': known.get('best_epoch'),
        'epochs': known.get('epochs', config.get('num_epochs')),
        'epochs_recorded': len(epochs),
        'seconds': report.run_seconds(known) if results is not None else None,
        'validates_on_test': on_test,
        'curve': {'epochs': epochs, 'val_accuracy': accuracy},
    })
  done = [r['curve'] for r in records if r['status'] == FINISHED and r['curve']['epochs']]
  mean_epochs, mean_accuracy = mean_curve([(c['epochs'], c['val_accuracy']) for c in done])
  first = finished[0] if finished else {}
  on_test = [r['validates_on_test'] for r in records if r['validates_on_test'] is not None]
  return {
      'members': records,
      'varied_keys': varied,
      'count': len(records),
      'finished': len(finished),
      **{key: _spread(records, key) for key in AVERAGED},
      'validates_on_test': bool(on_test) and all(on_test),
      'model': first.get('model') or next(
          (c['model.name'] for c in configs.values() if 'model.name' in c), None),
      'parameters': first.get('parameters'),
      'reference': first.get('reference', {}),
      'machines': list(dict.fromkeys(_machine(results) for results in finished)),
      'versions': first.get('versions', {}),
      'command': command or first.get('command'),
      'mean_curve': {'epochs': mean_epochs, 'val_accuracy': mean_accuracy},
  }


def _percent(value: Optional[float]) -> str:
  return '-' if value is None else f'{100 * value:.2f}%'


def _shown(value) -> str:
  return '-' if value is None else str(value)


def _member_row(member: dict) -> list[str]:
  epochs = _shown(member['epochs'])
  if member['status'] != FINISHED:
    epochs = f"{member['epochs_recorded']} of {epochs} recorded"
  seconds = '-' if member['seconds'] is None else f"{member['seconds']:.0f}"
  return [member['label'], _shown(member['seed']),
          *map(_shown, member['hyperparameters'].values()),
          *(_percent(member[key]) for key in AVERAGED), _shown(member['best_epoch']), epochs,
          seconds, member['status']]


def _spread_cell(spread: dict) -> str:
  if not spread['n']:
    return '-'
  return f"{spread['mean_percent']:.2f} ± {spread['std_percent']:.2f}"


def _references(reference: dict) -> Optional[str]:
  """The reference figures the config names, one sentence; None where it names none."""
  parts = []
  if reference.get('pytorch_final') or reference.get('pytorch_best'):
    figures = [f'{reference[key]:.2f}% {name}' for key, name in
               (('pytorch_final', 'final'), ('pytorch_best', 'best')) if reference.get(key)]
    parts.append(f"the PyTorch reference on the same data, {' and '.join(figures)}")
  if reference.get('paper_accuracy'):
    parts.append(f"the seed paper, {reference['paper_accuracy']:.2f}% (its own data and run)")
  if not parts:
    return None
  system = f" ({reference['system']})" if reference.get('system') else ''
  return f"Test accuracy of the references{system}: {'; '.join(parts)}."


def markdown(summary: dict, write_plots: bool = True) -> str:
  """population.md: the members, the means and deviations, references, machine and command."""
  val = report.validation_name(summary['validates_on_test'])
  members = summary['members']
  parameters = f" ({summary['parameters']:,} parameters)" if summary['parameters'] else ''
  lines = [f"# Population: {report.counted(summary['count'], 'member')} of "
           f"{summary['model'] or 'an unknown model'}{parameters}", '']
  unfinished = [m['label'] for m in members if m['status'] != FINISHED]
  status = f"{summary['finished']} of {summary['count']} finished"
  if unfinished:
    status += f"; not finished, and left out of the means: {', '.join(unfinished)}"
  lines += [status + '.', '']
  header = ['member', 'seed', *summary['varied_keys'], 'final test', f'best {val}', 'best epoch',
            'epochs', 'wall (s)', 'status']
  lines += [report.markdown_table(header, map(_member_row, members))]
  spreads = [('final test accuracy', summary['final_test_accuracy']),
             (f'best {val} accuracy', summary['best_val_accuracy'])]
  lines += [report.markdown_table(
      ['over the finished members', 'mean ± std (%)', 'n'],
      [[name, _spread_cell(spread), str(spread['n'])] for name, spread in spreads])]
  lines += ['The standard deviation is the sample\'s (n - 1), 0.00 for a single member.', '']
  references = _references(summary['reference'])
  if references:
    lines += [references, '']
  if summary['machines']:
    lines += [f"Machine: {'; '.join(summary['machines'])}. "
              f"{report.versions_line(summary['versions'])}.", '']
  if summary['command']:
    lines += ['Command:', '', f"    {summary['command']}", '']
  else:
    lines += ['Command: not recorded (started from Python).', '']
  if write_plots:
    lines += [f'![{val} accuracy of every member and their mean]({CURVES_FILE})', '']
  return '\n'.join(lines)


def plot(summary: dict, path: epath.PathLike):
  """Every member's validation accuracy per epoch and the finished members' mean; saved."""
  curves = {m['label']: (m['curve']['epochs'], m['curve']['val_accuracy'])
            for m in summary['members']}
  mean = summary['mean_curve']
  return report.plot_validation_curves(curves, path, summary['validates_on_test'],
                                       mean=(mean['epochs'], mean['val_accuracy']))


def write_population_report(workdir: epath.PathLike, members: Mapping[str, epath.PathLike],
                            command: Optional[str] = None, *, write_plots: bool = True) -> dict:
  """Writes population.md, population.json and curves.png into the population's workdir.

  Args:
    workdir: the population's folder (local, or a URL such as gs://...).
    members: a member's label (e.g. 'seed_0', or a sweep point's name) -> its run's workdir, in
      the order the table lists them.
    command: the command line that trained the population; None: the first finished member's
      (results.json's 'command').
    write_plots: False skips curves.png (config.write_plots).

  Returns:
    The summary, as population.json holds it (`summarise`).

  Raises:
    ValueError: no members.
  """
  if not members:
    raise ValueError('a population report needs at least one member')
  summary = summarise(members, command)
  path = files.as_path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  if write_plots:
    plot(summary, path / CURVES_FILE)
  files.write_atomic(path / MARKDOWN_FILE, markdown(summary, write_plots))
  files.write_atomic(path / JSON_FILE, json.dumps(summary, indent=2) + '\n')
  return summary
