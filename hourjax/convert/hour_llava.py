"""Key table and config mapping for official Hour-LLaVA checkpoints (`model_type` "hour_llava_qwen")."""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from hourjax.convert import memaug, qwen2, siglip
from hourjax.convert.rules import Rule, copy, linear, prefixed
from hourjax.models.forgetting import ForgettingConfig
from hourjax.models.hour_llava import HourLlavaConfig
from hourjax.models.memaug import MemAugConfig
from hourjax.models.siglip import SiglipConfig

VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."
MEMAUG_PREFIX = "model.vision_resampler."
# The official tower is so400m with its last layer deleted and no head (spec §1.2).
SO400M_KEPT = SiglipConfig(num_layers=26, use_head=False)


def projector_rules(vision_width: int, hidden: int, first: str, second: str) -> list[Rule]:
  return [linear("projector/linear_1/kernel", f"{first}.weight", (vision_width,), (hidden,)),
          copy("projector/linear_1/bias", f"{first}.bias"),
          linear("projector/linear_2/kernel", f"{second}.weight", (hidden,), (hidden,)),
          copy("projector/linear_2/bias", f"{second}.bias")]


def llava_rules(c: Any) -> list[Rule]:
  """The LLaVA-NeXT keys every model of the family has (SigLIP, projector, newline, Qwen2)."""
  r = prefixed(qwen2.rules(c.llm, "model.", "lm_head.weight"), "llm", "")
  r += prefixed(siglip.rules(c.vision), "vision", VISION_PREFIX)
  r += projector_rules(c.vision.hidden_size, c.llm.hidden_size, "model.mm_projector.0", "model.mm_projector.2")
  return r + [copy("image_newline", "model.image_newline")]


def rules(c: HourLlavaConfig) -> list[Rule]:
  r = llava_rules(c)
  if c.use_memaug:
    r += prefixed(memaug.rules(c.memaug), "memaug", MEMAUG_PREFIX)
  return r


def ignore(c: Any) -> tuple[str, ...]:
  return qwen2.ignore(c.llm) + siglip.IGNORE


def vision_from_hf(d: dict[str, Any]) -> SiglipConfig:
  """The kept SigLIP tower of a LLaVA-NeXT-family config: `vision_config` where one is recorded
  (fixtures, hourjax exports), else the tower `mm_vision_tower` names (real checkpoints)."""
  for key, want in (("mm_projector_type", "mlp2x_gelu"), ("mm_vision_select_feature", "patch"),
                    ("mm_vision_select_layer", -2)):
    if d.get(key, want) != want:
      raise ValueError(f"config {key}={d.get(key)!r} is not supported (only {want!r})")
  v = d.get("vision_config")
  if v:
    vision = siglip.config_from_hf({**v, "num_hidden_layers": v.get(
        "num_hidden_layers_kept", v.get("num_hidden_layers")), "vision_use_head": False})
  elif "siglip-so400m-patch14-384" in str(d.get("mm_vision_tower", "siglip-so400m-patch14-384")):
    vision = SO400M_KEPT
  else:
    raise ValueError(f"config mm_vision_tower={d.get('mm_vision_tower')!r}: only "
                     "google/siglip-so400m-patch14-384 is known without a vision_config")
  if d.get("mm_hidden_size", vision.hidden_size) != vision.hidden_size:
    raise ValueError(f"mm_hidden_size={d['mm_hidden_size']} != SigLIP width {vision.hidden_size}")
  return vision


def vision_to_hf(c: SiglipConfig, source: dict[str, Any] | None = None) -> dict[str, Any]:
  """`vision_config` for an export (the source's, updated); none for the released so400m tower
  when the source has none either (its name says it all)."""
  source = (source or {}).get("vision_config")
  if not source and dataclasses.replace(c, attention="xla", scan_layers=False, remat="none") == SO400M_KEPT:
    return {}
  vision = {**(source or {}), **siglip.config_to_hf(c)}
  vision.update(num_hidden_layers_kept=c.num_layers, num_patches_per_side=c.patches_per_side)
  return {"vision_config": vision}


# The LLaVA-NeXT fields Hour-LLaVA's code writes into config.json (spec §1.14).
LLAVA_FIELDS = dict(mm_projector_type="mlp2x_gelu", mm_vision_tower="google/siglip-so400m-patch14-384",
                    mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                    mm_patch_merge_type="spatial_unpad", mm_newline_position="grid",
                    mm_spatial_pool_mode="bilinear", mm_spatial_pool_stride=None,
                    image_aspect_ratio="anyres_max_9", tokenizer_padding_side="right",
                    mm_use_im_start_end=False, mm_use_im_patch_token=False, use_mm_proj=True,
                    add_faster_video=False, use_pos_skipping=False,
                    image_grid_pinpoints=[[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)])


def max_crops(aspect: str | None, field: str) -> int:
  """anyres_max_N -> N."""
  m = re.fullmatch(r"anyres_max_(\d+)", str(aspect or "anyres_max_9"))
  if not m:
    raise ValueError(f"config {field}={aspect!r}: only anyres_max_N is supported")
  return int(m.group(1))


def config_from_hf(d: dict[str, Any], **overrides) -> HourLlavaConfig:
  if d.get("model_type") != "hour_llava_qwen":
    raise ValueError(f"config model_type={d.get('model_type')!r}, expected 'hour_llava_qwen'")
  for key, want in (("mm_resampler_type", "memaug"), ("mm_spatial_pool_mode", "bilinear")):
    if d.get(key, want) != want:
      raise ValueError(f"config {key}={d.get(key)!r} is not supported (only {want!r})")
  llm, vision = qwen2.config_from_hf(d), vision_from_hf(d)
  mem = MemAugConfig.for_llm(llm, d.get("memaug_depth", 4))
  forget = ForgettingConfig(spatial=d.get("spatial_sampling_type", "random"))
  return dataclasses.replace(HourLlavaConfig(vision=vision, llm=llm, memaug=mem, forgetting=forget,
                                             max_length=int(d.get("tokenizer_model_max_length") or 32768),
                                             max_crops=max_crops(d.get("image_aspect_ratio"), "image_aspect_ratio")),
                             **overrides)


def config_to_hf(c: HourLlavaConfig) -> dict[str, Any]:
  d = qwen2.config_to_hf(c.llm)
  d.update(model_type="hour_llava_qwen", architectures=["HourLlavaQwenForCausalLM"],
           rope_scaling=None, mm_resampler_type="memaug", memaug_depth=c.memaug.depth,
           spatial_sampling_type=c.forgetting.spatial, mm_hidden_size=c.vision.hidden_size,
           tokenizer_model_max_length=c.max_length,
           **{**LLAVA_FIELDS, "image_aspect_ratio": f"anyres_max_{c.max_crops}"}, **vision_to_hf(c.vision))
  return d
