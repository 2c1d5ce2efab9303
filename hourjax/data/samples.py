"""One annotation record -> one training sample (numpy), or a marker saying why it was skipped.

Runs inside Grain workers: everything heavy (the tokenizer) is opened lazily in the worker, and
a bad record never raises: it becomes {"id", "skipped": reason}, which the batcher counts.

A sample: id, input_ids and labels int32 [L] (`chat.tokenize_conversation`), truncated (bool),
and its visual input: `features` [T, 64, C] float32 (cached features), `pixels` uint8
[T, S, S, 3] (decoded video frames, one image, or with `images="anyres"` an image sample's crops
plus `images` [n, 4], `data.anyres`), or neither (text-only).
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any

import grain
import numpy as np

from hourjax.data import anyres, chat, video
from hourjax.models.forgetting import official_linspace
from hourjax.constants import IMAGE, IMAGE_TOKEN_INDEX


_LOAD_LOCK = threading.Lock()


IMAGES = ("resize", "anyres")


@dataclasses.dataclass(frozen=True)
class ReadOptions:
  tokenizer: str                       # a local HF tokenizer directory
  image_size: int = 384
  frames: str = "official"             # "official" (1 FPS, >= min_frames) or "fixed:N" (ProLongVid)
  min_frames: int = 128
  time_instruction: bool = True        # stages 2-3
  label_separators: bool = True
  max_text_len: int = 32768            # the official truncation length (text tokens)
  resample: str = "pil"                # "pil": the official processor's PIL bicubic; "swscale": faster
  max_frames: int = 0                  # frames a sample may have (the pipeline: the largest frame bucket)
  too_long: str = "subsample"          # more frames: "subsample" (official frames_upbound) or "skip"
  images: str = "resize"               # "resize": one plain 384px image (one crop); "anyres": the
                                       # official crops (anyres_max_N), several images per sample allowed

  def __post_init__(self):
    if self.frames != "official" and not (self.frames.startswith("fixed:") and self.frames[6:].isdigit()):
      raise ValueError(f"frames={self.frames!r}: expected 'official' or 'fixed:N'")
    if self.resample not in video.RESAMPLE:
      raise ValueError(f"resample={self.resample!r}: expected one of {video.RESAMPLE}")
    if self.too_long not in ("subsample", "skip"):
      raise ValueError(f"too_long={self.too_long!r}: expected 'subsample' or 'skip'")
    if self.images not in IMAGES:
      raise ValueError(f"images={self.images!r}: expected one of {IMAGES}")

  def cap(self, count: int, what: str) -> np.ndarray | None:
    """None if `count` frames fit; else the frames to keep, spread uniformly over them (the
    official loader's `frames_upbound` rule), or a skip with its reason."""
    if not self.max_frames or count <= self.max_frames:
      return None
    if self.too_long == "skip":
      raise ValueError(f"{count} {what} exceed the largest frame bucket ({self.max_frames}; "
                       "data.read.too_long=subsample spreads them over it instead)")
    return official_linspace(count - 1, self.max_frames)


def read_features(path: str) -> tuple[np.ndarray, float]:
  from safetensors.numpy import safe_open
  with safe_open(path, "np") as f:
    duration = float((f.metadata() or {}).get("duration", "nan"))
    feats = f.get_tensor("vid_feat")
  if feats.ndim != 3 or not np.isfinite(duration):
    raise ValueError(f"{path}: expected vid_feat [T, g, C] and a duration, got {feats.shape}, {duration}")
  return feats, duration


def read_image(path: Any, size: int) -> np.ndarray:
  """One image as uint8 [1, size, size, 3]: the official plain 384px resize (PIL bicubic)."""
  from PIL import Image
  return np.asarray(open_image(path).resize((size, size), Image.BICUBIC))[None]


def open_image(path: Any):
  """The decoded RGB image (PIL) of a path or file object, file closed."""
  from PIL import Image
  with Image.open(path) as im:
    return im.convert("RGB")


class ReadSample(grain.transforms.Map):
  """record (with the paths `sources.locate` adds) -> sample dict or {"id", "skipped": reason}."""

  def __init__(self, options: ReadOptions):
    self.options = options
    self._tokenizer = None

  def __getstate__(self):       # workers open their own tokenizer
    return {**self.__dict__, "_tokenizer": None}

  @property
  def tokenizer(self) -> Any:
    with _LOAD_LOCK:      # Grain maps on threads; transformers' lazy import is not thread-safe
      if self._tokenizer is None:
        self._tokenizer = chat.load_tokenizer(self.options.tokenizer)
    return self._tokenizer

  def map(self, record: dict) -> dict:
    sample_id = str(record.get("id", "?"))
    try:
      return {"id": sample_id, **self._read(record)}
    except Exception as e:      # any bad sample is skipped with its reason, never stops a run
      media = (record.get("_features") or record.get("_path")) if isinstance(record, dict) else None
      media = ", ".join(map(str, media)) if isinstance(media, (list, tuple)) else media
      reason = f"{type(e).__name__}: {' '.join(str(e).split())}"
      return {"id": sample_id, "skipped": reason if not media or media in reason else f"{media}: {reason}"}

  def _read(self, record: dict) -> dict:
    o = self.options
    turns = record["conversations"]
    visual: dict[str, np.ndarray] = {}
    subsampled = False
    if "video" in record:
      if "_features" in record:
        feats, duration = read_features(record["_features"])
        rows = video.cached_feature_indices(len(feats), duration)
        keep = o.cap(len(rows), "cached feature frames")
        visual["features"] = feats[rows if keep is None else rows[keep]]
        num_frames = len(visual["features"])
      else:
        info = video.probe(record["_path"])
        if o.frames == "official":
          idx = video.official_frame_indices(info.frames, info.fps, min_frames=o.min_frames)
        else:
          idx = video.fixed_frame_indices(info.frames, int(o.frames[6:]))
        keep = o.cap(len(idx), "frames")
        if keep is not None:      # frames_upbound: linspace over the whole video
          idx = official_linspace(info.frames - 1, o.max_frames)
        visual["pixels"] = video.decode_frames(record["_path"], idx, o.image_size, resample=o.resample)
        duration, num_frames = info.duration, len(idx)
      subsampled = keep is not None
      if o.time_instruction:      # official order: the time instruction, then preprocess_multimodal
        turns = chat.with_time_instruction(turns, duration, num_frames)
      turns = chat.normalise_placeholders(turns)
    elif "image" in record:
      paths = [record["_path"]] if isinstance(record["_path"], str) else list(record["_path"])
      if o.images == "anyres":
        visual["pixels"], visual["images"] = anyres.crops([open_image(p) for p in paths], o.image_size)
      elif len(paths) > 1:
        raise ValueError(f"{len(paths)} images: multi-image samples need data.read.images='anyres' "
                         "(a model that takes them: ProLongVid)")
      else:
        visual["pixels"] = read_image(paths[0], o.image_size)
      if turns and len(paths) == 1 and not any(IMAGE in chat.turn_text(t) for t in turns):
        turns = chat.with_placeholder(turns)    # the official image sharding adds it
      turns = chat.normalise_placeholders(turns)
    elif any(IMAGE in chat.turn_text(t) for t in turns):   # stricter than the official code, which
      raise ValueError("a text-only sample with an <image> placeholder (no video or image field?)")
    ids, labels = chat.tokenize_conversation(self.tokenizer, turns, has_image=bool(visual),
                                             label_separators=o.label_separators)
    placeholders = int((ids == IMAGE_TOKEN_INDEX).sum())
    inputs = len(visual["images"]) if "images" in visual else int(bool(visual))
    if placeholders != inputs:
      raise ValueError(f"{placeholders} <image> placeholders for {inputs} visual inputs")
    truncated = len(ids) > o.max_text_len
    if truncated:
      ids, labels = ids[:o.max_text_len], labels[:o.max_text_len]
      if visual and not (ids == IMAGE_TOKEN_INDEX).any():
        raise ValueError(f"the <image> placeholder lies beyond max_text_len={o.max_text_len}")
    return {"input_ids": ids, "labels": labels, "truncated": truncated,
            "subsampled": subsampled, **visual}
