r"""The side-by-side: one config trained by the JAX trainer and the PyTorch reference trainer.

  python -m resnet_jax.compare --config configs/best.py --workdir runs/cmp [--seeds=0,1]
  python -m resnet_jax.compare --config configs/best.py --workdir runs/cmp --jax_workdir runs/best

Each seed trains in <workdir>/jax/seed<S> (`train.train_and_evaluate`) and <workdir>/torch/seed<S>
(`torch_train.train_and_evaluate`), on the same data, splits and batch order; --jax_workdir takes
a finished JAX run (config.seed) instead of training one. Where the devices hold several runs
(`population.members_per_round`), the JAX seeds train at once as one population
(`population.train_population`, its own files in <workdir>/jax), each in its usual folder.
Writes compare.md (accuracy per framework, final and best with the gap and the seeds' spread,
wall time and images/s on this machine, the versions, the command), compare.json and compare.png
(validation accuracy per epoch, both frameworks). Needs PyTorch (the `torch` extra).
"""

import json
import os
import platform
import statistics
from typing import Sequence

from absl import flags
from absl import logging
import matplotlib

matplotlib.use('Agg')
# pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib import pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402

from resnet_jax import cli  # noqa: E402
from resnet_jax import defaults  # noqa: E402
from resnet_jax import errors  # noqa: E402
from resnet_jax import files  # noqa: E402
from resnet_jax import pytorch  # noqa: E402
from resnet_jax.reporting import report  # noqa: E402
from resnet_jax.reporting import writers  # noqa: E402
from resnet_jax.training import checkpoints  # noqa: E402
from resnet_jax.training import run_config  # noqa: E402
from resnet_jax.training import runs as runs_lib  # noqa: E402
# pylint: enable=g-import-not-at-top,wrong-import-position

FRAMEWORKS = ('jax', 'torch')
MARKDOWN_FILE = 'compare.md'
JSON_FILE = 'compare.json'
FIGURE_FILE = 'compare.png'

_SEEDS = flags.DEFINE_list('seeds', None, 'Seeds to train each framework with; default '
                           'config.seed.')
_JAX_WORKDIR = flags.DEFINE_string('jax_workdir', None,
                                   'A finished JAX run of this config to compare, not retrained.')
_TORCH_THREADS = flags.DEFINE_integer('torch_threads', 0,
                                      "PyTorch's CPU threads (0: torch's default).")


def _seeded(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  config = config.copy_and_resolve_references()
  config.seed = seed
  return config


def jax_runs(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str],
             population_dir: str) -> list[dict]:
  """Each config's JAX run's results with its per-epoch 'history' (trained unless finished).

  The runs train at once as one population in population_dir where the devices hold several
  and the configs can share a program (they differ only in the seed), else one after another.

  Raises:
    UserError: a run was stopped before its end (SIGTERM, Ctrl-C), or cannot train.
  """
  from resnet_jax.training import population  # pylint: disable=g-import-not-at-top
  from resnet_jax.training import train  # pylint: disable=g-import-not-at-top
  together = (len(configs) > 1 and population.members_per_round(configs[0], len(configs)) > 1
              and population.why_not_together(configs) is None)
  if together:
    results = population.train_population(configs, workdirs, population_dir,
                                          resume_command=cli.command_line())
  else:
    results = []
    for config, workdir in zip(configs, workdirs):
      results.append(train.train_and_evaluate(config, workdir, resume_command=cli.command_line()))
      if results[-1].get('preempted'):
        break
  for run_results, workdir in zip(results, workdirs):
    if run_results.get('preempted'):
      raise errors.UserError(f'the JAX run in {workdir} was stopped before its end; run it again')
  return [with_history(run_results, workdir) for run_results, workdir in zip(results, workdirs)]


