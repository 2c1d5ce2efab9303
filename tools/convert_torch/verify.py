"""Check converted weights against PyTorch: print ‖out−ref‖/‖ref‖ for every output.

  # official-code fixtures (format: ../shared/fixtures/README.md)
  python -m tools.convert_torch.verify --fixture ../shared/fixtures/memaug_official_small.safetensors
  python -m tools.convert_torch.verify --fixture ../shared/fixtures/hourllava_official_e2e_small.safetensors
  # an HF model directory: transformers (torch, float32) vs hourjax on seeded random inputs
  python -m tools.convert_torch.verify --hf-dir /path/to/Qwen2-7B-Instruct

Exits 1 if any relative error is above --tol.
"""
from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np

from hourjax.convert import api
from hourjax.convert import memaug as memaug_table
from hourjax.convert.hour_llava import config_from_hf as hour_llava_config
from hourjax.convert.io import SafetensorsFile
from hourjax.convert.rules import to_params
from hourjax.models import build
from hourjax.models.forgetting import video_layout
from hourjax.models.memaug import MemAugConfig
from hourjax.numerics import rel_err
from hourjax.ops.loss import next_token_loss


def _state_dict(f: SafetensorsFile) -> dict[str, np.ndarray]:
  return {k[len("state_dict."):]: f.get(k) for k in f.keys() if k.startswith("state_dict.")}


def verify_fixture(path: str) -> dict[str, float]:
  f = SafetensorsFile(path)
  if "outputs.y" in f.keys():
    return _verify_memaug(path)
  if "train.logits" in f.keys():
    return _verify_end_to_end(f, json.loads(f.metadata["config"]), _state_dict(f))
  raise ValueError(f"{path}: neither a MemAug fixture (outputs.y) nor an end-to-end one (train.logits)")


def load_memaug_fixture(path: str):
  """(config, converted params, batched inputs, reference output) of a MemAug-only fixture."""
  f = SafetensorsFile(path)
  c = json.loads(f.metadata["config"])
  cfg = MemAugConfig(hidden_size=c["hidden_size"], num_heads=c["num_attention_heads"],
                     num_kv_heads=c["num_key_value_heads"], depth=c["memaug_depth"], rope_theta=c["rope_theta"])
  sd = _state_dict(f)
  params = to_params(memaug_table.rules(cfg), sd.keys(), sd.__getitem__, build.abstract_params("memaug", cfg))
  inputs = [f.get(f"inputs.{k}")[None] for k in ("x_q", "x_kv", "q_position_ids", "k_position_ids")]
  return cfg, params, inputs, f.get("outputs.y")


def _verify_memaug(path):
  cfg, params, inputs, ref = load_memaug_fixture(path)
  y = _apply(build.build("memaug", cfg), params, *inputs)
  return {"outputs.y": rel_err(y[0], ref)}


def _verify_end_to_end(f, c, sd):
  cfg = hour_llava_config(c)
  rules, ignore = api.table("hour_llava", cfg)
  params = to_params(rules, sd.keys(), sd.__getitem__, build.abstract_params("hour_llava", cfg), ignore=ignore)
  model = build.build("hour_llava", cfg)
  pixels = f.get("inputs.pixel_values").transpose(0, 2, 3, 1)[None]
  layout = video_layout([pixels.shape[1]], cfg.forgetting)
  errors = {}
  for mode in ("train", "infer"):
    labels = f.get("train.labels") if mode == "train" else None
    out, inter = jax.jit(lambda p, ids, mask, lab: model.apply(
        {"params": p}, ids, mask, lab, layout=layout, pixels=pixels, mutable="intermediates"))(
            params, f.get(f"{mode}.input_ids"), f.get(f"{mode}.attention_mask"), labels)
    # The model's own sows (tuples); submodules' (e.g. MemAug's recall_weights) are nested dicts.
    got = {k: v[0] for k, v in inter["intermediates"].items() if isinstance(v, tuple)}
    ref_q = f.get(f"{mode}.memaug_query")
    pairs = {f"{mode}.memaug_query": got["memaug_query"][0, :len(ref_q)],
             f"{mode}.memaug_output": got["memaug_output"][0, :len(ref_q)],
             f"{mode}.memaug_visual_output": got["memaug_visual_output"][0],
             f"{mode}.inputs_embeds": got["inputs_embeds"], f"{mode}.logits": out["logits"]}
    if mode == "train":
      pairs = {"debug.siglip_features": got["siglip_features"], "debug.pooled_features": got["pooled_features"],
               "debug.projected_features": got["projected"][0], "debug.memory": got["memory"][0],
               "debug.visual_queries": got["decayed_queries"][0], **pairs}
      total, count = next_token_loss(out["logits"], out["labels"])
      pairs["train.loss"] = total / count
      if not np.array_equal(np.asarray(out["labels"]), f.get("train.llm_labels")):
        raise AssertionError("train.llm_labels differ")
    for name, value in pairs.items():
      errors[name] = rel_err(value, f.get(name))
    for name, value in ((f"{mode}.memaug_query_position_ids", got["memaug_query_position_ids"][0]),
                        ("debug.visual_query_position_ids", got["decayed_query_position_ids"][0])):
      ref = f.get(name)
      if not np.array_equal(np.asarray(value)[:len(ref)], ref):
        raise AssertionError(f"{name} differ")
  return errors


