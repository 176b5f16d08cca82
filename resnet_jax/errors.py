"""The one exception type for user mistakes.

Anything a user can fix (a bad config value, a missing data set, a corrupt checkpoint, a NaN loss)
raises `UserError` with a one-line message that says what is wrong and how to fix it. Entry points
(`main`, `evaluate`, `benchmark`, `sweep`, `inspect`) catch it, print `error: <message>` to stderr
and exit with status 2, with no traceback.
"""

import sys


class UserError(Exception):
  """A mistake the user can fix; its message is one line naming the fix."""


def exit_on_user_error(fn, *args, **kwargs):
  """Runs fn; a UserError becomes one line on stderr and exit status 2, Ctrl-C status 130.

  (Training handles Ctrl-C itself, saving a checkpoint; this catches it anywhere else.)
  """
  try:
    return fn(*args, **kwargs)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  except KeyboardInterrupt:
    print('interrupted (Ctrl-C); nothing was written since the last checkpoint', file=sys.stderr,
          flush=True)
    sys.exit(130)
