"""MemAug: the memory-augmentation module of Hour-LLaVA (official `multimodal_resampler/memaug.py`).

`depth` post-norm blocks, each
    x = LN1(x + SelfAttn(x))                      queries see each other (question <-> decayed video)
    x = LN2(x + CrossAttn(x, memory))             queries recall from the full memory repository
    x = LN3(x + MLP(x))                           Linear(H, 4H) -> exact GELU -> Linear(4H, H)
LayerNorm eps 1e-5, biases everywhere, GQA with the LLM's head counts, no causal mask. RoPE
rotates the first half of each head with explicit positions: self-attention uses the query
positions for q and k; cross-attention uses query positions for q and memory positions for k.
The memory is the same for every block. Padding masks let samples of different lengths share
one batched call (the official code runs one sample at a time).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hourjax.models import stack
from hourjax.models.layers import dense, gelu_exact, init_std, layer_norm
from hourjax.ops import attention as attn_ops
from hourjax.ops.rope import apply_rope, rope_cos_sin
from hourjax.parallel import axes as ax


@dataclasses.dataclass(frozen=True)
class MemAugConfig:
  hidden_size: int = 3584
  num_heads: int = 28
  num_kv_heads: int = 4
  depth: int = 4
  rope_theta: float = 1e6
  mlp_ratio: int = 4
  layer_norm_eps: float = 1e-5
  init: str = "normal"          # layers.INITS: N(0, 0.02) as HF; residual_zero for narrow models
  # Execution: "ring" (or any ops.attention.SEQUENCE_PARALLEL) shards the memory on 'sequence'
  # for cross-attention (an LSE merge; the self-attention over the few thousand queries stays
  # local); scan and remat as in Qwen2.
  attention: str = "xla"
  scan_layers: bool = False
  remat: str = "none"

  def __post_init__(self):
    attn_ops.check_implementation(self.attention)
    stack.check_remat(self.remat)
    init_std(self.init)

  @classmethod
  def for_llm(cls, llm, depth: int = 4) -> "MemAugConfig":
    """The official builder takes width, head counts and rope theta from the LLM config."""
    return cls(hidden_size=llm.hidden_size, num_heads=llm.num_heads, num_kv_heads=llm.num_kv_heads,
               depth=depth, rope_theta=llm.rope_theta, init=llm.init)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def rotary_dim(self) -> int:
    return self.head_dim // 2


def recall_weights(q: jax.Array, k: jax.Array, kv_mask: jax.Array) -> jax.Array:
  """Cross-attention probabilities averaged over heads: q [B, Lq, Hq, D], k [B, M, Hkv, D]
  (GQA), kv_mask [B, M] -> [B, Lq, M], rows summing to 1 over the valid memory."""
  k = jnp.repeat(k, q.shape[2] // k.shape[2], axis=2)
  scores = jnp.einsum("bqhd,bmhd->bhqm", q.astype(jnp.float32), k.astype(jnp.float32)) / q.shape[-1] ** 0.5
  scores = jnp.where(kv_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(scores, axis=-1).mean(1)


class MemAugAttention(nn.Module):
  """Self-attention or cross-attention to the memory; q/k/v/o all with biases."""
  cfg: MemAugConfig
  dtype: Any
  param_dtype: Any
  cross: bool

  @nn.compact
  def __call__(self, x, q_rope, kv, k_rope, kv_mask):
    c = self.cfg
    kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype, init_std=init_std(c.init))
    q = dense((c.num_heads, c.head_dim), (ax.EMBED, ax.HEADS, ax.HEAD_DIM), name="q", **kw)(x)
    k = dense((c.num_kv_heads, c.head_dim), (ax.EMBED, ax.KV_HEADS, ax.HEAD_DIM), name="k", **kw)(kv)
    v = dense((c.num_kv_heads, c.head_dim), (ax.EMBED, ax.KV_HEADS, ax.HEAD_DIM), name="v", **kw)(kv)
    q, k = apply_rope(q, *q_rope), apply_rope(k, *k_rope)
    impl = c.attention if self.cross or c.attention not in attn_ops.SEQUENCE_PARALLEL else "xla"
    out = attn_ops.cross_attend(q, k, v, kv_mask, impl=impl)
    if self.cross and self.is_mutable_collection("intermediates"):
      # Recall made visible (docs/ablation.md's attention-mass probe): where each query looks
      # in the memory, averaged over heads. Only computed when intermediates are captured.
      self.sow("intermediates", "recall_weights", recall_weights(q, k, kv_mask))
    return dense(c.hidden_size, (ax.HEADS, ax.HEAD_DIM, ax.EMBED), in_axes=(-2, -1), name="o",
                 **{**kw, "init_std": init_std(c.init, branch_out=True)})(out)


class MemAugBlock(nn.Module):
  cfg: MemAugConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x, q_rope, query_mask, memory, m_rope, memory_mask, unused_per_layer=None):
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    ln = lambda name: layer_norm(c.layer_norm_eps, name=name, **kw)
    x = ln("norm1")(x + MemAugAttention(c, cross=False, name="self_attn", **kw)(
        x, q_rope, x, q_rope, query_mask))
    x = ln("norm2")(x + MemAugAttention(c, cross=True, name="cross_attn", **kw)(
        x, q_rope, memory, m_rope, memory_mask))
    mk = dict(use_bias=True, init_std=init_std(c.init), **kw)
    h = gelu_exact(dense(c.mlp_ratio * c.hidden_size, (ax.EMBED, ax.MLP), name="fc1", **mk)(x))
    h = ax.constrain(h, (ax.BATCH, ax.LENGTH, ax.ACT_MLP))
    mk["init_std"] = init_std(c.init, branch_out=True)
    x = ln("norm3")(x + dense(c.hidden_size, (ax.MLP, ax.EMBED), name="fc2", **mk)(h))
    return ax.constrain(x, (ax.BATCH, ax.LENGTH, ax.ACT_EMBED)), None


class MemAug(nn.Module):
  """queries [B, Lq, H], memory [B, M, H], positions [B, Lq] / [B, M], masks bool (None = all
  valid) -> augmented queries [B, Lq, H] (no final norm)."""
  cfg: MemAugConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, queries: jax.Array, memory: jax.Array, query_positions: jax.Array,
               memory_positions: jax.Array, query_mask: jax.Array | None = None,
               memory_mask: jax.Array | None = None) -> jax.Array:
    c = self.cfg
    if query_mask is None:
      query_mask = jnp.ones(queries.shape[:2], bool)
    if memory_mask is None:
      memory_mask = jnp.ones(memory.shape[:2], bool)
    x = ax.constrain(queries.astype(self.dtype), (ax.BATCH, ax.LENGTH, ax.ACT_EMBED))
    memory = ax.constrain(memory.astype(self.dtype), (ax.BATCH, ax.MEMORY, ax.ACT_EMBED))
    q_rope = rope_cos_sin(query_positions, c.rotary_dim, c.rope_theta)
    m_rope = rope_cos_sin(memory_positions, c.rotary_dim, c.rope_theta)
    blocks = stack.make(MemAugBlock, c.depth, scan=c.scan_layers, remat=c.remat, num_shared=5,
                        cfg=c, dtype=self.dtype, param_dtype=self.param_dtype)
    x, _ = stack.apply(blocks, x, q_rope, query_mask, memory, m_rope, memory_mask)
    return x
