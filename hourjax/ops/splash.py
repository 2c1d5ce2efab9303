"""Pallas splash attention (TPU): block-sparse flash attention with segment ids.

The kernel is written per device and per example, so it runs under `shard_map` over the batch
and head axes of the context mesh (the sequence stays whole: long contexts use the ring). On
other platforms it runs in Pallas interpret mode, which is slow and only for tests.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
from jax.sharding import PartitionSpec as P

DEFAULT_BLOCK = 512


def _padded(length: int, block: int) -> int:
  """Lengths the kernel takes: multiples of 128 up to one block, then multiples of the block."""
  unit = block if length > block else 128
  return -(-length // unit) * unit


def _kernel(heads: int, q_len: int, kv_len: int, causal: bool, block: int, interpret: bool):
  bq, bkv = min(block, q_len), min(block, kv_len)
  mask = sm.CausalMask((q_len, kv_len)) if causal else sm.FullMask((q_len, kv_len))
  sizes = sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                        block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)
  return sk.make_splash_mha(sm.MultiHeadMask([mask] * heads), block_sizes=sizes, head_shards=1,
                            q_seq_shards=1, interpret=interpret)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segments: jax.Array,
                     kv_segments: jax.Array, *, causal: bool, block: int = DEFAULT_BLOCK,
                     interpret: bool | None = None) -> jax.Array:
  """q [B, T, N, D], k/v [B, S, K, D] (GQA: N % K == 0), segments [B, T] / [B, S]: a query
  sees keys of its own segment (key segment 0 never matches a real query segment)."""
  if interpret is None:
    interpret = jax.default_backend() != "tpu" and not _tpu_mesh()
  scale = q.shape[-1] ** -0.5
  t, s = q.shape[1], k.shape[1]
  bt, bs = _padded(t, block), _padded(s, block)
  if (bt, bs) != (t, s):
    # Padding queries and keys share segment 0 with each other only: finite, and discarded.
    pad = lambda x, n: jnp.pad(x, [(0, 0), (0, n - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
    out = splash_attention(pad(q, bt), pad(k, bs), pad(v, bs), pad(q_segments, bt),
                           pad(kv_segments, bs), causal=causal, block=block, interpret=interpret)
    return out[:, :t]

  def local(q, k, v, qs, ks):
    kernel = _kernel(q.shape[2], q.shape[1], k.shape[1], causal, block, interpret)
    run = lambda q, k, v, qs, ks: kernel(q, k, v, segment_ids=sk.SegmentIds(qs, ks))
    heads_first = lambda x: x.transpose(0, 2, 1, 3)
    out = jax.vmap(run)(heads_first(q * scale).astype(q.dtype), heads_first(k), heads_first(v), qs, ks)
    return heads_first(out)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return local(q, k, v, q_segments, kv_segments)
  from hourjax.parallel import axes as ax
  rules = dict(ax.RULES)
  batch = tuple(a for a in rules[ax.BATCH] if a in mesh.axis_names and q.shape[0] % mesh.shape[a] == 0)
  heads = tuple(a for a in rules[ax.ACT_HEADS] if a in mesh.axis_names
                and k.shape[2] % mesh.shape[a] == 0)
  qkv = P(batch or None, None, heads or None, None)
  seg = P(batch or None, None)
  return jax.shard_map(local, mesh=mesh, in_specs=(qkv, qkv, qkv, seg, seg), out_specs=qkv,
                       check_vma=False)(q, k, v, q_segments, kv_segments)


def _tpu_mesh() -> bool:
  """Whether the context mesh is made of TPUs (also when compiling ahead of time on a CPU)."""
  mesh = jax.sharding.get_abstract_mesh()
  return not mesh.empty and mesh.abstract_device is not None and mesh.abstract_device.platform == "tpu"
