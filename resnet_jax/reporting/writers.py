"""Metric writers (TensorBoard, a JSON-lines file) through clu.

TensorBoard events are written by `TensorBoardWriter`, through the `tensorboard` package alone,
whether or not TensorFlow is installed: importing TensorFlow costs a run's start several seconds
(7 s on a 2-core CPU) and the GPU machines have none. clu's `metric_writers` package imports
TensorFlow for its own TensorBoard writer as it loads, so importing this module first registers a
stand-in `clu.metric_writers.summary_writer` that makes this writer instead; `clu.metric_writers`
and `clu.periodic_actions` then import the same everywhere, without TensorFlow. Import this
module before either of them.

Workdirs may be local folders or URLs (gs://... on Cloud TPU VMs): paths go through `files`.
"""

import io
import json
import os
import sys
import tempfile
import time
import types
from typing import Any, Mapping, Optional

from absl import logging
from etils import epath
import numpy as np

from resnet_jax import files

_SUMMARY_MODULE = 'clu.metric_writers.summary_writer'
METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


def _register_summary_writer() -> None:
  if _SUMMARY_MODULE not in sys.modules:  # Else clu was imported first (with TensorFlow).
    module = types.ModuleType(_SUMMARY_MODULE)
    module.SummaryWriter = lambda logdir: TensorBoardWriter(logdir)
    sys.modules[_SUMMARY_MODULE] = module


_register_summary_writer()

# pylint: disable=g-import-not-at-top,wrong-import-position,g-bad-import-order
from clu import metric_writers  # noqa: E402
# pylint: enable=g-import-not-at-top,wrong-import-position,g-bad-import-order


# tensorboard reaches files through TensorFlow's file system where TensorFlow is installed, unless
# a module of this name exists (its `no_tensorflow` build target); then through its own, which
# writes local files and, through fsspec, URLs (gcsfs for gs://).
_TENSORBOARD_WITHOUT_TF = 'tensorboard.compat.notf'


