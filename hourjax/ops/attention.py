"""Dot-product attention with grouped-query heads, masks and float32 softmax, and the switch
between attention implementations.

Layouts follow `jax.nn.dot_product_attention`: [batch, length, heads, head_dim]. K/V keep their
own (fewer) heads: query head h reads kv head h // (heads / kv_heads), as flash-attn and HF's
`repeat_kv` do, without materialising the repeat.

Masks are described, not materialised, by each token's slot (its index in the causal order)
and segment id (tokens attend within their segment; key segment 0 is padding): that is what a
ring or a Pallas kernel can use without a [T, T] array.
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
  g, tk = n // kv_heads, k.shape[1]
  # Batched matmuls in the canonical [batch..., rows, contraction] layout: a query group rides
  # along the rows, so XLA never transposes the [.., Tq, Tk] scores (1.9x faster on CPU than
  # contracting the grouped 5-D form directly).
  q = q.reshape(b, tq, kv_heads, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, g * tq, d)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  scores = jnp.einsum("bkqd,bksd->bkqs", q, k, precision=precision, preferred_element_type=jnp.float32)
  scores = scores.reshape(b, kv_heads, g, tq, tk) * (d ** -0.5)
  if mask is not None:
    mask = jnp.broadcast_to(mask, (b, tq, tk))
    scores = jnp.where(mask[:, None, None], scores, _MASKED)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kv_heads, g * tq, tk)
  out = jnp.einsum("bkqs,bksd->bkqd", probs, v, precision=precision)
  return out.reshape(b, kv_heads, g, tq, d).transpose(0, 3, 1, 2, 4).reshape(b, tq, n, d)


def causal_mask(q_slots: jax.Array, k_slots: jax.Array) -> jax.Array:
  """[.., Tq, Tk] mask: a query at sequence slot i sees keys at slots <= i."""
  return q_slots[..., :, None] >= k_slots[..., None, :]


# "xla": the einsum above; "dot_product": jax.nn.dot_product_attention (cuDNN flash attention on
# GPU); "splash": Pallas splash attention (TPU; interpret mode elsewhere, for tests); "ring":
# sequence-parallel ring attention over the mesh's 'sequence' axis (decoder) and an LSE merge
# over the sharded memory (MemAug cross-attention); "blockwise": ops/blockwise.py, online
# softmax over blocks with a recomputing backward (no [T, T] scores); "allgather", "ulysses",
# "hybrid": the other context-parallel decoders of ops/context_parallel.py (K/V all-gathered;
# all-to-all to head shards; Ulysses within groups and a ring across them), with the ring's
# LSE merge for MemAug.
SEQUENCE_PARALLEL = ("ring", "allgather", "ulysses", "hybrid")
IMPLEMENTATIONS = ("xla", "dot_product", "splash", "blockwise") + SEQUENCE_PARALLEL
# Query rows per ring step chunk: bounds a step's scores to [RING_BLOCK_Q, T / P] per head.
RING_BLOCK_Q = 512


def check_implementation(impl: str) -> None:
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"attention={impl!r}: expected one of {IMPLEMENTATIONS}")


def segment_mask(q_slots: jax.Array, kv_slots: jax.Array, q_segments: jax.Array,
                 kv_segments: jax.Array, causal: bool) -> jax.Array:
  """Dense [B, Tq, Tk] mask of the slot/segment description."""
  mask = (q_segments[:, :, None] == kv_segments[:, None, :]) & (kv_segments[:, None, :] != 0)
  if causal:
    mask &= causal_mask(q_slots, kv_slots)
  return mask


def pin_masks(x: jax.Array, *ids: jax.Array) -> tuple:
  """(x, *ids) tied together by an optimization barrier. Under a scan over layers the slots and
  segment ids are loop-invariant, and XLA hoists every block's mask built from them out of the
  layer loop, materialising all of them at once (22 GiB for a 64K-token ring step; 1 TB per
  chip for blockwise attention over 256K gathered keys). Tied to x, they are not invariant."""
  return tuple(jax.lax.optimization_barrier((x, *ids)))


def _mesh_axes() -> dict | None:
  """The ring's mesh axes from the rule table, or None without a context mesh (e.g. when
  parameters are initialised abstractly): then there is nothing to shard and attention is local."""
  from hourjax.parallel import axes as ax
  rules = dict(ax.RULES)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return None
  heads = [a for a in rules[ax.ACT_HEADS] if a in mesh.axis_names]
  return dict(mesh=mesh, seq_axis=rules[ax.LENGTH][0], batch_axes=rules[ax.BATCH],
              head_axis=heads[0] if heads else None)


def ring_shards() -> int:
  """Size of the context mesh's sequence axis (1 without a mesh)."""
  axes = _mesh_axes()
  return 1 if axes is None else dict(axes["mesh"].shape).get(axes["seq_axis"], 1)


