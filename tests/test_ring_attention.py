"""Ring attention and the sharded MemAug cross-attention against dense attention on 8 fake devices.

Every comparison covers outputs and gradients w.r.t. q, k, v (of sum(out * w), w random). The
dense reference zeroes rows that see no key, as the sharded kernels do.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hourjax.ops import ring_attention as ra
from hourjax.ops.attention import dot_product_attention
from hourjax.numerics import rel_err

TOL = 1e-5


def make_mesh(**axes) -> jax.sharding.Mesh:
  devices = np.array(jax.devices()[:int(np.prod(list(axes.values())))])
  return jax.sharding.Mesh(devices.reshape(tuple(axes.values())), tuple(axes),
                           axis_types=(jax.sharding.AxisType.Auto,) * len(axes))


def dense(q, k, v, mask):
  """Reference in float32; rows with no visible key are zero (and get no gradient)."""
  out = dot_product_attention(q.astype(jnp.float32), k.astype(jnp.float32),
                              v.astype(jnp.float32), mask)
  return jnp.where(mask.any(-1)[:, :, None, None], out, 0.0)


def self_mask(qseg, kseg, qslot, kslot, causal):
  mask = (qseg[:, :, None] == kseg[:, None, :]) & (kseg[:, None, :] != 0)
  if causal:
    mask &= kslot[:, None, :] <= qslot[:, :, None]
  return mask


def value_and_grads(fn, q, k, v, w):
  """jit(out, d sum(out * w) / d(q, k, v)), all in one program."""
  def loss(q, k, v):
    out = fn(q, k, v)
    return jnp.sum(out.astype(jnp.float32) * w), out
  (_, out), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, k, v)
  return out, grads


def packed_segments(b, t):
  """Sample 0: one segment and trailing padding; sample 1: two packed segments and padding."""
  seg = np.ones((b, t), np.int32)
  seg[0, t - 3:] = 0
  seg[1, t // 3:] = 2
  seg[1, t - 5:] = 0
  return seg


# name: mesh axes, (B, T, N, K, D), causal, layout, extra kwargs. Layouts: "contiguous"
# (slots = positions), "zigzag" (tokens permuted by zigzag_permutation, zigzag=True), "shuffled"
# (a random token order; slots carry the order).
CASES = {
    "causal": (dict(data=2, sequence=4), (2, 32, 4, 2, 8), True, "contiguous", {}),
    "causal_zigzag": (dict(data=2, sequence=4), (2, 32, 4, 2, 8), True, "zigzag", {}),
    "noncausal": (dict(data=2, sequence=4), (2, 32, 4, 2, 8), False, "contiguous", {}),
    "gqa_one_kv_head": (dict(data=2, sequence=4), (2, 32, 4, 1, 8), True, "zigzag", {}),
    "mha": (dict(data=2, sequence=4), (2, 32, 4, 4, 8), True, "zigzag", {}),
    "shuffled_tokens": (dict(data=2, sequence=4), (2, 32, 4, 2, 8), True, "shuffled", {}),
    "uneven_length": (dict(data=2, sequence=4), (2, 30, 4, 2, 8), True, "contiguous", {}),
    # zigzag=True on a contiguous layout that is padded internally: exact, in full blocks.
    "uneven_length_zigzag_flag": (dict(data=2, sequence=4), (2, 30, 4, 2, 8), True, "contiguous",
                                  dict(zigzag=True)),
    "sequence_8": (dict(sequence=8), (2, 48, 4, 2, 8), True, "zigzag", {}),
    "heads_on_tensor": (dict(data=2, tensor=2, sequence=2), (2, 32, 4, 2, 8), True, "zigzag", {}),
    "block_q": (dict(sequence=4), (2, 64, 4, 2, 8), True, "zigzag", dict(block_q=4)),
    # 37 rows per device (prime): 5 chunks of 8 rows, 3 of them padding.
    "block_q_prime_local_length": (dict(sequence=4), (2, 148, 4, 2, 8), True, "contiguous",
                                   dict(block_q=8)),
}


def check_against_dense(attention, axes, shape, causal, layout, extra):
  """`attention(q, k, v, segs, segs, slots, slots, causal=, mesh=, **extra)` in `layout` order
  against dense attention in causal order: outputs and q/k/v gradients."""
  b, t, n, kh, d = shape
  mesh = make_mesh(**axes)
  rng = np.random.default_rng(0)
  q, k, v, w = (jnp.asarray(rng.normal(size=s), jnp.float32)
                for s in ((b, t, n, d), (b, t, kh, d), (b, t, kh, d), (b, t, n, d)))
  seg = jnp.asarray(packed_segments(b, t))
  slots = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  shards = axes["sequence"]
  if layout == "zigzag":
    perm = ra.zigzag_permutation(t, shards)
    extra = dict(extra, zigzag=True)
  elif layout == "shuffled":
    perm = rng.permutation(t)
  else:
    perm = np.arange(t)
  inv = ra.inverse_permutation(perm)

  def sharded(q, k, v):
    # Inputs go in the kernel's layout and come back to causal order for the comparison.
    out = attention(q[:, perm], k[:, perm], v[:, perm], seg[:, perm], seg[:, perm],
                    slots[:, perm], slots[:, perm], causal=causal, mesh=mesh, **extra)
    return out[:, inv]

  mask = self_mask(seg, seg, slots, slots, causal)
  out, grads = value_and_grads(sharded, q, k, v, w)
  ref, ref_grads = value_and_grads(lambda q, k, v: dense(q, k, v, mask), q, k, v, w)
  assert out.shape == (b, t, n, d) and out.dtype == jnp.float32
  errs = [rel_err(out, ref)] + [rel_err(g, r) for g, r in zip(grads, ref_grads)]
  assert max(errs) < TOL, dict(zip(("out", "dq", "dk", "dv"), errs))
  # Padding queries (segment 0) see nothing: zero output, zero gradient.
  pad = np.asarray(seg) == 0
  assert np.all(np.asarray(out)[pad] == 0) and np.all(np.asarray(grads[0])[pad] == 0)


@pytest.mark.parametrize("name", list(CASES))
def test_ring_matches_dense(name):
  check_against_dense(ra.ring_attention, *CASES[name])


def test_prime_local_length_runs_whole_chunks():
  """1,031 rows per device (a prime) with 512-row chunks: 3 chunk iterations in the compiled
  forward and backward (a divisor rule would run 1,031 one-row chunks), scores never above
  [512, T/P] per head, and the result exact."""
  from hourjax.train import hlo_cost
  mesh = make_mesh(sequence=2)
  b, t, n, kh, d = 1, 2062, 2, 1, 8
  rng = np.random.default_rng(3)
  q, k, v = (jnp.asarray(rng.normal(size=(b, t, h, d)), jnp.float32) for h in (n, kh, kh))
  seg = jnp.ones((b, t), jnp.int32)
  slots = jnp.arange(t, dtype=jnp.int32)[None]

  def ring(q, k, v):
    return ra.ring_attention(q, k, v, seg, seg, slots, slots, causal=True, mesh=mesh, block_q=512)
  grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(ring(q, k, v)), (0, 1, 2)))
  compiled = grad.lower(q, k, v).compile()
  loops = hlo_cost.collective_bytes(compiled.as_text())["loops"]
  assert loops and max(loops) == 3, loops
  scores = n * 512 * (t // 2) * 4
  assert compiled.memory_analysis().temp_size_in_bytes < 8 * scores
  ref = dense(q, k, v, self_mask(seg, seg, slots, slots, True))
  assert rel_err(jax.jit(ring)(q, k, v), ref) < TOL


def test_ring_bfloat16():
  mesh = make_mesh(data=2, sequence=4)
  b, t, n, kh, d = 2, 32, 4, 2, 8
  rng = np.random.default_rng(1)
  q, k, v, w = (jnp.asarray(rng.normal(size=s), jnp.float32)
                for s in ((b, t, n, d), (b, t, kh, d), (b, t, kh, d), (b, t, n, d)))
  seg = jnp.asarray(packed_segments(b, t))
  slots = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  perm = ra.zigzag_permutation(t, 4)
  inv = ra.inverse_permutation(perm)
  ring = lambda q, k, v: ra.ring_attention(
      q[:, perm], k[:, perm], v[:, perm], seg[:, perm], seg[:, perm], slots[:, perm],
      slots[:, perm], causal=True, mesh=mesh, zigzag=True)[:, inv]
  bf = lambda x: x.astype(jnp.bfloat16)
  out, grads = value_and_grads(ring, bf(q), bf(k), bf(v), w)
  mask = self_mask(seg, seg, slots, slots, True)
  ref, ref_grads = value_and_grads(lambda q, k, v: dense(q, k, v, mask), q, k, v, w)
  assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
  errs = [rel_err(out, ref)] + [rel_err(g, r) for g, r in zip(grads, ref_grads)]
  assert max(errs) < 3e-2, errs


def test_zigzag_steps_compute_half_blocks():
  """With the zig-zag layout every causal step after the first is a half-block; contiguous
  causal steps skip the future blocks."""
  shards, t, b = 4, 32, 2
  lay = ra._layout(make_mesh(sequence=shards), "sequence", (), None)
  seg = np.ones((b, t), np.int32)
  for zigzag, order in ((True, ra.zigzag_permutation(t, shards)), (False, np.arange(t))):
    cfg = ra.RingConfig(lay, causal=True, zigzag=zigzag, block_q=None)
    slots = np.broadcast_to(order, (b, t)).astype(np.int32)
    blocks = slots.reshape(b, shards, t // shards)
    block = seg[:, :t // shards]
    for rank in range(shards):
      q_slot, half = blocks[:, rank], t // shards // 2
      stats = (ra._max_valid(q_slot, block), ra._max_valid(q_slot[:, :half], block[:, :half]))
      for step in range(shards):
        src = (rank - step) % shards
        got = int(ra._branch(cfg, rank, src, stats, block, blocks[:, src]))
        if zigzag:
          want = (ra._FULL if src == rank else
                  ra._KV_FIRST_HALF if src < rank else ra._Q_SECOND_HALF)
        else:
          want = 1 if src > rank else 0     # table (full, skip)
        assert got == want, (zigzag, rank, step)


def test_zigzag_permutation():
  perm = ra.zigzag_permutation(16, 2)
  np.testing.assert_array_equal(perm.reshape(4, 4)[:, 0], [0, 12, 4, 8])
  np.testing.assert_array_equal(perm[ra.inverse_permutation(perm)], np.arange(16))
  with pytest.raises(ValueError):
    ra.zigzag_permutation(18, 2)


def test_heads_must_divide_tensor_axis():
  mesh = make_mesh(tensor=4, sequence=2)
  q, k = jnp.zeros((1, 8, 4, 8)), jnp.zeros((1, 8, 2, 8))
  ids = jnp.ones((1, 8), jnp.int32)
  with pytest.raises(ValueError, match="divisible by the size of mesh axis 'tensor'"):
    ra.ring_attention(q, k, k, ids, ids, ids, ids, causal=True, mesh=mesh)
  with pytest.raises(ValueError, match="tensor"):
    ra.sharded_cross_attention(q, k, k, ids > 0, mesh=mesh)


def test_ring_under_context_abstract_mesh():
  """The model passes `jax.sharding.get_abstract_mesh()`; mesh axes it lacks are ignored."""
  mesh = make_mesh(sequence=4)
  b, t, n, d = 1, 16, 2, 8
  rng = np.random.default_rng(2)
  q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, d)), jnp.float32) for _ in range(3))
  seg = jnp.ones((b, t), jnp.int32)
  slots = jnp.arange(t, dtype=jnp.int32)[None]

  @jax.jit
  def f(q, k, v):
    return ra.ring_attention(q, k, v, seg, seg, slots, slots, causal=True,
                             mesh=jax.sharding.get_abstract_mesh())

  with jax.set_mesh(mesh):
    out = f(q, k, v)
  ref = dense(q, k, v, self_mask(seg, seg, slots, slots, True))
  assert rel_err(out, ref) < TOL


def test_ring_hlo_rotates_blocks_without_gathering():
  """Forward + backward move K/V by collective-permute only; no device gathers the sequence."""
  mesh = make_mesh(data=2, sequence=4)
  b, t, n, kh, d = 2, 64, 4, 2, 8
  sharding = lambda *spec: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
  heads, tokens = sharding("data", "sequence"), sharding("data", "sequence")

  def loss(q, k, v, seg, slots):
    out = ra.ring_attention(q, k, v, seg, seg, slots, slots, causal=True, mesh=mesh, zigzag=True)
    return jnp.sum(out)

  args = (jax.ShapeDtypeStruct((b, t, n, d), jnp.float32, sharding=heads),
          jax.ShapeDtypeStruct((b, t, kh, d), jnp.float32, sharding=heads),
          jax.ShapeDtypeStruct((b, t, kh, d), jnp.float32, sharding=heads),
          jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=tokens),
          jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=tokens))
  hlo = jax.jit(jax.grad(loss, (0, 1, 2))).lower(*args).compile().as_text()
  assert "collective-permute" in hlo
  assert "all-gather" not in hlo and "all-to-all" not in hlo
  # The per-device K block is [b / 2, t / 4, kh, d]; the global K shape never appears.
  assert f"f32[1,{t // 4},{kh},{d}]" in hlo
  assert f"[{b},{t},{kh},{d}]" not in hlo and f"[1,{t},{kh},{d}]" not in hlo


# name: mesh axes, extra kwargs. 30 memory tokens are padded to split over the ring; block_kv
# below the local length and not dividing it makes each device pad its shard to whole chunks.
CROSS_CASES = {
    "one_chunk": (dict(data=2, sequence=4), {}),
    "heads_on_tensor": (dict(data=2, tensor=2, sequence=2), {}),
    "chunks_padded": (dict(data=2, sequence=4), dict(block_kv=3)),        # 8 local -> 3 x 3
    "chunks_and_block_q": (dict(data=2, sequence=4), dict(block_kv=3, block_q=4)),
    "no_sequence_axis": (dict(data=2, tensor=2), dict(block_kv=7)),      # 30 local -> 5 x 7
}


@pytest.mark.parametrize("name", list(CROSS_CASES))
def test_sharded_cross_attention_matches_dense(name):
  axes, extra = CROSS_CASES[name]
  mesh = make_mesh(**axes)
  b, lq, mem, n, kh, d = 4, 6, 30, 4, 2, 8
  rng = np.random.default_rng(3)
  q, k, v, w = (jnp.asarray(rng.normal(size=s), jnp.float32)
                for s in ((b, lq, n, d), (b, mem, kh, d), (b, mem, kh, d), (b, lq, n, d)))
  valid = np.ones((b, mem), bool)
  valid[1, 5:] = False                 # most shards and chunks of sample 1 hold no valid memory
  valid[2, ::3] = False
  valid[3] = False                     # no memory at all: zeros
  valid = jnp.asarray(valid)
  mask = jnp.broadcast_to(valid[:, None, :], (b, lq, mem))

  out, grads = value_and_grads(
      lambda q, k, v: ra.sharded_cross_attention(q, k, v, valid, mesh=mesh, **extra), q, k, v, w)
  ref, ref_grads = value_and_grads(lambda q, k, v: dense(q, k, v, mask), q, k, v, w)
  errs = [rel_err(out, ref)] + [rel_err(g, r) for g, r in zip(grads, ref_grads)]
  assert max(errs) < TOL, dict(zip(("out", "dq", "dk", "dv"), errs))
  assert np.all(np.asarray(out[3]) == 0)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
  assert np.all(np.asarray(grads[0][3]) == 0)


def test_sharded_cross_attention_memory_does_not_scale_with_lq_times_m():
  """Compiled forward + backward temp memory per device grows with the memory length M only as
  K/V do, not as Lq x M/P (the old dense partial: ~3 MB more for M 2048 -> 8192 here; now ~0)."""
  mesh = make_mesh(sequence=8)
  b, lq, n, kh, d, shards = 1, 64, 4, 2, 8, 8

  def temp_bytes(mem):
    def loss(q, k, v, mask):
      return jnp.sum(ra.sharded_cross_attention(q, k, v, mask, mesh=mesh, block_kv=128))
    args = (jax.ShapeDtypeStruct((b, lq, n, d), jnp.float32),
            jax.ShapeDtypeStruct((b, mem, kh, d), jnp.float32),
            jax.ShapeDtypeStruct((b, mem, kh, d), jnp.float32),
            jax.ShapeDtypeStruct((b, mem), jnp.bool_))
    compiled = jax.jit(jax.value_and_grad(loss, (0, 1, 2))).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  small, large = temp_bytes(2048), temp_bytes(8192)
  extra_kv = 2 * b * (8192 - 2048) // shards * kh * d * 4     # the additional local K and V
  # Allow K/V-sized buffers (gradient accumulators, padding copies) four times over; one score
  # matrix [Lq, M/P] per query head alone would be Lq * n / (2 * kh * d) = 8 times extra_kv.
  assert large < small + 4 * extra_kv, (small, large, extra_kv)


@pytest.mark.parametrize("shards", [2, 4])
def test_zigzag_reorder_equals_the_permutation_without_gathers(shards):
  mesh = make_mesh(data=2, sequence=shards)
  x = jax.random.normal(jax.random.key(0), (4, 8 * shards, 3))
  perm = ra.zigzag_permutation(x.shape[1], shards)
  fwd = jax.jit(lambda x: ra.zigzag_reorder(x, mesh=mesh))
  back = jax.jit(lambda x: ra.zigzag_reorder(x, mesh=mesh, inverse=True))
  np.testing.assert_array_equal(fwd(x), x[:, perm])
  np.testing.assert_array_equal(back(fwd(x)), x)
  sharded = jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec("data", "sequence")))
  hlo = fwd.lower(sharded).compile().as_text()
  assert "collective-permute" in hlo and "all-gather" not in hlo and "all-to-all" not in hlo
