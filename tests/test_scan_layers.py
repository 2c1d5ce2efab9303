"""Scanned layers (with every remat policy) compute exactly what the unrolled layers compute,
the KV cache works through the scan, and checkpoints move between the two layouts."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hourjax.convert import layout
from hourjax.convert.io import load_params, read_meta, save_params
from hourjax.synthetic.batches import synthetic_batch
from hourjax.models import build
from hourjax.models.qwen2 import KVCache
from hourjax.train.step import loss_fn
from hourjax.numerics import rel_err, tree_rel_err
from conftest import jit_apply, tiny_model

CFG = tiny_model()


def _with_remat(cfg, remat):
  return dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, remat=remat),
                             llm=dataclasses.replace(cfg.llm, remat=remat),
                             memaug=dataclasses.replace(cfg.memaug, remat=remat))


def test_layout_round_trip_is_exact():
  params = build.init_params("hour_llava", CFG, jax.random.key(0))
  stacked = layout.stack_layers(params)
  assert layout.is_scanned(stacked) and not layout.is_scanned(params)
  assert jax.tree.structure(stacked) == jax.tree.structure(
      build.abstract_params("hour_llava", layout.with_scan(CFG, True)))
  back = layout.unstack_layers(stacked)
  jax.tree.map(np.testing.assert_array_equal, back, params)


@pytest.mark.parametrize("remat", ["none", "full", "save_dots"])
def test_scanned_loss_and_grads_equal_unrolled(remat):
  params = build.init_params("hour_llava", CFG, jax.random.key(0))
  batch = synthetic_batch(CFG, jax.random.key(1), [20, 9], 24, pixels=True)
  rng = jax.random.key(2)

  def run(cfg, p):
    model = build.build("hour_llava", cfg)
    return jax.jit(jax.value_and_grad(lambda p: loss_fn(model, p, batch, rng)[0]))(p)

  loss, grads = run(CFG, params)
  loss_s, grads_s = run(_with_remat(layout.with_scan(CFG, True), remat), layout.stack_layers(params))
  assert rel_err(loss_s, loss) < 1e-6
  assert tree_rel_err(layout.unstack_layers(grads_s), grads) < 1e-5


def test_kv_cache_through_scanned_decoder():
  cfg = dataclasses.replace(CFG.llm, scan_layers=True)
  params = layout.stack_layers(build.init_params("qwen2", CFG.llm, jax.random.key(0)))
  model = build.build("qwen2", cfg)
  ids = np.asarray(jax.random.randint(jax.random.key(1), (2, 10), 0, cfg.vocab_size))
  full, _ = jit_apply(model, params, ids)
  step = jax.jit(lambda p, x, c: model.apply({"params": p}, x, cache=c))
  logits, cache = step(params, ids[:, :4], KVCache.create(cfg, 2, 16))
  pieces = [logits]
  for t in range(4, 10):
    logits, cache = step(params, ids[:, t:t + 1], cache)
    pieces.append(logits)
  assert rel_err(jnp.concatenate(pieces, 1), full) < 1e-5


def test_checkpoint_records_layout_and_loads_into_either(tmp_path):
  params = build.init_params("hour_llava", CFG, jax.random.key(0))
  scanned_cfg = layout.with_scan(CFG, True)
  save_params(str(tmp_path / "ck"), params, "hour_llava", CFG)
  assert read_meta(str(tmp_path / "ck"))["scan_layers"] is False
  got = load_params(str(tmp_path / "ck"), build.abstract_params("hour_llava", scanned_cfg))
  jax.tree.map(np.testing.assert_array_equal, got, layout.stack_layers(params))
  save_params(str(tmp_path / "ck2"), got, "hour_llava", scanned_cfg)
  assert read_meta(str(tmp_path / "ck2"))["scan_layers"] is True
  back = load_params(str(tmp_path / "ck2"), build.abstract_params("hour_llava", CFG))
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_mixed_scan_settings_are_refused():
  mixed = dataclasses.replace(CFG, llm=dataclasses.replace(CFG.llm, scan_layers=True))
  with pytest.raises(ValueError, match="same for the vision tower"):
    layout.config_scanned(mixed)


def test_unknown_remat_policy_is_refused():
  with pytest.raises(ValueError, match="remat='most'"):
    dataclasses.replace(CFG.llm, remat="most")
