"""A video's SigLIP features, encoded chunk by chunk: an hour at 1 FPS is 3,600 frames
(1.6 GB of 384px pixels), but only `chunk` of them are decoded and on the device at a time;
what stays is [T, 64, 1152] for Hour-LLaVA (pooled: the memory's raw material, 1 GB in float32),
[T, 729, 1152] for ProLongVid (pooled after its projector; a few hundred frames)."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from hourjax.data import video

_ENCODERS: dict[Any, Any] = {}


def _encoder(model: Any) -> Any:
  if model not in _ENCODERS:
    _ENCODERS[model] = jax.jit(lambda p, px: model.apply({"params": p}, px, model.cfg.cache_pooled,
                                                         method="encode_frames"))
  return _ENCODERS[model]


def video_features(model: Any, params: Any, path: str, indices: np.ndarray, size: int,
                   chunk: int = 128, resample: str = "pil") -> np.ndarray:
  """Frames `indices` of the video at `path` -> float32 [T, pool^2, C], `chunk` frames per call
  (the last chunk is padded, so one program serves every chunk); frames resized as training and
  the official processor do (PIL bicubic) unless `resample="swscale"`."""
  chunk = min(chunk, len(indices))
  return np.concatenate([frame_features(model, params, video.decode_frames(path, indices[s:s + chunk], size,
                                                                           resample=resample), chunk)
                         for s in range(0, len(indices), chunk)])


def frame_features(model: Any, params: Any, frames: np.ndarray, chunk: int = 128) -> np.ndarray:
  """uint8 frames [T, S, S, 3] (decoded, or images taken as frames) -> float32 [T, pool^2, C],
  exactly `chunk` frames per call (the last chunk padded: one program for every chunk)."""
  encode = _encoder(model)
  out = []
  for start in range(0, len(frames), chunk):
    part = frames[start:start + chunk]
    n = len(part)
    if n < chunk:
      part = np.concatenate([part, np.zeros((chunk - n, *part.shape[1:]), part.dtype)])
    out.append(np.asarray(encode(params, part[None]))[0, :n])
  return np.concatenate(out).astype(np.float32)
