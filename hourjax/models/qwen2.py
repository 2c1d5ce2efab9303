"""Qwen2 causal LM, numerically equal to transformers' `Qwen2ForCausalLM`.

GQA attention with q/k/v biases, full-head rotate-half RoPE (theta from config: 1e6, or 1e9
after ProLongVid's context extension), SwiGLU MLP, RMSNorm, tied or untied head. Takes token
ids or ready embeddings (Hour-LLaVA splices visual tokens in), explicit positions, a padding
mask, and an optional KV cache for incremental decoding.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from hourjax.models import stack
from hourjax.models.layers import RMSNorm, dense, embedding_init, init_std
from hourjax.ops import attention as attn_ops
from hourjax.ops.rope import apply_rope, rope_cos_sin
from hourjax.parallel import axes as ax


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
  vocab_size: int = 152064
  hidden_size: int = 3584
  intermediate_size: int = 18944
  num_layers: int = 28
  num_heads: int = 28
  num_kv_heads: int = 4
  rope_theta: float = 1e6
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  # Initialisation (layers.INITS): "normal" draws every weight from N(0, initializer_range),
  # HF's rule; "fan_in" N(0, 1/fan_in), which narrow models trained from scratch need.
  initializer_range: float = 0.02
  init: str = "normal"
  # Execution, not architecture: the attention kernel (ops.attention.IMPLEMENTATIONS), layers
  # under nn.scan (the parameter layout changes; checkpoints record it), remat policy.
  attention: str = "xla"
  scan_layers: bool = False
  remat: str = "none"

  def __post_init__(self):
    attn_ops.check_implementation(self.attention)
    stack.check_remat(self.remat)
    init_std(self.init)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  def weight_std(self, branch_out: bool = False) -> float | None:
    """layers.init_std under this config's init and range."""
    return init_std(self.init, self.initializer_range, branch_out=branch_out)


@flax.struct.dataclass
class KVCache:
  """Static-size decoding cache. k, v: [layers, B, S, kv_heads, head_dim]; `valid` [B, S]
  marks slots holding real tokens; `end` is the next slot to write (same for the batch)."""
  k: jax.Array
  v: jax.Array
  valid: jax.Array
  end: jax.Array

  @classmethod
  def create(cls, cfg: Qwen2Config, batch: int, max_len: int, dtype: Any = jnp.float32) -> "KVCache":
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
               jnp.zeros((batch, max_len), bool), jnp.zeros((), jnp.int32))


class Qwen2Attention(nn.Module):
  cfg: Qwen2Config
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x, cos, sin, meta, cache_kv=None, cache_end=None):
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, init_std=c.weight_std())
    q = dense((c.num_heads, c.head_dim), (ax.EMBED, ax.HEADS, ax.HEAD_DIM), use_bias=True,
              name="q", **kw)(x)
    k = dense((c.num_kv_heads, c.head_dim), (ax.EMBED, ax.KV_HEADS, ax.HEAD_DIM), use_bias=True,
              name="k", **kw)(x)
    v = dense((c.num_kv_heads, c.head_dim), (ax.EMBED, ax.KV_HEADS, ax.HEAD_DIM), use_bias=True,
              name="v", **kw)(x)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q = ax.constrain(q, (ax.BATCH, ax.LENGTH, ax.ACT_HEADS, None))
    new_kv, impl = None, c.attention
    if cache_kv is not None:
      ck, cv = cache_kv
      k = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), cache_end, axis=1)
      v = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), cache_end, axis=1)
      new_kv = (k, v)
      # a decode step's few queries need no context parallelism
      impl = "xla" if impl in attn_ops.SEQUENCE_PARALLEL else impl
    out = attn_ops.attend(q, k.astype(self.dtype), v.astype(self.dtype), *meta, causal=True,
                          impl=impl, zigzag=impl in attn_ops.SEQUENCE_PARALLEL
                          and attn_ops.uses_zigzag(*x.shape[1::-1]))
    out = dense(c.hidden_size, (ax.HEADS, ax.HEAD_DIM, ax.EMBED), in_axes=(-2, -1),
                use_bias=False, name="o", **{**kw, "init_std": c.weight_std(branch_out=True)})(out)
    return out, new_kv


class Qwen2MLP(nn.Module):
  cfg: Qwen2Config
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x):
    c = self.cfg
    kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, init_std=c.weight_std())
    gate = dense(c.intermediate_size, (ax.EMBED, ax.MLP), name="gate", **kw)(x)
    up = dense(c.intermediate_size, (ax.EMBED, ax.MLP), name="up", **kw)(x)
    h = ax.constrain(jax.nn.silu(gate) * up, (ax.BATCH, ax.LENGTH, ax.ACT_MLP))
    return dense(c.hidden_size, (ax.MLP, ax.EMBED), name="down", **{**kw, "init_std": c.weight_std(branch_out=True)})(h)


