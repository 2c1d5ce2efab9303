"""All-gather, Ulysses and the Ulysses-ring hybrid against dense attention on 8 fake devices, with
the ring's own checks (tests/test_ring_attention.py): outputs and q/k/v gradients, causal with
packed segments and padding, zig-zag / contiguous / shuffled token orders, uneven lengths."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hourjax.ops import context_parallel as cp
from hourjax.ops import ring_attention as ra
from test_ring_attention import check_against_dense, make_mesh

# name: implementation, mesh axes, (B, T, N, K, D), causal, layout, extra kwargs.
CASES = {
    "allgather_zigzag": (cp.allgather_attention, dict(data=2, sequence=4), (2, 32, 4, 2, 8), True,
                         "zigzag", {}),
    "allgather_shuffled": (cp.allgather_attention, dict(sequence=8), (2, 48, 4, 1, 8), True,
                           "shuffled", {}),
    "allgather_heads_on_tensor": (cp.allgather_attention, dict(data=2, tensor=2, sequence=2),
                                  (2, 32, 4, 2, 8), True, "zigzag", {}),
    "ulysses_zigzag": (cp.ulysses_attention, dict(data=2, sequence=4), (2, 32, 8, 4, 8), True,
                       "zigzag", {}),
    "ulysses_uneven": (cp.ulysses_attention, dict(sequence=8), (2, 45, 8, 8, 8), True,
                       "contiguous", {}),
    # 2 kv heads on 8 devices: Ulysses in pairs, a ring of 4 pairs.
    "hybrid_8_zigzag": (cp.hybrid_attention, dict(sequence=8), (2, 64, 4, 2, 8), True, "zigzag", {}),
    "hybrid_uneven_noncausal": (cp.hybrid_attention, dict(data=2, sequence=4), (2, 30, 4, 2, 8),
                                False, "contiguous", dict(block_q=4)),
    "hybrid_heads_on_tensor": (cp.hybrid_attention, dict(tensor=2, sequence=4), (2, 32, 8, 4, 8),
                               True, "zigzag", {}),
    "hybrid_group_1_is_the_ring": (cp.hybrid_attention, dict(sequence=4), (2, 32, 4, 2, 8), True,
                                   "zigzag", dict(group=1)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_dense(name):
  attention, *case = CASES[name]
  check_against_dense(attention, *case)


def test_group_layout_is_the_ring_zigzag_over_groups():
  """After a group gathers its devices' zig-zag chunks, the local reorder gives exactly the
  ring's zig-zag layout over P / u positions (so its half-block steps apply)."""
  t, p, u = 64, 8, 2
  order = ra.zigzag_permutation(t, p).reshape(p, t // p)
  perm = cp._zigzag_groups(u * t // p, u)
  groups = [order[g:g + u].reshape(-1)[perm] for g in range(0, p, u)]
  np.testing.assert_array_equal(np.stack(groups), ra.zigzag_permutation(t, p // u).reshape(p // u, -1))


def test_hybrid_steps_compute_half_blocks():
  """In the hybrid's group layout, every ring step after the first is a half-block."""
  t, p, u, b = 64, 8, 2, 1
  lay = ra._layout(make_mesh(sequence=p), "sequence", (), None)
  cfg = ra.RingConfig(lay, causal=True, zigzag=True, block_q=None, group=u)
  blocks = ra.zigzag_permutation(t, p // u).reshape(p // u, -1).astype(np.int32)
  seg = np.ones((b, blocks.shape[1]), np.int32)
  half = blocks.shape[1] // 2
  for rank in range(cfg.steps):
    q = blocks[rank][None]
    stats = (ra._max_valid(q, seg), ra._max_valid(q[:, :half], seg[:, :half]))
    for step in range(cfg.steps):
      src = (rank - step) % cfg.steps
      want = ra._FULL if src == rank else ra._KV_FIRST_HALF if src < rank else ra._Q_SECOND_HALF
      assert int(ra._branch(cfg, rank, src, stats, seg, blocks[src][None])) == want


def test_ulysses_names_the_kv_heads_that_cap_it():
  mesh = make_mesh(sequence=8)
  q, k = jnp.zeros((1, 16, 8, 8)), jnp.zeros((1, 16, 4, 8))
  ids = jnp.ones((1, 16), jnp.int32)
  with pytest.raises(ValueError, match="4 kv heads .* over 8 devices .* attention=hybrid"):
    cp.ulysses_attention(q, k, k, ids, ids, ids, ids, causal=True, mesh=mesh)
  assert cp.ulysses_group(8, 4) == 4 and cp.ulysses_group(16, 4) == 4 and cp.ulysses_group(6, 4) == 2


def test_collectives_are_what_each_variant_promises():
  """All-gather moves K/V by all-gather (gradient: reduce-scatter), Ulysses by all-to-all only,
  the hybrid by all-to-all within groups and collective-permutes across them."""
  mesh = make_mesh(sequence=8)
  b, t, n, kh, d = 1, 64, 8, 8, 8
  q, k = jnp.ones((b, t, n, d)), jnp.ones((b, t, kh, d))
  ids = jnp.ones((b, t), jnp.int32)
  slots = jnp.arange(t, dtype=jnp.int32)[None]

  def hlo(fn, **kw):
    loss = lambda q, k, v: jnp.sum(fn(q, k, v, ids, ids, slots, slots, causal=True, mesh=mesh,
                                      zigzag=True, **kw))
    return jax.jit(jax.grad(loss, (0, 1, 2))).lower(q, k, k).compile().as_text()

  gathered = hlo(cp.allgather_attention)
  assert "all-gather" in gathered and "reduce-scatter" in gathered and "all-to-all" not in gathered
  ulysses = hlo(cp.ulysses_attention)
  assert "all-to-all" in ulysses and "collective-permute" not in ulysses
  hybrid = hlo(cp.hybrid_attention, group=4)
  assert "all-to-all" in hybrid and "collective-permute" in hybrid
