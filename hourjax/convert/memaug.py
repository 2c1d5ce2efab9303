"""Key table for the official MemAug module (`model.vision_resampler.*` inside Hour-LLaVA)."""
from __future__ import annotations

from hourjax.convert.rules import Rule, bias, copy, fused_bias, fused_linear, linear
from hourjax.models.memaug import MemAugConfig


def rules(c: MemAugConfig) -> list[Rule]:
  """Keys relative to the module (`layers.{i}.self_attn.Wqkv.weight`, ...)."""
  h, n, k, d = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
  m = c.mlp_ratio * h
  r = []
  for i in range(c.depth):
    o, t = f"layers_{i}", f"layers.{i}"
    qkv = [f"{o}/self_attn/{x}" for x in "qkv"]
    kv = [f"{o}/cross_attn/{x}" for x in "kv"]
    r += [fused_linear([f"{p}/kernel" for p in qkv], f"{t}.self_attn.Wqkv.weight", h,
                       [(n, d), (k, d), (k, d)]),
          fused_bias([f"{p}/bias" for p in qkv], f"{t}.self_attn.Wqkv.bias", [(n, d), (k, d), (k, d)]),
          linear(f"{o}/cross_attn/q/kernel", f"{t}.cross_attn.Wq.weight", (h,), (n, d)),
          bias(f"{o}/cross_attn/q/bias", f"{t}.cross_attn.Wq.bias", (n, d)),
          fused_linear([f"{p}/kernel" for p in kv], f"{t}.cross_attn.Wkv.weight", h, [(k, d), (k, d)]),
          fused_bias([f"{p}/bias" for p in kv], f"{t}.cross_attn.Wkv.bias", [(k, d), (k, d)])]
    for attn in ("self_attn", "cross_attn"):
      r += [linear(f"{o}/{attn}/o/kernel", f"{t}.{attn}.Wo.weight", (n, d), (h,)),
            copy(f"{o}/{attn}/o/bias", f"{t}.{attn}.Wo.bias")]
    r += [linear(f"{o}/fc1/kernel", f"{t}.mlp.0.weight", (h,), (m,)), copy(f"{o}/fc1/bias", f"{t}.mlp.0.bias"),
          linear(f"{o}/fc2/kernel", f"{t}.mlp.2.weight", (m,), (h,)), copy(f"{o}/fc2/bias", f"{t}.mlp.2.bias")]
    for j in (1, 2, 3):
      r += [copy(f"{o}/norm{j}/scale", f"{t}.norm{j}.weight"), copy(f"{o}/norm{j}/bias", f"{t}.norm{j}.bias")]
  return r
