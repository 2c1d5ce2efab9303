"""dtype (compute) and param_dtype are independent; bfloat16 compute stays near float32."""
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

from hourjax.convert import memaug as table
from hourjax.convert.rules import to_params
from hourjax.models.memaug import MemAug, MemAugConfig
from tools.convert_torch.verify import rel_err


def test_memaug_bfloat16_compute(fixture_path):
  t = load_file(fixture_path("memaug_official_small.safetensors"))
  cfg = MemAugConfig(hidden_size=64, num_heads=4, num_kv_heads=2, depth=2, rope_theta=1e6)
  sd = {k[len("state_dict."):]: v for k, v in t.items() if k.startswith("state_dict.")}
  params, _ = to_params(table.rules(cfg), sd.keys(), sd.__getitem__)
  inputs = [t[f"inputs.{k}"][None] for k in ("x_q", "x_kv", "q_position_ids", "k_position_ids")]
  y = MemAug(cfg, dtype=jnp.bfloat16).apply({"params": params}, *inputs)
  assert y.dtype == jnp.bfloat16
  err = rel_err(np.asarray(y[0], np.float32), t["outputs.y"])
  assert 1e-4 < err < 3e-2, err       # bf16 rounding is visible, but small
