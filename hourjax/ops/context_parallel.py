"""Context parallelism beyond the ring: all-gather of K/V, Ulysses, and a Ulysses-ring hybrid.

All three take global arrays sharded on the sequence axis (as `ring_attention` does: slots and
segment ids describe the mask, any token order is exact, `zigzag` is a promise about balance
only) and run `jax.shard_map` inside, so they drop into the same GSPMD program.

* All-gather (`allgather_attention`). Each device gathers every K/V token (kv heads only, so a
  GQA model moves N / K times less than its queries would) and attends its own queries to them
  with `ops.blockwise`, whose block skipping uses the slots: with queries in the zig-zag order
  every device does the same causal work. The gradient of the gather is a reduce-scatter of dK
  and dV. One collective per layer and direction, at the cost of holding the whole K/V: this is
  MaxText's "all-gather" context parallelism.
* Ulysses (`ulysses_attention`). An all-to-all turns sequence shards into head shards (each
  device then has every token for N / P query and K / P kv heads), attention is local
  (`ops.blockwise` again), and a second all-to-all turns heads back into sequence. Its degree is
  capped by the kv heads: Qwen2-7B's 4 allow 4-way at most.
* Hybrid (`hybrid_attention`). Ulysses inside groups of u consecutive devices (u the largest
  divisor of the sequence shards that the local kv heads allow), a ring across the P / u
  groups (`ring_attention.ring_local`, the ring's own custom VJP, stepping u devices at a time).
  So Qwen2-7B can run 16-way context parallelism as 4-way Ulysses x 4-step ring. With the
  zig-zag order each group's tokens are rearranged locally into the ring's own zig-zag layout
  of P / u positions, so the ring keeps its half-block steps.

Rows that see no key return zeros, as in the ring.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from hourjax.ops import ring_attention as ra
from hourjax.ops.blockwise import blockwise_attention

# Implementations here (and the ring) shard the decoder's sequence; `ops.attention` dispatches.
IMPLEMENTATIONS = ("allgather", "ulysses", "hybrid")


def ulysses_group(shards: int, kv_heads: int) -> int:
  """Devices per Ulysses group in the hybrid: the largest divisor of `shards` that also
  divides the (per-device) kv heads."""
  return math.gcd(shards, kv_heads)


def _groups(lay, u: int) -> list[list[int]] | None:
  """Consecutive groups of u devices on the sequence axis (None: the whole axis)."""
  return None if u == lay.shards else [list(range(g, g + u)) for g in range(0, lay.shards, u)]


def _specs(lay):
  heads = P(lay.batch_spec, lay.seq, lay.head, None)
  return heads, P(lay.batch_spec, lay.seq)


def _run(local, lay, q, k, v, qseg, kseg, qslot, kslot, *, check_vma: bool):
  heads, tokens = _specs(lay)
  return jax.shard_map(local, mesh=lay.mesh, in_specs=(heads,) * 3 + (tokens,) * 4,
                       out_specs=heads, check_vma=check_vma)(q, k, v, qseg, kseg, qslot, kslot)


def _zigzag_groups(length: int, u: int) -> np.ndarray:
  """Local order of a Ulysses group's gathered tokens -> the ring's zig-zag layout over groups.

  Device j of a group holds zig-zag chunks (r, 2P-1-r) with r = g u + j; gathered in device
  order the group has [A_0, B_0, A_1, B_1, ...]. The ring over P / u positions wants its early
  chunk first and its late chunk second, each in causal order: [A_0 .. A_{u-1}, B_{u-1} .. B_0].
  """
  half = length // (2 * u)
  pieces = np.arange(length).reshape(u, 2, half)
  return np.concatenate([pieces[:, 0].reshape(-1), pieces[::-1, 1].reshape(-1)])


def _check_ulysses(name: str, lay, n: int, kv_heads: int, u: int) -> None:
  n_local, kv_local = n // lay.heads, kv_heads // lay.heads
  if kv_local % u or n_local % u:
    raise ValueError(f"attention={name}: {kv_local} kv heads and {n_local} query heads per "
                     f"device do not split over {u} devices of mesh axis {lay.seq!r}; use "
                     "attention=hybrid (Ulysses within groups, a ring across them)")


def allgather_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
                        kv_segment_ids: jax.Array, q_slots: jax.Array, kv_slots: jax.Array, *,
                        causal: bool, mesh: ra.MeshLike, seq_axis: str = "sequence",
                        batch_axes: str | tuple[str, ...] = ("data", "fsdp"),
                        head_axis: str | None = "tensor", zigzag: bool = False) -> jax.Array:
  """Self-attention with the sequence sharded over `seq_axis` and K/V all-gathered; arguments,
  padding and result as `ring_attention` (zigzag only pads the length to 2P, as the decoder's
  zig-zag order needs)."""
  lay, args = ra.padded_inputs(q, k, v, q_segment_ids, kv_segment_ids, q_slots, kv_slots,
                               mesh=mesh, seq_axis=seq_axis, batch_axes=batch_axes,
                               head_axis=head_axis, multiple=2 if zigzag else 1)

  def local(q, k, v, qseg, kseg, qslot, kslot):
    gather = lambda x: jax.lax.all_gather(x, lay.seq, axis=1, tiled=True) if lay.seq else x
    k, v, kseg, kslot = map(gather, (k, v, kseg, kslot))
    return blockwise_attention(q, k, v, qslot, kslot, qseg, kseg, causal=causal)

  return _run(local, lay, *args, check_vma=False)[:q.shape[0], :q.shape[1]]


def _ulysses_local(lay, u: int, inner, q, k, v, qseg, kseg, qslot, kslot):
  """Sequence shards -> head shards within groups of u, `inner` on the group's tokens, back."""
  if u == 1:
    return inner(q, k, v, qseg, kseg, qslot, kslot)
  groups = _groups(lay, u)
  to_heads = lambda x: jax.lax.all_to_all(x, lay.seq, 2, 1, tiled=True, axis_index_groups=groups)
  to_tokens = lambda x: jax.lax.all_to_all(x, lay.seq, 1, 2, tiled=True, axis_index_groups=groups)
  gather = lambda x: jax.lax.all_gather(x, lay.seq, axis=1, tiled=True, axis_index_groups=groups)
  q, k, v = map(to_heads, (q, k, v))
  qseg, kseg, qslot, kslot = map(gather, (qseg, kseg, qslot, kslot))
  return to_tokens(inner(q, k, v, qseg, kseg, qslot, kslot))


