"""The console is what a person reads; everything else goes to the command's log file.

Every command calls `setup` once its flags are parsed (`cli.parse_flags`). Then:
- the console gets resnet-jax's own lines only, each `HH:MM:SS message` (a warning
  `HH:MM:SS warning: message`; a table's further lines indented under its first), without
  absl's glog prefix: results too, since every line is a log record that `stamped` formats;
- every other record (orbax, jax, TFDS, clu, asyncio's unretrieved futures), Python's "Exception
  ignored in ..." reports (orbax's coroutines), threads' uncaught exceptions and all that C and
  C++ code writes to stderr (TensorFlow's absl::InitializeLog and oneDNN banners, XLA) go to the
  log file `<workdir>/<command>.log` (or beside --output; a temporary folder without either;
  process i > 0 of a multi-process run: `<command>.process<i>.log`);
`--verbose` leaves everything on the console, as the libraries print it.

A console that closes under a command (`main ... | tee log` loses its reader at Ctrl-C, when the
shell's SIGINT ends tee too; a closed terminal) never breaks it: stdout and stderr are `Console`
streams, which from their first failed write on send what they are given to the log file.

A command that ends on a user error ends through `end_with` (`exit_on_user_error`): its
`error: ...` line is the last thing printed (what libraries write afterwards, at interpreter exit
or from threads, goes to the log file), naming the log file where a library recorded errors there
(not warnings, such as TFDS's on a folder without dataset_info.json). A workdir the failed command
created, holding nothing but its lock and log, is removed.

Never silent: the console says within `SILENCE_SECONDS` that a command still works. From the
start of the process (`watch_start`, before the imports of jax and the config), through the
command's work (`watch_command`), a silence of that long says `<what>: <n> s so far`, naming the
innermost `phase` (a compile, a scoring, a benchmark cell); a loop that logs its own progress
runs in a phase of its own cadence.
"""

import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from typing import Callable, Iterator

from absl import logging as absl_logging

from resnet_jax import files
from resnet_jax.errors import UserError

PACKAGE_DIR = os.path.dirname(os.path.realpath(__file__))
# The longest the console stays silent while a command works.
SILENCE_SECONDS = 10.0
# The logger of what this module forwards for libraries (unraisable exceptions, threads' errors).
_FORWARDED = 'resnet_jax.library'
# The attribute of a phase's own `<what>: <n> s so far` records.
_OWN_LINE = 'resnet_jax_phase_line'


def from_this_package(record: logging.LogRecord) -> bool:
  """Whether a log record was made by code of resnet_jax (not by a library it calls)."""
  return (record.name != _FORWARDED
          and os.path.realpath(record.pathname).startswith(PACKAGE_DIR + os.sep))


def keep_record(record: logging.LogRecord) -> bool:
  """The console filter: resnet_jax's own records; libraries' go to the log file, and so do
  the lines said inside a quiet `phase`, but for its own."""
  return from_this_package(record) and (not _WATCH.quiet or getattr(record, _OWN_LINE, False))


def stamped(message: str, levelno: int = logging.INFO, created: float | None = None) -> str:
  """A console line: `HH:MM:SS message`, a warning or an error saying so after the time; the
  further lines of a message (a table) indented under its first."""
  when = time.strftime('%H:%M:%S', time.localtime(time.time() if created is None else created))
  level = '' if levelno < logging.WARNING else f'{logging.getLevelName(levelno).lower()}: '
  first, *rest = message.split('\n')
  return '\n'.join([f'{when} {level}{first}', *(' ' * (len(when) + 1) + line for line in rest)])


class ShortFormatter(logging.Formatter):
  """The console's formatter: resnet-jax's records `stamped`; a library's (shown with
  --verbose only) as absl formats it."""

  def __init__(self):
    super().__init__()
    self._library = absl_logging.PythonFormatter()

  def format(self, record: logging.LogRecord) -> str:
    _WATCH.last_line = time.monotonic()
    if not from_this_package(record):
      return self._library.format(record)
    return stamped(record.getMessage(), record.levelno, record.created)


