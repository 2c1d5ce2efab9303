"""Blockwise attention in plain JAX: exact softmax attention that never holds a [Tq, Tk] score
matrix, in the forward or the backward pass.

The forward pass runs the online softmax over key blocks for each query block (running max,
running sum, rescaled accumulator) and keeps only the output and each row's log-sum-exp. The
custom VJP recomputes each block's probabilities from q, k and that log-sum-exp instead of
storing them (FlashAttention-2's backward): per block pair, dV += P^T dO, dS = P (dO V^T - D),
dQ += dS K, dK += dS^T Q, with D = rowsum(dO * O). Peak memory per layer is one block of
scores instead of the whole matrix, and a block pair that the mask hides entirely (causal
blocks above the diagonal, other segments) is skipped in both passes, which roughly halves the
causal work.

Masks come as the rest of `ops.attention` takes them: slots (causal order) and segment ids
([B, T] int32; key segment 0 is padding). Grouped-query heads ride along the rows of a kv
head's block, as in `attention.dot_product_attention`. Rows with no visible key return 0 (the
dense path returns the mean of v there; both are padding the caller discards).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from hourjax.ops.attention import _MASKED, pin_masks, segment_mask

# Rows and columns of one block of scores (at most; short inputs use less). On a 2-core CPU at
# 2048 tokens (8 query / 2 KV heads of 64) a layer's forward + backward took 0.18 s with 256,
# 0.25 s with 512 and 0.27-0.30 s with 128 (the attention alone, median of 15, three alternating
# runs; docs/performance.md).
BLOCK = 256


def _blocks(length: int, block: int) -> tuple[int, int]:
  """(block size, number of blocks): the block shrinks to the length (rounded up to 8) for
  short inputs; a length that is not a multiple is padded, never split into tiny blocks."""
  size = min(block, -(-length // 8) * 8)
  return size, -(-length // size)


def _pad(x: jax.Array, axis: int, to: int, value=0) -> jax.Array:
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, to - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


def _split(x: jax.Array, axis: int, n: int) -> jax.Array:
  """Length axis -> leading block axis: [..., n * b, ...] -> [n, ..., b, ...]."""
  shape = x.shape[:axis] + (n, x.shape[axis] // n) + x.shape[axis + 1:]
  return jnp.moveaxis(x.reshape(shape), axis, 0)


def _merge(x: jax.Array, axis: int) -> jax.Array:
  x = jnp.moveaxis(x, 0, axis)
  return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2:])


def _rows(x):
  """[B, K, g, bq, ...] -> [B, K, g * bq, ...]: a query group rides along the rows of a
  canonical batched matmul (the 5-D contraction makes XLA:CPU transpose the scores)."""
  return x.reshape(x.shape[:2] + (x.shape[2] * x.shape[3],) + x.shape[4:])


def _scores(q, k, scale):
  """q [B, K, g, bq, D], k [B, K, bk, D] -> [B, K, g, bq, bk] float32."""
  s = jnp.einsum("bkrd,bksd->bkrs", _rows(q), k, preferred_element_type=jnp.float32) * scale
  return s.reshape(q.shape[:4] + (k.shape[2],))


def _forward(q, k, v, meta, causal):
  """Blocked inputs -> (out [nq, B, K, g, bq, D], lse [nq, B, K, g, bq])."""
  q, *meta = pin_masks(q, *meta)
  qs, qg, ks, kg = meta
  scale = q.shape[-1] ** -0.5

  def one_query_block(args):
    qb, qsb, qgb = args
    init = (jnp.full(qb.shape[:-1], _MASKED, jnp.float32), jnp.zeros(qb.shape[:-1], jnp.float32),
            jnp.zeros(qb.shape, jnp.float32))

    def step(carry, kv):
      kb, vb, ksb, kgb = kv
      mask = segment_mask(qsb, ksb, qgb, kgb, causal)        # [B, bq, bk]

      def update(carry):
        m, l, acc = carry
        s = jnp.where(mask[:, None, None], _scores(qb, kb, scale), _MASKED)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.where(mask[:, None, None], jnp.exp(s - m_new[..., None]), 0.0)
        alpha = jnp.exp(m - m_new)
        pv = jnp.einsum("bkrs,bksd->bkrd", _rows(p.astype(vb.dtype)), vb, preferred_element_type=jnp.float32)
        acc = acc * alpha[..., None] + pv.reshape(acc.shape)
        return m_new, l * alpha + p.sum(-1), acc

      return jax.lax.cond(mask.any(), update, lambda c: c, carry), None

    (m, l, acc), _ = jax.lax.scan(step, init, (k, v, ks, kg))
    seen = l > 0
    out = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
    return out.astype(qb.dtype), jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)

  return jax.lax.map(one_query_block, (q, qs, qg))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q, k, v, meta, causal):
  return _forward(q, k, v, meta, causal)[0]


def _attention_fwd(q, k, v, meta, causal):
  out, lse = _forward(q, k, v, meta, causal)
  return out, (q, k, v, meta, out, lse)


def _attention_bwd(causal, res, d_out):
  q, k, v, meta, out, lse = res
  d_out, *meta = pin_masks(d_out, *meta)
  qs, qg, ks, kg = meta
  scale = q.shape[-1] ** -0.5
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), -1)      # [nq, B, K, g, bq]

  def one_key_block(dq, kv):
    kb, vb, ksb, kgb = kv

    def step(carry, i):
      dk, dv, dq = carry
      mask = segment_mask(qs[i], ksb, qg[i], kgb, causal)

      def update(carry):
        dk, dv, dq = carry
        qb, dob = q[i], d_out[i]
        p = jnp.where(mask[:, None, None], jnp.exp(_scores(qb, kb, scale) - lse[i][..., None]), 0.0)
        dv = dv + jnp.einsum("bkrs,bkrd->bksd", _rows(p), _rows(dob), preferred_element_type=jnp.float32)
        dp = jnp.einsum("bkrd,bksd->bkrs", _rows(dob), vb, preferred_element_type=jnp.float32).reshape(p.shape)
        ds = p * (dp - delta[i][..., None]) * scale
        dk = dk + jnp.einsum("bkrs,bkrd->bksd", _rows(ds), _rows(qb), preferred_element_type=jnp.float32)
        dq = dq.at[i].add(jnp.einsum("bkrs,bksd->bkrd", _rows(ds), kb,
                                     preferred_element_type=jnp.float32).reshape(qb.shape))
        return dk, dv, dq

      return jax.lax.cond(mask.any(), update, lambda c: c, carry), None

    zeros = jnp.zeros(kb.shape, jnp.float32)
    (dk, dv, dq), _ = jax.lax.scan(step, (zeros, zeros, dq), jnp.arange(q.shape[0]))
    return dq, (dk, dv)

  dq, (dk, dv) = jax.lax.scan(one_key_block, jnp.zeros(q.shape, jnp.float32), (k, v, ks, kg))
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_attention.defvjp(_attention_fwd, _attention_bwd)


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_slots: jax.Array, kv_slots: jax.Array,
                        q_segments: jax.Array, kv_segments: jax.Array, *, causal: bool,
                        block_q: int = BLOCK, block_k: int = BLOCK) -> jax.Array:
  """softmax(q k^T / sqrt(d) + mask) v by blocks: q [B, Tq, N, D], k / v [B, Tk, K, D] (N a
  multiple of K), slots and segments [B, T] int32 as `attention.attend` takes them."""
  b, tq, n, d = q.shape
  tk, kv_heads = k.shape[1], k.shape[2]
  if n % kv_heads:
    raise ValueError(f"query heads {n} not a multiple of kv heads {kv_heads}")
  bq, nq = _blocks(tq, block_q)
  bk, nk = _blocks(tk, block_k)
  # Padded query rows get segment -1 (they see nothing); padded keys segment 0 (padding).
  qh = q.reshape(b, tq, kv_heads, n // kv_heads, d).transpose(0, 2, 3, 1, 4)        # [B, K, g, Tq, D]
  qh = _split(_pad(qh, 3, nq * bq), 3, nq)
  kh = _split(_pad(k.transpose(0, 2, 1, 3), 2, nk * bk), 2, nk)                       # [nk, B, K, bk, D]
  vh = _split(_pad(v.transpose(0, 2, 1, 3), 2, nk * bk), 2, nk)
  meta = (_split(_pad(q_slots.astype(jnp.int32), 1, nq * bq), 1, nq),
          _split(_pad(q_segments.astype(jnp.int32), 1, nq * bq, -1), 1, nq),
          _split(_pad(kv_slots.astype(jnp.int32), 1, nk * bk), 1, nk),
          _split(_pad(kv_segments.astype(jnp.int32), 1, nk * bk), 1, nk))
  out = _merge(_attention(qh, kh, vh, meta, causal), 3)[:, :, :, :tq]               # [B, K, g, Tq, D]
  return out.transpose(0, 3, 1, 2, 4).reshape(b, tq, n, d)
