"""Hour-LLaVA model presets (paper §4, Table 6; sizes from the upstream Qwen / SigLIP configs).

  python -m launch.demo --config configs/hour_llava.py:tiny        # the demo's model
  python -c "from configs.hour_llava import get_config; print(get_config('7b'))"

Presets: tiny (tests and the CPU demo), 3b (Qwen2.5-3B-Instruct), 7b (Qwen2-7B-Instruct).
Fields are ml_collections, so any can be overridden (`cfg.model.forgetting.temporal = "random"`).
The training issue adds stages as further arguments (`configs/hour_llava.py:7b,stage=3`).
"""
from __future__ import annotations

import dataclasses

import ml_collections

from hourjax.models.memaug import MemAugConfig
from hourjax.models.qwen2 import Qwen2Config

SO400M = dict(hidden_size=1152, intermediate_size=4304, num_layers=26, num_heads=16, image_size=384,
              patch_size=14, layer_norm_eps=1e-6, use_head=False, use_post_layernorm=True)
# so400m has 27 layers; Hour-LLaVA (like LLaVA-OneVision) deletes the last and reads the new last.

LLMS = {
    "7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
               num_kv_heads=4, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False),
    "3b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_layers=36, num_heads=16,
               num_kv_heads=2, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                 num_kv_heads=2, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True),
}
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, image_size=112,
                   patch_size=14, layer_norm_eps=1e-6, use_head=False, use_post_layernorm=True)

# How layers run, not what they are: attention kernel (xla | dot_product | ring), nn.scan over
# layers, remat policy (none | full | save_dots | offload_dots). Overridable per family, e.g.
# `model.llm.attention=ring`.
EXECUTION = dict(attention="xla", scan_layers=False, remat="none")

FORGETTING = dict(spatial="random", spatial_keep=4, temporal="uniform", temporal_keep=4,
                  min_retained_frames=1, max_retained_frames=512, min_memory_frames=128,
                  memory_scale=1.0, keyframe_neighbours=8)


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  size = arg.split(",")[0] or "tiny"
  if size not in LLMS:
    raise ValueError(f"unknown Hour-LLaVA preset {size!r}; expected one of {sorted(LLMS)}")
  llm = LLMS[size]
  cfg = ml_collections.ConfigDict()
  cfg.model = ml_collections.ConfigDict(dict(
      vision=dict(TINY_VISION if size == "tiny" else SO400M, **EXECUTION),
      llm=dict(llm, **EXECUTION),
      memaug=dataclasses.asdict(MemAugConfig.for_llm(Qwen2Config(**llm), depth=2 if size == "tiny" else 4)),
      forgetting=dict(FORGETTING, min_memory_frames=16 if size == "tiny" else 128),
      feature_layer=-1, pool_size=8 if size != "tiny" else 4, use_memaug=True))
  # Mesh axis sizes (one may be -1: the remaining devices); see hourjax.parallel.mesh.
  cfg.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, sequence=1))
  # The input pipeline (hourjax.data.pipeline.from_config). sources: dicts of
  # hourjax.data.sources.Source (annotations, media, features, strategy, weight, group_qa).
  tiny = size == "tiny"
  cfg.data = ml_collections.ConfigDict(dict(
      root="", sources=[], prepared="", seed=0, batch_size=8, epochs=0,
      workers=0, worker_buffer=2, threads=2, read_ahead=0,      # read_ahead 0: two batches
      buckets=dict(frames=(16, 32, 64) if tiny else (128, 256, 512, 1024, 2048, 3600),
                   text=(128, 256, 512) if tiny else (1024, 2048, 4096, 8192, 32768)),
      read=dict(tokenizer="", image_size=cfg.model.vision.image_size, frames="official",
                min_frames=16 if tiny else 128, time_instruction=True, label_separators=True,
                max_text_len=512 if tiny else 32768, resample="pil")))
  return cfg
