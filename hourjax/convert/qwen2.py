"""Key table for transformers' `Qwen2ForCausalLM` (also the LLM inside LLaVA-OneVision and Hour-LLaVA)."""
from __future__ import annotations

from typing import Any

from hourjax.convert.rules import Rule, bias, copy, linear
from hourjax.models.qwen2 import Qwen2Config


def rules(c: Qwen2Config, decoder: str = "model.", head: str | None = "lm_head.weight") -> list[Rule]:
  """decoder: prefix of `embed_tokens`/`layers`/`norm`; head: key of the untied output head."""
  h, n, k, d, m = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size
  r = [copy("embed/embedding", f"{decoder}embed_tokens.weight")]
  for i in range(c.num_layers):
    o, t = f"layers_{i}", f"{decoder}layers.{i}"
    for name, heads in (("q", n), ("k", k), ("v", k)):
      r += [linear(f"{o}/attn/{name}/kernel", f"{t}.self_attn.{name}_proj.weight", (h,), (heads, d)),
            bias(f"{o}/attn/{name}/bias", f"{t}.self_attn.{name}_proj.bias", (heads, d))]
    r += [linear(f"{o}/attn/o/kernel", f"{t}.self_attn.o_proj.weight", (n, d), (h,)),
          linear(f"{o}/mlp/gate/kernel", f"{t}.mlp.gate_proj.weight", (h,), (m,)),
          linear(f"{o}/mlp/up/kernel", f"{t}.mlp.up_proj.weight", (h,), (m,)),
          linear(f"{o}/mlp/down/kernel", f"{t}.mlp.down_proj.weight", (m,), (h,)),
          copy(f"{o}/ln1/scale", f"{t}.input_layernorm.weight"),
          copy(f"{o}/ln2/scale", f"{t}.post_attention_layernorm.weight")]
  r.append(copy("norm/scale", f"{decoder}norm.weight"))
  if not c.tie_word_embeddings and head is not None:
    r.append(linear("lm_head/kernel", head, (h,), (c.vocab_size,)))
  return r


def ignore(c: Qwen2Config, head: str = "lm_head.weight") -> tuple[str, ...]:
  """Extra keys that carry nothing: rotary buffers, and the head copy of a tied model."""
  extra = (r".*rotary_emb\.inv_freq",)
  return extra + ((head.replace(".", r"\."),) if c.tie_word_embeddings else ())


def config_from_hf(d: dict[str, Any], **overrides) -> Qwen2Config:
  d = d.get("text_config", d)
  theta = d.get("rope_theta") or (d.get("rope_parameters") or {}).get("rope_theta", 1e6)
  scaling = d.get("rope_scaling")
  if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
    raise ValueError(f"Qwen2 rope_scaling {scaling} is not supported (only plain RoPE)")
  if d.get("use_sliding_window"):
    raise ValueError("Qwen2 use_sliding_window=true is not supported")
  fields = dict(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                intermediate_size=d["intermediate_size"], num_layers=d["num_hidden_layers"],
                num_heads=d["num_attention_heads"],
                num_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
                rope_theta=float(theta), rms_norm_eps=d.get("rms_norm_eps", 1e-6),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                initializer_range=float(d.get("initializer_range", 0.02)))
  return Qwen2Config(**{**fields, **overrides})


def config_to_hf(c: Qwen2Config) -> dict[str, Any]:
  return dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=c.vocab_size,
              hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
              num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
              num_key_value_heads=c.num_kv_heads, rope_theta=c.rope_theta,
              rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
              rms_norm_eps=c.rms_norm_eps, tie_word_embeddings=c.tie_word_embeddings,
              hidden_act="silu", max_position_embeddings=32768, attention_dropout=0.0,
              use_sliding_window=False, initializer_range=c.initializer_range)
