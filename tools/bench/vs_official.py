"""hourjax's Hour-LLaVA stage-3 training step against the official PyTorch code (jylins/hourllava),
on the same weights and the same batch: cached SigLIP features of videos of mixed lengths, the
whole step (forgetting, MemAug, the LLM, the loss, backward, clipping, AdamW at the stage's
per-module rates), float32, on this host.

  python3.11 -m venv .venv-official && .venv-official/bin/pip install torch==2.13.0 \\
      transformers==4.46.3 einops safetensors pillow           # the official code's environment
  git clone https://github.com/jylins/hourllava ../hourllava   # commit 68eafcb
  .venv/bin/python -m tools.bench.vs_official --official ../hourllava [--frames 64,128,160] \\
      [--text 128] [--steps 3]

The model is `configs/hour_llava.py:mid` (Qwen2-0.5B's widths and vocabulary on 4 layers, so400m's
width, 2 MemAug blocks) with random weights (seed 0), exported with `hourjax.convert.export_torch`
in the layout the official code saves and loads; each side reads that checkpoint (hourjax through
`import_torch`). Spatial forgetting is the official deterministic rule (`uniform`: every second
row and column) so that both sides keep the same tokens, and the learning rates are constant, so
every step's loss must agree: the table shows the relative difference of each.

The official side runs `tools.bench.official_step` in the official code's environment
(transformers 4.46, which the official code needs; torch the same version as hourjax's) with an
exact CPU stand-in for flash-attn. Each side runs in a fresh process with the host's default
settings (both use every core), takes `--warmup` untimed steps (after compiling, for hourjax)
and `--steps` timed ones; the peak resident memory of those steps above the loaded model and
batch is reported. The official loader reads unpooled cached features [T, 27, 27, 1152] and
pools them in every step; hourjax caches them pooled to 8x8 (`launch.cache_features`), so its
step starts from [T, 64, 1152]: the same numbers, pooled once. `--set` changes hourjax's run
(e.g. `--set model.memaug.attention=xla`, dense instead of the preset's blockwise).
Results: docs/performance.md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile

import numpy as np

from tools.bench.common import step_peak_bytes

CONFIG = "configs/hour_llava.py:mid,stage=3"
OVERRIDES = ["train.dtype=float32", "model.forgetting.spatial=uniform", "train.optimizer.schedule=constant",
             "train.optimizer.warmup_ratio=0.0"]
PROMPT = 64             # prompt tokens (the placeholder after 14 of them); the rest of --text is the answer
PLACEHOLDER = 14
GRID = 27               # so400m's patches per side at 384 px


def _run(overrides: list[str]):
  from hourjax.config import load
  return load(CONFIG, OVERRIDES + overrides)


def prepare(work: str, frames: list[int], text: int, seed: int, overrides: list[str]) -> None:
  """Random weights exported in the official layout, and the batch in the official formats."""
  import jax
  from hourjax.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
  from hourjax.convert.api import export_torch
  from hourjax.models import build
  from hourjax.train import program as program_lib
  cfg = program_lib.task_of(_run(overrides)).cfg
  params = jax.tree.map(np.asarray, build.init_params("hour_llava", cfg, jax.random.key(seed)))
  export_torch(os.path.join(work, "model"), "hour_llava", cfg, params)
  del params
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, 151643, (len(frames), text))          # ordinary tokens, no specials
  ids[:, PLACEHOLDER] = IMAGE_TOKEN_INDEX
  labels = np.where(np.arange(text)[None] >= PROMPT, ids, IGNORE_INDEX)
  np.savez(os.path.join(work, "batch.npz"), input_ids=ids, labels=labels, frames=np.asarray(frames))
  for i, t in enumerate(frames):
    feats = rng.standard_normal((t, GRID, GRID, cfg.vision.hidden_size), dtype=np.float32)
    np.save(os.path.join(work, f"features_{i}.npy"), feats)


def hourjax_side(work: str, steps: int, overrides: list[str]) -> dict:
  """hourjax's step on the same checkpoint and batch (in this fresh process)."""
  import time
  import jax
  import jax.numpy as jnp
  from hourjax.convert.api import import_torch
  from hourjax.data.batch import VideoBatch
  from hourjax.models.forgetting import video_layout
  from hourjax.models.hour_llava import bilinear_pool
  from hourjax.parallel import mesh as mesh_lib
  from hourjax.train import program as program_lib
  run = _run(overrides)
  task = program_lib.task_of(run)
  cfg = task.cfg
  conv = import_torch(os.path.join(work, "model"))      # the weights; sizes and execution from `run`
  data = np.load(os.path.join(work, "batch.npz"))
  frames = [int(t) for t in data["frames"]]
  pool = jax.jit(lambda x: bilinear_pool(x, GRID, cfg.pool_size))       # what launch.cache_features stores
  pooled = np.zeros((len(frames), max(frames), cfg.feature_tokens, cfg.vision.hidden_size), np.float32)
  for i, t in enumerate(frames):
    pooled[i, :t] = pool(np.load(os.path.join(work, f"features_{i}.npy")).reshape(t, GRID * GRID, -1))
  ids = jnp.asarray(data["input_ids"], jnp.int32)
  batch = VideoBatch(ids, jnp.ones_like(ids), jnp.asarray(data["labels"], jnp.int32),
                     video_layout(frames, cfg.forgetting), features=jnp.asarray(pooled))
  del pooled
  one = mesh_lib.one_device_mesh()
  program = program_lib.build(run, mesh=one, steps=1000, task=task)
  state = program.init_state(jax.tree.map(jnp.asarray, conv.params))
  del conv
  rng = jax.random.key(0)
  t = time.perf_counter()
  step = program.step.lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - t
  losses, times = [], []

  def once():
    nonlocal state
    state, metrics = step(state, batch, rng)
    losses.append(float(metrics["loss"]))

  def run_steps():
    for _ in range(steps):
      t = time.perf_counter()
      once()
      times.append(time.perf_counter() - t)

  peak = step_peak_bytes(run_steps)         # above the loaded state and batch (compiled)
  return {"losses": losses, "step_s": times, "peak_bytes": peak, "compile_s": compile_s, "jax": jax.__version__,
          "flops": program.task.flops(batch, program.opt_cfg)["total"]}


