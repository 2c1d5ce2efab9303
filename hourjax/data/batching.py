"""Static shapes for jit: samples of any frame count and text length go into the smallest
bucket (frame edge, text edge) that holds them, padded with masks, so a run compiles at most
one program per bucket.

A sample is a dict (`samples.ReadSample`): input_ids, labels [L] (one IMAGE_TOKEN_INDEX
placeholder for a visual input, none for text), and `features` [T, g, C] (cached SigLIP
features) or `pixels` uint8 [T, S, S, 3] (absent for text-only). What batching needs to know of
the model is a `BatchSpec`: the cached features' shape, the frame size and forgetting's
host-side layout rule.
"""
from __future__ import annotations

import bisect
import dataclasses
from typing import Any, Sequence

import numpy as np

from hourjax.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from hourjax.data import anyres
from hourjax.data.batch import ImageBatch, TextBatch, VideoBatch
from hourjax.models import anyres as anyres_layout
from hourjax.models.forgetting import ForgettingConfig, VideoLayout, video_layout

# Crop counts of anyres image batches (1 + rows * cols, or one per image of a multi-image sample).
CROP_EDGES = (1, 2, 5, 10, 17, 26, 37)


def crop_edge(crops: int) -> int:
  """The crop bucket of a sample of `crops` crops (ValueError past the largest)."""
  if crops > CROP_EDGES[-1]:
    raise ValueError(f"{crops} image crops exceed the largest crop bucket ({CROP_EDGES[-1]})")
  return CROP_EDGES[bisect.bisect_left(CROP_EDGES, crops)]


@dataclasses.dataclass(frozen=True)
class Buckets:
  frames: tuple[int, ...] = (128, 256, 512, 1024, 2048, 3600)   # input frames (1 FPS: seconds)
  text: tuple[int, ...] = (512, 1024, 2048, 4096)

  def __post_init__(self):
    for name in ("frames", "text"):
      edges = getattr(self, name)
      if not edges or list(edges) != sorted(set(edges)) or edges[0] < 1:
        raise ValueError(f"bucket edges {name}={edges} must be increasing positive integers")

  def of(self, frames: int, text: int) -> tuple[int, int]:
    """(frame edge, text edge) for one sample; ValueError (caller skips or truncates) if too big."""
    i, j = bisect.bisect_left(self.frames, frames), bisect.bisect_left(self.text, text)
    if i == len(self.frames) or j == len(self.text):
      raise ValueError(f"sample with {frames} frames and {text} tokens exceeds the largest bucket "
                       f"({self.frames[-1]} frames, {self.text[-1]} tokens)")
    return self.frames[i], self.text[j]


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """The model's input shapes that batching needs (`BatchSpec.of(model_config)`)."""
  tokens_per_frame: int       # cached features: the model config's feature_tokens
  feature_width: int          # cached features: SigLIP width
  image_size: int             # decoded frames and images
  forgetting: ForgettingConfig
  patches_per_side: int       # image crops: SigLIP patches a side (their token layout)
  max_crops: int = anyres_layout.MAX_CROPS    # anyres_max_N
  unpad: str = "official"     # anyres.unpadded's rounding
  plain_images: bool = True   # a plain resized image (no `images` rows) is one crop; False: the
                              # model reads anyres crops only (ProLongVid)

  @classmethod
  def of(cls, cfg: Any) -> "BatchSpec":
    """From a model config (HourLlavaConfig, ProLongVidConfig)."""
    if isinstance(cfg, BatchSpec):
      return cfg
    return cls(cfg.feature_tokens, cfg.vision.hidden_size, cfg.vision.image_size, cfg.forgetting,
               cfg.vision.patches_per_side, cfg.max_crops, cfg.unpad, cfg.plain_images)

  def layout(self, frames: Sequence[int], frame_edge: int) -> VideoLayout:
    """The batch's layout, as wide as a sample of `frame_edge` frames needs: every batch of a
    bucket has the same shapes."""
    widths = video_layout([frame_edge], self.forgetting)
    return video_layout(frames, self.forgetting, padded_frames=widths.source_frame.shape[1],
                        memory_frames=widths.memory_frames.shape[1],
                        retained_frames=widths.retained_frames.shape[1])


