"""What a run leaves for people: results.json, learning curves, confusion matrix and report.md.

`write_report` is called by the trainer at the end of a run and by `resnet_jax.evaluate`, with the
results they gathered (`runs.run_results`): this module knows nothing of training. The
report sets the run beside `config.reference`: the seed paper's own accuracy and, for the
seed-000 recipe, the PyTorch reference measured on the same data.
"""

import io
import json
import platform
import statistics
from typing import Iterable, Mapping, Optional, Sequence

from etils import epath
import flax
import jax
import matplotlib

matplotlib.use('Agg')  # Files only; never a display.
# pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib import figure  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402


from resnet_jax import files  # noqa: E402
from resnet_jax.reporting import writers  # noqa: E402
# pylint: enable=g-import-not-at-top,wrong-import-position

RESULTS_FILE = 'results.json'
CURVES_FILE = 'curves.png'
CONFUSION_FILE = 'confusion.png'
REPORT_FILE = 'report.md'


def read_results(workdir: epath.PathLike) -> Optional[dict]:
  """A run's results.json, or None where the run has none that is whole (missing, or torn).

  The one reader of a run's results: what says a run has finished (a sweep's "done") and what
  every command reads of it. A torn file is not trusted: the trainer rebuilds it from the run's
  final checkpoint.
  """
  path = files.as_path(workdir) / RESULTS_FILE
  try:
    results = json.loads(path.read_text())
  except (OSError, ValueError):  # Missing, unreadable or torn.
    return None
  return results if isinstance(results, dict) and 'final_test_accuracy' in results else None


def run_seconds(results: dict) -> Optional[float]:
  """The run's wall time: over every process that trained it (resumes too) where results hold
  it, else the one process's (evaluate's, PyTorch's)."""
  seconds = results.get('elapsed_seconds')
  return results.get('wall_seconds') if seconds is None else seconds


def counted(count: int, noun: str, plural: str = '') -> str:
  """'1 step', '2 steps' ('1 batch', '2 batches' with plural='batches'): a count and its noun,
  agreeing in number."""
  return f'{count:,} {noun}' if count == 1 else f'{count:,} {plural or noun + "s"}'


def versions() -> dict:
  return {'jax': jax.__version__, 'flax': flax.__version__, 'optax': optax.__version__,
          'orbax_checkpoint': getattr(ocp, '__version__', ''),
          'python': platform.python_version()}


def versions_line(package_versions: Mapping[str, str]) -> str:
  """'Versions: jax 0.10.2, flax 0.12.8, ...' (no full stop), as the reports print them."""
  return 'Versions: ' + ', '.join(f'{k} {v}' for k, v in package_versions.items())


def percent_mean_std(accuracies: Sequence[float]) -> tuple[float, float]:
  """The mean and sample standard deviation (n - 1) of accuracies given as fractions, in
  percent; the deviation of one value is 0.0."""
  values = [100 * v for v in accuracies]
  return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
  """A Markdown table of text cells (a '|' in one escaped), ending in a newline."""
  def line(cells: Sequence[str]) -> str:
    return '| ' + ' | '.join(str(cell).replace('|', '\\|') for cell in cells) + ' |'

  return '\n'.join([line(header), '|' + '---|' * len(header), *map(line, rows)]) + '\n'


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """counts[true, predicted]."""
  flat = labels.astype(np.int64) * num_classes + predictions.astype(np.int64)
  return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
  """Recall of each class: the diagonal over the row sums (NaN for a class with no examples)."""
  confusion = np.asarray(confusion, np.float64)
  totals = confusion.sum(axis=1)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(totals > 0, np.diag(confusion) / totals, np.nan)


def save_figure(fig: figure.Figure, path: epath.PathLike, dpi: int = 110) -> figure.Figure:
  """Saves a figure as a PNG at path (local or a URL such as gs://...), whole, and closes it.

  Returns:
    fig, closed but still readable (what the plotting functions return, for their tests).
  """
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=dpi)
  plt.close(fig)
  files.write_atomic(path, buffer.getvalue())
  return fig


def validation_name(on_test: bool) -> str:
  """What validation figures are called: 'test-set validation' where the test set validates
  (config.data.validation='test', the seed papers' protocol), else 'validation'."""
  return 'test-set validation' if on_test else 'validation'


def epoch_axis(ax) -> None:
  """Labels ax's x axis 'epoch', with ticks on whole epochs only (never 1.25)."""
  ax.set_xlabel('epoch')
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))