def uses_zigzag(length: int, batch: int) -> bool:
  """Whether the decoder puts a causal [batch, length] sequence in the ring's load-balanced
  order (which the all-gather and the hybrid use too): only with a context-parallel mesh, a
  length that splits into 2 x shards chunks and a batch that splits over the batch axes
  (otherwise the kernel pads and runs in sequence order: correct, less balanced)."""
  shards = ring_shards()
  if shards == 1 or length % (2 * shards):
    return False
  from hourjax.parallel.mesh import batch_shards
  return batch % batch_shards(jax.sharding.get_abstract_mesh()) == 0


def zigzag(tree, inverse: bool = False):
  """[B, T, ...] arrays to (or from) zig-zag order over the context mesh's 'sequence' axis."""
  from hourjax.ops.ring_attention import zigzag_reorder
  axes = _mesh_axes()
  return zigzag_reorder(tree, mesh=axes["mesh"], seq_axis=axes["seq_axis"],
                        batch_axes=axes["batch_axes"], inverse=inverse)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, q_slots: jax.Array, kv_slots: jax.Array,
           q_segments: jax.Array, kv_segments: jax.Array, *, causal: bool, impl: str = "xla",
           zigzag: bool = False) -> jax.Array:
  """Self-attention by slots and segments ([B, T] int32 each) with the chosen implementation.

  `zigzag` tells the ring that the tokens are in its load-balanced order (see
  `ring_attention.zigzag_permutation`); the other implementations follow the slots regardless.
  """
  axes = _mesh_axes() if impl in SEQUENCE_PARALLEL else None
  if axes is not None:
    from hourjax.ops import context_parallel, ring_attention
    args = (q, k, v, q_segments, kv_segments, q_slots, kv_slots)
    if impl in ("ring", "hybrid"):
      fn = ring_attention.ring_attention if impl == "ring" else context_parallel.hybrid_attention
      return fn(*args, causal=causal, zigzag=zigzag, block_q=RING_BLOCK_Q, **axes)
    fn = getattr(context_parallel, f"{impl}_attention")
    return fn(*args, causal=causal, zigzag=zigzag, **axes)
  impl = "xla" if impl in SEQUENCE_PARALLEL else impl   # no mesh: nothing to shard
  if impl == "splash":   # causal order = sequence order here (no ring, no zig-zag)
    from hourjax.ops.splash import splash_attention
    return splash_attention(q, k, v, q_segments, kv_segments, causal=causal)
  if impl == "blockwise":
    from hourjax.ops.blockwise import blockwise_attention
    return blockwise_attention(q, k, v, q_slots, kv_slots, q_segments, kv_segments, causal=causal)
  mask = segment_mask(q_slots, kv_slots, q_segments, kv_segments, causal)
  if impl == "dot_product":
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None])
  check_implementation(impl)
  return dot_product_attention(q, k, v, mask)


def cross_attend(q: jax.Array, k: jax.Array, v: jax.Array, kv_mask: jax.Array, *,
                 impl: str = "xla") -> jax.Array:
  """Non-causal attention of every query to the valid keys (kv_mask [B, Tk] bool).

  With any context-parallel implementation the keys stay sharded on 'sequence' and the partial
  softmaxes are merged with one collective (the MemAug memory is ~50x longer than its queries,
  so a ring, a gather or an all-to-all would move the long side for nothing).
  """
  axes = _mesh_axes() if impl in SEQUENCE_PARALLEL else None
  if axes is not None:
    from hourjax.ops.ring_attention import sharded_cross_attention
    return sharded_cross_attention(q, k, v, kv_mask, block_q=RING_BLOCK_Q, **axes)
  impl = "xla" if impl in SEQUENCE_PARALLEL else impl   # no mesh: nothing to shard
  if impl == "splash":
    from hourjax.ops.splash import splash_attention
    return splash_attention(q, k, v, jnp.ones(q.shape[:2], jnp.int32), kv_mask.astype(jnp.int32),
                            causal=False)
  if impl == "dot_product":
    return jax.nn.dot_product_attention(q, k, v, mask=kv_mask[:, None, None, :])
  if impl == "blockwise":
    from hourjax.ops.blockwise import blockwise_attention
    zeros = jnp.zeros(q.shape[:2], jnp.int32)
    return blockwise_attention(q, k, v, zeros, jnp.zeros(k.shape[:2], jnp.int32), zeros + 1,
                               kv_mask.astype(jnp.int32), causal=False)
  check_implementation(impl)
  return dot_product_attention(q, k, v, kv_mask[:, None, :])
