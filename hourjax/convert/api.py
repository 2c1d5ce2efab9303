"""Import PyTorch checkpoints into hourjax parameters and export them back, by checkpoint kind.

Kinds: "siglip" (SiglipVisionModel, or the vision half of SiglipModel), "siglip_text"
(SiglipTextModel, or the text half of SiglipModel: pass kind="siglip_text"), "qwen2"
(Qwen2ForCausalLM), "llava_onevision" (transformers' LlavaOnevisionForConditionalGeneration),
"llava" (the original LLaVA-NeXT / OneVision layout, model_type "llava" or "llava_qwen") and
"hour_llava" (official Hour-LLaVA, model_type "hour_llava_qwen"). The last three become an
hourjax `HourLlava`, or, for the two LLaVA layouts, a `ProLongVid` (`model="prolongvid"`; the
default for checkpoints that record ProLongVid's `mm_fixed_patch_length`, as `prolongvid/*` do).
"""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

import jax
import numpy as np

from hourjax.convert import hour_llava, layout, llava, llava_onevision, qwen2, siglip
from hourjax.convert.io import TorchCheckpoint, write_hf_dir
from hourjax.convert.rules import ConversionError, Rule, find_prefix, prefixed, to_params, to_torch
from hourjax.models import build

log = logging.getLogger("hourjax.convert")

SOURCE_KINDS = ("siglip", "siglip_text", "qwen2", "llava_onevision", "llava", "hour_llava")
MODEL_KIND = {"siglip": "siglip", "siglip_text": "siglip_text", "qwen2": "qwen2",
              "llava_onevision": "hour_llava", "llava": "hour_llava",
              "hour_llava": "hour_llava"}
_MODEL_TYPES = {"siglip_vision_model": "siglip", "siglip": "siglip", "siglip_text_model": "siglip_text",
                "qwen2": "qwen2",
                "llava_onevision": "llava_onevision", "llava": "llava", "llava_qwen": "llava",
                "hour_llava_qwen": "hour_llava"}
NO_MEMAUG = ("llava_onevision", "llava")      # LLaVA checkpoints: MemAug is initialised
MODEL_KINDS = ("hour_llava", "prolongvid")    # what a LLaVA checkpoint can become


@dataclasses.dataclass
class Converted:
  source_kind: str
  config: Any                  # the hourjax model config
  params: dict
  source_config: dict          # the checkpoint's config.json
  initialised: list[str]       # parameters the checkpoint did not have, initialised at random
  kind: str = ""               # the hourjax model kind (build.MODELS)

  def __post_init__(self):
    self.kind = self.kind or MODEL_KIND[self.source_kind]


def detect_kind(hf_config: dict) -> str:
  mt = hf_config.get("model_type")
  if mt not in _MODEL_TYPES:
    raise ValueError(f"config.json model_type={mt!r} is not one of {sorted(_MODEL_TYPES)}")
  return _MODEL_TYPES[mt]


def model_kind(kind: str, hf_config: dict, model: str | None = None) -> str:
  """The hourjax model a checkpoint kind becomes: `model` for the LLaVA layouts (default:
  prolongvid if the config records ProLongVid's pooling, else hour_llava)."""
  if kind not in NO_MEMAUG:
    if model not in (None, MODEL_KIND.get(kind)):
      raise ValueError(f"a {kind} checkpoint becomes a {MODEL_KIND.get(kind)} model, not {model!r}")
    return MODEL_KIND.get(kind, kind)
  if model is None:
    return "prolongvid" if llava.is_prolongvid(hf_config) else "hour_llava"
  if model not in MODEL_KINDS:
    raise ValueError(f"model={model!r}: a {kind} checkpoint becomes one of {MODEL_KINDS}")
  return model


def config_from_hf(kind: str, hf_config: dict, model: str | None = None, **overrides):
  if model_kind(kind, hf_config, model) == "prolongvid":
    to_cfg = llava_onevision.prolongvid_config_from_hf if kind == "llava_onevision" else llava.prolongvid_config_from_hf
    return to_cfg(hf_config, **overrides)
  return {"siglip": siglip.config_from_hf, "siglip_text": siglip.text_config_from_hf,
          "qwen2": qwen2.config_from_hf,
          "llava_onevision": llava_onevision.config_from_hf, "llava": llava.config_from_hf,
          "hour_llava": hour_llava.config_from_hf}[kind](hf_config, **overrides)


def table(kind: str, cfg, keys=None) -> tuple[list[Rule], tuple[str, ...]]:
  """(rules, ignored key regexes) for a checkpoint kind; `keys` (present tensors) lets the table
  find prefixes that vary between checkpoints; None = export names."""
  if kind == "siglip":
    prefix = "" if keys is None else find_prefix(keys, "embeddings.patch_embedding.weight")
    outside = rf"(?!{re.escape(prefix)}).*" if prefix else r"(?!)"
    return prefixed(siglip.rules(cfg), "", prefix), siglip.IGNORE + (outside,)
  if kind == "siglip_text":
    prefix = "" if keys is None else find_prefix(keys, "embeddings.token_embedding.weight")
    outside = rf"(?!{re.escape(prefix)}).*" if prefix else r"(?!)"
    return prefixed(siglip.text_rules(cfg), "", prefix), siglip.IGNORE + (outside,)
  if kind == "qwen2":
    decoder = "model." if keys is None else find_prefix(keys, "embed_tokens.weight")
    return qwen2.rules(cfg, decoder), qwen2.ignore(cfg)
  if kind == "llava_onevision":
    p = llava_onevision.EXPORT_PREFIXES if keys is None else llava_onevision.prefixes(keys)
    return llava_onevision.rules(cfg, p), llava_onevision.ignore(cfg, p)
  if kind == "llava":
    return llava.rules(cfg), llava.ignore(cfg)
  if kind == "hour_llava":
    return hour_llava.rules(cfg), hour_llava.ignore(cfg)
  raise ValueError(f"unknown checkpoint kind {kind!r}; expected one of {SOURCE_KINDS}")