def plot_curves(history: Sequence[dict], path: epath.PathLike,
                validates_on_test: bool = False) -> figure.Figure:
  """Loss and accuracy per epoch, train and validation, side by side; the figure saved."""
  fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
  for split, style in (('train', '-'), ('val', '--')):
    rows = [r for r in history if f'{split}_loss' in r]
    if not rows:
      continue
    epochs = [r['epoch'] for r in rows]
    label = validation_name(validates_on_test) if split == 'val' else split
    loss_ax.plot(epochs, [r[f'{split}_loss'] for r in rows], style, marker='.', label=label)
    acc_ax.plot(epochs, [100 * r[f'{split}_accuracy'] for r in rows], style, marker='.',
                label=label)
  for ax, name in ((loss_ax, 'loss'), (acc_ax, 'accuracy (%)')):
    epoch_axis(ax)
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  return save_figure(fig, path)


def validation_curve(workdir: epath.PathLike) -> tuple[list[int], list[float]]:
  """(epochs, validation accuracy) from a run's metrics.jsonl, ([], []) where it has none; the
  last record of an epoch wins."""
  path = files.as_path(workdir) / writers.METRICS_FILE
  if not path.exists():
    return [], []
  by_epoch = {int(r['epoch']): r['val_accuracy'] for r in writers.read_jsonl(path)
              if 'epoch' in r and 'val_accuracy' in r}
  epochs = sorted(by_epoch)
  return epochs, [by_epoch[epoch] for epoch in epochs]


def plot_validation_curves(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
                           path: epath.PathLike, validates_on_test: bool = False, *,
                           mean: Optional[tuple[Sequence[int], Sequence[float]]] = None,
                           max_legend: int = 24) -> figure.Figure:
  """Validation accuracy against epoch of several runs on one figure; the figure saved.

  Args:
    curves: a run's label -> its (epochs, accuracies as fractions) (`validation_curve`); a run
      with no epochs is left out.
    path: where the PNG goes.
    validates_on_test: whether validation is the test set (the axis says so).
    mean: (epochs, mean accuracy) drawn over the runs as a thick black line, where given.
    max_legend: the most runs a legend names (more get none).
  """
  fig = figure.Figure(figsize=(9, 5.5), layout='constrained')
  ax = fig.subplots()
  drawn = 0
  for label, (epochs, accuracy) in curves.items():
    if epochs:
      ax.plot(epochs, 100 * np.asarray(accuracy), marker='.', label=label)
      drawn += 1
  if mean is not None and len(mean[0]):
    ax.plot(mean[0], 100 * np.asarray(mean[1]), color='black', linewidth=2.5, label='mean')
  epoch_axis(ax)
  ax.set_ylabel(f'{validation_name(validates_on_test)} accuracy (%)')
  ax.grid(alpha=0.3)
  if drawn and drawn <= max_legend:
    ax.legend(fontsize=7, loc='lower right')
  return save_figure(fig, path)


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str],
                   path: epath.PathLike) -> figure.Figure:
  """The confusion matrix (counts, true class in rows), each class's accuracy; the figure saved."""
  confusion = np.asarray(confusion)
  num_classes = len(confusion)
  fig, (matrix_ax, bar_ax) = plt.subplots(
      1, 2, figsize=(14, 6), gridspec_kw={'width_ratios': [3, 2]})
  matrix_ax.imshow(confusion, cmap='Blues')
  threshold = confusion.max() / 2 if confusion.size else 0
  for i in range(num_classes):
    for j in range(num_classes):
      matrix_ax.text(j, i, str(confusion[i, j]), ha='center', va='center', fontsize=8,
                     color='white' if confusion[i, j] > threshold else 'black')
  ticks = np.arange(num_classes)
  matrix_ax.set_xticks(ticks, class_names, rotation=45, ha='right')
  matrix_ax.set_yticks(ticks, class_names)
  matrix_ax.set_xlabel('predicted')
  matrix_ax.set_ylabel('true')
  matrix_ax.set_title(f'confusion matrix (test set, {confusion.sum():,} images)')
  accuracy = 100 * per_class_accuracy(confusion)
  bar_ax.barh(ticks, np.nan_to_num(accuracy))
  bar_ax.set_yticks(ticks, class_names)
  bar_ax.invert_yaxis()
  bar_ax.set_xlim(0, 100)
  bar_ax.set_xlabel('accuracy (%)')
  bar_ax.set_title('per-class accuracy')
  for i, value in enumerate(accuracy):
    bar_ax.text(min(np.nan_to_num(value), 88) + 1, i, f'{value:.1f}', va='center', fontsize=8)
  fig.tight_layout()
  return save_figure(fig, path)


