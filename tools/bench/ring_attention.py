"""Per-device memory and wall time of dense vs ring attention (causal, forward + backward).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 .venv/bin/python -m tools.bench.ring_attention

For each sequence length T and P sequence shards (a P-device 'sequence' mesh), it compiles
jax.grad(sum(attention)) for
  * dense: `dot_product_attention` on global arrays, sequence sharded by GSPMD constraints;
  * ring: `ring_attention` in zig-zag order (one half-block per causal step);
  * ring, block_q: the same with query chunks of `--block-q` rows (memory only),
and prints a markdown table of `memory_analysis().temp_size_in_bytes` (per device) and the
median wall time per call. On fake CPU devices all "devices" share the host's cores, so the
times only rank the variants; they say nothing about accelerators.
"""
from __future__ import annotations

import os
import sys

# Fake devices must exist before jax is imported; libtpu (if installed) is not wanted here.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from hourjax.ops.attention import causal_mask, dot_product_attention  # noqa: E402
from hourjax.ops.ring_attention import ring_attention, zigzag_permutation  # noqa: E402


def _mesh(shards: int) -> jax.sharding.Mesh:
  return jax.sharding.Mesh(np.array(jax.devices()[:shards]), ("sequence",),
                           axis_types=(jax.sharding.AxisType.Auto,))


def _dense_loss(mesh):
  seq = NamedSharding(mesh, P(None, "sequence"))

  def loss(q, k, v, slots):
    mask = causal_mask(slots, slots)[None]
    out = jax.lax.with_sharding_constraint(dot_product_attention(q, k, v, mask), seq)
    return jnp.sum(out)
  return loss


def _ring_loss(mesh, block_q):
  def loss(q, k, v, slots):
    seg = jnp.ones(q.shape[:2], jnp.int32)
    slots = jnp.broadcast_to(slots, q.shape[:2])
    return jnp.sum(ring_attention(q, k, v, seg, seg, slots, slots, causal=True, mesh=mesh,
                                  zigzag=True, block_q=block_q))
  return loss


def _compile(loss, mesh, args):
  seq = NamedSharding(mesh, P(None, "sequence"))
  shardings = (seq, seq, seq, NamedSharding(mesh, P("sequence")))
  return jax.jit(jax.grad(loss, (0, 1, 2)), in_shardings=shardings).lower(*args).compile()


def _time(compiled, args, repeats: int) -> float:
  jax.block_until_ready(compiled(*args))          # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
  parser.add_argument("--shards", type=int, nargs="+", default=[2, 4, 8])
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--kv-heads", type=int, default=2)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--block-q", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--time-up-to", type=int, default=8192,
                      help="only compile (no timing) above this length")
  args = parser.parse_args(argv)

  rng = np.random.default_rng(0)
  mib = lambda c: c.memory_analysis().temp_size_in_bytes / 2 ** 20
  print(f"causal, B=1, N={args.heads}, K={args.kv_heads}, D={args.head_dim}, float32, "
        f"jax.grad(sum(attention)) w.r.t. q, k, v; {jax.device_count()} fake CPU devices\n")
  print("| T | P | dense temp MiB/device | ring temp MiB/device | ring block_q="
        f"{args.block_q} temp MiB/device | dense ms | ring ms |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  for length in args.lengths:
    shape_q = (1, length, args.heads, args.head_dim)
    shape_kv = (1, length, args.kv_heads, args.head_dim)
    q, k, v = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in (shape_q, shape_kv, shape_kv))
    for shards in args.shards:
      mesh = _mesh(shards)
      seq = NamedSharding(mesh, P(None, "sequence"))
      data = [jax.device_put(x, seq) for x in (q, k, v)]
      dense_args = (*data, jax.device_put(jnp.arange(length, dtype=jnp.int32),
                                          NamedSharding(mesh, P("sequence"))))
      # Same random tensors, read as already being in zig-zag order: the slots say so.
      ring_args = (*data, jax.device_put(jnp.asarray(zigzag_permutation(length, shards), jnp.int32),
                                         NamedSharding(mesh, P("sequence"))))
      dense = _compile(_dense_loss(mesh), mesh, dense_args)
      ring = _compile(_ring_loss(mesh, None), mesh, ring_args)
      ring_blocked = _compile(_ring_loss(mesh, args.block_q), mesh, ring_args)
      if length <= args.time_up_to:
        dense_ms = f"{_time(dense, dense_args, args.repeats) * 1e3:.0f}"
        ring_ms = f"{_time(ring, ring_args, args.repeats) * 1e3:.0f}"
      else:
        dense_ms = ring_ms = "-"
      print(f"| {length} | {shards} | {mib(dense):.1f} | {mib(ring):.1f} | "
            f"{mib(ring_blocked):.1f} | {dense_ms} | {ring_ms} |", flush=True)
  print("\nWall times: 8 fake devices share 2 CPU cores here, so they rank the variants but do "
        "not predict accelerator times.")


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
