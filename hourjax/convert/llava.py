"""Key table and config mapping for the original LLaVA-NeXT / LLaVA-OneVision layout
(`model_type` "llava" or "llava_qwen", class LlavaQwenForCausalLM): lmms-lab's llava-onevision
checkpoints, `jylins/llava-onevision-qwen25-3b-si` (the official stage-1 starting point) and the
`prolongvid/*` checkpoints. The keys are Hour-LLaVA's without MemAug (spec §5): `model.*` and
`lm_head.weight` for Qwen2, `model.vision_tower.vision_tower.vision_model.*` (so400m with its last
layer deleted), `model.mm_projector.{0,2}.*`, `model.image_newline`. They fill an Hour-LLaVA
model whose MemAug the caller initialises, as the official stage 1 does, or a ProLongVid model
(`prolongvid_config_from_hf`: the video pooling and newline rule from the mm_* fields).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from hourjax.convert import hour_llava, qwen2
from hourjax.convert.rules import Rule
from hourjax.models.hour_llava import HourLlavaConfig
from hourjax.models.memaug import MemAugConfig
from hourjax.models.prolongvid import ProLongVidConfig

MODEL_TYPES = ("llava", "llava_qwen")


def rules(c: HourLlavaConfig | ProLongVidConfig) -> list[Rule]:
  return hour_llava.llava_rules(c)


def ignore(c: HourLlavaConfig | ProLongVidConfig) -> tuple[str, ...]:
  # The MAP head is replaced by identity before saving in LLaVA-NeXT, but tolerate it if present.
  return hour_llava.ignore(c) + (r"model\.vision_tower\.vision_tower\.vision_model\.head\..*",)


def _check(d: dict[str, Any]) -> None:
  if d.get("model_type") not in MODEL_TYPES:
    raise ValueError(f"config model_type={d.get('model_type')!r}, expected one of {MODEL_TYPES}")
  if d.get("mm_resampler_type") not in (None, "", "identity"):
    raise ValueError(f"config mm_resampler_type={d['mm_resampler_type']!r}: a LLaVA-NeXT checkpoint has none")


def is_prolongvid(d: dict[str, Any]) -> bool:
  """ProLongVid's checkpoints record its fixed video pooling (`mm_fixed_patch_length`), which
  upstream LLaVA-NeXT does not have."""
  return d.get("model_type") in MODEL_TYPES and bool(d.get("mm_fixed_patch_length"))


def prolongvid_config_from_hf(d: dict[str, Any], **overrides) -> ProLongVidConfig:
  """A LLaVA-NeXT / OneVision checkpoint as ProLongVid's model: video frames pooled to
  `mm_fixed_patch_length` (else ceil(27 / mm_spatial_pool_stride)) after the projector, with
  `mm_newline_position` grid (a newline per row) or one_token (one per video)."""
  _check(d)
  vision = hour_llava.vision_from_hf(d)
  if d.get("mm_spatial_pool_mode", "bilinear") != "bilinear":
    raise ValueError(f"config mm_spatial_pool_mode={d['mm_spatial_pool_mode']!r}: only 'bilinear' is supported")
  newline = {"grid": "grid", "one_token": "video"}.get(d.get("mm_newline_position", "grid"))
  if newline is None:
    raise ValueError(f"config mm_newline_position={d['mm_newline_position']!r}: expected 'grid' or 'one_token'")
  pool = d.get("mm_fixed_patch_length") or math.ceil(vision.patches_per_side / (d.get("mm_spatial_pool_stride") or 2))
  return dataclasses.replace(
      ProLongVidConfig(vision=vision, llm=qwen2.config_from_hf(d), pool_size=int(pool), newline=newline,
                       max_crops=hour_llava.max_crops(d.get("image_aspect_ratio"), "image_aspect_ratio"),
                       max_length=int(d.get("tokenizer_model_max_length") or 32768)), **overrides)


def config_from_hf(d: dict[str, Any], **overrides) -> HourLlavaConfig:
  _check(d)
  llm = qwen2.config_from_hf(d)
  return dataclasses.replace(
      HourLlavaConfig(vision=hour_llava.vision_from_hf(d), llm=llm, memaug=MemAugConfig.for_llm(llm),
                      max_length=int(d.get("tokenizer_model_max_length") or 32768),
                      max_crops=hour_llava.max_crops(d.get("image_aspect_ratio"), "image_aspect_ratio")), **overrides)


def config_to_hf(c: HourLlavaConfig | ProLongVidConfig, source: dict[str, Any] | None = None) -> dict[str, Any]:
  """The source config (so pinpoints, tunable parts etc. survive) with our sizes."""
  d = dict(hour_llava.LLAVA_FIELDS)
  d.update({k: v for k, v in (source or {}).items() if k not in ("memaug_depth", "spatial_sampling_type")})
  if isinstance(c, ProLongVidConfig):
    d.update(mm_fixed_patch_length=c.pool_size, mm_spatial_pool_mode="bilinear",
             mm_newline_position="grid" if c.newline == "grid" else "one_token")
  d.update(qwen2.config_to_hf(c.llm))
  d.update(model_type=(source or {}).get("model_type", "llava"), architectures=["LlavaQwenForCausalLM"],
           rope_scaling=None, mm_hidden_size=c.vision.hidden_size, mm_resampler_type=None,
           tokenizer_model_max_length=c.max_length, image_aspect_ratio=f"anyres_max_{c.max_crops}",
           **hour_llava.vision_to_hf(c.vision, source))
  return d