class LogFile(logging.Handler):
  """Every record, glog-formatted, into the command's log file; C and C++ output goes there too.

  Attributes:
    path: the file.
    folder: the workdir or output folder it is in ('' for a temporary one).
    folder_existed: whether that folder was there before the command.
    problems: how many library records of ERROR or worse it holds.
    console: a file descriptor of the console (the original stderr), once file descriptor 2
      points at the log.
  """

  def __init__(self, folder: str, command: str):
    super().__init__(logging.DEBUG)
    self.command = command
    self.folder = folder if folder and not files.is_url(folder) else ''
    self.folder_existed = bool(self.folder) and os.path.exists(self.folder)
    self.problems = 0
    self.console = None
    self.setFormatter(absl_logging.PythonFormatter())
    try:
      self._file = self._open(self.folder, command)
    except OSError:  # A folder the command cannot write (the command says so in its own line).
      self.folder = ''
      self._file = self._open('', command)
    self.path = self._file.name

  @staticmethod
  def _open(folder: str, command: str, process_index: int = 0):
    folder = folder or os.path.join(tempfile.gettempdir(), f'resnet_jax_{os.getpid()}')
    os.makedirs(folder, exist_ok=True)
    name = f'{command}.process{process_index}.log' if process_index else f'{command}.log'
    path = os.path.join(os.path.abspath(folder), name)
    return open(path, 'a', encoding='utf-8')  # pylint: disable=consider-using-with

  def name_for_process(self, process_index: int) -> None:
    """Moves to process process_index's own file (`<command>.process<i>.log`; 0 keeps its own)."""
    if not process_index:
      return
    previous = self._file
    self._file = self._open(self.folder, self.command, process_index)
    self.path = self._file.name
    if self.console is not None:  # C and C++ output follows.
      os.dup2(self._file.fileno(), 2)
    previous.close()

  def emit(self, record: logging.LogRecord) -> None:
    try:
      self._file.write(self.format(record) + '\n')
      self._file.flush()
      if record.levelno >= logging.ERROR and not from_this_package(record):
        self.problems += 1
    except Exception:  # pylint: disable=broad-except  # A full disk must not end the command.
      pass

  def take_native_output(self) -> None:
    """Points file descriptor 2, where C and C++ code writes, at the log; sys.stderr keeps the
    console."""
    sys.stderr.flush()
    self.console = os.dup(2)
    os.dup2(self._file.fileno(), 2)
    sys.stderr = Console(self.console)
    absl_logging.get_absl_handler().python_handler.setStream(sys.stderr)

  def take_console(self) -> None:
    """Points stdout and the console at the log too: nothing more is shown."""
    for stream in (sys.stdout, sys.stderr):
      stream.flush()
    for fd in (1, 2, self.console):
      if fd is not None:
        os.dup2(self._file.fileno(), fd)

  def close(self) -> None:
    self._file.close()
    super().close()


class Console(io.TextIOWrapper):
  """A console stream (stdout, stderr) whose failed writes never raise.

  From its first write that fails (the reader of its pipe gone, the terminal closed), its file
  descriptor points at the command's log file (at nothing without one): what it is given is kept
  there, and the command goes on to its end (a stop saves its checkpoint).
  """

  def __init__(self, fd: int):
    super().__init__(io.BufferedWriter(io.FileIO(fd, 'w', closefd=False)), encoding='utf-8',
                     errors='backslashreplace', line_buffering=True)

  def write(self, text: str) -> int:
    try:
      return super().write(text)
    except OSError:
      self._lost()
      return len(text)

  def flush(self) -> None:
    try:
      super().flush()
    except OSError:
      self._lost()

  def _lost(self) -> None:
    target = os.open(log_path() or os.devnull, os.O_WRONLY | os.O_APPEND)
    os.dup2(target, self.fileno())
    os.close(target)
    try:  # What the failed write left in the buffer.
      super().flush()
    except OSError:
      pass


def _use_console_streams() -> None:
  """sys.stdout and sys.stderr become `Console` streams on their file descriptors."""
  for name, fd in (('stdout', 1), ('stderr', 2)):
    stream = getattr(sys, name)
    if stream is not None and not isinstance(stream, Console):  # None: started without it.
      stream.flush()
      setattr(sys, name, Console(fd))
  absl_logging.get_absl_handler().python_handler.setStream(sys.stderr)