class TensorBoardWriter(metric_writers.MetricWriter):
  """Writes TensorBoard event files with tensorboard's own event writer, never TensorFlow.

  A resumed run (`after_step` given) first drops the events an earlier attempt wrote past the
  step it resumes from: event files are append-only, so the events up to that step are copied
  into this writer's new file and the old files deleted. TensorBoard then shows each step once,
  whatever reads the folder (its purge of orphaned data covers only some of its readers).
  """

  def __init__(self, logdir: str, after_step: Optional[int] = None):
    super().__init__()
    sys.modules.setdefault(_TENSORBOARD_WITHOUT_TF, types.ModuleType(_TENSORBOARD_WITHOUT_TF))
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.text import summary_v2 as text_summary
    from tensorboard.summary.writer import event_file_writer
    # pylint: enable=g-import-not-at-top
    self._event_pb2, self._summary_pb2, self._text_summary = event_pb2, summary_pb2, text_summary
    old_files = _event_files(logdir) if after_step is not None else []
    self._writer = event_file_writer.EventFileWriter(os.fspath(logdir))
    if old_files:
      self._keep_events_up_to(old_files, after_step)

  def _keep_events_up_to(self, paths: list, step: int) -> None:
    """Rewrites the events of paths up to step (each once) into this writer's file."""
    # pylint: disable-next=g-import-not-at-top
    from tensorboard.backend.event_processing import event_file_loader
    kept, seen, dropped = [], set(), 0
    for path in paths:
      for record in event_file_loader.RawEventFileLoader(os.fspath(path)).Load():
        event = self._event_pb2.Event.FromString(record)
        if event.HasField('file_version') or record in seen:
          continue  # The new file has its own version; a copy a crash left twice is kept once.
        seen.add(record)
        if event.step > step:
          dropped += 1
        else:
          kept.append(event)
    if not dropped:
      return  # The old files stay as they are.
    for event in kept:
      self._writer.add_event(event)
    self._writer.flush()
    for path in paths:
      path.unlink()
    logging.warning('%s: dropped %d TensorBoard event(s) past step %d, written by an attempt '
                    'that stopped before its next checkpoint', paths[0].parent, dropped, step)

  def _add(self, step: int, values: list) -> None:
    self._writer.add_event(self._event_pb2.Event(
        wall_time=time.time(), step=int(step), summary=self._summary_pb2.Summary(value=values)))

  def write_summaries(self, step, values, metadata=None):
    self.write_scalars(step, {k: v for k, v in values.items() if np.ndim(v) == 0})

  def write_scalars(self, step, scalars):
    self._add(step, [self._summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                     for k, v in scalars.items()])

  def write_images(self, step, images):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    summary_pb2 = self._summary_pb2
    values = []
    for tag, image in images.items():
      image = np.asarray(image)
      if image.dtype != np.uint8:
        image = (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
      for index, single in enumerate(image if image.ndim == 4 else image[None]):
        buffer = io.BytesIO()
        Image.fromarray(single.squeeze()).save(buffer, format='PNG')
        height, width = single.shape[:2]
        channels = single.shape[2] if single.ndim == 3 else 1
        name = tag if image.ndim == 3 else f'{tag}/{index}'
        values.append(summary_pb2.Summary.Value(tag=name, image=summary_pb2.Summary.Image(
            height=height, width=width, colorspace=channels,
            encoded_image_string=buffer.getvalue())))
    self._add(step, values)

  def write_videos(self, step, videos):
    del step, videos  # Not used by resnet-jax.

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate  # Not used by resnet-jax.

  def write_texts(self, step, texts):
    self._add(step, [value for tag, text in texts.items()
                     for value in self._text_summary.text_pb(tag, np.array(text)).value])

  def write_histograms(self, step, arrays, num_buckets=None):
    summary_pb2 = self._summary_pb2
    values = []
    for tag, array in arrays.items():
      array = np.asarray(array, dtype=np.float64).ravel()
      bins = (num_buckets or {}).get(tag) or 30
      counts, edges = np.histogram(array, bins=bins)
      values.append(summary_pb2.Summary.Value(tag=tag, histo=summary_pb2.HistogramProto(
          min=float(array.min()), max=float(array.max()), num=float(array.size),
          sum=float(array.sum()), sum_squares=float(np.square(array).sum()),
          bucket_limit=[float(e) for e in edges[1:]], bucket=[float(c) for c in counts])))
    self._add(step, values)

  def write_hparams(self, hparams):
    self.write_texts(0, {'hparams': json.dumps(dict(hparams), default=str, sort_keys=True)})

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class JsonLinesWriter(metric_writers.MetricWriter):
  """One JSON object per `write_scalars` call ({"step": s, name: value, ...}), one a line.

  Object stores (gs://) cannot append to a file, so the lines are kept in memory (a run writes a
  few thousand at most) and `flush` rewrites the whole file atomically (`files.write_atomic`): a
  crash mid-flush leaves the previous version. Lines already in it (the earlier part of a
  resumed run) are kept up to `after_step`, the global step the run resumes from: what an
  attempt wrote past its last checkpoint is trained again, so it is dropped (each step is
  recorded once). A torn line an older version's crash left is dropped too, with one warning.
  """

  def __init__(self, path: epath.PathLike, after_step: Optional[int] = None):
    super().__init__()
    self._path = epath.Path(path)
    records, torn = parse_jsonl(self._path.read_text()) if self._path.exists() else ([], 0)
    if torn:
      logging.warning('%s: dropped %d torn line(s) left by an earlier crash; the %d whole '
                      'records are kept', self._path, torn, len(records))
    kept = [r for r in records if after_step is None or r.get('step', 0) <= after_step]
    if len(kept) < len(records):
      logging.warning('%s: dropped %d record(s) past step %d, written by an attempt that stopped '
                      'before its next checkpoint', self._path, len(records) - len(kept),
                      after_step)
    self._lines = [json.dumps(record) for record in kept]
    # A repaired file is rewritten at once.
    self._written = len(self._lines) if len(kept) == len(records) and not torn else -1
    self.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {'step': int(step), 'time': time.time()}
    record.update({k: float(v) for k, v in scalars.items()})
    self._lines.append(json.dumps(record))

  def write_summaries(self, step, values, metadata=None):
    self.write_scalars(step, {k: v for k, v in values.items() if np.ndim(v) == 0})

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_hparams(self, hparams):
    self._lines.append(json.dumps({'hparams': dict(hparams)}, default=str))

  def flush(self):
    if len(self._lines) != self._written:
      files.write_atomic(self._path, ''.join(line + '\n' for line in self._lines))
      self._written = len(self._lines)

  def close(self):
    self.flush()


def parse_jsonl(text: str) -> tuple[list[dict], int]:
  """(the JSON objects of text's lines, in order; how many lines were torn, i.e. not one)."""
  records, torn = [], 0
  for line in text.splitlines():
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError:
      record = None
    if isinstance(record, dict):
      records.append(record)
    else:
      torn += 1
  return records, torn


def read_jsonl(path: epath.PathLike) -> list[dict]:
  """The records a JsonLinesWriter wrote, in order; a torn line (an older crash's) is skipped."""
  return parse_jsonl(epath.Path(path).read_text())[0]


def _fsspec_can_open(url: str) -> bool:
  """Whether fsspec (which tensorboard uses without TensorFlow) has a filesystem for url."""
  try:
    import fsspec  # pylint: disable=g-import-not-at-top
    return fsspec.get_filesystem_class(url.split('://', 1)[0]) is not None
  except (ImportError, ValueError):
    return False


def tensorboard_dir(workdir: epath.PathLike) -> str:
  """workdir/tensorboard, or a local temporary folder where events cannot be written there.

  TensorBoard's event writer reaches a URL through fsspec's file system for it (gcsfs for gs://,
  the `gcs` extra); without one, the events stay on this machine.
  """
  logdir = os.fspath(files.as_path(workdir) / TENSORBOARD_DIR)
  if not files.is_url(logdir) or _fsspec_can_open(logdir):
    return logdir
  local = tempfile.mkdtemp(prefix='resnet_jax_tensorboard_')
  logging.warning('TensorBoard events go to %s on this machine: writing them to %s needs an '
                  "fsspec file system for it (gcsfs for gs://: pip install -e '.[gcs]')", local,
                  logdir)
  return local


def _event_files(logdir: str) -> list:
  path = epath.Path(logdir)
  return sorted(path.glob('*tfevents*')) if path.is_dir() else []


def create_writer(workdir: Optional[epath.PathLike], *, is_main: bool,
                  after_step: Optional[int] = None) -> metric_writers.MetricWriter:
  """TensorBoard events and metrics.jsonl on the main process; nothing on the others.

  Args:
    workdir: the run's folder.
    is_main: whether this is the process that writes.
    after_step: the global step the run starts from (its checkpoint's; 0 for a fresh start):
      what an earlier attempt recorded past it is dropped from both. None keeps everything.

  No console writer: the trainer logs each progress and epoch line itself, in its own words, so
  clu's LoggingWriter would print every one of them a second time.
  """
  writers = []
  if is_main and workdir:
    path = files.as_path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    writers.append(TensorBoardWriter(tensorboard_dir(path), after_step))
    writers.append(JsonLinesWriter(path / METRICS_FILE, after_step))
  return metric_writers.MultiWriter(writers)
