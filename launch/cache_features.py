"""Cache pooled SigLIP features of videos, as the official pipeline does for VideoMarathon
(spec §4.7), so that stage 3 trains without running the vision tower.

  python -m launch.cache_features --params /ckpt/hj-hl7b-s2 --videos /data/VideoMarathon/videos \\
      --out /data/VideoMarathon/features

For every .mp4 under --videos: max(int(duration), 128) frames spread over the video (all frames
if it has fewer than 128, the last frame always included), SigLIP (the checkpoint's vision
tower, float32) in chunks of --chunk frames, bilinear 27x27 -> 8x8, written to
<out>/<same relative path>.safetensors as "vid_feat" [T, 64, C] float32 with the duration
(seconds, 2 decimals) in the metadata. Existing outputs are skipped; unusable videos are
skipped, counted and listed at the end.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from hourjax.convert.io import load_params, read_meta, write_safetensors
from hourjax.data.video import VideoError, probe
from hourjax.infer.encode import video_features
from hourjax.models import build


def feature_frame_indices(total: int, duration: float, min_frames: int = 128) -> np.ndarray:
  """The official caching rule: max(int(duration), 128) frames by linspace, the last appended."""
  if total < min_frames:
    return np.arange(total)
  idx = np.linspace(0, total - 1, max(int(duration), min_frames)).astype(int)
  return idx if idx[-1] == total - 1 else np.append(idx, total - 1)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--params", required=True, help="hourjax Hour-LLaVA checkpoint (convert.py to-jax)")
  p.add_argument("--videos", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--chunk", type=int, default=128, help="frames per SigLIP call")
  a = p.parse_args(argv)
  meta = read_meta(a.params)
  if meta["kind"] != "hour_llava":
    raise SystemExit(f"{a.params} holds a {meta['kind']!r} model; expected hour_llava")
  cfg = build.config_from_dict("hour_llava", meta["config"])
  params = load_params(a.params)
  model = build.build("hour_llava", cfg)
  videos = sorted(os.path.relpath(os.path.join(d, f), a.videos)
                  for d, _, files in os.walk(a.videos) for f in files if f.endswith(".mp4"))
  if not videos:
    raise SystemExit(f"no .mp4 files under {a.videos}")
  written, skipped, bad = 0, 0, []
  for rel in videos:
    out = os.path.join(a.out, os.path.splitext(rel)[0] + ".safetensors")
    if os.path.exists(out):
      skipped += 1
      continue
    try:
      info = probe(os.path.join(a.videos, rel))
      feats = video_features(model, params, os.path.join(a.videos, rel),
                             feature_frame_indices(info.frames, info.duration), cfg.vision.image_size, a.chunk)
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
  sys.exit(main())
