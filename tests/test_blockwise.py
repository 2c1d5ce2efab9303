"""Blockwise attention (ops/blockwise.py) against the dense einsum path in float64 numpy terms:
outputs and gradients of q, k, v, causal with segment ids and padding, grouped-query heads,
lengths that are not a multiple of the block, and slots out of sequence order (a ring's
zig-zag); the decoder selects it by `attention=blockwise`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hourjax.numerics import rel_err
from hourjax.ops.attention import attend, dot_product_attention, segment_mask
from hourjax.ops.blockwise import blockwise_attention


def _inputs(rng, b, tq, tk, n, kv, d, padded=True):
  q = rng.normal(size=(b, tq, n, d)).astype(np.float32)
  k = rng.normal(size=(b, tk, kv, d)).astype(np.float32)
  v = rng.normal(size=(b, tk, kv, d)).astype(np.float32)
  # Two documents per row, then padding (segment 0) in the first row.
  seg = np.ones((b, tk), np.int32)
  seg[:, tk // 3:] = 2
  if padded:
    seg[0, tk - tk // 5:] = 0
  return q, k, v, seg


def _valid_rows(q_seg, kv_seg, q_slots, kv_slots, causal):
  return np.asarray(segment_mask(q_slots, kv_slots, q_seg, kv_seg, causal)).any(-1)     # [B, Tq]


@pytest.mark.parametrize("t,block,causal,kv", [(37, 16, True, 2), (64, 16, True, 1), (50, 512, False, 4),
                                               (41, 8, False, 2)])
def test_blockwise_equals_dense_outputs_and_gradients(t, block, causal, kv):
  rng = np.random.default_rng(t)
  q, k, v, seg = _inputs(rng, 2, t, t, 4, kv, 8)
  slots = np.broadcast_to(np.arange(t, dtype=np.int32), (2, t))
  rows = _valid_rows(seg, seg, slots, slots, causal)
  w = rng.normal(size=q.shape).astype(np.float32) * rows[..., None, None]    # a loss on valid rows

  def dense(q, k, v):
    return dot_product_attention(q, k, v, segment_mask(slots, slots, seg, seg, causal))

  def blocks(q, k, v):
    return blockwise_attention(q, k, v, slots, slots, seg, seg, causal=causal, block_q=block, block_k=block)

  ref, out = np.asarray(dense(q, k, v)), np.asarray(jax.jit(blocks)(q, k, v))
  assert rel_err(out[rows], ref[rows]) < 1e-5
  assert np.all(out[~rows] == 0)
  g_ref = jax.grad(lambda *a: jnp.sum(dense(*a) * w), argnums=(0, 1, 2))(q, k, v)
  g_out = jax.jit(jax.grad(lambda *a: jnp.sum(blocks(*a) * w), argnums=(0, 1, 2)))(q, k, v)
  for name, a, r in zip("qkv", g_out, g_ref):
    assert rel_err(a, r) < 1e-5, name


def test_blockwise_follows_slots_not_sequence_order():
  """Causality comes from the slots: a permuted sequence (as the ring's zig-zag order) gives the
  permuted result, also across blocks that are visible only in part."""
  rng = np.random.default_rng(0)
  t = 48
  q, k, v, seg = _inputs(rng, 1, t, t, 2, 2, 8, padded=False)
  seg[:] = 1
  slots = np.arange(t, dtype=np.int32)[None]
  perm = rng.permutation(t)
  base = blockwise_attention(q, k, v, slots, slots, seg, seg, causal=True, block_q=16, block_k=16)
  moved = blockwise_attention(q[:, perm], k[:, perm], v[:, perm], slots[:, perm], slots[:, perm], seg, seg,
                              causal=True, block_q=16, block_k=16)
  assert rel_err(np.asarray(moved), np.asarray(base)[:, perm]) < 1e-5


def test_decoder_with_blockwise_attention_equals_xla():
  """`attention=blockwise` in the decoder: the same logits and parameter gradients as the dense
  path on a padded batch."""
  import dataclasses
  from hourjax.models import build
  from hourjax.models.qwen2 import Qwen2Config
  cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                    num_kv_heads=2)
  ids = np.random.default_rng(0).integers(0, 64, (2, 30))
  mask = np.ones((2, 30), np.int32)
  mask[1, 21:] = 0
  params = build.init_params("qwen2", cfg, jax.random.key(0))

  def loss(kind):
    model = build.build("qwen2", dataclasses.replace(cfg, attention=kind))
    f = lambda p: jnp.sum(model.apply({"params": p}, ids, attention_mask=mask)[0] * mask[..., None])
    return jax.jit(jax.value_and_grad(f))(params)
  (l_ref, g_ref), (l_out, g_out) = loss("xla"), loss("blockwise")
  assert rel_err(l_out, l_ref) < 1e-5
  assert rel_err(jnp.concatenate([x.ravel() for x in jax.tree.leaves(g_out)]),
                 jnp.concatenate([x.ravel() for x in jax.tree.leaves(g_ref)])) < 1e-5


def test_attend_dispatches_blockwise():
  rng = np.random.default_rng(1)
  q, k, v, seg = _inputs(rng, 2, 24, 24, 2, 1, 8)
  slots = np.broadcast_to(np.arange(24, dtype=np.int32), (2, 24))
  rows = _valid_rows(seg, seg, slots, slots, True)
  out = np.asarray(attend(q, k, v, slots, slots, seg, seg, causal=True, impl="blockwise"))
  ref = np.asarray(attend(q, k, v, slots, slots, seg, seg, causal=True, impl="xla"))
  assert rel_err(out[rows], ref[rows]) < 1e-5


def test_cross_attend_blockwise_equals_dense():
  """MemAug's cross-attention (every query to the valid memory) by blocks."""
  from hourjax.ops.attention import cross_attend
  rng = np.random.default_rng(2)
  q = rng.normal(size=(2, 13, 4, 8)).astype(np.float32)
  k, v = (rng.normal(size=(2, 70, 2, 8)).astype(np.float32) for _ in range(2))
  kv_mask = np.arange(70)[None] < np.array([[70], [45]])
  ref = cross_attend(q, k, v, kv_mask, impl="xla")
  assert rel_err(cross_attend(q, k, v, kv_mask, impl="blockwise"), ref) < 1e-5
