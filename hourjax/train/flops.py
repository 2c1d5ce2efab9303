"""Analytic FLOPs of one training step, from the static shapes the step compiles for.

Matmuls count 2 FLOPs per multiply-add. Attention counts QKᵀ and PV; causal attention counts
half of them (what a kernel that skips masked blocks does). Training is 3x the forward pass
(forward, then two matmuls per matmul backward) for everything upstream of a trainable
parameter; a frozen SigLIP on the pixel path runs forward only. Rematerialisation is not
counted: these are model FLOPs, the numerator of MFU. The vocabulary head of a visual batch counts
its text positions only: visual tokens are never targets, and the loss skips them.
"""
from __future__ import annotations

from hourjax.models.hour_llava import HourLlavaConfig
from hourjax.models.memaug import MemAugConfig
from hourjax.models.prolongvid import ProLongVidConfig
from hourjax.models.qwen2 import Qwen2Config
from hourjax.models.siglip import SiglipConfig


def _attn_proj(h: int, heads: int, kv_heads: int, head_dim: int) -> tuple[int, int]:
  """Multiply-adds per token of (q and o) and of (k and v)."""
  return 2 * h * heads * head_dim, 2 * h * kv_heads * head_dim


def qwen2_forward(c: Qwen2Config, batch: int, length: int, causal: bool = True,
                  head_tokens: int | None = None) -> float:
  """One forward pass on [batch, length] tokens; the vocabulary head on `head_tokens` of them
  (default all: a visual batch's loss runs it on its text positions only)."""
  qo, kv = _attn_proj(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim)
  per_token = qo + kv + 3 * c.hidden_size * c.intermediate_size
  attn = 2 * length * length * c.num_heads * c.head_dim * (0.5 if causal else 1.0)
  layer = 2 * per_token * length + 2 * attn
  head = 2 * c.hidden_size * c.vocab_size * (length if head_tokens is None else min(head_tokens, length))
  return batch * (c.num_layers * layer + head)


def memaug_forward(c: MemAugConfig, batch: int, queries: int, memory: int) -> float:
  qo, kv = _attn_proj(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim)
  mlp = 2 * c.hidden_size * c.mlp_ratio * c.hidden_size
  dense = (qo + kv + qo + mlp) * queries + kv * memory
  attn = 2 * c.num_heads * c.head_dim * (queries * queries + queries * memory)
  return batch * c.depth * 2 * (dense + attn)


def siglip_forward(c: SiglipConfig, images: int) -> float:
  t, h = c.num_patches, c.hidden_size
  per_token = 4 * h * h + 2 * h * c.intermediate_size
  layer = 2 * per_token * t + 4 * t * t * h
  patch = 2 * (c.patch_size ** 2 * 3) * h * t
  return images * (c.num_layers * layer + patch)


def hour_llava_step(cfg: HourLlavaConfig, batch: int, text_len: int, frames: int, memory_frames: int,
                    retained_frames: int, pixels: bool, vision_trainable: bool = False) -> dict[str, float]:
  """Training FLOPs by component for one step on [batch] samples of the given bucket."""
  g = cfg.pool_size ** 2
  k = cfg.forgetting.spatial_count(g)
  visual = retained_frames * (k + 1)
  memory = memory_frames * (g + 1) if cfg.forgetting.memory_scale else visual
  return _hour_llava(cfg, batch, text_len, frames, g, visual, memory, pixels, vision_trainable)


def hour_llava_image_step(cfg: HourLlavaConfig, batch: int, text_len: int, crops: int, memory: int,
                          queries: int, pixels: bool, vision_trainable: bool = False) -> dict[str, float]:
  """An image batch's step: `crops` unpooled crops per sample, `memory` tokens (the layout's
  width) and `queries` decayed queries (anyres.query_width), as the model's static shapes."""
  return _hour_llava(cfg, batch, text_len, crops, cfg.vision.num_patches, queries,
                     memory if cfg.forgetting.memory_scale else queries, pixels, vision_trainable)


def _hour_llava(cfg, batch, text_len, frames, tokens_per_frame, visual, memory, pixels, vision_trainable):
  width = cfg.vision.hidden_size + cfg.llm.hidden_size
  out = {
      "llm": 3 * qwen2_forward(cfg.llm, batch, text_len - 1 + visual, head_tokens=text_len),
      "memaug": 3 * memaug_forward(cfg.memaug, batch, text_len + visual, memory) if cfg.use_memaug else 0.0,
      "projector": 3 * batch * frames * tokens_per_frame * 2 * width * cfg.llm.hidden_size,
      "vision": (3 if vision_trainable else 1) * siglip_forward(cfg.vision, batch * frames) if pixels else 0.0,
  }
  out["total"] = sum(out.values())
  return out


def prolongvid_step(cfg: ProLongVidConfig, batch: int, text_len: int, crops: int, visual: int,
                    pixels: bool, vision_trainable: bool = False) -> dict[str, float]:
  """Training FLOPs by component for one step: `crops` frames or image crops per sample, all of
  whose 729 tokens go through the projector, and `visual` LLM tokens (the bucket's width)."""
  g = cfg.vision.num_patches
  out = {
      "llm": 3 * qwen2_forward(cfg.llm, batch, text_len - 1 + visual, head_tokens=text_len),
      "projector": 3 * batch * crops * g * 2 * (cfg.vision.hidden_size + cfg.llm.hidden_size) * cfg.llm.hidden_size,
      "vision": (3 if vision_trainable else 1) * siglip_forward(cfg.vision, batch * crops) if pixels else 0.0,
  }
  out["total"] = sum(out.values())
  return out


def decoder_step(cfg: Qwen2Config, batch: int, length: int) -> dict[str, float]:
  llm = 3 * qwen2_forward(cfg, batch, length)
  return {"llm": llm, "total": llm}
