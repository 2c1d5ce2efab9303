"""The official Hour-LLaVA stage-3 training step, timed: run by `tools.bench.vs_official` in the
official code's own environment (transformers 4.46, no jax, no hourjax), never imported by hourjax.

  .venv-official/bin/python -m tools.bench.official_step --official ../hourllava --work DIR --steps 3

DIR holds what `vs_official` wrote: `model/` (the weights as the official code saves them),
`batch.npz` (input_ids, labels) and `features_<i>.npy` (sample i's cached SigLIP features
[T_i, 27, 27, 1152], the format the official loader reads). The step is the official one
unmodified: `HourLlavaQwenForCausalLM.forward` with `images=` the cached features, its loss,
backward, global-norm clipping at 1.0 and AdamW at the stage's per-module rates (DeepSpeed's
optimizer is AdamW too). flash-attn has no CPU build: the stand-in below computes the same exact
attention with torch's fused CPU kernel (`scaled_dot_product_attention`), and the same
rotary embedding (GPT-NeoX halves on the first `2 * cos.shape[-1]` dims). Prints one JSON line.
"""
from __future__ import annotations

import argparse
import importlib.machinery
import json
import os
import sys
import time
import types


def _rotate(x, cos, sin):
  """flash-attn's non-interleaved rotary on x [B, S, H, D]: dims [0:r/2] and [r/2:r] as pairs."""
  import torch
  r = 2 * cos.shape[-1]
  x1, x2, rest = x[..., : r // 2], x[..., r // 2: r], x[..., r:]
  c, s = cos[:, None, :], sin[:, None, :]
  return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c, rest], -1)


def install_flash_attn_stand_in() -> None:
  """Register modules `flash_attn.modules.mha` and `flash_attn.layers.rotary` with the names
  MemAug imports, computing exactly what flash-attn computes (no dropout, no mask)."""
  import torch
  import torch.nn.functional as F

  class FlashCrossAttention(torch.nn.Module):
    """q [B, Sq, H, D], kv [B, Sk, 2, Hkv, D] -> [B, Sq, H, D]; query head h reads kv head
    h // (H / Hkv), softmax scale 1/sqrt(D) unless given."""

    def __init__(self, causal=False, softmax_scale=None, attention_dropout=0.0):
      super().__init__()
      self.causal, self.softmax_scale = causal, softmax_scale

    def forward(self, q, kv, **_):
      k, v = kv.unbind(2)
      out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=self.causal, scale=self.softmax_scale, enable_gqa=True)
      return out.transpose(1, 2)

  def apply_rotary_emb(x, cos, sin, interleaved=False, inplace=False, **_):
    if interleaved:
      raise NotImplementedError("the official MemAug uses non-interleaved rotary")
    out = _rotate(x, cos, sin)
    return x.copy_(out) if inplace else out

  def apply_rotary_emb_kv_(kv, cos, sin, interleaved=False, **_):
    kv[:, :, 0] = _rotate(kv[:, :, 0], cos, sin)        # keys only; values pass through
    return kv

  def apply_rotary_emb_qkv_(*_, **__):
    raise NotImplementedError("not used by the official MemAug")

  names = ("flash_attn", "flash_attn.modules", "flash_attn.modules.mha", "flash_attn.layers",
           "flash_attn.layers.rotary")
  mods = {name: types.ModuleType(name) for name in names}
  mods["flash_attn.modules.mha"].FlashCrossAttention = FlashCrossAttention
  mods["flash_attn.modules.mha"].FlashSelfAttention = FlashCrossAttention
  rotary = mods["flash_attn.layers.rotary"]
  rotary.apply_rotary_emb, rotary.apply_rotary_emb_kv_ = apply_rotary_emb, apply_rotary_emb_kv_
  rotary.apply_rotary_emb_qkv_ = apply_rotary_emb_qkv_
  for name, m in mods.items():
    m.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = m


def load_official(official: str, model_dir: str):
  """The official model class loaded from model_dir, float32, SDPA attention in the LLM; the
  vision tower is not built (`delay_load`: stage 3 reads cached features)."""
  import torch
  # transformers decides once, at import, whether flash-attn is installed; import the model
  # families the official code touches before the stand-in exists, so that they do not look for it.
  import transformers.models.clip.modeling_clip  # noqa: F401
  import transformers.models.llama.modeling_llama  # noqa: F401
  import transformers.models.qwen2.modeling_qwen2  # noqa: F401
  install_flash_attn_stand_in()
  sys.path.insert(0, os.path.abspath(official))
  from hourllava.model.language_model.hour_llava_qwen import HourLlavaQwenConfig, HourLlavaQwenForCausalLM
  cfg = HourLlavaQwenConfig.from_pretrained(model_dir)
  cfg.delay_load = True
  model = HourLlavaQwenForCausalLM.from_pretrained(model_dir, config=cfg, torch_dtype=torch.float32,
                                                   attn_implementation="sdpa")
  # what the training script's `initialize_vision_modules` sets (it also loads the tower, from the hub)
  model.get_model().spatial_sampling_type = getattr(cfg, "spatial_sampling_type", "random")
  return model.train()


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--official", required=True, help="a checkout of github.com/jylins/hourllava")
  p.add_argument("--work", required=True)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--lr", default="projector=1e-4,memaug=1e-4,llm=2e-5")
  a = p.parse_args(argv)
  if not os.path.isdir(os.path.join(a.official, "hourllava", "model")):
    raise SystemExit(f"--official {a.official!r}: not a checkout of jylins/hourllava (no hourllava/model)")
  import numpy as np
  import torch
  import torch.distributed as dist
  from tools.bench.common import step_peak_bytes

  if not dist.is_initialized():       # the official code calls dist.barrier() in every forward
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
  model = load_official(a.official, os.path.join(a.work, "model"))
  data = np.load(os.path.join(a.work, "batch.npz"))
  ids, labels = torch.from_numpy(data["input_ids"]).long(), torch.from_numpy(data["labels"]).long()
  images = [torch.from_numpy(np.load(os.path.join(a.work, f"features_{i}.npy"))) for i in range(ids.shape[0])]
  lr = dict(item.split("=") for item in a.lr.split(","))
  groups = {"projector": [], "memaug": [], "llm": []}
  for name, param in model.named_parameters():
    group = ("projector" if "mm_projector" in name else "memaug" if "vision_resampler" in name else "llm")
    groups[group].append(param)
  params = [q for g in groups.values() for q in g]
  opt = torch.optim.AdamW([{"params": groups[g], "lr": float(lr[g])} for g in groups],
                          betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
  losses, times = [], []

  def step():
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, images=images,
                 image_sizes=[[384, 384]] * len(images), modalities=["video"] * len(images)).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return float(loss.detach())

  def run_steps():
    for _ in range(a.steps):
      t = time.perf_counter()
      losses.append(step())
      times.append(time.perf_counter() - t)

  peak = step_peak_bytes(run_steps)         # above the loaded model and batch
  print(json.dumps({"losses": losses, "step_s": times, "peak_bytes": peak, "torch": torch.__version__,
                    "threads": torch.get_num_threads()}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