def first_reaching(history: Sequence[dict], accuracy: float) -> Optional[dict]:
  """{'epoch', 'elapsed_seconds'} of the first epoch whose validation accuracy >= accuracy."""
  for record in history:
    if record.get('val_accuracy', -1.0) >= accuracy:
      return {'epoch': record['epoch'], 'elapsed_seconds': record.get('elapsed_seconds')}
  return None


def _percent(value: Optional[float]) -> str:
  return '-' if value is None else f'{100 * value:.2f}%'


def _reference_percent(value: float) -> str:
  return f'{value:.2f}%' if value else '-'


def _duration(seconds: float) -> str:
  return f'~{seconds / 60:.0f} min' if seconds >= 120 else f'{seconds:.0f} s'


def time_to_reference(results: dict) -> Optional[str]:
  """Time-to-accuracy against the PyTorch reference, one sentence; None where not measured.

  Measured where results hold `reference_reached` (the trainer sets it when validation is the
  test set and `config.reference.pytorch_final` is known): the first epoch at or over it, or
  None when no epoch got there.
  """
  reference = results.get('reference', {})
  target = reference.get('pytorch_final', 0.0)
  if not target or 'reference_reached' not in results:
    return None
  reached, epochs = results['reference_reached'], results.get('epochs', '?')
  if reached is None:
    best = results.get('best_val_accuracy')
    at = f" at epoch {results.get('best_epoch')} of {epochs}" if best is not None else ''
    return (f"Did not reach the PyTorch reference's {target:.2f}%: best {_percent(best)}{at} "
            f'vs {target:.2f}%.')
  seconds = reached.get('elapsed_seconds')
  after = '' if seconds is None else f' after {seconds:.0f} s'
  reference_seconds = reference.get('pytorch_seconds', 0.0)
  against = f'; the reference: {_duration(reference_seconds)}' if reference_seconds else ''
  return (f"Reached the PyTorch reference's {target:.2f}% at epoch {reached['epoch']} of "
          f'{epochs}{after} (compile and evaluation included{against}).')


def _training_figures(results: dict) -> list[str]:
  """The training run's speed figures that results holds (evaluate's results hold none)."""
  figures = []
  if results.get('images_per_second') is not None:
    figures.append(f"{results['images_per_second']:,.0f} training images/s")
  if results.get('compile_seconds') is not None:
    figures.append(f"compile {results['compile_seconds']:.1f} s")
  if run_seconds(results) is not None and 'evaluated' not in results:
    figures.append(f'wall {run_seconds(results):.0f} s')
  return figures


def epoch_time(history: Sequence[dict], reference_seconds: float = 0.0) -> Optional[str]:
  """'Time an epoch: ...': the median of the epochs that waited for no compile (a process's first
  epoch compiles the run's calls), beside the PyTorch reference's where known, then what the
  epochs left out took; None without times."""
  timed = [r for r in history if 'epoch_seconds' in r]
  compiled = [r['epoch_seconds'] for r in timed if r.get('compile_seconds', 0.0) > 0.0]
  steady = [r['epoch_seconds'] for r in timed if r.get('compile_seconds', 0.0) <= 0.0]
  if not timed:
    return None
  against = f' (PyTorch reference: {reference_seconds:.1f} s)' if reference_seconds else ''
  if not steady:
    return (f'Time an epoch: {np.median(compiled):.2f} s median of '
            f"{counted(len(compiled), 'epoch')}, compiling included{against}")
  line = (f'Time an epoch: {np.median(steady):.2f} s median of '
          f"{counted(len(steady), 'epoch')}{against}")
  if compiled:
    shown = ', '.join(f'{seconds:.1f} s' for seconds in compiled[:3])
    line += (f"; {counted(len(compiled), 'epoch')} that compiled left out ({shown}"
             f"{', ...' if len(compiled) > 3 else ''})")
  return line


