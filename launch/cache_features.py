"""Cache pooled SigLIP features of videos, as the official pipeline does for VideoMarathon
(spec §4.7), so that stage 3 trains without running the vision tower.

  python -m launch.cache_features --params /ckpt/hj-hl7b-s2 --videos /data/VideoMarathon/videos \\
      --out /data/VideoMarathon/features

For every video under --videos (.mp4, .mkv, .webm, .mov): max(int(duration), 128) frames spread
over the video (all frames if it has fewer than 128, the last frame always included; the
duration is frames / average FPS, as the official script computes it), resized as in training
(PIL bicubic; `--resample swscale` for FFmpeg's scaler), SigLIP (the checkpoint's vision tower,
float32) in chunks of --chunk frames, bilinear 27x27 -> 8x8, written to
<out>/<same relative path>.safetensors as "vid_feat" [T, 64, C] float32 with the duration
(seconds, 2 decimals) in the metadata. Existing outputs are skipped; unusable videos are
skipped, counted and listed at the end.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from hourjax.convert.io import write_safetensors
from hourjax.data.video import VideoError, cache_frame_indices, probe
from hourjax.infer.checkpoint import open_model
from hourjax.infer.encode import video_features

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--params", required=True, help="hourjax Hour-LLaVA checkpoint (convert.py to-jax)")
  p.add_argument("--videos", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--chunk", type=int, default=128, help="frames per SigLIP call")
  p.add_argument("--resample", default="pil", choices=("pil", "swscale"))
  a = p.parse_args(argv)
  from hourjax.cli import writable_dir
  writable_dir(a.out, "out")
  loaded = open_model(a.params, tokenizer=None)
  videos = sorted(os.path.relpath(os.path.join(d, f), a.videos)
                  for d, _, files in os.walk(a.videos) for f in files if f.lower().endswith(VIDEO_SUFFIXES))
  if not videos:
    raise SystemExit(f"no videos ({', '.join(VIDEO_SUFFIXES)}) under {a.videos}")
  written, skipped, bad = 0, 0, []
  for rel in videos:
    out = os.path.join(a.out, os.path.splitext(rel)[0] + ".safetensors")
    if os.path.exists(out):
      skipped += 1
      continue
    try:
      info = probe(os.path.join(a.videos, rel))
      feats = video_features(loaded.model, loaded.params, os.path.join(a.videos, rel),
                             cache_frame_indices(info.frames, info.duration), loaded.cfg.vision.image_size,
                             a.chunk, resample=a.resample)
    except VideoError as e:
      bad.append(str(e))
      continue
    os.makedirs(os.path.dirname(out), exist_ok=True)
    write_safetensors(out + ".tmp", {"vid_feat": feats.astype(np.float32)},
                      {"duration": f"{info.duration:.2f}", "frames": str(len(feats))})
    os.replace(out + ".tmp", out)     # a crash never leaves a half-written feature file
    written += 1
  print(f"{written} written, {skipped} already there, {len(bad)} unusable")
  for reason in bad:
    print(f"  skipped: {reason}")
  return 0


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