def check_sample(sample: dict, spec: Any, buckets: Buckets, modality: str = "video") -> tuple[int, int]:
  """The (frame edge, text edge) of one sample's bucket; ValueError naming what is wrong if it
  cannot be batched (the pipeline skips it, with this reason, before it reaches a batch)."""
  spec = BatchSpec.of(spec)
  visual = next((k for k in ("features", "pixels") if sample.get(k) is not None), None)
  frames = 0 if visual is None else len(sample[visual])
  images = sample.get("images")
  if modality == "image" and images is None and not spec.plain_images:
    raise ValueError("this model reads anyres image crops (data.read.images='anyres')")
  if modality == "image" and images is None and frames > 1:
    raise ValueError(f"{frames} image crops without their `images` rows (height, width, rows, cols)")
  if visual is not None:
    want = ((spec.tokens_per_frame, spec.feature_width) if visual == "features"
            else (spec.image_size, spec.image_size, 3))
    if tuple(np.shape(sample[visual])[1:]) != want:
      raise ValueError(f"{visual} of shape {tuple(np.shape(sample[visual]))}: expected (frames, "
                       f"{', '.join(map(str, want))}) for this model")
  placeholders = int(np.sum(np.asarray(sample["input_ids"]) == IMAGE_TOKEN_INDEX))
  inputs = len(images) if images is not None else int(bool(frames))
  if placeholders != inputs:     # else the visual tokens would land after the text
    raise ValueError(f"{placeholders} <image> placeholders for {inputs} visual inputs (is the prompt "
                     "tokenized with has_image?)")
  if modality == "image":
    return crop_edge(max(frames, 1)), buckets.of(0, len(sample["input_ids"]))[1]
  return buckets.of(frames, len(sample["input_ids"]))


def collate(samples: Sequence[dict], spec: Any, buckets: Buckets, pad_id: int = 0,
            modality: str = "video") -> TextBatch | VideoBatch | ImageBatch:
  """Samples of one stream -> one batch in the bucket of its largest sample. Visual input:
  `features` (cached), `pixels` (uint8 frames, or one image with modality="image") or none
  (text-only: a TextBatch). `spec`: a BatchSpec or the model config."""
  spec = BatchSpec.of(spec)
  visual = next((k for k in ("features", "pixels") if any(s.get(k) is not None for s in samples)), None)
  frames = [0 if visual is None or s.get(visual) is None else len(s[visual]) for s in samples]
  shapes = []
  for s in samples:
    try:
      shapes.append(check_sample(s, spec, buckets, modality))
    except ValueError as e:
      raise ValueError(f"sample {s.get('id', '?')}: {e}") from None
  frame_edge = max(f for f, _ in shapes)
  text_edge = max(t for _, t in shapes)
  b = len(samples)
  ids = np.full((b, text_edge), pad_id, np.int32)
  labels = np.full((b, text_edge), IGNORE_INDEX, np.int32)
  mask = np.zeros((b, text_edge), np.int32)
  for i, s in enumerate(samples):
    n = len(s["input_ids"])
    ids[i, :n], labels[i, :n], mask[i, :n] = s["input_ids"], s["labels"], 1
  if visual is None:
    return TextBatch(ids, mask, labels)
  if visual == "features":
    out = np.zeros((b, frame_edge, spec.tokens_per_frame, spec.feature_width), np.float32)
  else:     # uint8: the model scales pixels to [-1, 1] on the device
    out = np.zeros((b, frame_edge, spec.image_size, spec.image_size, 3), np.uint8)
  for i, s in enumerate(samples):
    if frames[i]:
      out[i, :frames[i]] = s[visual]
  if modality == "image":     # a plain image is one crop of its (resized) size
    plain = [(spec.image_size, spec.image_size, None)]
    layout = anyres_layout.image_layout(
        [anyres.layout_images(s["images"]) if s.get("images") is not None else plain * bool(f)
         for s, f in zip(samples, frames)], spec.patches_per_side,
        width=anyres.token_width(frame_edge, spec.patches_per_side, spec.max_crops), max_crops=spec.max_crops,
        rounding=spec.unpad)
    return ImageBatch(ids, mask, labels, layout, pixels=out)
  return VideoBatch(ids, mask, labels, spec.layout(frames, frame_edge), **{visual: out})
