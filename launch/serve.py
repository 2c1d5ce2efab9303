"""Serve an hourjax checkpoint behind an OpenAI-compatible API (chat completions with text,
images and videos; streaming; JSON-schema structured output by constrained decoding).

  python -m launch.serve --params /ckpt/hj-hl7b-s3 --tokenizer /ckpt/Qwen2-7B-Instruct --port 8000

  curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{
    "model": "hj-hl7b-s3", "max_tokens": 64, "messages": [{"role": "user", "content": [
      {"type": "video_url", "video_url": {"url": "file:///data/lecture.mp4"}},
      {"type": "text", "text": "What is written on the board at the end?"}]}]}'

or any OpenAI client (`OpenAI(base_url="http://localhost:8000/v1", api_key="none")`). Requests
arriving within --batch-wait-ms of each other are batched (up to --max-batch per bucket); each
bucket of frames (--frame-buckets) and prompt tokens (--text-buckets) compiles once. The model
name is the checkpoint directory's name unless --model-name says otherwise. --deterministic
replaces the official random spatial forgetting by the uniform grid, so that an answer depends
only on the request (with a `seed`, also when sampling).
"""
from __future__ import annotations

import argparse
import os
import sys


def _edges(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.split(","))


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--params", required=True,
                 help="an hourjax Hour-LLaVA or ProLongVid checkpoint (convert.py or training)")
  p.add_argument("--tokenizer", default="", help="tokenizer directory (default: --params)")
  p.add_argument("--model-name", default="", help="the model id clients ask for (default: --params' name)")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--max-batch", type=int, default=8, help="requests per batch")
  p.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a request waits for company")
  p.add_argument("--max-tokens", type=int, default=2048, help="the largest max_tokens a request may ask")
  p.add_argument("--frame-buckets", type=_edges, default=(128, 256, 512, 1024, 2048, 3600))
  p.add_argument("--text-buckets", type=_edges, default=(256, 1024, 4096))
  p.add_argument("--chunk", type=int, default=128, help="frames encoded per SigLIP call")
  p.add_argument("--min-frames", type=int, default=128, help="the official rule's minimum frame count")
  p.add_argument("--fixed-frames", type=int, default=192, help="ProLongVid models: frames by linspace over the video")
  p.add_argument("--resample", default="pil", choices=("pil", "swscale"))
  p.add_argument("--no-time-instruction", action="store_true")
  p.add_argument("--deterministic", action="store_true")
  return p


def build(a: argparse.Namespace):
  """(the FastAPI app, its engine) for the arguments."""
  from hourjax.data.batching import Buckets
  from hourjax.infer.checkpoint import open_model
  from hourjax.infer.engine import Engine
  from hourjax.infer.messages import VisualOptions
  from hourjax.infer.server import create_app
  if a.max_batch < 1 or a.max_tokens < 1 or a.chunk < 1:
    raise SystemExit("--max-batch, --max-tokens and --chunk must be positive")
  loaded = open_model(a.params, tokenizer=a.tokenizer, deterministic=a.deterministic)
  engine = Engine(loaded, Buckets(frames=a.frame_buckets, text=a.text_buckets), max_batch=a.max_batch,
                  batch_wait=a.batch_wait_ms / 1000, max_new_tokens=a.max_tokens)
  name = a.model_name or os.path.basename(os.path.normpath(a.params))
  visual = VisualOptions(a.chunk, a.min_frames, a.resample, not a.no_time_instruction, a.fixed_frames)
  return create_app(engine, name, visual), engine


def main(argv=None) -> int:
  a = parser().parse_args(argv)
  import uvicorn
  app, engine = build(a)
  print(f"serving {a.params} on http://{a.host}:{a.port}/v1", flush=True)
  uvicorn.run(app, host=a.host, port=a.port, log_level="info")
  engine.close()
  return 0


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
