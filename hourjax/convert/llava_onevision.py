"""Key table for transformers' `LlavaOnevisionForConditionalGeneration` (the paper's starting point).

Hub checkpoints store `vision_tower.vision_model.*`, `multi_modal_projector.*`, `image_newline`,
`language_model.model.*`, `language_model.lm_head.weight`; transformers 5 holds
`model.vision_tower.*`, `model.language_model.*`, `lm_head.weight` in memory and writes
`vision_tower.*`. The prefixes are found from the keys, so all of these load. The LLaVA-OV
weights fill an Hour-LLaVA model; MemAug has no weights there and is initialised by the caller.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable

from hourjax.convert import hour_llava, qwen2, siglip
from hourjax.convert.hour_llava import projector_rules
from hourjax.convert.rules import Rule, copy, find_prefix, prefixed
from hourjax.models.hour_llava import HourLlavaConfig
from hourjax.models.memaug import MemAugConfig
from hourjax.models.prolongvid import ProLongVidConfig

# What transformers 5 writes with save_pretrained (and loads back).
EXPORT_PREFIXES = dict(vision="vision_tower.", decoder="language_model.model.",
                       head="language_model.lm_head.weight", projector="multi_modal_projector.",
                       newline="image_newline")


def prefixes(keys: Iterable[str]) -> dict[str, str]:
  keys = list(keys)
  heads = [k for k in keys if k.endswith("lm_head.weight")]
  return dict(vision=find_prefix(keys, "embeddings.patch_embedding.weight"),
              decoder=find_prefix(keys, "embed_tokens.weight"),
              head=heads[0] if heads else "lm_head.weight",
              projector=find_prefix(keys, "multi_modal_projector.linear_1.weight") + "multi_modal_projector.",
              newline=find_prefix(keys, "image_newline") + "image_newline")


def rules(c: HourLlavaConfig | ProLongVidConfig, p: dict[str, str]) -> list[Rule]:
  r = prefixed(qwen2.rules(c.llm, p["decoder"], p["head"]), "llm", "")
  r += prefixed(siglip.rules(c.vision), "vision", p["vision"])
  r += projector_rules(c.vision.hidden_size, c.llm.hidden_size, p["projector"] + "linear_1",
                       p["projector"] + "linear_2")
  return r + [copy("image_newline", p["newline"])]


def ignore(c: HourLlavaConfig | ProLongVidConfig, p: dict[str, str]) -> tuple[str, ...]:
  """The MAP head is not on Hour-LLaVA's feature path; the official model drops it too."""
  return qwen2.ignore(c.llm, p["head"]) + siglip.IGNORE + (p["vision"].replace(".", r"\.") + r"head\..*",)


def prolongvid_config_from_hf(d: dict[str, Any], **overrides) -> ProLongVidConfig:
  """The same checkpoint as ProLongVid's model with transformers' own rules: videos pooled to
  ceil(27 / 2) after the projector with one newline after the whole video, transformers'
  unpad rounding."""
  c = config_from_hf(d)
  return dataclasses.replace(
      ProLongVidConfig(vision=c.vision, llm=c.llm, feature_layer=c.feature_layer,
                       pool_size=math.ceil(c.vision.patches_per_side / 2), newline="video", unpad="transformers",
                       max_crops=hour_llava.max_crops(d.get("vision_aspect_ratio"), "vision_aspect_ratio")),
      **overrides)


def config_from_hf(d: dict[str, Any], **overrides) -> HourLlavaConfig:
  if d.get("model_type") != "llava_onevision":
    raise ValueError(f"config model_type={d.get('model_type')!r}, expected 'llava_onevision'")
  if d.get("vision_feature_select_strategy", "full") != "full":
    raise ValueError("vision_feature_select_strategy must be 'full' (SigLIP has no CLS token)")
  layer = d.get("vision_feature_layer", -1)
  if not isinstance(layer, int):
    raise ValueError(f"vision_feature_layer={layer!r}: only a single layer is supported")
  if d.get("projector_hidden_act", "gelu") != "gelu":
    raise ValueError(f"projector_hidden_act={d['projector_hidden_act']!r}: only exact gelu is supported")
  vision = siglip.config_from_hf(d["vision_config"], use_head=False)
  llm = qwen2.config_from_hf(d["text_config"])
  return dataclasses.replace(HourLlavaConfig(vision=vision, llm=llm, memaug=MemAugConfig.for_llm(llm),
                                             feature_layer=layer, max_crops=hour_llava.max_crops(
                                                 d.get("vision_aspect_ratio"), "vision_aspect_ratio")),
                             **overrides)


def config_to_hf(c: HourLlavaConfig | ProLongVidConfig, source: dict[str, Any] | None = None) -> dict[str, Any]:
  """The source LLaVA-OV config with the sizes replaced by ours (so pinpoints etc. survive)."""
  transformers_rule = ("video", math.ceil(c.vision.patches_per_side / 2))
  if isinstance(c, ProLongVidConfig) and (c.newline, c.pool_size) != transformers_rule:
    raise ValueError(f"transformers' LLaVA-OneVision pools video frames to ceil(side / 2) with one newline per "
                     f"video; this model pools to {c.pool_size} with newline={c.newline!r}: export it as kind "
                     "'llava' (the LLaVA-NeXT layout ProLongVid's checkpoints use)")
  d = dict(source or {})
  d["vision_aspect_ratio"] = f"anyres_max_{c.max_crops}"
  vision = {**d.get("vision_config", {}), **siglip.config_to_hf(c.vision)}
  text = {**d.get("text_config", {}), **qwen2.config_to_hf(c.llm)}
  d.update(model_type="llava_onevision", architectures=["LlavaOnevisionForConditionalGeneration"],
           vision_config=vision, text_config=text, vision_feature_layer=c.feature_layer,
           vision_feature_select_strategy="full", projector_hidden_act="gelu",
           tie_word_embeddings=c.llm.tie_word_embeddings)
  return d
