"""The network and what trains it: the Flax ResNet (`resnet`), the losses, the optax chain.

`from resnet_jax import models` gives the network's public names (`models.preset('best')`,
`models.build_model(cfg)`, ...), which configs use; `losses` and `optim` are its submodules.
"""

from resnet_jax.models.resnet import ACTIVATIONS
from resnet_jax.models.resnet import AUTO_DTYPE
from resnet_jax.models.resnet import BatchNorm
from resnet_jax.models.resnet import BLOCK_ORDERS
from resnet_jax.models.resnet import BLOCKS
from resnet_jax.models.resnet import BN_DTYPES
from resnet_jax.models.resnet import build_model
from resnet_jax.models.resnet import check_budget
from resnet_jax.models.resnet import compute_dtype
from resnet_jax.models.resnet import count_params
from resnet_jax.models.resnet import DTYPES
from resnet_jax.models.resnet import initializers
from resnet_jax.models.resnet import INITS
from resnet_jax.models.resnet import model_size
from resnet_jax.models.resnet import preset
from resnet_jax.models.resnet import PRESETS
from resnet_jax.models.resnet import ResidualBlock
from resnet_jax.models.resnet import ResNet
from resnet_jax.models.resnet import SE_PLACES
from resnet_jax.models.resnet import SqueezeExcite
from resnet_jax.models.resnet import summary_table
from resnet_jax.models.resnet import validate
from resnet_jax.models.resnet import variable_shapes

__all__ = [
    'ACTIVATIONS',
    'AUTO_DTYPE',
    'BatchNorm',
    'BLOCK_ORDERS',
    'BLOCKS',
    'BN_DTYPES',
    'build_model',
    'check_budget',
    'compute_dtype',
    'count_params',
    'DTYPES',
    'initializers',
    'INITS',
    'model_size',
    'preset',
    'PRESETS',
    'ResidualBlock',
    'ResNet',
    'SE_PLACES',
    'SqueezeExcite',
    'summary_table',
    'validate',
    'variable_shapes',
]