class Qwen2Layer(nn.Module):
  cfg: Qwen2Config
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x, cos, sin, meta, cache_end, cache_kv):
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h, new_kv = Qwen2Attention(c, name="attn", **kw)(
        RMSNorm(c.rms_norm_eps, name="ln1", **kw)(x), cos, sin, meta, cache_kv, cache_end)
    x = x + h
    x = x + Qwen2MLP(c, name="mlp", **kw)(RMSNorm(c.rms_norm_eps, name="ln2", **kw)(x))
    return ax.constrain(x, (ax.BATCH, ax.LENGTH, ax.ACT_EMBED)), new_kv


class Qwen2(nn.Module):
  """`embed(ids)` gives token embeddings; `__call__` runs the decoder and the head.

  __call__(input_ids or inputs_embeds, positions=None, attention_mask=None, segment_ids=None,
           cache=None, head=True) -> (logits [B, T, V] float32, new cache or None);
  with head=False the final-normed hidden states [B, T, H] instead of logits.
  Without a cache, positions default to 0..T-1 and the causal order is the sequence order;
  `segment_ids` (packed sequences) keep tokens of different segments apart. With ring
  (or all-gather, Ulysses, hybrid) attention the tokens are put in zig-zag order for the
  decoder and back for the head.
  With a cache, the T new tokens take slots cache.end .. cache.end+T-1 and attend every valid
  earlier slot; `attention_mask` then marks which of the new tokens are real.
  """
  cfg: Qwen2Config
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embed_tokens = nn.Embed(
        c.vocab_size, c.hidden_size, name="embed",
        embedding_init=nn.with_logical_partitioning(embedding_init(c.weight_std(), c.hidden_size),
                                                    (ax.VOCAB, ax.EMBED)),
        **kw)
    self.layers = stack.make(Qwen2Layer, c.num_layers, scan=c.scan_layers, remat=c.remat,
                             num_shared=4, cfg=c, **kw)
    self.norm = RMSNorm(c.rms_norm_eps, name="norm", **kw)
    if not c.tie_word_embeddings:
      self.lm_head = dense(c.vocab_size, (ax.EMBED, ax.VOCAB), use_bias=False, name="lm_head",
                           init_std=c.weight_std(), **kw)

  def embed(self, input_ids: jax.Array) -> jax.Array:
    return self.embed_tokens(input_ids)

  def head_weight(self) -> jax.Array:
    """The output projection [H, V] (the embedding, transposed, when tied)."""
    if self.cfg.tie_word_embeddings:
      return self.embed_tokens.embedding.T
    return self.lm_head.variables["params"]["kernel"]

  def __call__(self, input_ids=None, *, inputs_embeds=None, positions=None, attention_mask=None,
               segment_ids=None, cache: KVCache | None = None, head: bool = True):
    x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.dtype)
    b, t = x.shape[:2]
    x = ax.constrain(x, (ax.BATCH, ax.LENGTH, ax.ACT_EMBED))
    new_valid = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
    start = jnp.zeros((), jnp.int32) if cache is None else cache.end
    q_slots = start + jnp.arange(t)
    if positions is None:
      positions = jnp.broadcast_to(q_slots, (b, t))
    q_segments = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    if cache is None:
      key_valid, k_slots, kv_segments = new_valid, q_slots, q_segments * new_valid
    else:
      key_valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, new_valid, start, axis=1)
      k_slots, kv_segments = jnp.arange(cache.valid.shape[1]), key_valid.astype(jnp.int32)
    q_slots, k_slots = jnp.broadcast_to(q_slots, (b, t)), jnp.broadcast_to(k_slots, (b, len(k_slots)))
    cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
    zigzag = (cache is None and self.cfg.attention in attn_ops.SEQUENCE_PARALLEL
              and attn_ops.uses_zigzag(t, b))
    if zigzag:
      x, cos, sin, q_slots, q_segments, kv_segments = attn_ops.zigzag(
          (x, cos, sin, q_slots, q_segments, kv_segments))
      k_slots = q_slots
    meta = (q_slots, k_slots, q_segments, kv_segments)
    per_layer = None if cache is None else (cache.k, cache.v)
    x, new_kv = stack.apply(self.layers, x, cos, sin, meta, start, per_layer=per_layer)
    if zigzag:
      x = attn_ops.zigzag(x, inverse=True)
    x = self.norm(x)
    # head=False: the training loss applies the head chunk by chunk (ops.loss), a prefill only
    # at each prompt's last token
    out = self.logits(x) if head else x
    if cache is None:
      return out, None
    return out, KVCache(new_kv[0], new_kv[1], key_valid, start + t)

  def logits(self, x: jax.Array) -> jax.Array:
    """Final-normed hidden states [B, T, H] -> float32 logits [B, T, V]."""
    logits = self.embed_tokens.attend(x) if self.cfg.tie_word_embeddings else self.lm_head(x)
    return ax.constrain(logits.astype(jnp.float32), (ax.BATCH, ax.LENGTH, ax.ACT_VOCAB))

