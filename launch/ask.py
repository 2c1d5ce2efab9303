"""Ask a question about a local video file.

  python -m launch.ask --params /ckpt/hj-hl7b-s3 --tokenizer /ckpt/Qwen2-7B-Instruct \\
      --video lecture.mp4 --question "What is written on the board at the end?"

The video is read at 1 FPS by the official rule and encoded `--chunk` frames at a time (an hour
never sits on the device as pixels), the prompt gets the official time instruction, and the
answer is printed token by token as it is generated. Greedy by default (`--temperature`,
`--top-p` to sample); `--deterministic` replaces the official random spatial forgetting with the
uniform grid, so the answer does not depend on `--seed`.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--params", required=True, help="an hourjax Hour-LLaVA checkpoint (convert.py or training)")
  p.add_argument("--tokenizer", default="", help="tokenizer directory (default: --params)")
  p.add_argument("--video", required=True)
  p.add_argument("--question", required=True)
  p.add_argument("--max-new-tokens", type=int, default=128)
  p.add_argument("--temperature", type=float, default=0.0)
  p.add_argument("--top-p", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--chunk", type=int, default=128, help="frames encoded per SigLIP call")
  p.add_argument("--min-frames", type=int, default=128, help="the official rule's minimum frame count")
  p.add_argument("--deterministic", action="store_true")
  a = p.parse_args(argv)
  import jax
  from hourjax.convert.io import load_params, read_meta
  from hourjax.data import chat, video
  from hourjax.data.batching import Buckets, collate
  from hourjax.infer.encode import video_features
  from hourjax.infer.generate import Sampling, generate, prompt_ids
  from hourjax.models import build

  meta = read_meta(a.params)
  if meta["kind"] != "hour_llava":
    raise SystemExit(f"{a.params} holds a {meta['kind']!r} model; expected hour_llava")
  cfg = build.config_from_dict("hour_llava", meta["config"])
  if a.deterministic:
    cfg = dataclasses.replace(cfg, forgetting=dataclasses.replace(cfg.forgetting, spatial="uniform"))
  tokenizer = chat.load_tokenizer(a.tokenizer or a.params)
  model, params = build.build("hour_llava", cfg), load_params(a.params)
  info = video.probe(a.video)
  indices = video.official_frame_indices(info.frames, info.fps, min_frames=a.min_frames)
  features = video_features(model, params, a.video, indices, cfg.vision.image_size, a.chunk)
  ids = prompt_ids(tokenizer, a.question, info.duration, len(indices))
  sample = {"input_ids": ids, "labels": np.full(len(ids), -100, np.int32), "features": features}
  buckets = Buckets(frames=(len(features),), text=(-(-len(ids) // 64) * 64,))
  end = tokenizer.convert_tokens_to_ids("<|im_end|>")

  def show(token, finished):
    if not finished[0] and int(token[0]) != end:
      print(tokenizer.decode([int(token[0])]), end="", flush=True)

  print(f"{os.path.basename(a.video)}: {info.duration:.0f} s, {len(indices)} frames\nQ: {a.question}\nA: ", end="",
        flush=True)
  generate(model, params, collate([sample], cfg, buckets), jax.random.key(a.seed),
                       Sampling(a.temperature, a.top_p, a.max_new_tokens), end, on_token=show)
  print()
  return 0


if __name__ == "__main__":
  sys.exit(main())
