"""Key table and config mapping for the original LLaVA-NeXT / LLaVA-OneVision layout
(`model_type` "llava" or "llava_qwen", class LlavaQwenForCausalLM): lmms-lab's llava-onevision
checkpoints, `jylins/llava-onevision-qwen25-3b-si` (the official stage-1 starting point) and the
`prolongvid/*` checkpoints. The keys are Hour-LLaVA's without MemAug (spec §5): `model.*` and
`lm_head.weight` for Qwen2, `model.vision_tower.vision_tower.vision_model.*` (so400m with its last
layer deleted), `model.mm_projector.{0,2}.*`, `model.image_newline`. They fill an Hour-LLaVA
model whose MemAug the caller initialises, as the official stage 1 does.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from hourjax.convert import hour_llava, qwen2
from hourjax.convert.rules import Rule
from hourjax.models.hour_llava import HourLlavaConfig
from hourjax.models.memaug import MemAugConfig

MODEL_TYPES = ("llava", "llava_qwen")


def rules(c: HourLlavaConfig) -> list[Rule]:
  return hour_llava.rules(dataclasses.replace(c, use_memaug=False))


def ignore(c: HourLlavaConfig) -> tuple[str, ...]:
  # The MAP head is replaced by identity before saving in LLaVA-NeXT, but tolerate it if present.
  return hour_llava.ignore(c) + (r"model\.vision_tower\.vision_tower\.vision_model\.head\..*",)


def config_from_hf(d: dict[str, Any], **overrides) -> HourLlavaConfig:
  if d.get("model_type") not in MODEL_TYPES:
    raise ValueError(f"config model_type={d.get('model_type')!r}, expected one of {MODEL_TYPES}")
  if d.get("mm_resampler_type") not in (None, "", "identity"):
    raise ValueError(f"config mm_resampler_type={d['mm_resampler_type']!r}: a LLaVA-NeXT checkpoint has none")
  llm = qwen2.config_from_hf(d)
  return dataclasses.replace(
      HourLlavaConfig(vision=hour_llava.vision_from_hf(d), llm=llm, memaug=MemAugConfig.for_llm(llm),
                      max_length=int(d.get("tokenizer_model_max_length") or 32768)), **overrides)


def config_to_hf(c: HourLlavaConfig, source: dict[str, Any] | None = None) -> dict[str, Any]:
  """The source config (so pinpoints, tunable parts etc. survive) with our sizes."""
  d = dict(hour_llava.LLAVA_FIELDS)
  d.update({k: v for k, v in (source or {}).items() if k not in ("memaug_depth", "spatial_sampling_type")})
  d.update(qwen2.config_to_hf(c.llm))
  d.update(model_type=(source or {}).get("model_type", "llava"), architectures=["LlavaQwenForCausalLM"],
           rope_scaling=None, mm_hidden_size=c.vision.hidden_size, mm_resampler_type=None,
           tokenizer_model_max_length=c.max_length, **hour_llava.vision_to_hf(c.vision, source))
  return d
