"""What every inference command opens first: a video model's checkpoint (Hour-LLaVA or ProLongVid)
and its tokenizer.

    loaded = open_model("/ckpt/hj-hl7b-s3", tokenizer="/ckpt/Qwen2-7B-Instruct")
    loaded.model, loaded.params, loaded.cfg, loaded.tokenizer
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax

from hourjax.convert.io import load_params, read_meta
from hourjax.data import chat
from hourjax.models import build
from hourjax.models.hour_llava import HourLlavaConfig
from hourjax.models.prolongvid import ProLongVidConfig


@dataclasses.dataclass(frozen=True)
class Loaded:
  model: Any
  params: Any
  cfg: HourLlavaConfig | ProLongVidConfig
  tokenizer: chat.ChatTokenizer | None


def open_model(path: str, *, tokenizer: str | None = "", deterministic: bool = False) -> Loaded:
  """An hourjax Hour-LLaVA checkpoint (converted or trained) and its tokenizer (`tokenizer`, or the
  checkpoint directory when empty; None: no tokenizer). `deterministic` replaces the official
  random spatial forgetting by the uniform grid."""
  meta = read_meta(path)
  kind = meta["kind"]
  if kind not in build.VISUAL_KINDS:
    raise ValueError(f"{path} holds a {kind!r} model; expected one of {build.VISUAL_KINDS}")
  cfg = build.config_from_dict(kind, meta["config"])
  if deterministic and kind == "hour_llava":      # ProLongVid's model has nothing random
    cfg = dataclasses.replace(cfg, forgetting=dataclasses.replace(cfg.forgetting, spatial="uniform"))
  tok = None if tokenizer is None else chat.load_tokenizer(tokenizer or path)
  if tok is not None:
    tok.check_vocab(cfg.llm.vocab_size)
  # Inference runs on one device: a checkpoint saved from a mesh is restored onto the first.
  params = load_params(path, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  return Loaded(build.build(kind, cfg), params, cfg, tok)
