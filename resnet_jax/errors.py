"""The one exception type for user mistakes.

Anything a user can fix (a bad config value, a missing data set, a corrupt checkpoint, a NaN loss)
raises `UserError` with a one-line message that says what is wrong and how to fix it. Every
command (through `cli.run`, `console_logs.exit_on_user_error`) prints `error: <message>` to stderr
as its last line and exits with status 2, with no traceback.
"""

import traceback


class UserError(Exception):
  """A mistake the user can fix; its message is one line naming the fix."""


def one_line(error: BaseException) -> str:
  """The first non-empty line of an exception's message (its type if none), at most 300 characters.

  What a UserError quotes of the error beneath it.
  """
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return (lines[0] if lines else type(error).__name__)[:300]


def last_line(error: BaseException) -> str:
  """The last non-empty line of an exception's message (where tracebacks put the cause)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return (lines[-1] if lines else type(error).__name__)[:300]


def located(error: BaseException) -> str:
  """'Type: first line (file, line n)' of an error raised by a user's Python file.

  The place is a SyntaxError's own, else the innermost frame outside Python's import machinery.
  """
  if isinstance(error, SyntaxError):
    return f'SyntaxError: {error.msg} ({error.filename}, line {error.lineno})'
  frames = [frame for frame in traceback.extract_tb(error.__traceback__)
            if not frame.filename.startswith('<frozen')]
  where = f' ({frames[-1].filename}, line {frames[-1].lineno})' if frames else ''
  return f'{type(error).__name__}: {one_line(error)}{where}'
