"""Pallas splash attention (run here in interpret mode) equals dense attention, for the decoder
(causal, GQA, padding), MemAug cross-attention (masked memory, a sample with none) and lengths
that need padding to the kernel's blocks; and the model switch selects it."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hourjax.models import build
from hourjax.models.qwen2 import Qwen2Config
from hourjax.ops.attention import cross_attend, dot_product_attention, segment_mask
from hourjax.ops.splash import splash_attention
from hourjax.numerics import rel_err
from conftest import jit_apply


def _qkv(b, t, s, n, kh, d, seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(ks[0], (b, t, n, d)), jax.random.normal(ks[1], (b, s, kh, d)),
          jax.random.normal(ks[2], (b, s, kh, d)))


@pytest.mark.parametrize("t", [256, 200])
def test_causal_gqa_with_padding_outputs_and_grads(t):
  q, k, v = _qkv(2, t, t, 4, 2, 32)
  seg = jnp.ones((2, t), jnp.int32).at[1, t - 50:].set(0)
  slots = jnp.broadcast_to(jnp.arange(t), (2, t))
  real = (np.asarray(seg) > 0)[:, :, None, None]
  w = jax.random.normal(jax.random.key(5), q.shape) * real

  def loss(attn):
    return lambda q, k, v: (attn(q, k, v) * w).sum()
  splash = lambda q, k, v: splash_attention(q, k, v, seg, seg, causal=True, block=128)
  dense = lambda q, k, v: dot_product_attention(q, k, v, segment_mask(slots, slots, seg, seg, True))
  assert rel_err(jax.jit(splash)(q, k, v) * real, dense(q, k, v) * real) < 1e-5
  for got, want in zip(jax.jit(jax.grad(loss(splash), (0, 1, 2)))(q, k, v),
                       jax.grad(loss(dense), (0, 1, 2))(q, k, v)):
    assert rel_err(got, want) < 1e-5


def test_cross_attention_masked_memory():
  q, k, v = _qkv(2, 40, 300, 4, 2, 32, seed=1)
  mask = jnp.ones((2, 300), bool).at[0, 170:].set(False).at[1].set(False)   # sample 1: no memory
  out = jax.jit(lambda q, k, v: cross_attend(q, k, v, mask, impl="splash"))(q, k, v)
  assert bool(jnp.isfinite(out).all())
  assert rel_err(out[0], cross_attend(q, k, v, mask)[0]) < 1e-5


def test_qwen2_with_splash_equals_xla():
  cfg = Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                    num_kv_heads=2)
  params = build.init_params("qwen2", cfg, jax.random.key(0))
  ids = jax.random.randint(jax.random.key(1), (2, 130), 0, 64)
  mask = jnp.ones((2, 130), bool).at[1, 100:].set(False)
  ref, _ = jit_apply(build.build("qwen2", cfg), params, ids, attention_mask=mask)
  got, _ = jax.jit(lambda p: build.build("qwen2", dataclasses.replace(cfg, attention="splash")).apply(
      {"params": p}, ids, attention_mask=mask))(params)
  assert rel_err(got[0], ref[0]) < 1e-5 and rel_err(got[1, :100], ref[1, :100]) < 1e-5