def finished_jax_run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """--jax_workdir's results and history, once it is shown to be a finished run of config.

  The same check as every command reading a run (`runs.check_recorded_run`): the checkpoint's
  recorded config keys and data against config's. A finished run whose results.json is missing
  or torn has it written again from its final checkpoint, as `main` does (nothing is trained).

  Raises:
    UserError: workdir is no folder, holds no finished run, or a run of another config or data.
  """
  path = files.as_path(workdir)
  if path.exists() and not path.is_dir():
    raise errors.UserError(f'--jax_workdir={workdir} is a file, not a run\'s folder; give the '
                           '--workdir of a finished python -m resnet_jax.main run')
  results = report.read_results(workdir)
  no_run = (f'--jax_workdir={workdir} holds no finished run (no {report.RESULTS_FILE}, no final '
            'checkpoint); check the path, finish the run with python -m resnet_jax.main, or drop '
            '--jax_workdir to train one here')
  if results is None and not (path / 'checkpoints' / 'latest').exists():
    raise errors.UserError(no_run)
  try:
    run_config.load_run_config(workdir, config)
    meta = checkpoints.read_meta(workdir)
    runs_lib.check_recorded_run(runs_lib.setup_run(config, workdir), meta)
  except errors.UserError as e:
    raise errors.UserError(f'--jax_workdir={workdir} is not a run of this --config: {e}') from e
  if results is None:
    if meta.epoch < config.num_epochs:
      raise errors.UserError(no_run)
    from resnet_jax.training import train  # pylint: disable=g-import-not-at-top
    results = train.train_and_evaluate(config, workdir)  # Finished: rewrites its results.
  return with_history(results, workdir)


def with_history(results: dict, workdir: str) -> dict:
  """results with 'history': a record an epoch, from the run's metrics.jsonl."""
  records = writers.read_jsonl(files.as_path(workdir) / writers.METRICS_FILE)
  history = {int(r['epoch']): dict(r, epoch=int(r['epoch'])) for r in records
             if 'epoch_seconds' in r}
  return dict(results, history=[history[e] for e in sorted(history)])


def _torch_run(config: ml_collections.ConfigDict, workdir: str, threads: int) -> dict:
  from resnet_jax.pytorch import torch_train  # pylint: disable=g-import-not-at-top
  return torch_train.train_and_evaluate(config, workdir, threads=threads)


def _mean(values) -> float | None:
  """The mean of the values known (a run rebuilt from its checkpoint has no speed figures)."""
  known = [value for value in values if value is not None]
  return statistics.fmean(known) if known else None


def summarise(runs: dict[str, list[dict]]) -> dict:
  """Per framework: final and best validation accuracy (mean, std, per seed, %), wall time and
  images/s (means); and the JAX - PyTorch gaps with the larger seed spread beside them."""
  summary = {}
  for framework, results in runs.items():
    final = [r['final_val_accuracy'] for r in results]
    best = [r['best_val_accuracy'] for r in results]
    summary[framework] = {
        'seeds': [r['seed'] for r in results],
        'final': report.percent_mean_std(final), 'best': report.percent_mean_std(best),
        'final_per_seed': [100 * v for v in final],
        'wall_seconds': _mean(report.run_seconds(r) for r in results),
        'images_per_second': _mean(r.get('images_per_second') for r in results),
        'parameters': results[0]['parameters'],
    }
  jax_s, torch_s = summary['jax'], summary['torch']
  summary['gap'] = {key: jax_s[key][0] - torch_s[key][0] for key in ('final', 'best')}
  summary['seed_std'] = max(jax_s['final'][1], torch_s['final'][1])
  return summary


def _versions(runs: dict[str, list[dict]]) -> dict:
  return {**runs['jax'][0].get('versions', {}),
          **{f'torch_{k}' if k == 'threads' else k: v
             for k, v in runs['torch'][0].get('versions', {}).items()}}


def plot(runs: dict[str, list[dict]], path: str,
         validates_on_test: bool = False) -> matplotlib.figure.Figure:
  """Validation accuracy per epoch: every seed of both frameworks; the figure saved."""
  fig, ax = plt.subplots(figsize=(7, 4))
  for framework, color in zip(FRAMEWORKS, ('tab:blue', 'tab:orange')):
    for i, results in enumerate(runs[framework]):
      rows = [r for r in results['history'] if 'val_accuracy' in r]
      ax.plot([r['epoch'] for r in rows], [100 * r['val_accuracy'] for r in rows], color=color,
              marker='.', alpha=0.8, label=f"{framework} (seed {results['seed']})" if i < 4
              else None, linestyle='-' if i % 2 == 0 else '--')
  report.epoch_axis(ax)
  ax.set_ylabel(f'{report.validation_name(validates_on_test)} accuracy (%)')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  return report.save_figure(fig, path)


def _figure(value: float | None, spec: str) -> str:
  return '-' if value is None else format(value, spec)