def markdown(results: dict, history: Sequence[dict], per_class: dict,
             write_plots: bool) -> str:
  """report.md: the run, its reference figures, per-class accuracy and the plots."""
  reference = results.get('reference', {})
  system = reference.get('system') or results['model']
  lines = [
      f"# {system}: {results['model']} on CIFAR-10",
      '',
      f"{results['parameters']:,} parameters; {len(history)} of "
      f"{counted(results['epochs'], 'epoch')} recorded; "
      f"data: {results.get('data_source', '?')} images; "  # the source names the splits
      f"{results.get('device_count', '?')} x {results.get('device_kind', '?')}.",
      '',
  ]
  if 'compute_dtype' in results:
    steps = results.get('steps_per_call')
    lines += [f"Ran in {results['compute_dtype']}, "
              f"{counted(steps, 'step') if steps else '? steps'} a compiled call, the training "
              f"set on the {results.get('placement', '?')}, "
              f"BatchNorm statistics {results.get('batch_statistics', 'global')}.", '']
  timing = time_to_reference(results)
  if timing:
    lines += [f'**Time to accuracy:** {timing}', '']
  lines += [
      '| test accuracy | final | best |',
      '|---|---|---|',
      f"| this run | {_percent(results.get('final_test_accuracy'))} | "
      f"{_percent(results.get('best_test_accuracy'))} |",
  ]
  if reference.get('pytorch_final') or reference.get('pytorch_best'):
    lines.append(f"| PyTorch reference, same data | "
                 f"{_reference_percent(reference.get('pytorch_final', 0.0))} | "
                 f"{_reference_percent(reference.get('pytorch_best', 0.0))} |")
  if reference.get('paper_accuracy'):
    lines.append(f"| the seed paper (its own data and run) | | "
                 f"{_reference_percent(reference['paper_accuracy'])} |")
  lines += [
      '',
  ]
  if results.get('best_val_accuracy') is not None:
    name = validation_name(bool(results.get('validates_on_test'))).capitalize()
    lines += [f"{name} accuracy: final {_percent(results.get('final_val_accuracy'))}, best "
              f"{_percent(results['best_val_accuracy'])} (epoch {results.get('best_epoch')}).", '']
  epoch_line = epoch_time(history, reference.get('pytorch_epoch_seconds', 0.0))
  if epoch_line:
    lines += ['; '.join([epoch_line, *_training_figures(results)]) + '.', '']
  if 'evaluated' in results:
    lines += [f"Scored {results['evaluated']} in {results.get('wall_seconds', 0):.0f} s.", '']
  if per_class:
    lines += ['| class | test accuracy |', '|---|---|']
    lines += [f'| {name} | {100 * value:.1f}% |' for name, value in per_class.items()]
    lines.append('')
  if write_plots:
    if history:
      lines += [f'![learning curves]({CURVES_FILE})', '']
    lines += [f'![confusion matrix]({CONFUSION_FILE})', '']
  versions = results.get('versions', {})
  if versions:
    lines += [versions_line(versions) + '.', '']
  return '\n'.join(lines)


def write_report(workdir: epath.PathLike, results: dict, history: Sequence[dict],
                 confusion: np.ndarray, *, write_plots: bool = True) -> dict:
  """Writes results.json, curves.png, confusion.png and report.md into workdir.

  Args:
    workdir: the run's folder (local, or a URL such as gs://...).
    results: the run's figures (train.train_and_evaluate's results, or evaluate's); its
      'class_names' label the confusion matrix and its 'reference' the comparison.
    history: one dict an epoch ({'epoch', 'train_loss', 'train_accuracy', 'val_loss', ...}).
    confusion: counts[true class, predicted class] on the test set.
    write_plots: False skips the PNGs (config.write_plots).

  Returns:
    The results as written, with the confusion matrix and per-class accuracy added.
  """
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  confusion = np.asarray(confusion, np.int64)
  class_names = results.get('class_names') or [str(i) for i in range(len(confusion))]
  per_class = {name: float(value)
               for name, value in zip(class_names, per_class_accuracy(confusion))}
  written = dict(results, per_class_accuracy=per_class, confusion_matrix=confusion.tolist())
  if write_plots:
    if history:
      plot_curves(history, workdir / CURVES_FILE, bool(results.get('validates_on_test')))
    plot_confusion(confusion, class_names, workdir / CONFUSION_FILE)
  files.write_atomic(workdir / REPORT_FILE, markdown(written, history, per_class, write_plots))
  # Last: a run's results.json says that it finished and that its report is there.
  files.write_atomic(workdir / RESULTS_FILE, json.dumps(written, indent=2) + '\n')
  return written
