"""Measure a training step or a prefill: time, throughput, compiled FLOPs and memory, MFU, and an
XLA profiler trace.

  python -m launch.profile --config configs/hour_llava.py:tiny,stage=3 --mode train --frames 64 --text 256 \\
      --batch 2 --steps 10 --trace /tmp/trace       # tensorboard --logdir /tmp/trace (Profile tab)
  python -m launch.profile --config configs/hour_llava.py:7b,stage=3 --mode prefill --peak-flops 459e12 ...
  python -m launch.profile --mode train --steps 3 --ops 15    # where the step's time goes

Runs --warmup + --steps steps on a random batch of the given bucket and prints the median step
time, tokens per second (text + visual LLM tokens), the compiled program's FLOPs
(`cost_analysis`) and the FLOP/s achieved, MFU against --peak-flops per device (default: this
host's measured float32 matmul rate), and the compiled memory (`memory_analysis`). Overrides
(key=value) change the config, e.g. model.llm.attention=splash.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of an n x n float32 matmul on the default device (a CPU's practical peak)."""
  import jax
  import jax.numpy as jnp
  x = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(x).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n ** 3 / min(times)


def profile(run, mode: str, batch: int, frames: int, text: int, steps: int, warmup: int,
            peak_flops: float, trace: str = "", ops: int = 0) -> dict:
  import jax
  from hourjax.synthetic.batches import synthetic_batch
  from hourjax.train import program as program_lib
  task = program_lib.task_of(run)
  cfg = task.model
  data = synthetic_batch(cfg, jax.random.key(1), [frames] * batch, text)
  rng = jax.random.key(2)
  if mode == "train":         # the run's own program (its optimizer and freezing), on one device
    from hourjax.parallel import mesh as mesh_lib
    one = mesh_lib.one_device_mesh()
    program = program_lib.build(run, mesh=one, steps=1000, task=task)
    fn = program.step
    args = (program.init_state(program.fresh_params(0)), data, rng)
  elif mode == "prefill":
    from hourjax.models import build
    model = build.build("hour_llava", cfg, dtype=program_lib.DTYPES[run.train.dtype])
    params = build.init_params("hour_llava", cfg, jax.random.key(0))
    fn = jax.jit(lambda p, b, r: model.apply({"params": p}, b.input_ids, b.attention_mask,
                                             **b.model_inputs(), rng=r)["logits"])
    args = (params, data, rng)
  else:
    raise ValueError(f"--mode {mode!r}: expected train or prefill")
  t = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0))
  mem = compiled.memory_analysis()
  state = [args]

  def step():                 # one step, blocking; a training step's state feeds the next
    out = compiled(*state[0])
    jax.block_until_ready(out)
    if mode == "train":
      state[0] = (out[0], data, rng)

  times = []
  for i in range(warmup + steps):
    t = time.perf_counter()
    step()
    if i >= warmup:
      times.append(time.perf_counter() - t)
  if trace or ops:
    import tempfile
    from hourjax.train import op_profile
    trace = trace or tempfile.mkdtemp(prefix="hourjax_trace_")
    traced = min(3, steps)
    wall = op_profile.traced(step, traced, trace)
    ops_table = (op_profile.format_table(op_profile.breakdown(trace, compiled.as_text(), traced, wall), top=ops,
                                         peak_flops=peak_flops) if ops else "")
  median = statistics.median(times)
  k = cfg.forgetting.spatial_count(cfg.pool_size ** 2)
  from hourjax.models.forgetting import num_retained
  retained = num_retained(max(frames, cfg.forgetting.min_memory_frames), cfg.forgetting)
  llm_tokens = batch * (text - 1 + retained * (k + 1))
  devices = jax.device_count()
  return {"mode": mode, "batch": batch, "frames": frames, "text": text, "compile_s": compile_s,
          "median_step_s": median, "tokens_per_s": llm_tokens / median, "flops": flops,
          "flops_per_s": flops / median, "mfu": flops / median / (peak_flops * devices),
          "peak_flops_per_device": peak_flops,
          "memory": {k: getattr(mem, k, None) for k in ("temp_size_in_bytes", "argument_size_in_bytes",
                                                         "output_size_in_bytes", "generated_code_size_in_bytes")},
          "trace": trace, **({"ops_table": ops_table} if ops else {})}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/hour_llava.py:tiny,stage=3", help="a stage's config (its optimizer)")
  p.add_argument("--mode", default="train", choices=("train", "prefill"))
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--frames", type=int, default=64)
  p.add_argument("--text", type=int, default=256)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--peak-flops", type=float, default=0.0, help="per device; 0: measure a float32 matmul here")
  p.add_argument("--trace", default="", help="directory for a jax.profiler trace (TensorBoard / XProf)")
  p.add_argument("--ops", type=int, default=0, metavar="N",
                 help="trace 3 steps and print where the time goes: by kind and the N slowest instructions")
  p.add_argument("overrides", nargs="*", help="config overrides: --config.key=value (or key=value)")
  from hourjax.config import split_overrides
  own, flags_ = split_overrides(sys.argv[1:] if argv is None else argv)
  a = p.parse_args(own)
  from hourjax.config import load
  run = load(a.config, flags_ + a.overrides)
  if a.mode == "train":          # the step runs on one device with --batch samples
    from hourjax.train.validate import validate
    checked = run.copy_and_resolve_references()
    checked.mesh, checked.data.batch_size = {"data": 1, "fsdp": 1, "tensor": 1, "sequence": 1}, a.batch
    validate(checked, devices=1, processes=1)
  peak = a.peak_flops or matmul_peak()
  r = profile(run, a.mode, a.batch, a.frames, a.text, a.steps, a.warmup, peak, a.trace, a.ops)
  print(f"{r['mode']}: median {r['median_step_s'] * 1e3:.1f} ms/step, {r['tokens_per_s']:,.0f} LLM tokens/s, "
        f"{r['flops'] / 1e9:.2f} GFLOP/step (compiled), {r['flops_per_s'] / 1e9:.1f} GFLOP/s, MFU {r['mfu']:.1%} "
        f"of {peak / 1e9:.0f} GFLOP/s/device; temp memory {r['memory']['temp_size_in_bytes'] or 0:,} B; "
        f"compile {r['compile_s']:.1f} s" + (f"; trace in {r['trace']}" if r['trace'] else ""))
  if a.ops:
    print(r.pop("ops_table"))
  print(json.dumps(r))
  return 0


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
