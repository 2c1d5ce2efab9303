"""MemAug cross-attention over a memory sharded on 'sequence': LSE merge vs a ring.

  .venv/bin/python -m tools.bench.memaug_cross

Few queries (the decayed queries plus text), a long memory: the LSE merge keeps the queries
replicated and sends one [B, Lq, N, D] partial per device through a psum; a ring would shard
the queries too and pass the memory's K/V blocks round P - 1 times. Reports per-device temporary
bytes and collective bytes from the compiled HLO, and wall time, on 8 fake CPU devices
(forward + backward, float32).
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hourjax.ops.ring_attention import ring_attention, sharded_cross_attention  # noqa: E402
from hourjax.parallel import mesh as mesh_lib  # noqa: E402

_BYTES = {"f32": 4, "bf16": 2, "s32": 4, "pred": 1}


def collective_bytes(hlo: str) -> int:
  """Bytes produced by collective ops (all-reduce, collective-permute, all-gather) per device."""
  total = 0
  for line in hlo.splitlines():
    if not re.search(r"= .*(all-reduce|collective-permute|all-gather)(-start)?\(", line):
      continue
    for dtype, dims in re.findall(r"(f32|bf16|s32|pred)\[([0-9,]*)\]", line.split("=")[1].split("(")[0]):
      total += _BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
  return total


def measure(fn, *args):
  compiled = jax.jit(fn).lower(*args).compile()
  out = compiled(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(3):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return (compiled.memory_analysis().temp_size_in_bytes, collective_bytes(compiled.as_text()),
          statistics.median(times))


def main(argv=None) -> None:
  b, lq, n, kh, d = 1, 512, 4, 2, 64
  print("| memory M | P | merge temp MiB | ring temp MiB | merge collective MiB | ring collective MiB "
        "| merge ms | ring ms |")
  print("|---:|---:|---:|---:|---:|---:|---:|---:|")
  for m in (8192, 32768):
    for p in (2, 4, 8):
      mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 8 // p, "sequence": p})
      ks = jax.random.split(jax.random.key(0), 3)
      q = jax.random.normal(ks[0], (b * (8 // p), lq, n, d))
      k = jax.random.normal(ks[1], (b * (8 // p), m, kh, d))
      v = jax.random.normal(ks[2], k.shape)
      mask = jnp.ones(k.shape[:2], bool)
      ones_q, ones_k = jnp.ones(q.shape[:2], jnp.int32), jnp.ones(k.shape[:2], jnp.int32)
      zq, zk = jnp.zeros_like(ones_q), jnp.zeros_like(ones_k)
      merge = lambda q, k, v: jax.grad(lambda q, k, v: sharded_cross_attention(
          q, k, v, mask, mesh=mesh, block_q=512).sum(), (0, 1, 2))(q, k, v)
      ring = lambda q, k, v: jax.grad(lambda q, k, v: ring_attention(
          q, k, v, ones_q, ones_k, zq, zk, causal=False, mesh=mesh, block_q=512).sum(), (0, 1, 2))(q, k, v)
      with mesh_lib.activate(mesh):
        a, b_ = measure(merge, q, k, v), measure(ring, q, k, v)
      mib = lambda x: f"{x / 2**20:.1f}"
      print(f"| {m} | {p} | {mib(a[0])} | {mib(b_[0])} | {mib(a[1])} | {mib(b_[1])} | "
            f"{a[2] * 1e3:.0f} | {b_[2] * 1e3:.0f} |", flush=True)


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