def _child(cmd: list[str], env: dict[str, str]) -> dict:
  """Runs one side in a fresh process (with `env` added) and returns its report, plus the
  process's system CPU seconds and minor page faults (loading and compiling included)."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
  if out.returncode:
    raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{out.stderr[-4000:]}")
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  return dict(json.loads(out.stdout.strip().splitlines()[-1]), system_s=after.ru_stime - before.ru_stime,
              minor_faults=after.ru_minflt - before.ru_minflt)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--official", help="a checkout of github.com/jylins/hourllava")
  p.add_argument("--python", default=".venv-official/bin/python", help="the official environment's python")
  p.add_argument("--frames", default="64,128,160", help="input frames of each sample (the batch)")
  p.add_argument("--text", type=int, default=128, help="text tokens per sample (64 prompt, the rest answer)")
  p.add_argument("--steps", type=int, default=3, help="timed steps per side (after --warmup steps)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps first (the heap grows to its peak)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--work", default="", help="keep the checkpoint and batch here (default: a temporary directory)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="a config override of hourjax's run, e.g. model.memaug.attention=xla")
  p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                 help="an environment variable for both sides' processes, e.g. "
                 "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (malloc asks for transparent huge pages)")
  p.add_argument("--side", choices=("hourjax",), help=argparse.SUPPRESS)      # the hourjax child
  a = p.parse_args(argv)
  if a.side:
    print(json.dumps(hourjax_side(a.work, a.steps, a.set)))
    return 0
  if not a.official or not os.path.isdir(os.path.join(a.official, "hourllava", "model")):
    raise SystemExit(f"--official {a.official!r}: not a checkout of github.com/jylins/hourllava")
  if not os.path.exists(a.python):
    raise SystemExit(f"--python {a.python!r} does not exist: create the official environment (see --help)")
  bad = [e for e in a.env if "=" not in e or not e.split("=", 1)[0]]
  if bad:
    raise SystemExit(f"--env {bad[0]!r}: expected KEY=VALUE")
  env = dict(e.split("=", 1) for e in a.env)
  frames = [int(t) for t in a.frames.split(",")]
  if a.text <= PROMPT:
    raise SystemExit(f"--text {a.text}: must exceed the {PROMPT} prompt tokens")
  work = a.work or tempfile.mkdtemp(prefix="vs_official_")
  os.makedirs(work, exist_ok=True)
  prepare(work, frames, a.text, a.seed, a.set)
  lr = _run(a.set).train.optimizer.lr
  official = _child([a.python, "-m", "tools.bench.official_step", "--official", a.official, "--work", work,
                     "--steps", str(a.steps + a.warmup),
                     "--lr", f"projector={lr.projector},memaug={lr.memaug},llm={lr.llm}"], env)
  ours = _child([sys.executable, "-m", "tools.bench.vs_official", "--side", "hourjax", "--work", work,
                 "--steps", str(a.steps + a.warmup)] + [f"--set={o}" for o in a.set], env)
  t_off, t_hj = (statistics.median(side["step_s"][a.warmup:]) for side in (official, ours))
  diffs = [abs(x - y) / abs(y) for x, y in zip(ours["losses"], official["losses"])]
  print("| batch | official (s/step) | hourjax (s/step) | speed-up | peak memory official | hourjax "
        "| loss rel. diff (each step) |")
  print("|---|---|---|---|---|---|---|")
  print(f"| {len(frames)} videos of {a.frames} frames, {a.text} text tokens | {t_off:.2f} | {t_hj:.2f} | "
        f"{t_off / t_hj:.2f}x | {official['peak_bytes'] / 2**30:.2f} GiB | {ours['peak_bytes'] / 2**30:.2f} GiB | "
        f"{', '.join(f'{d:.1e}' for d in diffs)} |")
  print(f"\nlosses official {official['losses']}\nlosses hourjax  {ours['losses']}\n"
        f"hourjax: compile {ours['compile_s']:.0f} s, {ours['flops'] / 1e12:.2f} TFLOP/step (analytic, padded batch), "
        f"{ours['flops'] / t_hj / 1e9:.0f} GFLOP/s; torch {official['torch']} ({official['threads']} threads), "
        f"jax {ours['jax']}; step times official {official['step_s']}, hourjax {ours['step_s']}"
        + "".join(f"\n{name}: {side['system_s']:.0f} s system CPU time, {side['minor_faults'] / 1e6:.2f} M minor page "
                  "faults (the whole process)" for name, side in (("official", official), ("hourjax", ours)))
        + (f"\nenvironment of both sides: {' '.join(a.env)}" if a.env else ""))
  if max(diffs) > 1e-3:
    print(f"the two sides' losses differ (max relative difference {max(diffs):.1e}): not the same computation",
          file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