def import_torch(path: str, kind: str | None = None, *, key: jax.Array | None = None, model: str | None = None,
                 scan_layers: bool = False, allow_nonfinite: bool = False, **config_overrides) -> Converted:
  """Convert a local PyTorch checkpoint (directory with config.json, or a weights file plus
  `kind`) into hourjax params, one tensor at a time; `scan_layers` gives the scanned layout;
  `model` picks what a LLaVA checkpoint becomes (`model_kind`).

  From LLaVA checkpoints, MemAug has no weights: it is initialised from `key` (required) as the
  official stage 1 does (normal(0.02) weights, zero biases, unit LayerNorms), and logged. A tied
  output head present in the file must equal the embeddings; NaN / inf weights are an error
  unless `allow_nonfinite`.
  """
  ckpt = TorchCheckpoint(path)
  if not ckpt.config:
    raise ConversionError(f"{path}: no config.json beside the weights (needed for the model's sizes)")
  kind = kind or detect_kind(ckpt.config)
  target = model_kind(kind, ckpt.config, model)
  cfg = config_from_hf(kind, ckpt.config, target, **config_overrides)
  keys = ckpt.keys()
  rules, ignore = table(kind, cfg, keys)
  expected = build.abstract_params(target, cfg)
  if kind in NO_MEMAUG:
    expected = {k: v for k, v in expected.items() if k != "memaug"}
  params = to_params(rules, keys, ckpt.get, expected, ignore=ignore, allow_nonfinite=allow_nonfinite)
  _check_tied_head(kind, cfg, keys, ckpt.get, params, path)
  initialised = []
  if target == "hour_llava" and kind in NO_MEMAUG and cfg.use_memaug:
    if key is None:
      raise ConversionError(f"{kind} checkpoints have no MemAug weights: pass key= to initialise them")
    params["memaug"] = jax.tree.map(np.asarray, build.init_params("memaug", cfg.memaug, key))
    initialised = ["memaug"]
    log.warning("MemAug is not in the %s checkpoint %s: initialised at random (%d blocks), as the "
                "official stage 1 does", kind, path, cfg.memaug.depth)
  if scan_layers:
    cfg, params = layout.with_scan(cfg, True), layout.stack_layers(params)
  return Converted(kind, cfg, params, ckpt.config, initialised, target)


def _check_tied_head(kind: str, cfg, keys, get, params: dict, path: str) -> None:
  """A tied model's file may still hold `lm_head.weight`; it is only a copy if it is equal."""
  llm = cfg if kind == "qwen2" else getattr(cfg, "llm", None)
  if llm is None or not llm.tie_word_embeddings:
    return
  embed = params["embed"]["embedding"] if kind == "qwen2" else params["llm"]["embed"]["embedding"]
  for k in keys:
    if k.endswith("lm_head.weight") and not np.array_equal(np.asarray(get(k)), np.asarray(embed)):
      raise ConversionError(f"{path}: {k} differs from the embeddings although tie_word_embeddings "
                            "is true (a tied model's head must be a copy of them)")


def export_torch(out_dir: str, kind: str, cfg, params: dict, source_config: dict | None = None,
                 dtype: Any = None) -> list[str]:
  """Write params as a directory that transformers' from_pretrained (HF kinds) or the official
  Hour-LLaVA code loads: safetensors shards + config.json. Returns the weight file names.
  Scanned or unrolled params both work."""
  if not hasattr(cfg, "memaug") and kind == "hour_llava":
    raise ValueError("a ProLongVid model has no MemAug: export it as kind 'llava' (the LLaVA-NeXT layout "
                     "of prolongvid/* checkpoints) or 'llava_onevision'")
  cfg, params = layout.with_scan(cfg, False), layout.unstack_layers(params)
  rules, _ = table(kind, cfg)
  if kind in NO_MEMAUG:
    if "memaug" in params:
      log.warning("the %s layout has no MemAug: its weights are not exported", kind)
    params = {k: v for k, v in params.items() if k != "memaug"}
    config = (llava_onevision if kind == "llava_onevision" else llava).config_to_hf(cfg, source_config)
  elif kind == "hour_llava":
    config = {**(source_config or {}), **hour_llava.config_to_hf(cfg)}
  else:
    to_hf = {"siglip": siglip.config_to_hf, "siglip_text": siglip.text_config_to_hf, "qwen2": qwen2.config_to_hf}
    config = {**(source_config or {}), **to_hf[kind](cfg)}
  return write_hf_dir(out_dir, to_torch(rules, params), config, dtype=dtype)
