"""Ask a question about a local video file.

  python -m launch.ask --params /ckpt/hj-hl7b-s3 --tokenizer /ckpt/Qwen2-7B-Instruct \\
      --video lecture.mp4 --question "What is written on the board at the end?"

The video is read at 1 FPS by the official rule and encoded `--chunk` frames at a time (an hour
never sits on the device as pixels), resized as in training (PIL bicubic; `--resample swscale`
for FFmpeg's faster scaler), the prompt gets the official time instruction with the `<image>`
placeholder where training puts it, and the answer is printed token by token as it is generated,
until `<|im_end|>` or `<|endoftext|>`. Greedy by default (`--temperature`, `--top-p` to sample);
`--deterministic` replaces the official random spatial forgetting with the uniform grid, so the
answer does not depend on `--seed`; `--show-prompt` prints the prompt with the visual tokens'
place marked.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any



def parser() -> argparse.ArgumentParser:
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
  p.add_argument("--fixed-frames", type=int, default=192, help="ProLongVid models: frames by linspace over the video")
  p.add_argument("--resample", default="pil", choices=("pil", "swscale"))
  p.add_argument("--no-time-instruction", action="store_true")
  p.add_argument("--deterministic", action="store_true")
  p.add_argument("--show-prompt", action="store_true")
  return p


def prepare(a: argparse.Namespace) -> tuple[Any, Any, Any]:
  """(the loaded checkpoint, the one-prompt batch, the video's VideoInfo) for the arguments: the
  question asked as the server reads a chat message with a video part (`infer.messages`)."""
  from hourjax.data import video
  from hourjax.data.batching import Buckets, collate
  from hourjax.infer.checkpoint import open_model
  from hourjax.infer.messages import VisualOptions, read_prompt

  loaded = open_model(a.params, tokenizer=a.tokenizer, deterministic=a.deterministic)
  info = video.probe(a.video)
  options = VisualOptions(a.chunk, a.min_frames, a.resample, not a.no_time_instruction, a.fixed_frames)
  prompt = read_prompt(loaded, [{"role": "user", "content": [
      {"type": "video_url", "video_url": {"url": os.path.abspath(a.video)}}, {"type": "text", "text": a.question}]}],
      options)
  ids = prompt.sample["input_ids"]
  buckets = Buckets(frames=(prompt.frames,), text=(-(-len(ids) // 64) * 64,))
  return loaded, collate([prompt.sample], loaded.cfg, buckets), info


def main(argv=None) -> int:
  a = parser().parse_args(argv)
  import jax
  from hourjax.data.chat import render_prompt
  from hourjax.infer.generate import Sampling, generate

  loaded, batch, info = prepare(a)
  tok = loaded.tokenizer
  if a.show_prompt:
    print(render_prompt(tok, batch.input_ids[0][batch.attention_mask[0] > 0],
                        visual_tokens(loaded.cfg, batch)), flush=True)

  def show(token, finished):
    if not finished[0] and int(token[0]) not in tok.stop_ids:
      print(tok.decode([int(token[0])]), end="", flush=True)

  n = batch.frames
  print(f"{os.path.basename(a.video)}: {info.duration:.0f} s, {n} frames\nQ: {a.question}\nA: ", end="", flush=True)
  generate(loaded.model, loaded.params, batch, jax.random.key(a.seed),
           Sampling(a.temperature, a.top_p, a.max_new_tokens), tok.stop_ids, on_token=show)
  print()
  return 0


def visual_tokens(cfg: Any, batch: dict) -> int:
  """How many visual tokens the LLM reads for the batch's first video (retained frames x
  (spatially kept tokens + newline))."""
  if hasattr(cfg, "tokens_per_frame"):      # ProLongVid: every frame
    return cfg.video_tokens(batch.frames)
  per_frame = cfg.forgetting.spatial_count(cfg.pool_size ** 2) + 1
  return int(batch.layout.num_retained[0]) * per_frame


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
