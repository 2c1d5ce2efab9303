"""Parameter counts of the real configs, from shapes only (jax.eval_shape allocates nothing)."""
import pytest

from configs.hour_llava import get_config
from hourjax.config import model_config
from hourjax.models import build


@pytest.mark.parametrize("size,memaug,total", [("7b", 646e6, 8.7e9), ("3b", 210e6, 3.7e9)])
def test_real_sizes(size, memaug, total):
  cfg = model_config(get_config(size).model)
  shapes = build.abstract_params("hour_llava", cfg)
  n_memaug = build.count_params(shapes["memaug"])
  n_total = build.count_params(shapes)
  assert abs(n_memaug - memaug) / memaug < 0.005, n_memaug
  assert abs(n_total - total) / total < 0.03, n_total
  # the spec's per-block figure: 161.5M (7B) / 52.5M (3B)
  per_block = build.count_params(shapes["memaug"]["layers_0"])
  assert abs(per_block - memaug / 4) / (memaug / 4) < 0.005


def test_every_parameter_has_logical_axis_names():
  import jax
  cfg = model_config(get_config("tiny").model)
  specs = build.logical_specs("hour_llava", cfg)
  shapes = build.abstract_params("hour_llava", cfg)
  flat_specs = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: x is None or hasattr(x, "index"))
  flat_shapes = dict(jax.tree_util.tree_leaves_with_path(shapes))
  assert len(flat_specs) == len(flat_shapes)
  for path, spec in flat_specs:
    assert spec is not None and len(spec) == len(flat_shapes[path].shape), path
    assert any(name is not None for name in spec), path   # at least one named axis
