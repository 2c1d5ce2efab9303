"""1-FPS decoding + SigLIP preprocessing against `ffmpeg -vf fps=1`, and the input pipeline's
batches per second.

  apt-get install ffmpeg          # Debian's ffmpeg: the reference command and the video maker
  .venv/bin/python -m tools.bench.video_decode --minutes 10 30 60 --out /tmp/bench_videos

Videos: 640x360 at 30 FPS, H.264 (libx264, default GOP of 250 frames), made by ffmpeg's testsrc2
(moving, textured). Everything runs pinned to one core (`taskset -c 0`, single-threaded codecs),
so numbers are per core. Each measurement delivers the same thing: one 384x384 RGB frame per
second of video as uint8 RGB (ffmpeg: its fps filter + bicubic scale to raw RGB; hourjax: probe,
the official frame rule, decoding those frames + bicubic resize; the scaling to [-1, 1] happens
on the accelerator).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time



def make_video(path: str, minutes: int) -> None:
  if os.path.exists(path):
    return
  subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i",
                  f"testsrc2=size=640x360:rate=30:duration={minutes * 60}", "-c:v", "libx264",
                  "-preset", "veryfast", "-pix_fmt", "yuv420p", path + ".tmp.mp4"], check=True)
  os.replace(path + ".tmp.mp4", path)


def ffmpeg_fps1(path: str, size: int) -> tuple[float, int]:
  t = time.perf_counter()
  out = subprocess.run(["taskset", "-c", "0", "ffmpeg", "-loglevel", "error", "-threads", "1",
                        "-i", path, "-vf", f"fps=1,scale={size}:{size}:flags=bicubic", "-f", "rawvideo",
                        "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
  return time.perf_counter() - t, len(out) // (size * size * 3)


def hourjax_fps1(path: str, size: int, resample: str) -> tuple[float, int]:
  """In a child pinned to core 0 with single-threaded decoding."""
  code = f"""
import time, av
from hourjax.data import video
t = time.perf_counter()
info = video.probe({path!r})
idx = video.official_frame_indices(info.frames, info.fps)
x = video.decode_frames({path!r}, idx, {size}, resample={resample!r})
print(time.perf_counter() - t, len(x))
"""
  out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], check=True,
                       capture_output=True, text=True).stdout.split()
  return float(out[0]), int(out[1])


def pipeline_batches_per_s(video_dir: str, videos: list[str], workers: int, steps: int) -> dict:
  """The whole pipeline (decode, tokenize, collate) on the pixel stream, 7B preprocessing."""
  import tempfile
  from absl import flags
  from configs.hour_llava import get_config
  from hourjax.config import model_config
  from hourjax.data import pipeline
  from hourjax.synthetic.tokenizer import save_tiny_tokenizer
  flags.FLAGS.mark_as_parsed()
  run = get_config("7b")
  root = tempfile.mkdtemp()
  with open(os.path.join(root, "a.json"), "w") as f:
    json.dump([{"id": f"v{i}", "video": v, "data_source": "", "conversations": [
        {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A test pattern."}]}
        for i, v in enumerate(videos)], f)
  data = run.data
  data.root, data.sources = root, [dict(annotations="a.json", media=video_dir)]
  data.read.tokenizer = save_tiny_tokenizer(os.path.join(root, "tok"))
  data.read.resample = "swscale"
  data.batch_size, data.workers = 1, workers
  data.buckets.frames = (128, 256, 512, 1024, 2048, 3600)
  it = iter(pipeline.from_config(data, model_config(run.model)))
  next(it)                            # start-up (workers, tokenizer) is not counted
  t = time.perf_counter()
  for _ in range(steps):
    next(it)
  dt = time.perf_counter() - t
  if workers:
    it.close()
  return {"workers": workers, "batches_per_s": steps / dt}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--minutes", type=int, nargs="+", default=[10, 30, 60])
  p.add_argument("--out", default="/tmp/hourjax_bench_videos")
  p.add_argument("--size", type=int, default=384)
  p.add_argument("--pipeline-steps", type=int, default=6)
  a = p.parse_args(argv)
  os.makedirs(a.out, exist_ok=True)
  rows = []
  for m in a.minutes:
    path = os.path.join(a.out, f"testsrc2_{m}min.mp4")
    make_video(path, m)
    row = {"minutes": m}
    row["ffmpeg_s"], row["ffmpeg_frames"] = ffmpeg_fps1(path, a.size)
    for resample in ("swscale", "pil"):
      row[f"hourjax_{resample}_s"], row[f"hourjax_{resample}_frames"] = hourjax_fps1(path, a.size, resample)
    rows.append(row)
    print(f"{m:3d} min: ffmpeg fps=1 {row['ffmpeg_frames'] / row['ffmpeg_s']:7.1f} frames/s | hourjax swscale "
          f"{row['hourjax_swscale_frames'] / row['hourjax_swscale_s']:7.1f} | hourjax pil "
          f"{row['hourjax_pil_frames'] / row['hourjax_pil_s']:7.1f}  (one core; frames: "
          f"{row['ffmpeg_frames']}, {row['hourjax_swscale_frames']})", flush=True)
  short = os.path.join(a.out, "short")
  os.makedirs(short, exist_ok=True)
  for i in range(4):      # LLaVA-Video-178K-like clips (0-3 min) for the pipeline
    make_video(os.path.join(short, f"clip{i}.mp4"), 2)
  for workers in (0, 2):
    r = pipeline_batches_per_s(short, sorted(os.listdir(short)), workers, a.pipeline_steps)
    print(f"pipeline, 2-minute clips, 7B preprocessing (120 frames -> 128 at 384px), batch 1, "
          f"{workers} workers: {r['batches_per_s']:.2f} batches/s", flush=True)
  return 0


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
