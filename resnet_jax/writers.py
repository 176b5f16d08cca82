"""Metric writers: console, TensorBoard and a JSON-lines file, through clu.

clu's `metric_writers` package imports TensorFlow for its TensorBoard writer, and the GPU machines
have no TensorFlow. Where TensorFlow is absent, importing this module registers a TensorFlow-free
`clu.metric_writers.summary_writer` (TensorBoard event files through the `tensorboard` package)
before clu loads, so `clu.metric_writers` and `clu.periodic_actions` work the same everywhere.
Import this module before either of them.
"""

import importlib.util
import io
import json
import os
import sys
import time
import types
from typing import Any, Mapping, Optional

import numpy as np

_SUMMARY_MODULE = 'clu.metric_writers.summary_writer'
_INTERFACE_MODULE = 'clu.metric_writers.interface'


def _load_clu_interface() -> types.ModuleType:
  """clu's MetricWriter interface, loaded without running its package's TF import."""
  if _INTERFACE_MODULE in sys.modules:
    return sys.modules[_INTERFACE_MODULE]
  clu_spec = importlib.util.find_spec('clu')
  path = os.path.join(os.path.dirname(clu_spec.origin), 'metric_writers', 'interface.py')
  spec = importlib.util.spec_from_file_location(_INTERFACE_MODULE, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[_INTERFACE_MODULE] = module
  spec.loader.exec_module(module)
  return module


def _tensorflow_free_summary_module() -> types.ModuleType:
  """A stand-in for clu's TF summary writer module, built on tensorboard's event writer."""
  from tensorboard.compat.proto import event_pb2
  from tensorboard.compat.proto import summary_pb2
  from tensorboard.plugins.text import summary_v2 as text_summary
  from tensorboard.summary.writer import event_file_writer

  interface = _load_clu_interface()

  class SummaryWriter(interface.MetricWriter):
    """Writes TensorBoard event files without TensorFlow."""

    def __init__(self, logdir: str):
      super().__init__()
      self._writer = event_file_writer.EventFileWriter(os.fspath(logdir))

    def _add(self, step: int, values: list) -> None:
      self._writer.add_event(event_pb2.Event(
          wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)))

    def write_summaries(self, step, values, metadata=None):
      self.write_scalars(step, {k: v for k, v in values.items() if np.ndim(v) == 0})

    def write_scalars(self, step, scalars):
      self._add(step, [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                       for k, v in scalars.items()])

    def write_images(self, step, images):
      from PIL import Image  # pylint: disable=g-import-not-at-top
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
      self._writer.add_event(event_pb2.Event(
          wall_time=time.time(), step=int(step),
          summary=summary_pb2.Summary(value=[
              v for tag, text in texts.items()
              for v in text_summary.text_pb(tag, np.array(text)).value])))

    def write_histograms(self, step, arrays, num_buckets=None):
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

  module = types.ModuleType(_SUMMARY_MODULE)
  module.SummaryWriter = SummaryWriter
  return module


def _tensorflow_installed() -> bool:
  if 'tensorflow' in sys.modules:  # None there means "blocked": tests simulate a TF-free machine so.
    return sys.modules['tensorflow'] is not None
  return importlib.util.find_spec('tensorflow') is not None


def _ensure_clu_imports_without_tensorflow() -> None:
  if _tensorflow_installed() or _SUMMARY_MODULE in sys.modules:
    return
  sys.modules[_SUMMARY_MODULE] = _tensorflow_free_summary_module()


_ensure_clu_imports_without_tensorflow()

# pylint: disable=g-import-not-at-top,wrong-import-position
from clu import metric_writers  # noqa: E402
# pylint: enable=g-import-not-at-top,wrong-import-position


class JsonLinesWriter(metric_writers.MetricWriter):
  """Appends one JSON object per `write_scalars` call: {"step": s, name: value, ...}."""

  def __init__(self, path: str):
    super().__init__()
    self._file = open(path, 'a', encoding='utf-8')  # pylint: disable=consider-using-with

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {'step': int(step), 'time': time.time()}
    record.update({k: float(v) for k, v in scalars.items()})
    self._file.write(json.dumps(record) + '\n')

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
    self._file.write(json.dumps({'hparams': dict(hparams)}, default=str) + '\n')

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def read_jsonl(path: str) -> list[dict]:
  """The records a JsonLinesWriter wrote, in order."""
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def create_writer(workdir: Optional[str], *, is_main: bool) -> metric_writers.MetricWriter:
  """Console logging everywhere; TensorBoard events and metrics.jsonl in workdir on the main process."""
  writers = [metric_writers.LoggingWriter()]
  if is_main and workdir:
    os.makedirs(workdir, exist_ok=True)
    writers.append(metric_writers.SummaryWriter(os.path.join(workdir, 'tensorboard')))
    writers.append(JsonLinesWriter(os.path.join(workdir, 'metrics.jsonl')))
  return metric_writers.MultiWriter(writers)
