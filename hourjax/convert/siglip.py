"""Key tables for transformers' SigLIP towers: vision (`SiglipVisionModel` / `SiglipModel.vision_model`)
and text (`SiglipTextModel` / `SiglipModel.text_model`)."""
from __future__ import annotations

from typing import Any

from hourjax.convert.rules import Rule, bias, conv, copy, fused_bias, fused_linear, linear
from hourjax.models.siglip import SiglipConfig, SiglipTextConfig


def _attention(ours: str, theirs: str, c: SiglipConfig) -> list[Rule]:
  h, n = c.hidden_size, c.num_heads
  d = h // n
  rules = []
  for o, t in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj")):
    rules += [linear(f"{ours}/{o}/kernel", f"{theirs}.{t}.weight", (h,), (n, d)),
              bias(f"{ours}/{o}/bias", f"{theirs}.{t}.bias", (n, d))]
  return rules + [linear(f"{ours}/o/kernel", f"{theirs}.out_proj.weight", (n, d), (h,)),
                  copy(f"{ours}/o/bias", f"{theirs}.out_proj.bias")]


def _mlp(ours: str, theirs: str, c: SiglipConfig) -> list[Rule]:
  h, m = c.hidden_size, c.intermediate_size
  return [linear(f"{ours}/fc1/kernel", f"{theirs}.fc1.weight", (h,), (m,)),
          copy(f"{ours}/fc1/bias", f"{theirs}.fc1.bias"),
          linear(f"{ours}/fc2/kernel", f"{theirs}.fc2.weight", (m,), (h,)),
          copy(f"{ours}/fc2/bias", f"{theirs}.fc2.bias")]


def _ln(ours: str, theirs: str) -> list[Rule]:
  return [copy(f"{ours}/scale", f"{theirs}.weight"), copy(f"{ours}/bias", f"{theirs}.bias")]


def _encoder(c: SiglipConfig) -> list[Rule]:
  r = []
  for i in range(c.num_layers):
    t = f"encoder.layers.{i}"
    r += _ln(f"layers_{i}/ln1", f"{t}.layer_norm1") + _ln(f"layers_{i}/ln2", f"{t}.layer_norm2")
    r += _attention(f"layers_{i}/attn", f"{t}.self_attn", c) + _mlp(f"layers_{i}/mlp", f"{t}.mlp", c)
  return r


def rules(c: SiglipConfig) -> list[Rule]:
  """Keys relative to the vision model (`embeddings.*`, `encoder.*`, `post_layernorm.*`, `head.*`)."""
  r = [conv("patch_embed/kernel", "embeddings.patch_embedding.weight"),
       copy("patch_embed/bias", "embeddings.patch_embedding.bias"),
       copy("pos_embed", "embeddings.position_embedding.weight")] + _encoder(c)
  if c.use_post_layernorm:
    r += _ln("post_ln", "post_layernorm")
  if c.use_head:
    h, n = c.hidden_size, c.num_heads
    shapes = [(n, h // n)] * 3
    names = [f"head/attn/{x}" for x in "qkv"]
    r += [copy("head/probe", "head.probe"),
          fused_linear([f"{p}/kernel" for p in names], "head.attention.in_proj_weight", h, shapes),
          fused_bias([f"{p}/bias" for p in names], "head.attention.in_proj_bias", shapes),
          linear("head/attn/o/kernel", "head.attention.out_proj.weight", (n, h // n), (h,)),
          copy("head/attn/o/bias", "head.attention.out_proj.bias")]
    r += _ln("head/ln", "head.layernorm") + _mlp("head/mlp", "head.mlp", c)
  return r


IGNORE = (r".*embeddings\.position_ids",)


def config_from_hf(d: dict[str, Any], **overrides) -> SiglipConfig:
  d = d.get("vision_config", d)
  fields = dict(hidden_size=d.get("hidden_size", 768), intermediate_size=d.get("intermediate_size", 3072),
                num_layers=d.get("num_hidden_layers", 12), num_heads=d.get("num_attention_heads", 12),
                image_size=d.get("image_size", 224), patch_size=d.get("patch_size", 16),
                layer_norm_eps=d.get("layer_norm_eps", 1e-6), use_head=d.get("vision_use_head", True))
  act = d.get("hidden_act", "gelu_pytorch_tanh")
  if act != "gelu_pytorch_tanh":
    raise ValueError(f"SigLIP hidden_act {act!r} is not supported (only gelu_pytorch_tanh)")
  return SiglipConfig(**{**fields, **overrides})


def config_to_hf(c: SiglipConfig) -> dict[str, Any]:
  return dict(model_type="siglip_vision_model", hidden_size=c.hidden_size,
              intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers,
              num_attention_heads=c.num_heads, image_size=c.image_size, patch_size=c.patch_size,
              layer_norm_eps=c.layer_norm_eps, hidden_act="gelu_pytorch_tanh",
              vision_use_head=c.use_head, num_channels=3, attention_dropout=0.0)


def text_rules(c: SiglipTextConfig) -> list[Rule]:
  """Keys relative to the text model (`embeddings.*`, `encoder.*`, `final_layer_norm.*`, `head.*`)."""
  return ([copy("tok_embed/embedding", "embeddings.token_embedding.weight"),
           copy("pos_embed", "embeddings.position_embedding.weight")] + _encoder(c.encoder)
          + _ln("final_ln", "final_layer_norm")
          + [linear("head/kernel", "head.weight", (c.hidden_size,), (c.projection_size,)),
             copy("head/bias", "head.bias")])


def text_config_from_hf(d: dict[str, Any], **overrides) -> SiglipTextConfig:
  d = d.get("text_config", d)
  act = d.get("hidden_act", "gelu_pytorch_tanh")
  if act != "gelu_pytorch_tanh":
    raise ValueError(f"SigLIP hidden_act {act!r} is not supported (only gelu_pytorch_tanh)")
  hidden = d.get("hidden_size", 768)
  fields = dict(vocab_size=d.get("vocab_size", 32000), hidden_size=hidden,
                intermediate_size=d.get("intermediate_size", 3072), num_layers=d.get("num_hidden_layers", 12),
                num_heads=d.get("num_attention_heads", 12), max_positions=d.get("max_position_embeddings", 64),
                projection_size=d.get("projection_size") or hidden, layer_norm_eps=d.get("layer_norm_eps", 1e-6))
  return SiglipTextConfig(**{**fields, **overrides})


def text_config_to_hf(c: SiglipTextConfig) -> dict[str, Any]:
  return dict(model_type="siglip_text_model", vocab_size=c.vocab_size, hidden_size=c.hidden_size,
              intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers,
              num_attention_heads=c.num_heads, max_position_embeddings=c.max_positions,
              projection_size=c.projection_size, layer_norm_eps=c.layer_norm_eps, hidden_act="gelu_pytorch_tanh",
              attention_dropout=0.0)