def _apply(model, params, *args, **static):
  """`model.apply` under jit: run eagerly, a model dispatches thousands of small ops one by one."""
  return jax.jit(lambda p, a: model.apply({"params": p}, *a, **static))(params, args)


def verify_hf_dir(path: str, seed: int = 0, kind: str | None = None) -> dict[str, float]:
  """transformers (float32) vs hourjax on the same seeded random inputs (`kind`: as
  convert.py's, e.g. "siglip_text" for a SiglipModel's text tower)."""
  import torch
  import transformers
  conv = api.import_torch(path, kind, key=jax.random.key(seed))
  rng = np.random.default_rng(seed)
  kind, cfg = conv.source_kind, conv.config
  errors = {}
  with torch.no_grad():
    if kind == "siglip":
      ref = transformers.SiglipVisionModel.from_pretrained(path, dtype=torch.float32).eval()
      px = rng.uniform(-1, 1, (2, 3, cfg.image_size, cfg.image_size)).astype(np.float32)
      r = ref(torch.from_numpy(px), output_hidden_states=True)
      model = build.build("siglip", cfg)
      out = _apply(model, conv.params, px.transpose(0, 2, 3, 1))
      errors["last_hidden_state"] = rel_err(out["last_hidden_state"], r.last_hidden_state.numpy())
      if cfg.use_head:
        errors["pooler_output"] = rel_err(out["pooler_output"], r.pooler_output.numpy())
      mid = _apply(model, conv.params, px.transpose(0, 2, 3, 1), feature_layer=-1)
      errors["hidden_states[-1]"] = rel_err(mid, r.hidden_states[-1].numpy())
    elif kind == "siglip_text":
      ref = transformers.SiglipTextModel.from_pretrained(path, dtype=torch.float32).eval()
      ids = rng.integers(0, cfg.vocab_size, (2, cfg.max_positions))
      r = ref(torch.from_numpy(ids))
      out = _apply(build.build("siglip_text", cfg), conv.params, ids)
      for name in ("last_hidden_state", "pooler_output"):
        errors[name] = rel_err(out[name], getattr(r, name).numpy())
    elif kind == "qwen2":
      ref = transformers.Qwen2ForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
      ids = rng.integers(0, cfg.vocab_size, (2, 24))
      logits, _ = _apply(build.build("qwen2", cfg), conv.params, ids)
      errors["logits"] = rel_err(logits, ref(torch.from_numpy(ids)).logits.numpy())
    elif kind == "llava_onevision":
      ref = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
      size = cfg.vision.image_size
      px = rng.uniform(-1, 1, (2, 3, size, size)).astype(np.float32)
      hs = ref.model.vision_tower(torch.from_numpy(px), output_hidden_states=True).hidden_states
      ref_tokens = ref.model.multi_modal_projector(hs[cfg.feature_layer]).numpy()
      model = build.build("hour_llava", cfg)
      tokens = _apply(model, conv.params, px.transpose(0, 2, 3, 1)[:, None],
                      method=lambda m, p: m.projector(m.encode_frames(p, False)))
      errors["vision+projector"] = rel_err(tokens[:, 0], ref_tokens)
      ids = rng.integers(0, cfg.llm.vocab_size, (2, 24))
      logits = _apply(model, conv.params, ids, np.ones_like(ids))["logits"]
      errors["text logits"] = rel_err(logits, ref.model.language_model(torch.from_numpy(ids)).last_hidden_state
                                      .matmul(ref.lm_head.weight.T).numpy())
    else:
      raise ValueError(f"--hf-dir: no transformers class for {kind!r} (use --fixture for Hour-LLaVA)")
  return errors


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--fixture", help="official-code fixture (.safetensors)")
  src.add_argument("--hf-dir", help="HF model directory (SigLIP, Qwen2 or LLaVA-OneVision)")
  p.add_argument("--tol", type=float, default=1e-5, help="max relative error (default 1e-5)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--kind", help="with --hf-dir: the checkpoint kind (default: from config.json; "
                 "siglip_text for a SiglipModel's text tower)")
  a = p.parse_args(argv)
  errors = verify_fixture(a.fixture) if a.fixture else verify_hf_dir(a.hf_dir, a.seed, a.kind)
  width = max(len(k) for k in errors)
  for name, err in errors.items():
    print(f"{name:<{width}}  rel err {err:.2e}  {'ok' if err <= a.tol else 'ABOVE TOLERANCE'}")
  worst = max(errors.values())
  print(f"worst {worst:.2e} (tolerance {a.tol:.0e}): {'PASS' if worst <= a.tol else 'FAIL'}")
  return 0 if worst <= a.tol else 1


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
