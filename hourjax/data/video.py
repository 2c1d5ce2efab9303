"""Minimal video I/O with PyAV: write frames to mp4, read one frame per second as SigLIP input.

The data issue replaces the reader with seeking, the official frame rules and Grain; this is
what the demo needs now.
"""
from __future__ import annotations

import av
import numpy as np


def write_video(path: str, frames: np.ndarray, fps: int, codec: str = "mpeg4") -> None:
  """frames: uint8 [T, H, W, 3]."""
  with av.open(path, "w") as out:
    stream = out.add_stream(codec, rate=fps)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)


def read_frames_1fps(path: str, size: int) -> tuple[np.ndarray, float]:
  """(frames [T, size, size, 3] float32 in [-1, 1] at 1 FPS, duration in seconds)."""
  frames, next_t, last_t = [], 0.0, 0.0
  with av.open(path) as src:
    stream = src.streams.video[0]
    for frame in src.decode(stream):
      t = float(frame.pts * stream.time_base)
      last_t = t
      if t + 1e-6 >= next_t:
        rgb = frame.reformat(width=size, height=size, format="rgb24", interpolation="BICUBIC").to_ndarray()
        frames.append(rgb)
        next_t += 1.0
    duration = float(stream.duration * stream.time_base) if stream.duration else last_t
  if not frames:
    raise ValueError(f"{path}: no decodable frames")
  return np.stack(frames).astype(np.float32) / 127.5 - 1.0, duration


def moving_square(seconds: int, fps: int, size: int = 96, seed: int = 0) -> np.ndarray:
  """A coloured square crossing a dark background; its colour changes every few seconds."""
  rng = np.random.default_rng(seed)
  colours = rng.integers(64, 256, (seconds // 4 + 1, 3))
  frames = np.full((seconds * fps, size, size, 3), 16, np.uint8)
  side = size // 4
  for i in range(seconds * fps):
    x = int((size - side) * (i / max(1, seconds * fps - 1)))
    frames[i, size // 3:size // 3 + side, x:x + side] = colours[(i // fps) // 4]
  return frames
