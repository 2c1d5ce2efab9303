"""Build any hourjax model from its kind and config; parameter shapes without allocation."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hourjax.models import anyres
from hourjax.models.forgetting import ForgettingConfig, video_layout
from hourjax.constants import IMAGE_TOKEN_INDEX
from hourjax.models.hour_llava import HourLlava, HourLlavaConfig
from hourjax.models.memaug import MemAug, MemAugConfig
from hourjax.models.prolongvid import ProLongVid, ProLongVidConfig
from hourjax.models.qwen2 import Qwen2, Qwen2Config
from hourjax.models.siglip import SiglipConfig, SiglipText, SiglipTextConfig, SiglipVision
from hourjax.ops.attention import SEQUENCE_PARALLEL

CONFIGS = {"siglip": SiglipConfig, "siglip_text": SiglipTextConfig, "qwen2": Qwen2Config, "memaug": MemAugConfig,
           "hour_llava": HourLlavaConfig, "prolongvid": ProLongVidConfig}
MODELS = {"siglip": SiglipVision, "siglip_text": SiglipText, "qwen2": Qwen2, "memaug": MemAug,
          "hour_llava": HourLlava, "prolongvid": ProLongVid}
VISUAL_KINDS = ("hour_llava", "prolongvid")     # video language models (the rest are their parts)


def config_from_dict(kind: str, d: dict[str, Any]):
  """Inverse of dataclasses.asdict for the model configs (nested for the video models)."""
  if kind == "prolongvid":
    return ProLongVidConfig(vision=SiglipConfig(**d["vision"]), llm=Qwen2Config(**d["llm"]),
                            **{k: v for k, v in d.items() if k not in ("vision", "llm")})
  if kind == "hour_llava":
    return HourLlavaConfig(
        vision=SiglipConfig(**d["vision"]), llm=Qwen2Config(**d["llm"]), memaug=MemAugConfig(**d["memaug"]),
        forgetting=ForgettingConfig(**d["forgetting"]),
        **{k: v for k, v in d.items() if k not in ("vision", "llm", "memaug", "forgetting")})
  if kind not in CONFIGS:
    raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(CONFIGS)}")
  return CONFIGS[kind](**d)


def build(kind: str, cfg, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32) -> nn.Module:
  return MODELS[kind](cfg, dtype=dtype, param_dtype=param_dtype)


def _init_args(kind: str, cfg) -> tuple[tuple, dict]:
  if kind == "siglip":
    return (jnp.zeros((1, cfg.image_size, cfg.image_size, 3)),), {}
  if kind == "qwen2":
    return (jnp.zeros((1, 2), jnp.int32),), {}
  if kind == "siglip_text":
    return (jnp.zeros((1, cfg.max_positions), jnp.int32),), {}
  if kind == "memaug":
    x = jnp.zeros((1, 2, cfg.hidden_size))
    pos = jnp.zeros((1, 2), jnp.int32)
    return (x, x, pos, pos), {}
  size = cfg.vision.image_size
  ids = jnp.array([[1, IMAGE_TOKEN_INDEX, 2]], jnp.int32)
  if kind == "prolongvid":
    return (ids, jnp.ones_like(ids)), dict(layout=video_layout([1], cfg.forgetting),
                                           pixels=jnp.zeros((1, 1, size, size, 3)))
  layout = anyres.image_layout([[(size, size, None)]], cfg.vision.patches_per_side)
  return (ids, jnp.ones_like(ids)), dict(layout=layout, pixels=jnp.zeros((1, 1, size, size, 3)), modality="image")


def _dense_attention(kind: str, cfg):
  """The same parameters with plain attention: initialising runs a 2-token dummy input, which a
  ring over an active mesh cannot split (parameters do not depend on the kernel)."""
  import dataclasses
  if kind == "hour_llava":
    return dataclasses.replace(cfg, llm=_dense_attention("qwen2", cfg.llm),
                               memaug=_dense_attention("memaug", cfg.memaug))
  if kind == "prolongvid":
    return dataclasses.replace(cfg, llm=_dense_attention("qwen2", cfg.llm))
  if getattr(cfg, "attention", None) in SEQUENCE_PARALLEL:
    return dataclasses.replace(cfg, attention="xla")
  return cfg


def init_fn(kind: str, cfg, param_dtype: Any = jnp.float32):
  """key -> boxed variables (params with their logical axis names)."""
  args, kwargs = _init_args(kind, cfg)
  model = build(kind, _dense_attention(kind, cfg), param_dtype=param_dtype)
  return lambda key: model.init(key, *args, **kwargs)


def init_params(kind: str, cfg, key: jax.Array, param_dtype: Any = jnp.float32) -> dict:
  """Random parameters (plain arrays) with the models' own initialisers."""
  return nn.unbox(jax.jit(init_fn(kind, cfg, param_dtype))(key))["params"]


def abstract_params(kind: str, cfg, param_dtype: Any = jnp.float32) -> dict:
  """ShapeDtypeStructs of every parameter, without allocating anything."""
  return nn.unbox(jax.eval_shape(init_fn(kind, cfg, param_dtype), jax.random.key(0)))["params"]


def init_sharded(kind: str, cfg, mesh: Any, key: jax.Array, param_dtype: Any = None) -> dict:
  """Random parameters created directly in their shards on `mesh` (jit with out_shardings),
  never whole on a host."""
  from hourjax.parallel import mesh as mesh_lib
  kw = {} if param_dtype is None else {"param_dtype": param_dtype}
  specs = mesh_lib.param_specs(logical_specs(kind, cfg), abstract_params(kind, cfg, **kw), mesh)
  init = init_fn(kind, cfg, **kw)
  return jax.jit(lambda k: nn.unbox(init(k))["params"], out_shardings=mesh_lib.shardings(specs, mesh))(key)


def logical_specs(kind: str, cfg) -> dict:
  """The logical axis names of every parameter (PartitionSpecs of logical names)."""
  boxed = jax.eval_shape(init_fn(kind, cfg), jax.random.key(0))
  return nn.get_partition_spec(boxed)["params"]


def count_params(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))
