"""The main job, for now: a forward pass of a tiny Hour-LLaVA on a generated video clip.

  bash launch/main.sh                                   # set up, then this with defaults
  python -m launch.demo --config configs/hour_llava.py:tiny --seconds 40

Writes an mp4 with PyAV, decodes it at 1 FPS, and runs video -> SigLIP -> 8x8 -> projector ->
memory -> decayed queries -> MemAug -> Qwen2 under jit with random weights, then prints what
each stage produced. (The training issue replaces this with a real training run.)
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from hourjax.config import load, model_config
from hourjax.data.video import moving_square, read_frames_1fps, write_video
from hourjax.models import build
from hourjax.models.forgetting import video_layout
from hourjax.models.hour_llava import IMAGE_TOKEN_INDEX


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "hour_llava.py:tiny"))
  p.add_argument("--seconds", type=int, default=40, help="length of the generated clip")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  cfg = model_config(load(a.config).model)
  if cfg.llm.hidden_size > 512:
    raise SystemExit(f"{a.config} is a real-size model; the CPU demo runs tiny configs only")

  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "clip.mp4")
    t0 = time.perf_counter()
    write_video(path, moving_square(a.seconds, fps=8, seed=a.seed), fps=8)
    frames, duration = read_frames_1fps(path, cfg.vision.image_size)
    t_video = time.perf_counter() - t0

  key_params, key_forget, key_text = jax.random.split(jax.random.key(a.seed), 3)
  params = build.init_params("hour_llava", cfg, key_params)
  model = build.build("hour_llava", cfg)
  prompt = np.array(jax.random.randint(key_text, (24,), 1, cfg.llm.vocab_size))
  prompt[8] = IMAGE_TOKEN_INDEX            # the <image> placeholder, after the system turn
  layout = video_layout([len(frames)], cfg.forgetting)

  @jax.jit
  def forward(params, ids, pixels, key):
    out, inter = model.apply({"params": params}, ids, jnp.ones_like(ids), layout=layout,
                             pixel_values=pixels, rng=key, mutable="intermediates")
    inter = inter["intermediates"]
    return out, {k: inter[k][0].shape for k in ("memory", "decayed_queries", "memaug_query")}

  t0 = time.perf_counter()
  out, shapes = forward(params, prompt[None], frames[None], key_forget)
  jax.block_until_ready(out)
  t_first = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(forward(params, prompt[None], frames[None], key_forget))
  t_again = time.perf_counter() - t0

  counts = {k: build.count_params(v) for k, v in params.items()}
  f = cfg.forgetting
  n_memory, n_visual = shapes["memory"][1], shapes["decayed_queries"][1]
  next_token = int(jnp.argmax(out["logits"][0, -1]))
  print("Hour-LLaVA forward on a generated video (random weights, CPU)")
  print(f"  video        {duration:.1f} s clip -> {len(frames)} frames at 1 FPS, "
        f"{cfg.vision.image_size}x{cfg.vision.image_size} ({t_video:.2f} s to write and decode)")
  print(f"  memory       {layout.memory_frames.shape[1]} frames (repeated up to {f.min_memory_frames}) "
        f"x {cfg.pool_size ** 2 + 1} tokens = {n_memory} memory tokens")
  print(f"  forgetting   {f.spatial} spatial 1/{f.spatial_keep}, {f.temporal} temporal 1/{f.temporal_keep}: "
        f"{int(layout.num_retained[0])} frames -> {n_visual} decayed queries ({n_visual / n_memory:.1%} of memory)")
  print(f"  MemAug       {cfg.memaug.depth} blocks, query of {shapes['memaug_query'][1]} tokens "
        f"(prompt text + decayed queries)")
  print(f"  LLM          {out['logits'].shape[1]} tokens in, logits {tuple(out['logits'].shape)}, "
        f"next token id {next_token}")
  print("  parameters   " + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + f" (total {sum(counts.values()):,})")
  print(f"  time         first call {t_first:.2f} s (compile + run), then {t_again * 1e3:.0f} ms per forward")


if __name__ == "__main__":
  main()
