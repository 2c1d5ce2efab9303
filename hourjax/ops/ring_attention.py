"""Sequence-parallel attention: a ring for decoder self-attention, an LSE merge for MemAug.

Both functions take and return global arrays and run `jax.shard_map` inside, so they drop into
a jitted GSPMD program: the surrounding code keeps its sharding annotations, and only the
attention itself is written per device.

Ring attention (`ring_attention`). The sequence is split over the P devices of `seq_axis`. Each
device keeps its queries and, for P steps, attends them to the K/V block it currently holds,
then hands that block to its ring neighbour with `ppermute` while the next block is already in
flight. An online softmax in float32 (running max, sum and weighted V) makes the P partial
results exact. No device ever holds more than two K/V blocks, and K/V travel with their kv
heads un-repeated (GQA), so traffic and memory are those of the kv heads.

* Why a custom VJP. Plain autodiff through the scan would save every step's probabilities
  ([T/P, T/P] per head, P times: the whole attention matrix) for the backward pass. The custom
  VJP saves only q, k, v, segments, slots, the output and the float32 log-sum-exp, and the
  backward runs the ring again with the flash-attention formulas (p = exp(s - lse), dS = p *
  (dP - rowsum(dO * O))): dQ accumulates at home while K, V and their gradient accumulators
  travel, arriving home after P hops. Backward memory is one block, as in the forward.
* Why zigzag. Under a causal mask, a contiguous split gives device P-1 P blocks of work and
  device 0 one; everyone waits for the slowest. Cutting the causal order into 2P chunks and
  giving device r chunks r and 2P-1-r (`zigzag_permutation`) balances it: every ring step of
  every device then needs exactly one half-block (all queries against the first half of an
  earlier block, or the second half of the queries against a later block), as in
  ring-flash-attn. The half is chosen from the source index with `lax.switch`.
* Slots, not positions, define the causal order and all masks are applied inside every block,
  so any token order gives the right answer. Block skipping is guarded by a cheap check of the
  slots (O(T/P), not O((T/P)^2)): a caller whose layout is not what `zigzag` promises (e.g.
  packed segments whose slots restart) loses speed, never correctness.

Sharded cross-attention (`sharded_cross_attention`). MemAug queries are a few thousand tokens
and the memory repository about 234K tokens sharded over `seq_axis`. Rotating the memory round
a ring would move the long side P times; instead every device attends all queries to its
memory shard, and the partial results (locally normalised outputs and their float32
log-sum-exps) merge with one reduction: out = sum_i exp(lse_i - M) o_i / sum_i exp(lse_i - M),
M = max_i lse_i.

* No [Lq, M/P] array is ever stored. Even one device's scores would be tens of GB at 7B scale
  (9K queries, 28 heads, 234K / 8 keys), so the local partial walks its shard in chunks of
  `block_kv` keys (optionally also `block_q` queries) with the same online softmax and grouped
  GQA layout as the ring; a shard that does not split evenly is padded with invalid keys.
* Why a custom VJP for the partial. Autodiff would again save every chunk's probabilities. The
  custom VJP saves q, k, v, the mask, o and lse, and its backward loops over the same chunks.
  The merge differentiates lse too, so the backward takes cotangents for both outputs; since
  d lse / d s = p, the lse cotangent only changes delta in the flash formula: dS = p * (dP -
  (rowsum(dO * O) - dlse)). The merge itself (pmax of a stopped lse, psum of weighted outputs
  and weights) is plain autodiff on top.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from hourjax.ops.attention import pin_masks

# Branches of one ring step (indices into the lax.switch table).
_FULL, _KV_FIRST_HALF, _Q_SECOND_HALF, _SKIP = range(4)
_INT_MIN = np.iinfo(np.int32).min
_INT_MAX = np.iinfo(np.int32).max

MeshLike = jax.sharding.Mesh | jax.sharding.AbstractMesh


def zigzag_permutation(length: int, shards: int) -> np.ndarray:
  """perm with x[:, perm] the ring's zig-zag layout of a sequence x in causal order.

  The causal order is cut into 2 * shards equal chunks; shard r gets chunks r and
  2 * shards - 1 - r, so each shard holds as much early as late context.
  """
  if shards < 1 or length % (2 * shards):
    raise ValueError(f"zigzag needs length ({length}) divisible by 2 * shards ({2 * shards})")
  chunks = np.arange(length).reshape(2 * shards, length // (2 * shards))
  order = [c for r in range(shards) for c in (r, 2 * shards - 1 - r)]
  return chunks[order].reshape(-1)


def inverse_permutation(perm: np.ndarray) -> np.ndarray:
  """inv with x[:, perm][:, inv] == x."""
  perm = np.asarray(perm)
  inv = np.empty_like(perm)
  inv[perm] = np.arange(perm.size, dtype=perm.dtype)
  return inv


def zigzag_reorder(tree, *, mesh: MeshLike, seq_axis: str = "sequence",
                   batch_axes: str | tuple[str, ...] = ("data", "fsdp"), inverse: bool = False):
  """Arrays [B, T, ...] sharded contiguously over `seq_axis` -> zig-zag layout (or back).

  The same reordering as indexing with `zigzag_permutation`, but as two `ppermute`s of half a
  local block each: a gather along a sharded axis would all-gather the whole sequence. In
  contiguous order device d holds chunks 2d and 2d+1; in zig-zag order device r holds r and
  2P-1-r. Each device has exactly one even and one odd chunk in either layout, so one
  permutation moves the even chunks and one the odd ones. T must divide by 2P and B by the
  batch axes.
  """
  lay = _layout(mesh, seq_axis, batch_axes, None)
  p = lay.shards
  if p == 1:
    return tree
  home = lambda j: j if j < p else 2 * p - 1 - j          # zig-zag device of causal chunk j
  even = [(d, home(2 * d)) for d in range(p)]
  odd = [(d, home(2 * d + 1)) for d in range(p)]
  if inverse:
    even, odd = [(b, a) for a, b in even], [(b, a) for a, b in odd]

  def local(x):
    half = x.shape[1] // 2
    first, second = x[:, :half], x[:, half:]
    r_even = jax.lax.axis_index(lay.seq) % 2 == 0
    # Zig-zag device r keeps chunk r first: its even chunk is first iff r is even.
    if inverse:
      send_even = jnp.where(r_even, first, second)
      send_odd = jnp.where(r_even, second, first)
      return jnp.concatenate([jax.lax.ppermute(send_even, lay.seq, even),
                              jax.lax.ppermute(send_odd, lay.seq, odd)], axis=1)
    got_even, got_odd = jax.lax.ppermute(first, lay.seq, even), jax.lax.ppermute(second, lay.seq, odd)
    return jnp.concatenate([jnp.where(r_even, got_even, got_odd), jnp.where(r_even, got_odd, got_even)],
                           axis=1)

  def reorder(x):
    if x.shape[1] % (2 * p) or x.shape[0] % lay.batch_size:
      raise ValueError(f"zig-zag reorder of {x.shape}: length must divide by {2 * p} and batch by "
                       f"{lay.batch_size}")
    spec = P(lay.batch_spec, lay.seq, *([None] * (x.ndim - 2)))
    return jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=True)(x)
  return jax.tree.map(reorder, tree)


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Mesh axes actually used (absent ones dropped) and their sizes."""
  mesh: MeshLike
  seq: str | None
  shards: int
  batch: tuple[str, ...]
  batch_size: int
  head: str | None
  heads: int

  @property
  def batch_spec(self):
    return self.batch if self.batch else None

  @property
  def all_axes(self) -> tuple[str, ...]:
    return self.batch + tuple(a for a in (self.seq, self.head) if a is not None)


