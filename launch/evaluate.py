"""Score a checkpoint on a multiple-choice long-video benchmark.

  python -m launch.evaluate --params /ckpt/hj-hl7b-s3 --tokenizer /ckpt/Qwen2-7B-Instruct \\
      --benchmark videomme --root /data/Video-MME --out /results/hl7b

Benchmarks: videomme, videomme_sub (with subtitles), longvideobench, lvbench, tempcompass,
mlvu (see hourjax/infer/benchmarks.py for the annotation layout each expects under --root).
Frames: the official 1-FPS rule (default) or `--frames N` uniformly sampled. Prompts, greedy
decoding and answer extraction follow lmms-eval. Every answer is appended to
<out>/<benchmark>.<process>.jsonl as it is scored, so a rerun skips what is done; with several
processes each scores its share, and process 0 writes <out>/<benchmark>.json (overall accuracy,
per duration / category / task, MLVU's task mean) once all shares are complete.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import sys

import numpy as np


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--params", required=True)
  p.add_argument("--tokenizer", default="")
  p.add_argument("--benchmark", required=True)
  p.add_argument("--root", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--frames", type=int, default=0, help="0: official 1-FPS rule; N: N uniform frames")
  p.add_argument("--min-frames", type=int, default=128)
  p.add_argument("--chunk", type=int, default=128)
  p.add_argument("--resample", default="pil", choices=("pil", "swscale"), help="frame resize (as training: pil)")
  p.add_argument("--no-time-instruction", action="store_true")
  p.add_argument("--limit", type=int, default=0, help="score at most this many items (0: all)")
  p.add_argument("--process-index", type=int, default=-1, help="default: jax.process_index()")
  p.add_argument("--process-count", type=int, default=-1)
  a = p.parse_args(argv)
  import jax
  from hourjax.data import video
  from hourjax.data.batching import Buckets, collate
  from hourjax.infer import benchmarks as bm
  from hourjax.infer.encode import video_features
  from hourjax.infer.generate import Sampling, generate, prompt_ids
  from hourjax.infer.checkpoint import open_model

  if a.benchmark not in bm.READERS:
    raise SystemExit(f"--benchmark {a.benchmark!r}: expected one of {sorted(bm.READERS)}")
  pi = jax.process_index() if a.process_index < 0 else a.process_index
  pc = jax.process_count() if a.process_count < 0 else a.process_count
  items = bm.READERS[a.benchmark](a.root)
  items = items[:a.limit] if a.limit else items
  mine = items[pi::pc]
  os.makedirs(a.out, exist_ok=True)
  shard = os.path.join(a.out, f"{a.benchmark}.{pi}.jsonl")
  done = {json.loads(line)["id"] for line in open(shard)} if os.path.exists(shard) else set()
  todo = [it for it in mine if it.id not in done]

  loaded = open_model(a.params, tokenizer=a.tokenizer)     # random forgetting with a fixed key
  model, params, cfg, tokenizer = loaded.model, loaded.params, loaded.cfg, loaded.tokenizer
  sampling = Sampling(max_new_tokens=32 if a.benchmark == "longvideobench" else 16)
  rng = random.Random(0) if a.benchmark == "longvideobench" else None
  current = (None, None)
  print(f"{a.benchmark}: {len(items)} items, {len(mine)} for process {pi}/{pc}, {len(done)} already scored",
        flush=True)
  with open(shard, "a") as out:
    for n, item in enumerate(todo, 1):
      record = {"id": item.id, "groups": [list(g) for g in item.groups], "answer": item.answer}
      try:
        if current[0] != item.video:       # questions of one video share its encoding
          info = video.probe(item.video)
          idx = (video.fixed_frame_indices(info.frames, a.frames) if a.frames else
                 video.official_frame_indices(info.frames, info.fps, min_frames=a.min_frames))
          current = (item.video, (info, idx, video_features(model, params, item.video, idx,
                                                            cfg.vision.image_size, a.chunk, a.resample)))
        info, idx, feats = current[1]
        subs = bm.subtitle_text(item.subtitles, (idx / info.fps).tolist())
        question = bm.prompt(a.benchmark, item, subs)
        ids = prompt_ids(tokenizer, question, None if a.no_time_instruction else info.duration, len(idx))
      except (ValueError, OSError) as e:         # a missing or unreadable video: not scored
        out.write(json.dumps({**record, "skipped": f"{type(e).__name__}: {e}"}) + "\n")
        out.flush()
        continue
      sample = {"input_ids": ids, "labels": np.full(len(ids), -100, np.int32), "features": feats}
      batch = collate([sample], cfg, Buckets(frames=(len(feats),), text=(-(-len(ids) // 256) * 256,)))
      tokens, k = generate(model, params, batch, jax.random.key(0), sampling, tokenizer.stop_ids)
      response = tokenizer.decode(tokens[0, :k[0]].tolist())
      pred = bm.extract_letter(response, len(item.options), rng)
      out.write(json.dumps({**record, "response": response, "pred": pred, "correct": pred == item.answer}) + "\n")
      out.flush()
      if n % 50 == 0:
        print(f"  {n}/{len(todo)}", flush=True)
  if pi == 0:
    shards = sorted(glob.glob(os.path.join(a.out, f"{a.benchmark}.*.jsonl")))
    rows = [json.loads(line) for path in shards for line in open(path)]
    if len({r["id"] for r in rows}) < len(items):
      print(f"{len({r['id'] for r in rows})} of {len(items)} items done; rerun when all shares finish", flush=True)
      return 0
    scored = [r for r in rows if "correct" in r]
    result = {"benchmark": a.benchmark, "params": a.params, "skipped": [r["id"] for r in rows if "skipped" in r],
              **bm.score(scored)}
    with open(os.path.join(a.out, f"{a.benchmark}.json"), "w") as f:
      json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("overall",)}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
