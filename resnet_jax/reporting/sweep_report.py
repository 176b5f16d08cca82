"""What a sweep writes for people: sweep.csv, sweep.md and its figures.

The table has one row a point (built by `sweep.summary_rows`); the figures are the validation
curves of every run (curves.png) and accuracy against each swept key (accuracy_vs_<key>.png).
Points are `sweep.Point`s; this module imports nothing of sweep.py.
"""

import csv
import io
import os
from typing import Sequence

from matplotlib import figure
import numpy as np

from resnet_jax import defaults
from resnet_jax import files
from resnet_jax.reporting import report

ACCURACIES = ('final_val_accuracy', 'best_val_accuracy', 'final_test_accuracy',
              'best_test_accuracy')
# Lines get a legend (one a combination of the other swept values) up to this many.
MAX_SERIES = 12


def short_keys(keys: Sequence[str]) -> dict:
  """key -> its last component, or the whole dotted key where two last components collide."""
  last = [key.rsplit('.', 1)[-1] for key in keys]
  return {key: short if last.count(short) == 1 else key for key, short in zip(keys, last)}


def _csv(rows: Sequence[dict]) -> str:
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator='\n')
  writer.writeheader()
  writer.writerows(rows)
  return buffer.getvalue()


def _cell(name: str, value) -> str:
  if value is None:
    return '-'
  if name in ACCURACIES:
    return f'{100 * value:.2f}%'
  if name == 'parameters':
    return f'{value:,}'
  if name == 'wall_seconds':
    return f'{value:.0f}'
  return str(value)


def validates_on_test(points: Sequence) -> bool:
  """Whether every point validates on the test set (config.data.validation='test')."""
  return all(defaults.validates_on_test(point.config.data.validation) for point in points)


def _markdown(rows: Sequence[dict], keys: Sequence[str], on_test: bool) -> str:
  """The table of sweep.md, swept keys by their full dotted names.

  Where validation is the test set, the validation figures are the test's: the table shows the
  two distinct ones, final and best test (the best epoch's, kept checkpoint or not).
  """
  accuracies = ({'final_test_accuracy': 'final test', 'best_val_accuracy': 'best test'} if on_test
                else dict(zip(ACCURACIES, ('final val', 'best val', 'final test', 'best test'))))
  columns = {**{key: key for key in keys}, 'parameters': 'parameters', **accuracies,
             'wall_seconds': 'wall (s)', 'status': 'status'}  # row key -> header
  return report.markdown_table(list(columns.values()),
                               [[_cell(name, row[name]) for name in columns] for row in rows])


def plot_curves(points: Sequence, workdir: str, path: str) -> figure.Figure:
  """Validation accuracy against epoch of every run on one figure; the figure saved."""
  curves = {point.name: report.validation_curve(os.path.join(workdir, point.name))
            for point in points}
  return report.plot_validation_curves(curves, path, validates_on_test(points),
                                       max_legend=2 * MAX_SERIES)


def _is_number(value) -> bool:
  return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def plot_accuracy_vs(points: Sequence, rows: Sequence[dict], key: str, path: str,
                     grid_keys: Sequence[str]) -> None:
  """Best validation accuracy against one swept key; a line for each combination of the others."""
  numeric = all(_is_number(point.values[key]) for point in points)
  categories = list(dict.fromkeys(point.labels[key] for point in points))
  fig = figure.Figure(figsize=(7, 4.5), layout='constrained')
  ax = fig.subplots()
  others = [other for other in grid_keys if other != key]
  series = {}
  for point, row in zip(points, rows):
    if row['best_val_accuracy'] is None:
      continue
    x = point.values[key] if numeric else categories.index(point.labels[key])
    group = ', '.join(f'{short}={point.labels[other]}'
                      for other, short in short_keys(others).items())
    series.setdefault(group, []).append((x, 100 * row['best_val_accuracy']))
  as_lines = key in grid_keys and len(series) <= MAX_SERIES
  for group, xy in series.items():
    xs, ys = zip(*sorted(xy))
    ax.plot(xs, ys, marker='o', linestyle='-' if as_lines else 'none', label=group or None)
  if numeric:
    values = [point.values[key] for point in points]
    if min(values) > 0 and max(values) / min(values) >= 20:
      ax.set_xscale('log')
  else:
    ax.set_xticks(range(len(categories)), categories, rotation=30, ha='right')
  ax.set_xlabel(key)
  ax.set_ylabel(f'best {report.validation_name(validates_on_test(points))} accuracy (%)')
  ax.grid(alpha=0.3)
  if as_lines and any(series):
    ax.legend(fontsize=7)
  report.save_figure(fig, path)


def write_summary(points: Sequence, rows: Sequence[dict], workdir: str, grid_keys: Sequence[str],
                  trained: int) -> None:
  """Writes sweep.csv, sweep.md, curves.png and accuracy_vs_<key>.png.

  Args:
    points: every `sweep.Point` of the sweep, in order.
    rows: the table, one row a point (`sweep.summary_rows`).
    workdir: the sweep's folder, where the files go.
    grid_keys: the keys of the grid (the figures draw lines along them).
    trained: how many points are trained, for sweep.md's title.
  """
  keys = list(points[0].values)
  files.write_atomic(os.path.join(workdir, 'sweep.csv'), _csv(rows))
  shorts = short_keys(keys)
  plots = [f'accuracy_vs_{shorts[key]}.png' for key in keys]
  on_test = validates_on_test(points)
  columns = ('test accuracy (validation is the test set) at the last epoch (final) and at the '
             'best epoch (best)' if on_test else 'validation and test accuracy at the last epoch '
             '(final) and at the best validation epoch (best)')
  text = (f"# Sweep: {report.counted(len(points), 'point')}, {trained} trained\n\n"
          f'Accuracy columns: {columns}.\n\n'
          + _markdown(rows, keys, on_test)
          + f'\n![{report.validation_name(on_test)} curves](curves.png)\n\n'
          + ''.join(f'![accuracy against {key}]({plot})\n\n' for key, plot in zip(keys, plots)))
  files.write_atomic(os.path.join(workdir, 'sweep.md'), text)
  plot_curves(points, workdir, os.path.join(workdir, 'curves.png'))
  for key, plot in zip(keys, plots):
    plot_accuracy_vs(points, rows, key, os.path.join(workdir, plot), grid_keys)