def _layout(mesh: MeshLike, seq_axis: str, batch_axes: str | Sequence[str],
            head_axis: str | None) -> _Layout:
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  if isinstance(batch_axes, str):
    batch_axes = (batch_axes,)
  batch = tuple(a for a in batch_axes if a in sizes)
  seq = seq_axis if seq_axis in sizes else None
  head = head_axis if head_axis in sizes else None
  used = batch + tuple(a for a in (seq, head) if a is not None)
  if len(set(used)) != len(used):
    raise ValueError(f"mesh axes used twice: batch {batch}, sequence {seq}, heads {head}")
  return _Layout(mesh, seq, sizes.get(seq, 1), batch, math.prod(sizes[a] for a in batch),
                 head, sizes.get(head, 1))


def _check_heads(lay: _Layout, n: int, kv: int) -> None:
  if n % kv:
    raise ValueError(f"query heads {n} not a multiple of kv heads {kv}")
  if n % lay.heads or kv % lay.heads:
    raise ValueError(f"query heads ({n}) and kv heads ({kv}) must both be divisible by the size "
                     f"of mesh axis {lay.head!r} ({lay.heads}); use a smaller tensor axis or "
                     "head_axis=None")


def _pad_to(x: jax.Array, axis: int, multiple: int, value=0) -> jax.Array:
  extra = -x.shape[axis] % multiple
  if not extra:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths, constant_values=value)


def _rotate(tree, lay: _Layout, stride: int = 1):
  """Send to the next device of the ring (device i -> i + stride: with Ulysses groups of
  `stride` devices, a ring of groups, see `ops.context_parallel`)."""
  if lay.shards == stride:
    return tree
  perm = [(i, (i + stride) % lay.shards) for i in range(lay.shards)]
  return jax.tree.map(lambda x: jax.lax.ppermute(x, lay.seq, perm), tree)


def _varying(x: jax.Array, lay: _Layout) -> jax.Array:
  """A constant carry made per-device, as the scan's outputs are (check_vma)."""
  return jax.lax.pcast(x, lay.all_axes, to="varying") if lay.all_axes else x