def say_at_once(line: str) -> None:
  """Writes line to the console from a signal handler; never raises.

  Straight to the file descriptor: the code the signal interrupted may be inside a write to the
  console stream, holding its lock, and a second write through it would raise there. Stamped
  as every console line is.
  """
  try:
    os.write(sys.stderr.fileno(), f'{stamped(line)}\n'.encode())
  except (OSError, ValueError, AttributeError):  # A console gone, or no file descriptor.
    pass


def _forward_unraisable(unraisable) -> None:
  text = ''.join(traceback.format_exception(unraisable.exc_type, unraisable.exc_value,
                                            unraisable.exc_traceback))
  logging.getLogger(_FORWARDED).error('%s: %r\n%s', unraisable.err_msg or 'Exception ignored in',
                                      unraisable.object, text)


def _forward_thread_exception(args) -> None:
  text = ''.join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
  logging.getLogger(_FORWARDED).error('exception in thread %s\n%s',
                                      getattr(args.thread, 'name', '?'), text)


def _log_file() -> LogFile | None:
  return next((h for h in logging.root.handlers if isinstance(h, LogFile)), None)


def log_path() -> str | None:
  """The command's log file (None with --verbose, or before `setup`)."""
  handler = _log_file()
  return handler.path if handler else None


def name_log_for_process(process_index: int) -> None:
  """Gives process process_index of a multi-process run its own log file (see LogFile)."""
  handler = _log_file()
  if handler:
    handler.name_for_process(process_index)


def setup(command: str, folder: str | None, verbose: bool = False) -> str | None:
  """Splits what a command prints between the console and its log file; the log's path.

  Called once a process, by `cli.parse_flags`.

  Args:
    command: the command's name (`main`, `evaluate`, ...), the log file's name.
    folder: the workdir or output folder the log goes into (created if missing).
    verbose: True: everything on the console, as the libraries print it, and no log file.
  """
  _use_console_streams()
  console = absl_logging.get_absl_handler()
  console.setFormatter(ShortFormatter())
  _WATCH.console_ready = True
  if verbose:
    return None
  console.addFilter(keep_record)
  handler = LogFile(folder or '', command)
  logging.root.addHandler(handler)
  logging.captureWarnings(True)
  sys.unraisablehook = _forward_unraisable
  threading.excepthook = _forward_thread_exception
  handler.take_native_output()
  return handler.path


def end_with(line: str, status: int) -> None:
  """Prints line as the command's last, and exits with status; nothing is printed after it.

  The line names the log file where libraries recorded errors there. A workdir the
  command created that holds nothing but its lock and log is removed.
  """
  watch_command(None)
  handler = _log_file()
  if handler and handler.problems:
    line = f'{line} (library messages in {handler.path})'
  sys.stdout.flush()
  print(line, file=sys.stderr, flush=True)
  if handler:
    handler.take_console()
    if not handler.problems:
      _remove_if_empty(handler)
  sys.exit(status)


def _remove_if_empty(handler: LogFile) -> None:
  """Removes the workdir a failed command created where it holds only the lock and the log."""
  folder = handler.folder
  if not folder or handler.folder_existed or not os.path.isdir(folder):
    return
  if set(os.listdir(folder)) <= {files.LOCK_FILE, os.path.basename(handler.path)}:
    shutil.rmtree(folder, ignore_errors=True)  # The open log is then written to nowhere.


def exit_on_user_error(fn, *args, **kwargs):
  """Runs fn; a UserError ends the command with its one line (`end_with`), status 2.

  Ctrl-C outside training (which stops after a call and saves) ends it with status 130.
  """
  try:
    return fn(*args, **kwargs)
  except UserError as e:
    end_with(f'error: {e}', 2)
  except KeyboardInterrupt:
    end_with('stopped (Ctrl-C)', 130)


class _Phase:
  """A wait the console names: what it is, since when, how long a silence it allows."""

  def __init__(self, what: str, every_seconds: float | None = None, quiet: bool = False):
    self.what, self.quiet, self.start = what, quiet, time.monotonic()
    self._every_seconds = every_seconds

  @property
  def every_seconds(self) -> float:
    return SILENCE_SECONDS if self._every_seconds is None else self._every_seconds


