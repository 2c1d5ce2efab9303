"""One Hour-LLaVA loss-and-gradient computation on a (data 2, fsdp 2, sequence 2) mesh of 8
CPU devices, with scanned + rematerialised layers and ring attention (zig-zag decoder ring,
LSE-merged MemAug memory), equals the plain single-device computation."""
import dataclasses
import functools

import jax
import pytest
from jax.sharding import NamedSharding

from hourjax.convert import layout
from hourjax.synthetic.batches import synthetic_batch
from hourjax.models import build
from hourjax.ops import attention as attn_ops
from hourjax.parallel import mesh as mesh_lib
from hourjax.train.step import loss_fn
from hourjax.numerics import rel_err, tree_rel_err
from conftest import tiny_model

CFG = tiny_model()


def _sharded_config(attention):
  c = layout.with_scan(CFG, True)
  return dataclasses.replace(
      c, vision=dataclasses.replace(c.vision, remat="full"),
      llm=dataclasses.replace(c.llm, attention=attention, remat="full"),
      memaug=dataclasses.replace(c.memaug, attention=attention, remat="save_dots"))


# The LLM sequence is text_len - 1 + 35 visual tokens: 60 splits into 2 x 2 zig-zag chunks,
# 55 does not (the ring pads it).
@functools.lru_cache(maxsize=1)
def _single_device(text_len):
  """(params, batch, loss, grads) of the plain computation, shared by the cases of one length."""
  params = build.init_params("hour_llava", CFG, jax.random.key(0))
  batch = synthetic_batch(CFG, jax.random.key(1), [20, 9, 31, 16], text_len, pixels=True)
  model = build.build("hour_llava", CFG)
  loss, grads = jax.jit(jax.value_and_grad(lambda p: loss_fn(model, p, batch, jax.random.key(2))[0]))(params)
  return params, batch, loss, grads


@pytest.mark.parametrize("attention,text_len", [("xla", 26), ("ring", 26), ("ring", 21)],
                         ids=["xla", "ring-zigzag", "ring-padded"])
def test_sharded_loss_and_grads_equal_single_device(attention, text_len):
  params, batch, loss, grads = _single_device(text_len)
  rng = jax.random.key(2)

  cfg = _sharded_config(attention)
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 1, "sequence": 2})
  specs = mesh_lib.param_specs(build.logical_specs("hour_llava", cfg),
                               build.abstract_params("hour_llava", cfg), mesh)
  p_shard = mesh_lib.shardings(specs, mesh)
  b_shard = jax.tree.map(lambda _: NamedSharding(mesh, mesh_lib.batch_spec(mesh)), batch)
  sharded_params = jax.device_put(layout.stack_layers(params), p_shard)
  sharded_batch = jax.device_put(batch, b_shard)
  sharded_model = build.build("hour_llava", cfg)
  with mesh_lib.activate(mesh):
    step = jax.jit(jax.value_and_grad(lambda p, b: loss_fn(sharded_model, p, b, rng)[0]),
                   in_shardings=(p_shard, b_shard), out_shardings=(None, p_shard))
    loss_s, grads_s = step(sharded_params, sharded_batch)
  if attention == "ring":
    with mesh_lib.activate(mesh):
      assert attn_ops.uses_zigzag(text_len - 1 + 35, 4) == (text_len == 26)
  assert rel_err(loss_s, loss) < 1e-5
  assert tree_rel_err(layout.unstack_layers(grads_s), grads) < 1e-5