def _chunk(length: int, block: int | None) -> tuple[int, int]:
  """(chunk rows, chunks) for `length` query rows in chunks of at most `block`: as few chunks
  as the block allows, evened out and rounded up to 8 rows, the rest padding. (A divisor of the
  length would need no padding but may not exist near the block: a prime length would give
  one-row chunks.)"""
  if block is None or block >= length:
    return length, 1
  rows = -(-length // -(-length // block))           # evened out over the fewest chunks
  c = min(block, -(-rows // 8) * 8)
  return c, -(-length // c)


def _pad_rows(x: jax.Array, axis: int, rows: int, value=0) -> jax.Array:
  return _pad_to(x, axis, rows, value) if x.shape[axis] % rows else x


def _block_mask(qseg, kseg, qslot, kslot, causal: bool) -> jax.Array:
  """[b, 1, 1, tq, tk]: same segment, key not padding, and (causal) key slot <= query slot."""
  mask = (qseg[:, :, None] == kseg[:, None, :]) & (kseg[:, None, :] != 0)
  if causal:
    mask &= kslot[:, None, :] <= qslot[:, :, None]
  return mask[:, None, None]


# ---------------------------------------------------------------------------------------------
# Per-block kernels. Inside the ring: q, dO, O and the accumulators are [b, kh, g, tq, d] (kv
# head, group); k, v, dK, dV stay in the input layout [b, tk, kh, d]; m, l, lse are [b, kh, g, tq].
# ---------------------------------------------------------------------------------------------


def _fwd_block(state, q, k, v, qseg, kseg, qslot, kslot, causal: bool):
  """One online-softmax update of (acc, m, l) with the block (k, v)."""
  acc, m, l = state
  s = jnp.einsum("bkgqd,bskd->bkgqs", q, k, preferred_element_type=jnp.float32)
  s = s * (q.shape[-1] ** -0.5)
  mask = _block_mask(qseg, kseg, qslot, kslot, causal)
  m_new = jnp.maximum(m, jnp.max(jnp.where(mask, s, -jnp.inf), axis=-1))
  # A row that has seen no key yet keeps m = -inf; shift it by 0 so nothing becomes inf - inf.
  m_shift = jnp.where(m_new == -jnp.inf, 0.0, m_new)
  p = jnp.where(mask, jnp.exp(s - m_shift[..., None]), 0.0)
  alpha = jnp.exp(m - m_shift)
  l = alpha * l + jnp.sum(p, axis=-1)
  pv = jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return alpha[..., None] * acc + pv, m_new, l


def _bwd_block(grads, q, k, v, do, lse, delta, qseg, kseg, qslot, kslot, causal: bool):
  """Flash-attention backward of one block: adds to (dq, dk, dv)."""
  dq, dk, dv = grads
  scale = q.shape[-1] ** -0.5
  s = jnp.einsum("bkgqd,bskd->bkgqs", q, k, preferred_element_type=jnp.float32) * scale
  mask = _block_mask(qseg, kseg, qslot, kslot, causal)
  p = jnp.where(mask, jnp.exp(s - lse[..., None]), 0.0)
  dv = dv + jnp.einsum("bkgqs,bkgqd->bskd", p.astype(do.dtype), do,
                       preferred_element_type=jnp.float32)
  dp = jnp.einsum("bkgqd,bskd->bkgqs", do, v, preferred_element_type=jnp.float32)
  ds = (p * (dp - delta[..., None]) * scale).astype(q.dtype)
  dq = dq + jnp.einsum("bkgqs,bskd->bkgqd", ds, k, preferred_element_type=jnp.float32)
  dk = dk + jnp.einsum("bkgqs,bkgqd->bskd", ds, q, preferred_element_type=jnp.float32)
  return dq, dk, dv


def _fwd_chunked(state, q_side, kv_side, causal: bool, block_q: int | None):
  """_fwd_block over query chunks of at most block_q rows (scores [block_q, tk] at a time).

  q_side = (q, qseg, qslot) with the state, split along tq; kv_side = (k, v, kseg, kslot).
  """
  q, qseg, qslot = q_side
  tq = q.shape[3]
  c, n = _chunk(tq, block_q)
  if n == 1:
    return _fwd_block(state, q, *kv_side[:2], qseg, kv_side[2], qslot, kv_side[3], causal)
  # Padded query rows get segment -1: they see no key and are cut off below.
  split3 = lambda x: jnp.moveaxis(_pad_rows(x, 3, c).reshape(*x.shape[:3], n, c, *x.shape[4:]), 3, 0)
  split1 = lambda x, value=0: jnp.moveaxis(_pad_rows(x, 1, c, value).reshape(x.shape[0], n, c), 1, 0)
  xs = (jax.tree.map(split3, state), split3(q), split1(qseg, -1), split1(qslot))
  k, v, kseg, kslot = kv_side
  ys = jax.lax.map(lambda a: _fwd_block(a[0], a[1], k, v, a[2], kseg, a[3], kslot, causal), xs)
  merge = lambda y: jnp.moveaxis(y, 0, 3).reshape(*y.shape[1:4], n * c, *y.shape[5:])[:, :, :, :tq]
  return jax.tree.map(merge, ys)


def _bwd_chunked(grads, q_side, kv_side, causal: bool, block_q: int | None):
  """_bwd_block over query chunks; dK/dV accumulate through the chunk loop."""
  q, do, lse, delta, qseg, qslot = q_side
  k, v, kseg, kslot = kv_side
  dq, dk, dv = grads
  tq = q.shape[3]
  c, n = _chunk(tq, block_q)
  if n == 1:
    return _bwd_block(grads, q, k, v, do, lse, delta, qseg, kseg, qslot, kslot, causal)
  # Padded rows (segment -1) have p = 0 everywhere: no dK/dV, and their dQ is cut off.
  split3 = lambda x: jnp.moveaxis(_pad_rows(x, 3, c).reshape(*x.shape[:3], n, c, *x.shape[4:]), 3, 0)
  split1 = lambda x, value=0: jnp.moveaxis(_pad_rows(x, 1, c, value).reshape(x.shape[0], n, c), 1, 0)

  def body(carry, a):
    dq_c, q_c, do_c, lse_c, delta_c, qseg_c, qslot_c = a
    dq_c, dk_c, dv_c = _bwd_block((dq_c, *carry), q_c, k, v, do_c, lse_c, delta_c, qseg_c, kseg,
                                  qslot_c, kslot, causal)
    return (dk_c, dv_c), dq_c

  xs = (split3(dq), split3(q), split3(do), split3(lse), split3(delta), split1(qseg, -1),
        split1(qslot))
  (dk, dv), dqs = jax.lax.scan(body, (dk, dv), xs)
  return jnp.moveaxis(dqs, 0, 3).reshape(*dq.shape[:3], n * c, dq.shape[4])[:, :, :, :tq], dk, dv


# ---------------------------------------------------------------------------------------------
# Which part of a block a ring step computes.
# ---------------------------------------------------------------------------------------------


def _max_valid(slot, seg):
  """Per sample: the largest slot of a non-padding token (INT_MIN if none)."""
  return jnp.max(jnp.where(seg != 0, slot, _INT_MIN), axis=1)


def _min_valid(slot, seg):
  return jnp.min(jnp.where(seg != 0, slot, _INT_MAX), axis=1)


def _branch(cfg: "RingConfig", rank, src, q_stats, kseg, kslot):
  """Index into the step table (full, kv first half, q second half, skip) for this step.

  q_stats: per sample, the largest valid query slot of all local queries and of their first
  half. A part of the block may be left out only if each of its valid keys has a larger slot
  than every valid query concerned. Zig-zag picks its half-block from the source index as
  ring-flash-attn does; the slot check only confirms it, so a wrong layout falls back to full.
  """
  q_max, q_max_first = q_stats
  k_min = _min_valid(kslot, kseg)
  skip = jnp.all(k_min > q_max)
  if not cfg.zigzag:
    return jnp.where(skip, 1, 0)    # table (full, skip)
  half = kslot.shape[1] // 2
  kv_half_ok = jnp.all(_min_valid(kslot[:, half:], kseg[:, half:]) > q_max)
  q_half_ok = jnp.all(k_min > q_max_first)
  branch = jnp.where((src < rank) & kv_half_ok, _KV_FIRST_HALF,
                     jnp.where((src > rank) & q_half_ok, _Q_SECOND_HALF, _FULL))
  return jnp.where(skip, _SKIP, branch)


def _step_table(cfg: "RingConfig", full, kv_first_half, q_second_half, skip):
  if not cfg.causal:
    return None
  if not cfg.zigzag:
    return [full, skip]
  return [full, kv_first_half, q_second_half, skip]


@dataclasses.dataclass(frozen=True)
class RingConfig:
  lay: _Layout
  causal: bool
  zigzag: bool
  block_q: int | None
  # Devices per ring position: 1 for the plain ring; u when each position is a Ulysses group
  # of u consecutive devices that hold the same tokens (ops.context_parallel's hybrid).
  group: int = 1

  @property
  def steps(self) -> int:
    """Ring positions, hence steps per pass."""
    return self.lay.shards // self.group

  def rank(self):
    return jax.lax.axis_index(self.lay.seq) // self.group if self.lay.seq else 0

  def specs(self):
    lay = self.lay
    heads = P(lay.batch_spec, lay.seq, lay.head, None)
    tokens = P(lay.batch_spec, lay.seq)
    per_head = P(lay.batch_spec, lay.seq, lay.head)
    return heads, tokens, per_head


def _to_groups(x: jax.Array, kv: int) -> jax.Array:
  """[b, t, n, d] -> [b, kv, n // kv, t, d]."""
  b, t, n, d = x.shape
  return x.reshape(b, t, kv, n // kv, d).transpose(0, 2, 3, 1, 4)


def _from_groups(x: jax.Array) -> jax.Array:
  """[b, kv, g, t, ...] -> [b, t, kv * g, ...]."""
  b, kv, g, t = x.shape[:4]
  return jnp.moveaxis(x, 3, 1).reshape(b, t, kv * g, *x.shape[4:])


def _ring_fwd_local(cfg: RingConfig, q, k, v, qseg, kseg, qslot, kslot):
  """Per device: (out [b, t, n, d], lse [b, t, n] float32)."""
  q, qseg, kseg, qslot, kslot = pin_masks(q, qseg, kseg, qslot, kslot)
  lay = cfg.lay
  kv_heads = k.shape[2]
  qg = _to_groups(q, kv_heads)
  b, _, g, tq, d = qg.shape
  half_q = tq // 2
  rank = cfg.rank()
  q_stats = (_max_valid(qslot, qseg), _max_valid(qslot[:, :half_q], qseg[:, :half_q]))

  def full(state, kv):
    return _fwd_chunked(state, (qg, qseg, qslot), kv, cfg.causal, cfg.block_q)

  def kv_first_half(state, kv):
    half = kv[0].shape[1] // 2
    return full(state, tuple(x[:, :half] for x in kv))

  def q_second_half(state, kv):
    part = jax.tree.map(lambda s: s[:, :, :, half_q:], state)
    part = _fwd_chunked(part, (qg[:, :, :, half_q:], qseg[:, half_q:], qslot[:, half_q:]), kv,
                        cfg.causal, cfg.block_q)
    return jax.tree.map(lambda s, p: s.at[:, :, :, half_q:].set(p), state, part)

  table = _step_table(cfg, full, kv_first_half, q_second_half, lambda state, kv: state)

  def step(state, kv, s):
    if table is None:
      return full(state, kv)
    src = (rank - s) % cfg.steps
    return jax.lax.switch(_branch(cfg, rank, src, q_stats, kv[2], kv[3]), table, state, kv)

  def body(carry, s):
    state, kv = carry
    kv_next = _rotate(kv, lay, cfg.group)    # independent of this step's compute: the transfer overlaps it
    return (step(state, kv, s), kv_next), None

  state = (_varying(jnp.zeros((b, kv_heads, g, tq, d), jnp.float32), lay),
           _varying(jnp.full((b, kv_heads, g, tq), -jnp.inf, jnp.float32), lay),
           _varying(jnp.zeros((b, kv_heads, g, tq), jnp.float32), lay))
  kv = (k, v, kseg, kslot)
  # P - 1 rotations: the last block is computed after the loop, with nothing left to send.
  (state, kv), _ = jax.lax.scan(body, (state, kv), jnp.arange(cfg.steps - 1))
  acc, m, l = step(state, kv, cfg.steps - 1)
  seen = l > 0
  l_safe = jnp.where(seen, l, 1.0)
  out = jnp.where(seen[..., None], acc / l_safe[..., None], 0.0)
  lse = jnp.where(seen, m + jnp.log(l_safe), 0.0)   # p = exp(s - lse) is masked where unseen
  return _from_groups(out).astype(q.dtype), _from_groups(lse)


def _ring_bwd_local(cfg: RingConfig, q, k, v, qseg, kseg, qslot, kslot, out, lse, dout):
  """Per device: (dq, dk, dv); the dk/dv accumulators travel with their block."""
  dout, qseg, kseg, qslot, kslot = pin_masks(dout, qseg, kseg, qslot, kslot)
  lay = cfg.lay
  kv_heads = k.shape[2]
  qg, dog = _to_groups(q, kv_heads), _to_groups(dout.astype(q.dtype), kv_heads)
  delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)   # [b, t, n]
  lse_g = _to_groups(lse[..., None], kv_heads)[..., 0]
  delta_g = _to_groups(delta[..., None], kv_heads)[..., 0]
  b, _, g, tq, d = qg.shape
  half_q = tq // 2
  rank = cfg.rank()
  q_stats = (_max_valid(qslot, qseg), _max_valid(qslot[:, :half_q], qseg[:, :half_q]))
  q_side = (qg, dog, lse_g, delta_g, qseg, qslot)

  def full(grads, kv):
    return _bwd_chunked(grads, q_side, kv, cfg.causal, cfg.block_q)

  def kv_first_half(grads, kv):
    dq, dk, dv = grads
    half = kv[0].shape[1] // 2
    dq, dk_h, dv_h = _bwd_chunked((dq, dk[:, :half], dv[:, :half]), q_side,
                                  tuple(x[:, :half] for x in kv), cfg.causal, cfg.block_q)
    return dq, dk.at[:, :half].set(dk_h), dv.at[:, :half].set(dv_h)

  def q_second_half(grads, kv):
    dq, dk, dv = grads
    side = (qg[:, :, :, half_q:], dog[:, :, :, half_q:], lse_g[..., half_q:],
            delta_g[..., half_q:], qseg[:, half_q:], qslot[:, half_q:])
    dq_h, dk, dv = _bwd_chunked((dq[:, :, :, half_q:], dk, dv), side, kv, cfg.causal, cfg.block_q)
    return dq.at[:, :, :, half_q:].set(dq_h), dk, dv

  table = _step_table(cfg, full, kv_first_half, q_second_half, lambda grads, kv: grads)

  def step(dq, dkv, kv, s):
    if table is None:
      dq, dk, dv = full((dq, *dkv), kv)
    else:
      src = (rank - s) % cfg.steps
      dq, dk, dv = jax.lax.switch(_branch(cfg, rank, src, q_stats, kv[2], kv[3]), table,
                                  (dq, *dkv), kv)
    return dq, _rotate((dk, dv), lay, cfg.group)   # after P hops the accumulators are back home

  def body(carry, s):
    dq, dkv, kv = carry
    kv_next = _rotate(kv, lay, cfg.group)
    dq, dkv = step(dq, dkv, kv, s)
    return (dq, dkv, kv_next), None

  dq = _varying(jnp.zeros((b, kv_heads, g, tq, d), jnp.float32), lay)
  # dK/dV travel in float32 so that P partial sums do not round in bfloat16.
  dkv = tuple(_varying(jnp.zeros(x.shape, jnp.float32), lay) for x in (k, v))
  (dq, dkv, kv), _ = jax.lax.scan(body, (dq, dkv, (k, v, kseg, kslot)),
                                  jnp.arange(cfg.steps - 1))
  dq, (dk, dv) = step(dq, dkv, kv, cfg.steps - 1)
  return _from_groups(dq).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(cfg: RingConfig, q, k, v, qseg, kseg, qslot, kslot):
  return _ring_fwd(cfg, q, k, v, qseg, kseg, qslot, kslot)[0]


def _ring_fwd(cfg: RingConfig, q, k, v, qseg, kseg, qslot, kslot):
  heads, tokens, per_head = cfg.specs()
  out, lse = jax.shard_map(
      functools.partial(_ring_fwd_local, cfg), mesh=cfg.lay.mesh,
      in_specs=(heads, heads, heads, tokens, tokens, tokens, tokens),
      out_specs=(heads, per_head), check_vma=True)(q, k, v, qseg, kseg, qslot, kslot)
  return out, (q, k, v, qseg, kseg, qslot, kslot, out, lse)


def _ring_bwd(cfg: RingConfig, res, dout):
  heads, tokens, per_head = cfg.specs()
  dq, dk, dv = jax.shard_map(
      functools.partial(_ring_bwd_local, cfg), mesh=cfg.lay.mesh,
      in_specs=(heads, heads, heads, tokens, tokens, tokens, tokens, heads, per_head, heads),
      out_specs=(heads, heads, heads), check_vma=True)(*res, dout)
  return dq, dk, dv, None, None, None, None


_ring.defvjp(_ring_fwd, _ring_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def ring_local(cfg: RingConfig, q, k, v, qseg, kseg, qslot, kslot):
  """The ring as seen by one device, for use inside a caller's shard_map (the hybrid of
  `ops.context_parallel` runs it between two all-to-alls); same VJP as `ring_attention`."""
  return _ring_fwd_local(cfg, q, k, v, qseg, kseg, qslot, kslot)[0]


def _ring_local_fwd(cfg: RingConfig, *args):
  out, lse = _ring_fwd_local(cfg, *args)
  return out, (*args, out, lse)


def _ring_local_bwd(cfg: RingConfig, res, dout):
  return (*_ring_bwd_local(cfg, *res, dout), None, None, None, None)


ring_local.defvjp(_ring_local_fwd, _ring_local_bwd)


def ring_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
                   kv_segment_ids: jax.Array, q_slots: jax.Array, kv_slots: jax.Array, *,
                   causal: bool, mesh: MeshLike, seq_axis: str = "sequence",
                   batch_axes: str | tuple[str, ...] = ("data", "fsdp"),
                   head_axis: str | None = "tensor", zigzag: bool = False,
                   block_q: int | None = None) -> jax.Array:
  """Attention with the sequence sharded over `seq_axis`, K/V passed round a ring.

  q: [B, Tq, N, D]; k, v: [B, Tk, K, D] (N % K == 0; float32 or bfloat16); segment ids and
  slots: int32 [B, Tq] / [B, Tk]. A query sees a key when their segment ids are equal, the key's
  is not 0 (padding) and, if `causal`, kv_slot <= q_slot. Rows that see no key return zeros.
  Batch is sharded over `batch_axes`, heads over `head_axis` (both N and K must divide by its
  size); mesh axes that do not exist are ignored (without `seq_axis` there is no ring and each
  device attends locally). Lengths and batches that do not split over the mesh are padded
  (segment 0) and cut back.

  zigzag: the tokens are in `zigzag_permutation` order (device r holds causal chunks r and
  2P-1-r), so each causal ring step computes one half-block. Only a speed promise: a layout
  that breaks it is still computed exactly, in full blocks.
  block_q: compute each step in query chunks of at most this many rows (scores [block_q, T/P]
  instead of [T/P, T/P]); a local length that does not divide is padded to whole chunks.

  Returns [B, Tq, N, D] in q's dtype. Differentiable in q, k, v (custom VJP, see module doc).
  """
  lay, args = padded_inputs(q, k, v, q_segment_ids, kv_segment_ids, q_slots, kv_slots, mesh=mesh,
                            seq_axis=seq_axis, batch_axes=batch_axes, head_axis=head_axis,
                            multiple=2 if zigzag else 1)
  cfg = RingConfig(lay, bool(causal), bool(zigzag) and bool(causal), block_q)
  return _ring(cfg, *args)[:q.shape[0], :q.shape[1]]


def padded_inputs(q, k, v, q_segment_ids, kv_segment_ids, q_slots, kv_slots, *, mesh: MeshLike,
                  seq_axis: str, batch_axes: str | Sequence[str], head_axis: str | None,
                  multiple: int = 1) -> tuple[_Layout, tuple]:
  """Checked shapes, the mesh layout, and the inputs padded so that the batch splits over the
  batch axes and the length over `multiple` x the sequence shards (padding tokens get segment 0,
  which no query sees and which sees nothing; their slots sort last)."""
  b, tq, n, d = q.shape
  tk, kv_heads = k.shape[1], k.shape[2]
  if k.shape != (b, tk, kv_heads, d) or v.shape != k.shape:
    raise ValueError(f"k {k.shape} and v {v.shape} must be [B, Tk, K, D] matching q {q.shape}")
  if q_segment_ids.shape != (b, tq) or q_slots.shape != (b, tq):
    raise ValueError(f"q segments {q_segment_ids.shape} and slots {q_slots.shape} must be "
                     f"{(b, tq)}")
  if kv_segment_ids.shape != (b, tk) or kv_slots.shape != (b, tk):
    raise ValueError(f"kv segments {kv_segment_ids.shape} and slots {kv_slots.shape} must be "
                     f"{(b, tk)}")
  lay = _layout(mesh, seq_axis, batch_axes, head_axis)
  _check_heads(lay, n, kv_heads)
  pad_b = lambda x, value=0: _pad_to(x, 0, lay.batch_size, value)
  pad_t = lambda x, value=0: pad_b(_pad_to(x, 1, lay.shards * multiple, value), value)
  as_int = lambda x: x.astype(jnp.int32)
  return lay, (pad_t(q), pad_t(k), pad_t(v.astype(k.dtype)), pad_t(as_int(q_segment_ids)),
               pad_t(as_int(kv_segment_ids)), pad_t(as_int(q_slots), _INT_MAX),
               pad_t(as_int(kv_slots), _INT_MAX))


@dataclasses.dataclass(frozen=True)
class _CrossConfig:
  lay: _Layout
  block_kv: int
  block_q: int | None


def _memory_chunks(k, v, kv_mask, block_kv: int):
  """The local memory padded to whole chunks: (k, v, kseg, chunk length, number of chunks).

  Padding keys get segment 0, which no query sees. Padding rather than a divisor of M/P near
  block_kv, which may not exist: a prime length would give chunks of one key.
  """
  c = min(block_kv, k.shape[1])
  k, v = _pad_to(k, 1, c), _pad_to(v, 1, c)
  kseg = _pad_to(kv_mask.astype(jnp.int32), 1, c)
  return k, v, kseg, c, k.shape[1] // c


def _memory_chunk(i, c: int, k, v, kseg):
  """Chunk i as the kv side (k, v, kseg, kslot) of `_fwd_block`; slots are unused (non-causal)."""
  k, v, kseg = (jax.lax.dynamic_slice_in_dim(x, i * c, c, axis=1) for x in (k, v, kseg))
  return k, v, kseg, kseg


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _cross_partial(cfg: _CrossConfig, qg, k, v, kv_mask):
  return _cross_partial_fwd(cfg, qg, k, v, kv_mask)[0]


def _cross_partial_fwd(cfg: _CrossConfig, qg, k, v, kv_mask):
  """All queries [b, kh, g, lq, d] against the local memory, chunk by chunk.

  Returns the locally normalised output o (float32, zero for rows with no valid key) and its
  float32 log-sum-exp (-inf for those rows, so that the merge gives them weight 0).
  """
  lay = cfg.lay
  qg, kv_mask = pin_masks(qg, kv_mask)
  b, kv_heads, g, lq, d = qg.shape
  kp, vp, kseg, c, chunks = _memory_chunks(k, v, kv_mask, cfg.block_kv)
  qseg = jnp.ones((b, lq), jnp.int32)     # every query sees every key of segment 1 (valid)

  def body(state, i):
    kv = _memory_chunk(i, c, kp, vp, kseg)
    return _fwd_chunked(state, (qg, qseg, qseg), kv, False, cfg.block_q), None

  state = (_varying(jnp.zeros((b, kv_heads, g, lq, d), jnp.float32), lay),
           _varying(jnp.full((b, kv_heads, g, lq), -jnp.inf, jnp.float32), lay),
           _varying(jnp.zeros((b, kv_heads, g, lq), jnp.float32), lay))
  (acc, m, l), _ = jax.lax.scan(body, state, jnp.arange(chunks))
  seen = l > 0
  l_safe = jnp.where(seen, l, 1.0)
  o = jnp.where(seen[..., None], acc / l_safe[..., None], 0.0)
  lse = jnp.where(seen, m + jnp.log(l_safe), -jnp.inf)
  # K/V are saved unpadded: the padded copies are rebuilt in the backward pass rather than kept.
  return (o, lse), (qg, k, v, kv_mask, o, lse)


def _cross_partial_bwd(cfg: _CrossConfig, res, cts):
  """Flash backward over the same chunks, with the cotangents of both o and lse."""
  lay = cfg.lay
  qg, k, v, kv_mask, o, lse = res
  do, dlse = cts
  do, kv_mask = pin_masks(do, kv_mask)
  b, kv_heads, g, lq, d = qg.shape
  mem = k.shape[1]
  kp, vp, kseg, c, chunks = _memory_chunks(k, v, kv_mask, cfg.block_kv)
  qseg = jnp.ones((b, lq), jnp.int32)
  seen = jnp.isfinite(lse)
  # d lse / d s = p, so dS = p * (dP - rowsum(dO * O)) + dlse * p: the lse cotangent only moves
  # delta. Rows that saw nothing have p = 0 everywhere; lse = 0 keeps exp(s - lse) finite there.
  delta = jnp.sum(do.astype(jnp.float32) * o, axis=-1) - jnp.where(seen, dlse, 0.0)
  q_side = (qg, do.astype(qg.dtype), jnp.where(seen, lse, 0.0), delta, qseg, qseg)

  def body(dq, i):
    kv = _memory_chunk(i, c, kp, vp, kseg)
    zeros = _varying(jnp.zeros((b, c, kv_heads, d), jnp.float32), lay)
    dq, dk, dv = _bwd_chunked((dq, zeros, zeros), q_side, kv, False, cfg.block_q)
    return dq, (dk, dv)

  dq = _varying(jnp.zeros(qg.shape, jnp.float32), lay)
  dq, (dk, dv) = jax.lax.scan(body, dq, jnp.arange(chunks))
  # [chunks, b, c, kh, d] -> [b, M, kh, d], padding cut off.
  unchunk = lambda x: jnp.moveaxis(x, 0, 1).reshape(b, chunks * c, kv_heads, d)[:, :mem]
  return dq.astype(qg.dtype), unchunk(dk).astype(k.dtype), unchunk(dv).astype(v.dtype), None


_cross_partial.defvjp(_cross_partial_fwd, _cross_partial_bwd)


def _cross_local(cfg: _CrossConfig, q, k, v, kv_mask):
  """Per device: all queries against the local memory shard, merged over the ring axis."""
  lay = cfg.lay
  qg = _to_groups(q, k.shape[2])                # [b, kh, g, lq, d]
  if lay.seq is not None:
    # The queries are replicated over the ring axis but each device's partial depends on its
    # memory shard: made varying here, their cotangent is psum-ed over the ring by autodiff.
    qg = jax.lax.pcast(qg, (lay.seq,), to="varying")
  o, lse = _cross_partial(cfg, qg, k, v, kv_mask)
  if lay.seq is not None:
    top = jax.lax.pmax(jax.lax.stop_gradient(lse), lay.seq)
  else:
    top = jax.lax.stop_gradient(lse)
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  w = jnp.exp(lse - top)                        # 0 for shards with no valid memory
  num, den = w[..., None] * o, w
  if lay.seq is not None:
    num, den = jax.lax.psum((num, den), lay.seq)
  out = num / jnp.where(den > 0, den, 1.0)[..., None]
  return _from_groups(out).astype(q.dtype)


def sharded_cross_attention(q: jax.Array, k: jax.Array, v: jax.Array, kv_mask: jax.Array, *,
                            mesh: MeshLike, seq_axis: str = "sequence",
                            batch_axes: str | tuple[str, ...] = ("data", "fsdp"),
                            head_axis: str | None = "tensor", block_kv: int = 1024,
                            block_q: int | None = None) -> jax.Array:
  """Non-causal attention of replicated queries to a memory sharded over `seq_axis`.

  q: [B, Lq, N, D] (not split along Lq); k, v: [B, M, K, D] split along M; kv_mask: bool [B, M],
  True for valid memory. Each device attends to its shard; the partial softmaxes merge with one
  pmax and one psum (see module doc). Rows with no valid memory return zeros.

  block_kv: each device walks its memory shard in chunks of this many keys (the shard is padded
  with invalid keys to a whole number of chunks). block_q: also split the queries into chunks of
  at most this many rows (padded to whole chunks, never shrunk to a divisor of Lq). Scores exist one
  [block_q, block_kv] tile at a time, in the forward and in the backward pass.

  Differentiable in q, k, v (custom VJP for the per-device part, see module doc). Returns
  [B, Lq, N, D] in q's dtype.
  """
  b, lq, n, d = q.shape
  mem, kv_heads = k.shape[1], k.shape[2]
  if k.shape != (b, mem, kv_heads, d) or v.shape != k.shape or kv_mask.shape != (b, mem):
    raise ValueError(f"expected k, v [B, M, K, D] and kv_mask [B, M] for q {q.shape}; got "
                     f"{k.shape}, {v.shape}, {kv_mask.shape}")
  if block_kv < 1 or (block_q is not None and block_q < 1):
    raise ValueError(f"block_kv ({block_kv}) and block_q ({block_q}) must be positive")
  lay = _layout(mesh, seq_axis, batch_axes, head_axis)
  _check_heads(lay, n, kv_heads)
  pad_b = lambda x: _pad_to(x, 0, lay.batch_size)
  pad_m = lambda x: pad_b(_pad_to(x, 1, lay.shards))
  heads_rep = P(lay.batch_spec, None, lay.head, None)
  heads_mem = P(lay.batch_spec, lay.seq, lay.head, None)
  cfg = _CrossConfig(lay, int(block_kv), block_q)
  fn = jax.shard_map(functools.partial(_cross_local, cfg), mesh=mesh,
                     in_specs=(heads_rep, heads_mem, heads_mem, P(lay.batch_spec, lay.seq)),
                     out_specs=heads_rep, check_vma=True)
  out = fn(pad_b(q), pad_m(k), pad_m(v.astype(k.dtype)), pad_m(kv_mask.astype(bool)))
  return out[:b]
