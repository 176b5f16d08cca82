"""PyTorch, imported only here: the same ResNet in torch, checkpoints read into Flax, the reference
trainer of a config, and the benchmark's torch baseline. Named so that nothing shadows `torch`."""

from resnet_jax import console_logs
from resnet_jax.errors import UserError, one_line

INSTALL = "pip install -e '.[torch]'"


def require_torch(what: str) -> None:
  """UserError, with the install line, unless PyTorch imports; commands call it before any work.

  Args:
    what: what needs PyTorch, for the message (e.g. '--torch_state_dict').
  """
  try:
    with console_logs.phase('importing PyTorch'):
      import torch  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401
  except ImportError as e:
    raise UserError(f'{what} needs PyTorch, which cannot be imported here ({one_line(e)}); '
                    f'install it: {INSTALL}') from None