class _Watch:
  """The thread that breaks a silence of the console (see the module docstring).

  Attributes:
    base: the command's phase (starting, then working), under the `phase` blocks; None: none.
    phases: the `phase` blocks open, innermost last.
    last_line: when the console last printed (monotonic).
    console_ready: `setup` has set the console (else a line is written to stderr directly).
  """

  def __init__(self):
    self.base: _Phase | None = None
    self.phases: list[_Phase] = []
    self.last_line = time.monotonic()
    self.console_ready = False
    self._changed = threading.Condition()
    self._thread = None

  @property
  def quiet(self) -> bool:
    return any(p.quiet for p in list(self.phases))

  def innermost(self) -> _Phase | None:
    """The phase a silence names: the innermost, or the outermost quiet one (what is inside it
    is not shown)."""
    phases = list(self.phases)
    return next((p for p in phases if p.quiet), phases[-1] if phases else self.base)

  def change(self, change) -> None:
    """Makes a change of the phases, and wakes the thread (started on first use) to it."""
    with self._changed:
      change()
      if self._thread is None:
        self._thread = threading.Thread(target=self._run, name='console_watch', daemon=True)
        self._thread.start()
      self._changed.notify()

  def _run(self) -> None:
    while True:
      with self._changed:
        current = self.innermost()
        if current is None:
          self._changed.wait()
          continue
        due = max(self.last_line, current.start) + current.every_seconds
        if time.monotonic() < due:  # Checked every second: SILENCE_SECONDS may change.
          self._changed.wait(min(due - time.monotonic(), 1.0))
          continue
      # Said outside the lock: a logging handler's lock is taken while it is held elsewhere.
      if current is self.innermost():
        self.say(f'{current.what}: {time.monotonic() - current.start:.0f} s so far')

  def say(self, line: str) -> None:
    self.last_line = time.monotonic()
    if self.console_ready:
      absl_logging.info('%s', line, extra={_OWN_LINE: True})
    else:  # Before `setup`: absl's handler would prefix a warning about flags not parsed yet.
      print(stamped(line), file=sys.stderr, flush=True)


_WATCH = _Watch()
STARTING = 'starting (importing jax and the libraries, reading the config)'


def watch_start() -> None:
  """Called as a command's process starts (`python -m resnet_jax.<command>`, `resnet-jax`):
  a slow start (the imports of jax, the config file) says so every SILENCE_SECONDS."""
  if _WATCH.base is None:
    _WATCH.change(lambda: setattr(_WATCH, 'base', _Phase(STARTING)))


def watch_command(what: str | None) -> None:
  """The command's phase from now on, under every `phase`: its silences say `<what>: <n> s
  so far`; None: the command has ended, nothing is said any more."""
  _WATCH.change(lambda: setattr(_WATCH, 'base',
                                None if what is None else _Phase(what)))


@contextlib.contextmanager
def phase(what: str, every_seconds: float | None = None, quiet: bool = False) -> Iterator[None]:
  """Names the wait the block is: once the console has been silent for every_seconds (default
  SILENCE_SECONDS) within it, `<what>: <n> s so far` (n: the block's seconds), and again after
  each such silence.

  For a wait whose progress cannot be read (a compile, one compiled call, a child process). A
  loop that logs its own progress runs in a phase of its cadence (every_seconds longer than
  that), with phases of the default around its waits. quiet: the lines said inside the block
  go to the log file only (its own still reach the console).
  """
  entry = _Phase(what, every_seconds, quiet)
  _WATCH.change(lambda: _WATCH.phases.append(entry))
  try:
    yield
  finally:
    _WATCH.change(lambda: _WATCH.phases.remove(entry))


@contextlib.contextmanager
def watched(watch: Callable[[threading.Event], None], name: str) -> Iterator[None]:
  """Runs watch(done) on a daemon thread while the block runs; done is set as the block ends."""
  done = threading.Event()
  thread = threading.Thread(target=watch, args=(done,), name=name, daemon=True)
  thread.start()
  try:
    yield
  finally:
    done.set()
    thread.join()
