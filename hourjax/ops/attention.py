"""Dot-product attention with grouped-query heads, masks and float32 softmax.

Layouts follow `jax.nn.dot_product_attention`: [batch, length, heads, head_dim]. K/V keep their
own (fewer) heads: query head h reads kv head h // (heads / kv_heads), as flash-attn and HF's
`repeat_kv` do, without materialising the repeat.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_MASKED = float(jnp.finfo(jnp.float32).min)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None = None,
    *,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
  """softmax(q k^T / sqrt(d)) v.

  q: [B, Tq, N, D]; k, v: [B, Tk, K, D] with N % K == 0; mask: bool, broadcastable to
  [B, Tq, Tk], True where a query may attend a key. Rows with no visible key return the mean
  of v (they are padding and their outputs are discarded by the caller).
  """
  b, tq, n, d = q.shape
  kv_heads = k.shape[2]
  if n % kv_heads:
    raise ValueError(f"query heads {n} not a multiple of kv heads {kv_heads}")
  q = q.reshape(b, tq, kv_heads, n // kv_heads, d)
  scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k, precision=precision,
                      preferred_element_type=jnp.float32)
  scores = scores * (d ** -0.5)
  if mask is not None:
    mask = jnp.broadcast_to(mask, (b, tq, k.shape[1]))
    scores = jnp.where(mask[:, None, None], scores, _MASKED)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v, precision=precision)
  return out.reshape(b, tq, n, d)


def causal_mask(q_slots: jax.Array, k_slots: jax.Array) -> jax.Array:
  """[.., Tq, Tk] mask: a query at sequence slot i sees keys at slots <= i."""
  return q_slots[..., :, None] >= k_slots[..., None, :]