def markdown(config: ml_collections.ConfigDict, summary: dict, runs: dict, command: str) -> str:
  """compare.md: the table, the gap against the seeds' spread, machine, versions, command."""
  pm = lambda mean_std: f'{mean_std[0]:.2f} ± {mean_std[1]:.2f}'
  val = report.validation_name(defaults.validates_on_test(config.data.validation))
  seeds = summary['jax']['seeds']
  lines = [f'# JAX and PyTorch on {config.model.name} ({summary["jax"]["parameters"]:,} '
           'parameters)', '',
           f"Data: {runs['jax'][0].get('data_source', '')}; "
           f"{report.counted(config.num_epochs, 'epoch')}, batch {config.batch_size}, "
           f"{'seeds' if len(seeds) > 1 else 'seed'} {', '.join(map(str, seeds))}.", '',
           f'| framework | final {val} acc (%) | best {val} acc (%) | per seed (final) | wall s | '
           'images/s |', '|---|---|---|---|---|---|']
  for framework in FRAMEWORKS:
    s = summary[framework]
    per_seed = ', '.join(f'{v:.2f}' for v in s['final_per_seed'])
    lines.append(f"| {framework} | {pm(s['final'])} | {pm(s['best'])} | {per_seed} | "
                 f"{_figure(s['wall_seconds'], '.0f')} | {_figure(s['images_per_second'], ',.0f')} "
                 '|')
  gap = summary['gap']
  lines += ['', f"Gap (JAX - PyTorch): final {gap['final']:+.2f} points, best "
            f"{gap['best']:+.2f} points; the larger seed standard deviation is "
            f"{summary['seed_std']:.2f} points.", '',
            f'Machine: {platform.platform()}, {os.cpu_count()} CPUs, '
            f"{runs['jax'][0].get('device_kind', '')} ({runs['jax'][0].get('platform', '')}) "
            'for JAX; wall time includes compilation (JAX) and evaluation.',
            report.versions_line(_versions(runs)), '',
            f'    {command}', '', f'![accuracy per epoch]({FIGURE_FILE})', '']
  return '\n'.join(lines)


def compare(config: ml_collections.ConfigDict, workdir: str, seeds: Sequence[int] | None = None,
            jax_workdir: str | None = None, torch_threads: int = 0) -> dict:
  """Trains both frameworks (or takes jax_workdir's run) and writes compare.md/.json/.png.

  Returns:
    The summary (see `summarise`), with 'runs' holding each framework's results per seed.

  Raises:
    UserError: a config the PyTorch trainer cannot run, missing data, an unfinished JAX run.
  """
  pytorch.require_torch('compare')
  from resnet_jax.pytorch import torch_train  # pylint: disable=g-import-not-at-top
  torch_train.check_config(config)
  seeds = [config.seed] if jax_workdir or not seeds else list(seeds)
  seeded = [_seeded(config, seed) for seed in seeds]
  if jax_workdir:
    runs = {'jax': [finished_jax_run(config, jax_workdir)]}
  else:
    runs = {'jax': jax_runs(seeded, [os.path.join(workdir, 'jax', f'seed{seed}') for seed in seeds],
                            os.path.join(workdir, 'jax'))}
  runs['torch'] = [_torch_run(seeded_config, os.path.join(workdir, 'torch', f'seed{seed}'),
                              torch_threads) for seed, seeded_config in zip(seeds, seeded)]
  summary = summarise(runs)
  os.makedirs(workdir, exist_ok=True)
  plot(runs, os.path.join(workdir, FIGURE_FILE),
       defaults.validates_on_test(config.data.validation))
  command = cli.command_line()
  files.write_atomic(os.path.join(workdir, MARKDOWN_FILE), markdown(config, summary, runs, command))
  files.write_atomic(os.path.join(workdir, JSON_FILE),
                     json.dumps(dict(summary, versions=_versions(runs), command=command), indent=2))
  return dict(summary, runs=runs)


def main(argv):
  del argv  # cli.run refuses positional arguments.

  def run(config, workdir):
    try:
      seeds = [int(s) for s in _SEEDS.value] if _SEEDS.value else None
    except ValueError as e:
      raise errors.UserError(f'--seeds={",".join(_SEEDS.value)} must be integers') from e
    cli.say_outputs(f'{workdir} (compare.md; a run folder for each framework and seed)')
    summary = compare(config, workdir, seeds, _JAX_WORKDIR.value, _TORCH_THREADS.value)
    val = report.validation_name(defaults.validates_on_test(config.data.validation))
    logging.info('final %s accuracy: JAX %.2f%%, PyTorch %.2f%% (gap %+.2f); %s/%s', val,
                 summary['jax']['final'][0], summary['torch']['final'][0],
                 summary['gap']['final'], workdir, MARKDOWN_FILE)

  run(cli.CONFIG.value, cli.WORKDIR.value)


if __name__ == '__main__':
  cli.run(main, 'compare')
