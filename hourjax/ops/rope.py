"""Rotary position embedding in the non-interleaved (rotate-half / GPT-NeoX) form.

Qwen2 rotates the whole head; MemAug rotates only the first half of each head (`rotary_dim =
head_dim // 2`), with explicit, sparse per-token positions. Both are this one function.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def rope_cos_sin(positions: jax.Array, rotary_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """cos/sin of shape [..., rotary_dim // 2] for integer positions [...], in float32."""
  exponent = jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim
  inv_freq = 1.0 / (theta ** exponent)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotate the first 2 * cos.shape[-1] dims of x [B, T, heads, D]; cos/sin are [B, T, r/2].

  cos/sin are cast to x's dtype first, as both official implementations do in bf16.
  """
  half = cos.shape[-1]
  cos = cos[:, :, None, :].astype(x.dtype)
  sin = sin[:, :, None, :].astype(x.dtype)
  x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], axis=-1)
