"""runs: loop settings are checked, before any data is loaded."""

import pytest

from resnet_jax import defaults
from resnet_jax import errors
from resnet_jax.training import runs


@pytest.mark.parametrize('key,value', [
    ('num_epochs', 0), ('eval_batch_size', 0), ('eval_every_epochs', 0),
    ('checkpoint_every_epochs', -1), ('log_every_steps', 0), ('steps_per_call', -1),
    ('ema_decay', 1.0), ('ema_decay', -0.1), ('param_histograms_every_epochs', -1)])
def test_out_of_range_loop_setting_is_a_user_error(key, value):
  config = defaults.base_config()
  config[key] = value
  with pytest.raises(errors.UserError, match=rf'^config\.{key}={value} is invalid: must be'):
    runs.validate_run_config(config)


def test_setup_run_validates_before_loading_data(tmp_path):
  config = defaults.base_config()
  config.data.source, config.data.data_dir = 'cifar_batches', str(tmp_path / 'none')
  config.eval_every_epochs = 0
  with pytest.raises(errors.UserError, match='config.eval_every_epochs=0'):
    runs.setup_run(config, str(tmp_path))
