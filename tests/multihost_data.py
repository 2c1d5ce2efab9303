"""One of two local processes (`jax.distributed` on the CPU): reads its share of the pipeline,
turns it into global arrays, and checks them (run by test_pipeline.py)."""
import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax
import numpy as np

jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main(root: str, port: str, pid: str, out: str) -> None:
  pid = int(pid)
  jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
  import test_pipeline as t
  from hourjax.data import pipeline
  from hourjax.train import feed
  from hourjax.parallel import mesh as mesh_lib
  data = t._data(root, batch_size=2, sources=[dict(annotations="features.jsonl", features="features")])
  it = iter(pipeline.from_config(data, t.CFG, process_index=pid, process_count=2))
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 1, "tensor": 1, "sequence": 2})
  report = []
  for _ in range(4):
    local, meta = next(it)
    g = feed.to_global(local, mesh, t.CFG)
    frames, text = g.features.shape[1], g.input_ids.shape[1]
    padded = feed.pad_batch(local, t.CFG, frames, text)
    shards = lambda k: sorted(getattr(g, k).addressable_shards, key=lambda s: s.index[0].start or 0)[::2]
    mine = {k: np.concatenate([np.asarray(s.data) for s in shards(k)]) for k in ("features", "input_ids")}
    for k in mine:
      np.testing.assert_array_equal(mine[k], getattr(padded, k))
    total = jax.jit(lambda x: x.sum(), out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))(
        g.input_ids)
    report.append({"local_frames": local.features.shape[1], "frames": frames, "text": text,
                   "ids": meta.ids, "global_ids_sum": int(total)})
  with open(out, "w") as f:
    json.dump(report, f)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(*sys.argv[1:])
