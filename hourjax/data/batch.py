"""Typed batches: what the pipeline yields and the model reads, one dataclass per kind, with the
same field names from the sample to the model (pytrees: they pass through jit, and `jit`
compiles one program per kind and bucket shape by itself).

    VideoBatch   input_ids, attention_mask, labels [B, L]; layout (forgetting.VideoLayout);
                 pixels uint8 [B, T, S, S, 3] (decoded frames) or features [B, T, g, C] (cached)
    ImageBatch   the same with image crops as `pixels` [B, K, S, S, 3] and layout an
                 anyres.ImageLayout (a plain resized image is one crop)
    TextBatch    input_ids, attention_mask, labels (Hour-LLaVA's text-only samples)
    PackedBatch  input_ids, labels, positions, segment_ids (the decoder alone on packed documents)

Host-side metadata (sample ids, skips, truncations) never rides in a batch: the pipeline yields
`(batch, meta)` pairs, `meta` a `Meta`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax

from hourjax.models.forgetting import VideoLayout

Array = Any


@flax.struct.dataclass
class TextBatch:
  input_ids: Array
  attention_mask: Array
  labels: Array
  KIND = "text"

  @property
  def size(self) -> int:
    return self.input_ids.shape[0]

  def tokens(self) -> Any:
    """Real (unpadded) text tokens, for throughput."""
    return self.attention_mask

  def model_inputs(self) -> dict[str, Any]:
    """HourLlava's keyword arguments for the visual input (none for text)."""
    return {}


@flax.struct.dataclass
class VideoBatch(TextBatch):
  layout: VideoLayout = None
  pixels: Array | None = None
  features: Array | None = None
  KIND = "video"

  def model_inputs(self) -> dict[str, Any]:
    return dict(layout=self.layout, pixels=self.pixels, features=self.features, modality=self.KIND)

  @property
  def frames(self) -> int:
    return (self.pixels if self.features is None else self.features).shape[1]


@flax.struct.dataclass
class ImageBatch(VideoBatch):
  KIND = "image"


@flax.struct.dataclass
class PackedBatch:
  input_ids: Array
  labels: Array
  positions: Array
  segment_ids: Array
  KIND = "packed"

  @property
  def size(self) -> int:
    return self.input_ids.shape[0]

  def tokens(self) -> Any:
    return self.segment_ids > 0


Batch = TextBatch | VideoBatch | ImageBatch | PackedBatch


@dataclasses.dataclass
class Meta:
  """What the host knows about a batch: its stream, its samples' ids, the samples skipped since
  the previous batch ((id, reason)), those truncated (text) and those whose frames were
  subsampled to the largest frame bucket. At the end of a finite stream the pipeline yields one
  `(None, meta)` with the last skips and the good samples of the incomplete last batch (`dropped`),
  so that nothing read goes unreported."""
  stream: str
  ids: list = dataclasses.field(default_factory=list)
  skipped: list = dataclasses.field(default_factory=list)
  truncated: list = dataclasses.field(default_factory=list)
  subsampled: list = dataclasses.field(default_factory=list)
  dropped: list = dataclasses.field(default_factory=list)
