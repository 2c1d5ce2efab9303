"""dtype (compute) and param_dtype are independent; bfloat16 compute stays near float32."""
import jax.numpy as jnp
import numpy as np

from hourjax.models.memaug import MemAug
from tools.convert_torch.verify import load_memaug_fixture
from hourjax.numerics import rel_err
from conftest import jit_apply


def test_memaug_bfloat16_compute(fixture_path):
  cfg, params, inputs, ref = load_memaug_fixture(fixture_path("memaug_official_small.safetensors"))
  y = jit_apply(MemAug(cfg, dtype=jnp.bfloat16), params, *inputs)
  assert y.dtype == jnp.bfloat16
  err = rel_err(np.asarray(y[0], np.float32), ref)
  assert 1e-4 < err < 3e-2, err       # bf16 rounding is visible, but small
