r"""Trains a system from configs/: `python -m resnet_jax.main --config configs/best.py --workdir W`.

Any config key can be overridden on the command line, e.g. `--config.num_epochs=30` or
`--config.model.num_blocks='(2,2,2)'`. A run found in the workdir resumes where it stopped;
SIGTERM saves a checkpoint and exits with status 0, Ctrl-C does the same with status 130.
"""

import os
import sys

from absl import logging

from resnet_jax import cli
from resnet_jax import files
from resnet_jax import models
from resnet_jax.reporting import report
from resnet_jax.training import distributed
from resnet_jax.training import population
from resnet_jax.training import train


def run(config, workdir: str) -> None:
  files.check_writable(workdir, '--workdir')
  distributed.initialize_from_env()
  if config.population.seeds:
    run_population(config, workdir)
    return
  cli.say_outputs(f'{workdir} (checkpoints, metrics, report.md)')
  logging.info('%s', models.summary_table(config.model))
  results = train.train_and_evaluate(config, workdir, resume_command=cli.command_line())
  if results.get('signal') == 'SIGINT':
    sys.exit(130)  # Ctrl-C: saved, and says so; the shell's convention for an interrupted job.
  if not results.get('preempted'):
    logging.info('final test accuracy %.2f%%; report in %s/report.md',
                 100 * results['final_test_accuracy'], workdir)
    timing = report.time_to_reference(results)
    if timing:
      logging.info('time to accuracy: %s', timing)


def run_population(config, workdir: str) -> None:
  """config.population.seeds: one run a seed, in <workdir>/seed_<S>/, trained together."""
  configs = population.seed_configs(config)
  workdirs = [os.path.join(workdir, population.member_label(c)) for c in configs]
  cli.say_outputs(f'{workdir}/seed_<S>/ (each run\'s checkpoints, metrics, report.md) and '
                  f'{workdir}/population.md')
  logging.info('%s', models.summary_table(config.model))
  results = population.train_population(configs, workdirs, workdir,
                                        resume_command=cli.command_line())
  stopped = next((r for r in results if r.get('preempted')), None)
  if stopped and stopped.get('signal') == 'SIGINT':
    sys.exit(130)
  if not stopped:
    accuracies = [100 * r['final_test_accuracy'] for r in results]
    logging.info('final test accuracy %.2f%% mean over %d runs (%.2f-%.2f%%); summary in '
                 '%s/population.md', sum(accuracies) / len(accuracies), len(accuracies),
                 min(accuracies), max(accuracies), workdir)


def main(argv):
  del argv  # cli.run refuses positional arguments.
  run(cli.CONFIG.value, cli.WORKDIR.value)


if __name__ == '__main__':
  cli.run(main, 'main')
