"""Mesh construction, the logical rule table, and parameters born sharded.

The golden file pins the PartitionSpec of every parameter of the 7B model (scanned layout) on a
reference mesh; regenerate it after an intended change with
  cd tests && PYTHONPATH=.. ../.venv/bin/python test_sharding.py --update
"""
import json
import pathlib
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs.hour_llava import get_config
from hourjax.config import model_config
from hourjax.convert.layout import with_scan
from hourjax.models import build
from hourjax.parallel import axes, mesh as mesh_lib
from conftest import tiny_model

GOLDEN = pathlib.Path(__file__).parent / "golden" / "hour_llava_7b_param_specs.json"
REFERENCE_MESH = {"data": 2, "fsdp": 8, "tensor": 4, "sequence": 2}


def _flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def seven_b_specs() -> dict[str, list]:
  cfg = with_scan(model_config(get_config("7b").model), True)
  specs = mesh_lib.param_specs(build.logical_specs("hour_llava", cfg),
                               build.abstract_params("hour_llava", cfg),
                               mesh_lib.abstract_mesh(REFERENCE_MESH))
  return {k: [list(e) if isinstance(e, tuple) else e for e in s] for k, s in _flat(specs).items()}


def test_golden_7b_partition_specs():
  got = seven_b_specs()
  want = json.loads(GOLDEN.read_text())
  changed = {k: (want.get(k), got.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)}
  assert not changed, f"PartitionSpecs changed (path: (golden, now)); update the golden file if intended: {changed}"


def test_every_large_7b_weight_is_sharded():
  """No parameter above 1M elements may be replicated on the reference mesh."""
  cfg = with_scan(model_config(get_config("7b").model), True)
  sizes = _flat(build.abstract_params("hour_llava", cfg))
  specs = seven_b_specs()
  replicated = [k for k, a in sizes.items() if a.size > 2**20 and not any(specs[k])]
  assert not replicated, replicated


@pytest.mark.parametrize("axes,err", [({"data": -1, "fsdp": -1}, "at most one -1"),
                                      ({"data": 3}, "has 3 devices"),
                                      ({"fsdp": 3, "data": -1}, "do not divide"),
                                      ({"pipeline": 2}, "unknown mesh axes")])
def test_bad_mesh_is_refused(axes, err):
  with pytest.raises(ValueError, match=err):
    mesh_lib.mesh_shape(axes, 8)


def test_spec_resolution_skips_axes_that_do_not_divide_or_repeat():
  m = mesh_lib.abstract_mesh({"data": 1, "fsdp": 4, "tensor": 2, "sequence": 2})
  assert axes.logical_to_spec(("embed", "mlp"), (64, 32), m) == P(("fsdp", "sequence"), "tensor")
  assert axes.logical_to_spec(("embed", "mlp"), (12, 3), m) == P("fsdp")   # 12 % 8, 3 % 2
  assert axes.logical_to_spec(("embed", "embed"), (8, 8), m) == P(("fsdp", "sequence"))
  with pytest.raises(KeyError, match="no rule"):
    axes.logical_to_spec(("nonsense",), (8,), m)


def test_params_born_sharded_on_eight_devices():
  assert jax.device_count() == 8
  cfg = with_scan(tiny_model(), True)
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 2, "tensor": 2, "sequence": 2})
  params = build.init_sharded("hour_llava", cfg, mesh, jax.random.key(0))
  ref = build.init_params("hour_llava", cfg, jax.random.key(0))
  specs = mesh_lib.param_specs(build.logical_specs("hour_llava", cfg),
                               build.abstract_params("hour_llava", cfg), mesh)
  flat, flat_ref, flat_specs = _flat(params), _flat(ref), _flat(specs)
  sharded = 0
  for k, a in flat.items():
    assert a.sharding.spec == flat_specs[k], k
    np.testing.assert_array_equal(np.asarray(a), np.asarray(flat_ref[k]), err_msg=k)
    local = a.addressable_shards[0].data.shape
    sharded += local != a.shape
  assert sharded > len(flat) // 2


if __name__ == "__main__" and "--update" in sys.argv:
  GOLDEN.parent.mkdir(exist_ok=True)
  lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(seven_b_specs().items())]
  GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n")
  print(f"wrote {GOLDEN}")
