"""Video I/O with PyAV: write frames to mp4; pick frames by the official rules; decode only
those frames by seeking, resized for SigLIP.

Every frame rule lives here (spec §1.5, §4.7): the official one takes every round(fps)-th frame
(~1 FPS) and, when that gives fewer than `min_frames` (128 in stages 2-3), `min(total, min_frames)`
frames spread by `linspace(0, total - 1, n)`; ProLongVid's takes a fixed number spread the same
way; the feature cache's and the cached features' rules follow. All spread frames with the
official float64 linspace floored (`forgetting.official_linspace`).
"""
from __future__ import annotations

import dataclasses

import av
import numpy as np

from hourjax.models.forgetting import official_linspace


RESAMPLE = ("pil", "swscale")


class VideoError(ValueError):
  """A video that cannot be used (missing, corrupt, empty); the message names the file."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  frames: int          # frames in the stream
  fps: float           # average frame rate
  duration: float      # seconds, as the official loader computes it: frames / fps


def probe(path: str) -> VideoInfo:
  """Frame count and rate as the official loaders read them (decord's `len(vr)` and
  `get_avg_fps()`; the container's frame count, or, where a container has none (mkv, webm),
  its video packets counted, as the official feature cache counts them)."""
  try:
    with av.open(path) as src:
      stream = src.streams.video[0]
      fps = float(stream.average_rate or stream.guessed_rate or 0)
      frames = stream.frames or sum(1 for p in src.demux(stream) if p.size)
  except (av.FFmpegError, IndexError, OSError) as e:
    raise VideoError(f"{path}: cannot open video ({e})") from None
  if frames <= 0 or fps <= 0:
    raise VideoError(f"{path}: no video frames (frames={frames}, fps={fps})")
  return VideoInfo(frames, fps, frames / fps)


def official_frame_indices(total: int, fps: float, sample_fps: float = 1.0, min_frames: int = 128,
                           max_frames: int = -1) -> np.ndarray:
  """Hour-LLaVA's rule: every round(fps / sample_fps)-th frame; if fewer than min_frames, up to
  min_frames spread uniformly instead; max_frames > 0 caps the count uniformly (stage 1)."""
  step = max(1, int(round(fps / sample_fps)))
  idx = np.arange(0, total, step)
  if len(idx) < min_frames:
    idx = official_linspace(total - 1, min(total, min_frames))
  if max_frames > 0 and len(idx) > max_frames:
    idx = official_linspace(total - 1, max_frames)
  return idx


def fixed_frame_indices(total: int, count: int) -> np.ndarray:
  """ProLongVid's rule: `count` frames spread uniformly (fewer if the video is shorter)."""
  return official_linspace(total - 1, min(total, count))


def cache_frame_indices(total: int, duration: float, min_frames: int = 128) -> np.ndarray:
  """The official feature-caching rule (spec §4.7): max(int(duration), min_frames) frames by
  linspace, the last frame appended if missing; every frame of a video shorter than that."""
  if total < min_frames:
    return np.arange(total)
  idx = official_linspace(total - 1, max(int(duration), min_frames))
  return idx if idx[-1] == total - 1 else np.append(idx, total - 1)


def cached_feature_indices(num_features: int, duration: float) -> np.ndarray:
  """The official rule for reading cached features: min(T, int(duration)) of them by linspace."""
  n = max(1, min(num_features, int(duration)))
  return official_linspace(num_features - 1, n)


# Decoded frames trail submitted packets by the decoder's threads and B-frame reordering; the
# skip is lifted this many frames before a target so that the target itself is decoded.
_SKIP_MARGIN = 24


def decode_frames(path: str, indices: np.ndarray, size: int, seek_gap: float = 2.0,
                  resample: str = "pil") -> np.ndarray:
  """Frames at `indices` (ascending) as uint8 [N, size, size, 3], resized bicubic: by PIL from
  the full-size frame (`pil`, what the official SigLIP processor does, pixel for pixel), or by
  FFmpeg's scaler while converting (`swscale`: faster, about 1% different).

  Seeks to the keyframe before a target when it is more than `seek_gap` seconds past the last
  decoded frame, and decodes forward from there; frames nothing refers to are not decoded
  while the next target is more than `_SKIP_MARGIN` frames away.
  """
  if resample not in RESAMPLE:
    raise ValueError(f"resample={resample!r}: expected one of {RESAMPLE}")
  indices = np.asarray(indices)
  if len(indices) == 0 or np.any(np.diff(indices) < 0):
    raise ValueError(f"{path}: frame indices must be non-empty and ascending")
  out = []
  try:
    with av.open(path) as src:
      stream = src.streams.video[0]
      stream.thread_type = "AUTO"
      fps = float(stream.average_rate or stream.guessed_rate)
      start = stream.start_time or 0
      tb = float(stream.time_base)
      frame_no = lambda f: int(round((f.pts - start) * tb * fps))
      frames, current, ctx = None, None, stream.codec_context
      for target in indices:
        if current is None or target - frame_no(current) > seek_gap * fps:
          src.seek(start + int(target / fps / tb), stream=stream, backward=True, any_frame=False)
          frames, current = src.decode(stream), None
        while current is None or frame_no(current) < target:
          far = current is not None and target - frame_no(current) > _SKIP_MARGIN
          ctx.skip_frame = "NONREF" if far else "DEFAULT"
          nxt = next(frames, None)
          if nxt is None:
            break
          current = nxt
        if current is None:
          raise VideoError(f"{path}: frame {target} could not be decoded")
        if resample == "pil":
          out.append(np.asarray(current.to_image().resize((size, size), _PIL_BICUBIC())))
        else:
          out.append(current.reformat(width=size, height=size, format="rgb24",
                                      interpolation="BICUBIC").to_ndarray())
  except av.FFmpegError as e:
    raise VideoError(f"{path}: decoding failed ({e})") from None
  return np.stack(out)


def _PIL_BICUBIC():
  from PIL import Image     # only the pil path needs Pillow
  return Image.BICUBIC


def to_siglip(frames: np.ndarray) -> np.ndarray:
  """uint8 RGB -> float32 in [-1, 1] (rescale 1/255, mean 0.5, std 0.5)."""
  return frames.astype(np.float32) / 127.5 - 1.0


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


def read_frames_1fps(path: str, size: int, min_frames: int = 0) -> tuple[np.ndarray, float]:
  """(frames [T, size, size, 3] float32 in [-1, 1] by the official rule, duration in seconds)."""
  info = probe(path)
  frames = decode_frames(path, official_frame_indices(info.frames, info.fps, min_frames=min_frames), size)
  return to_siglip(frames), info.duration


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
