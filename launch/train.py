"""Train a stage.

  python -m launch.train --config configs/hour_llava.py:tiny,stage=3 --workdir /tmp/run data.root=/tmp/synth
  python -m launch.train --config configs/hour_llava.py:7b,stage=3 --workdir /mnt/runs/hl7b-s3 \\
      data.root=/data train.init=/runs/hl7b-s2/params mesh.fsdp=-1

Re-running the same command resumes from the workdir's latest checkpoint. Several processes
(TPU pod hosts, SLURM tasks) find each other through `jax.distributed.initialize()`'s automatic
detection; elsewhere pass --coordinator HOST:PORT --num-processes N --process-id I. When the run
ends, the trained parameters are written to <workdir>/params (the next stage's train.init).
A progressive context schedule (configs/prolongvid.py:*,stage=context_extension) trains its
phases in <workdir>/phase<i>_<length> and writes the last one's parameters there.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def initialize_distributed(a: argparse.Namespace) -> None:
  import jax
  if a.coordinator:
    jax.distributed.initialize(a.coordinator, a.num_processes, a.process_id)
  elif a.distributed == "auto" and any(k in os.environ for k in (
      "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE")):
    jax.distributed.initialize()


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="path.py[:arg], e.g. configs/hour_llava.py:7b,stage=3")
  p.add_argument("--workdir", required=True)
  p.add_argument("--distributed", choices=("auto", "none"), default="auto")
  p.add_argument("--coordinator", default="", help="HOST:PORT of process 0 (explicit multi-process)")
  p.add_argument("--num-processes", type=int, default=1)
  p.add_argument("--process-id", type=int, default=0)
  p.add_argument("--cpu-collectives", default="", help="gloo for multi-process CPU runs")
  p.add_argument("overrides", nargs="*", help="config overrides: --config.key=value (or key=value)")
  from hourjax.config import split_overrides
  own, flags_ = split_overrides(sys.argv[1:] if argv is None else argv)
  a = p.parse_args(own)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)      # Orbax's per-save chatter
  import jax
  if a.cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", a.cpu_collectives)
  initialize_distributed(a)
  from hourjax.config import load
  from hourjax.train.stage import run_stage
  summary = run_stage(load(a.config, flags_ + a.overrides), a.workdir)
  if jax.process_index() == 0:
    print(json.dumps(summary, indent=1))
  return 0


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