def ulysses_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
                      kv_segment_ids: jax.Array, q_slots: jax.Array, kv_slots: jax.Array, *,
                      causal: bool, mesh: ra.MeshLike, seq_axis: str = "sequence",
                      batch_axes: str | tuple[str, ...] = ("data", "fsdp"),
                      head_axis: str | None = "tensor", zigzag: bool = False) -> jax.Array:
  """Self-attention with the sequence sharded over `seq_axis`, computed head-parallel after an
  all-to-all; the kv heads per device must divide by the axis size. Arguments as
  `ring_attention`."""
  lay, args = ra.padded_inputs(q, k, v, q_segment_ids, kv_segment_ids, q_slots, kv_slots,
                               mesh=mesh, seq_axis=seq_axis, batch_axes=batch_axes,
                               head_axis=head_axis, multiple=2 if zigzag else 1)
  if lay.seq is None:
    return allgather_attention(q, k, v, q_segment_ids, kv_segment_ids, q_slots, kv_slots,
                               causal=causal, mesh=mesh, seq_axis=seq_axis,
                               batch_axes=batch_axes, head_axis=head_axis)
  _check_ulysses("ulysses", lay, q.shape[2], k.shape[2], lay.shards)
  inner = lambda q, k, v, qseg, kseg, qslot, kslot: blockwise_attention(
      q, k, v, qslot, kslot, qseg, kseg, causal=causal)
  local = functools.partial(_ulysses_local, lay, lay.shards, inner)
  return _run(local, lay, *args, check_vma=False)[:q.shape[0], :q.shape[1]]


def hybrid_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
                     kv_segment_ids: jax.Array, q_slots: jax.Array, kv_slots: jax.Array, *,
                     causal: bool, mesh: ra.MeshLike, seq_axis: str = "sequence",
                     batch_axes: str | tuple[str, ...] = ("data", "fsdp"),
                     head_axis: str | None = "tensor", zigzag: bool = False,
                     group: int | None = None, block_q: int | None = None) -> jax.Array:
  """Ulysses within groups of `group` consecutive devices of `seq_axis` (default
  `ulysses_group`), a ring across the groups. Arguments as `ring_attention`; group=1 is the
  plain ring, group=P plain Ulysses (without blockwise skipping)."""
  lay, args = ra.padded_inputs(q, k, v, q_segment_ids, kv_segment_ids, q_slots, kv_slots,
                               mesh=mesh, seq_axis=seq_axis, batch_axes=batch_axes,
                               head_axis=head_axis, multiple=2 if zigzag else 1)
  u = ulysses_group(lay.shards, k.shape[2] // lay.heads) if group is None else group
  if lay.shards % u:
    raise ValueError(f"attention=hybrid: group {u} does not divide the {lay.shards} devices of "
                     f"mesh axis {lay.seq!r}")
  _check_ulysses("hybrid", lay, q.shape[2], k.shape[2], u)
  zigzag = bool(zigzag) and bool(causal)
  cfg = ra.RingConfig(lay, bool(causal), zigzag, block_q, group=u)
  t_group = args[0].shape[1] // lay.shards * u
  perm = _zigzag_groups(t_group, u) if zigzag and u > 1 else None

  def inner(q, k, v, qseg, kseg, qslot, kslot):
    if perm is None:
      return ra.ring_local(cfg, q, k, v, qseg, kseg, qslot, kslot)
    take = lambda x: jnp.take(x, perm, axis=1)
    out = ra.ring_local(cfg, *map(take, (q, k, v, qseg, kseg, qslot, kslot)))
    return jnp.take(out, ra.inverse_permutation(perm), axis=1)

  local = functools.partial(_ulysses_local, lay, u, inner)
  return _run(local, lay, *args, check_vma=True)[:q.shape[0], :q.shape[1]]
