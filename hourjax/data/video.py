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
import math
from typing import Callable

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
  except (av.FFmpegError, IndexError, OSError, ValueError) as e:     # ValueError: undecodable metadata
    raise VideoError(f"{path}: cannot open video ({type(e).__name__}: {e})") from None
  if frames <= 0 or not math.isfinite(fps) or fps <= 0:
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
# A target this many frames past the last frame the file yields is not the end of the stream
# but a truncated file.
_END_SLACK = 2


def presentation_times(path: str) -> np.ndarray:
  """The video frames' timestamps (stream time base) in presentation order, read from the
  packets without decoding: frame i of the official loaders (decord counts frames, not seconds)
  is the i-th of these, for constant and variable frame rates and any start offset alike."""
  try:
    with av.open(path) as src:
      stream = src.streams.video[0]
      times = [p.pts if p.pts is not None else p.dts for p in src.demux(stream) if p.size and not p.is_discard]
  except (av.FFmpegError, IndexError, OSError, ValueError) as e:
    raise VideoError(f"{path}: cannot read packets ({type(e).__name__}: {e})") from None
  times = np.sort(np.asarray([t for t in times if t is not None], np.int64))
  if not len(times):
    raise VideoError(f"{path}: no timestamped video packets")
  return times


def display_transform(frame: av.VideoFrame) -> Callable[[np.ndarray], np.ndarray] | None:
  """How a player turns this decoded frame upright (its DISPLAYMATRIX side data: rotation and
  mirroring), as FFmpeg's own autorotation decides it; None when it is shown as decoded."""
  side = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)   # PyAV 18 and 19 (whose
  matrix = None if side is None else np.frombuffer(bytes(side), np.int32)  # iteration yields keys)
  if matrix is None or len(matrix) != 9:
    return None
  m = matrix.astype(np.float64)
  if not math.hypot(m[1], m[4]) or not math.hypot(m[0], m[3]):
    return None     # a degenerate matrix (a damaged file): shown as decoded
  # av_display_rotation_get (counter-clockwise degrees); FFmpeg rotates the frame by its negative
  ccw = -math.degrees(math.atan2(m[1] / math.hypot(m[1], m[4]), m[0] / math.hypot(m[0], m[3])))
  theta = -round(ccw)
  theta -= 360 * math.floor(theta / 360 + 0.9 / 360)      # [0, 360), as fftools normalises it
  if abs(theta - 90) < 1:
    return (lambda a: np.swapaxes(a, 0, 1)) if m[3] > 0 else (lambda a: np.rot90(a, -1))
  if abs(theta - 270) < 1:
    return (lambda a: np.rot90(a, -1)[::-1]) if m[3] < 0 else (lambda a: np.rot90(a, 1))
  if abs(theta - 180) < 1:
    h, v = m[0] < 0, m[4] < 0
    return lambda a: a[::-1 if v else 1, ::-1 if h else 1]
  if abs(theta) < 1 and m[4] < 0:
    return lambda a: a[::-1]
  return None       # upright, or an angle that is not a multiple of 90 degrees (shown as decoded)


def decode_frames(path: str, indices: np.ndarray, size: int, seek_gap: float = 2.0,
                  resample: str = "pil") -> np.ndarray:
  """Frames at `indices` (ascending positions in presentation order) as uint8 [N, size, size, 3],
  upright as a player shows them (display rotation and mirroring), resized bicubic: by PIL from
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
  times = presentation_times(path)
  out = []
  try:
    with av.open(path) as src:
      stream = src.streams.video[0]
      stream.thread_type = "AUTO"
      tb = float(stream.time_base)
      position = lambda f: int(np.searchsorted(times, f.pts if f.pts is not None else times[-1]))
      frames, current, ctx = None, None, stream.codec_context
      for target in indices:
        want = int(times[min(int(target), len(times) - 1)])
        if current is None or (want - current.pts) * tb > seek_gap:
          src.seek(want, stream=stream, backward=True, any_frame=False)
          frames, current = src.decode(stream), None
        while current is None or current.pts is None or current.pts < want:
          far = current is not None and int(target) - position(current) > _SKIP_MARGIN
          ctx.skip_frame = "NONREF" if far else "DEFAULT"
          nxt = next(frames, None)
          if nxt is None:
            break
          current = nxt
        if current is None or int(target) - position(current) > _END_SLACK:
          raise VideoError(f"{path}: frame {int(target)} could not be decoded; the file indexes {len(times)} "
                           f"frames but ends{'' if current is None else f' at frame {position(current)}'} (truncated?)")
        upright = display_transform(current)
        if resample == "pil":
          image = current.to_image() if upright is None else _PIL().fromarray(
              np.ascontiguousarray(upright(current.to_ndarray(format="rgb24"))))
          out.append(np.asarray(image.resize((size, size), _PIL().BICUBIC)))
        else:        # square output: turning it upright after the resize is the same picture
          small = current.reformat(width=size, height=size, format="rgb24", interpolation="BICUBIC").to_ndarray()
          out.append(small if upright is None else np.ascontiguousarray(upright(small)))
  except (av.FFmpegError, ValueError) as e:
    raise VideoError(f"{path}: decoding failed ({type(e).__name__}: {e})") from None
  return np.stack(out)


def _PIL():
  from PIL import Image     # only the pil path needs Pillow
  return Image


def to_siglip(frames: np.ndarray) -> np.ndarray:
  """uint8 RGB -> float32 in [-1, 1] (rescale 1/255, mean 0.5, std 0.5)."""
  return frames.astype(np.float32) / 127.5 - 1.0


def write_video(path: str, frames: np.ndarray, fps: int, codec: str = "mpeg4",
                options: dict[str, str] | None = None) -> None:
  """frames: uint8 [T, H, W, 3]. `options`: the muxer's, e.g. {"movflags": "faststart"} (the
  index first, as cameras and web encoders write it)."""
  with av.open(path, "w", options=options or {}) as out:
    stream = out.add_stream(codec, rate=fps)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)


def read_official_frames(path: str, size: int, min_frames: int = 0) -> tuple[np.ndarray, float]:
  """(frames [T, size, size, 3] uint8 by the official rule, duration in seconds)."""
  info = probe(path)
  return decode_frames(path, official_frame_indices(info.frames, info.fps, min_frames=min_frames), size), info.duration


def read_frames_1fps(path: str, size: int, min_frames: int = 0) -> tuple[np.ndarray, float]:
  """(frames [T, size, size, 3] float32 in [-1, 1] by the official rule, duration in seconds)."""
  frames, duration = read_official_frames(path, size, min_frames)
  return to_siglip(frames), duration


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
