"""Hour-LLaVA: model presets and the three training stages (paper §4, Table 6; spec §4.2).

  python -m launch.train --config configs/hour_llava.py:7b,stage=3 --workdir /runs/hl7b-s3 \
      data.root=/data train.init=/runs/hl7b-s2/params
  python -m launch.train --config configs/hour_llava.py:tiny,stage=3 --workdir /tmp/run \
      data.root=/tmp/synth                                   # trains on this CPU

Argument: `size[,stage=N][,lr=per_module|single]`. Sizes: tiny (tests and the CPU demo), mid
(the released widths on few layers: CPU benchmarks and profiles), 3b (Qwen2.5-3B-Instruct), 7b
(Qwen2-7B-Instruct). Stages: 1 image-language pretraining (MemAug
only), 2 video-language adaptation (everything), 3 video instruction tuning (everything but
SigLIP). lr=per_module uses the scripts' per-module flags (vision 5e-6, projector and MemAug
1e-4, LLM 1e-5 / 2e-5); lr=single gives every trained module the base rate, which the spec
finds the official DeepSpeed runs probably used. Any field can be overridden as key=value.
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
    # Qwen2-0.5B's widths, vocabulary and heads with 4 of its 24 layers: a model whose every
    # matrix has a released model's shape, small enough to train and profile on a CPU.
    "mid": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=4, num_heads=14,
                num_kv_heads=2, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                 num_kv_heads=2, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True),
}
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, image_size=112,
                   patch_size=14, layer_norm_eps=1e-6, use_head=False, use_post_layernorm=True)
# The towers and MemAug depths of the small presets (the others: so400m, 4 MemAug blocks). mid keeps
# so400m's width, so that its cached features are so400m's, on 2 of its layers.
VISION = {"tiny": TINY_VISION, "mid": dict(SO400M, num_layers=2)}
MEMAUG_DEPTH = {"tiny": 2, "mid": 2}

# How layers run, not what they are: attention kernel (xla | dot_product | ring), nn.scan over
# layers, remat policy (none | full | save_dots | offload_dots). Overridable per family, e.g.
# `model.llm.attention=ring`.
EXECUTION = dict(attention="xla", scan_layers=False, remat="none")

FORGETTING = dict(spatial="random", spatial_keep=4, temporal="uniform", temporal_keep=4,
                  min_retained_frames=1, max_retained_frames=512, min_memory_frames=128,
                  memory_scale=1.0, keyframe_neighbours=8)


# Per stage: trained groups at their per-module rate (spec §4.2), the base rate (lr=single), global
# batch, checkpoint interval, the official data mixture (paths under data.root) and whether the
# time instruction is added.
STAGES = {
    1: dict(lr=dict(memaug=1e-4), base={"7b": 1e-4, "3b": 1e-4, "mid": 1e-4}, batch={"7b": 128, "3b": 128, "mid": 8},
            every=100, time_instruction=False,
            sources=[dict(annotations="LLaVA-OneVision/llava_ov_si.json", media="LLaVA-OneVision/images")]),
    2: dict(lr=dict(vision=5e-6, projector=1e-4, memaug=1e-4, llm={"7b": 1e-5, "3b": 2e-5, "mid": 2e-5}),
            base={"7b": 1e-5, "3b": 2e-5, "mid": 2e-5}, batch={"7b": 128, "3b": 128, "mid": 8}, every=100,
            time_instruction=True,
            sources=[dict(annotations="LLaVA-Video-178K/llava_video.json", media="LLaVA-Video-178K/videos",
                          strategy="first:20%"),
                     dict(annotations="LLaVA-OneVision/llava_ov_si.json", media="LLaVA-OneVision/images",
                          strategy="first:10%"),
                     dict(annotations="LLaVA-Video-178K/text.json", strategy="first:10%")]),
    3: dict(lr=dict(projector=1e-4, memaug=1e-4, llm=2e-5), base={"7b": 2e-5, "3b": 2e-5, "mid": 2e-5},
            batch={"7b": 256, "3b": 128, "mid": 8}, every=1000, time_instruction=True,
            sources=[dict(annotations="VideoMarathon/jsons/videomarathon.json", media="VideoMarathon/videos",
                          features="VideoMarathon/features"),
                     dict(annotations="LLaVA-Video-178K/llava_video.json", media="LLaVA-Video-178K/videos",
                          strategy="end:80%"),
                     dict(annotations="LLaVA-OneVision/llava_ov_si.json", media="LLaVA-OneVision/images",
                          strategy="end:90%"),
                     dict(annotations="LLaVA-Video-178K/text.json", strategy="end:90%")]),
}
TINY_LR = 3e-3        # the CPU demo trains for minutes, not an epoch of millions of samples


def parse_arg(arg: str) -> tuple[str, int, str]:
  size, *rest = arg.split(",")
  opts = dict(item.split("=", 1) if "=" in item else (item, "") for item in rest)
  unknown = set(opts) - {"stage", "lr"}
  if unknown:
    raise ValueError(f"config argument {arg!r}: unknown {sorted(unknown)}; expected size[,stage=N][,lr=...]")
  stage = int(opts.get("stage", 0) or 0)
  if stage and stage not in STAGES:
    raise ValueError(f"config argument {arg!r}: unknown stage {stage}; expected one of {sorted(STAGES)}")
  lr = opts.get("lr", "per_module")
  if lr not in ("per_module", "single"):
    raise ValueError(f"config argument {arg!r}: lr={lr!r}; expected per_module or single")
  return size or "tiny", stage, lr


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  size, stage, lr_mode = parse_arg(arg)
  if size not in LLMS:
    raise ValueError(f"unknown Hour-LLaVA preset {size!r}; expected one of {sorted(LLMS)}")
  llm = LLMS[size]
  # Initialisation of the trained modules (hourjax.models.layers.INITS): HF's N(0, 0.02) suits
  # widths in the thousands; the tiny width-64 models train from scratch and need N(0, 1/fan_in),
  # and their MemAug must start by passing its decayed queries through (residual_zero): at
  # fan_in it buries them under its own random output and no visual answer is learned
  # (docs/demo.md). SigLIP keeps HF's rule (pretrained weights replace it; the CPU demo uses it frozen).
  init = "fan_in" if size == "tiny" else "normal"
  memaug_init = "residual_zero" if size == "tiny" else "normal"
  # MemAug's cross-attention reads a memory of thousands of tokens per video: dense scores
  # [queries, memory] per head are the step's largest buffer at the released widths, so the
  # real presets walk the memory in blocks (on the mid preset's CPU step: 2-3x less peak memory
  # and 1.5x faster than dense, docs/performance.md). The tiny preset's memory is a few hundred
  # tokens, where dense is fine.
  memaug_attention = "xla" if size == "tiny" else "blockwise"
  cfg = ml_collections.ConfigDict()
  cfg.model = ml_collections.ConfigDict(dict(
      vision=dict(VISION.get(size, SO400M), init="normal", **EXECUTION),
      llm=dict(llm, initializer_range=0.02, init=init, **EXECUTION),
      memaug=dict(dataclasses.asdict(MemAugConfig.for_llm(Qwen2Config(**llm), depth=MEMAUG_DEPTH.get(size, 4))),
                  init=memaug_init, attention=memaug_attention),
      projector_init=init,
      forgetting=dict(FORGETTING, min_memory_frames=16 if size == "tiny" else 128),
      feature_layer=-1, pool_size=8 if size != "tiny" else 4, use_memaug=True,
      max_length=32768, vision_grad_frames=128,       # official truncation and SigLIP no-grad rule
      max_crops=9, unpad="official"))                 # images: anyres_max_9, unpadded as official
  # Mesh axis sizes (one may be -1: the remaining devices); see hourjax.parallel.mesh.
  cfg.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, sequence=1))
  # The input pipeline (hourjax.data.pipeline.from_config). sources: a tuple of dicts of
  # hourjax.data.sources.Source (annotations, media, features, strategy, weight, group_qa);
  # tuples, not lists, so that `--config.data.sources='({...},)'` overrides them.
  tiny = size == "tiny"
  cfg.data = ml_collections.ConfigDict(dict(
      root="", sources=(), prepared="", seed=0, batch_size=8, epochs=0,
      workers=0, worker_buffer=2, threads=2, read_ahead=0,      # read_ahead 0: two batches
      buckets=dict(frames=(16, 32, 64) if tiny else (128, 256, 512, 1024, 2048, 3600),
                   text=(128, 256, 512) if tiny else (1024, 2048, 4096, 8192, 32768)),
      read=dict(tokenizer="", image_size=cfg.model.vision.image_size, frames="official",
                min_frames=16 if tiny else 128, time_instruction=True, label_separators=True,
                max_text_len=512 if tiny else 32768, resample="pil",
                # a video with more frames than the largest bucket: spread max_frames (0: that
                # bucket) over it, as the official frames_upbound does, or "skip" it; counted either way
                max_frames=0, too_long="subsample",
                images="anyres")))      # anyres crops, as the official image_aspect_ratio=anyres_max_9
  cfg.train = ml_collections.ConfigDict(dict(
      stage=stage, steps=0, seed=0, init="", init_llm="", dtype="float32" if tiny else "bfloat16",
      optimizer=dict(lr=dict(vision=0.0, projector=0.0, memaug=0.0, llm=0.0), warmup_ratio=0.03,
                     schedule="cosine", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=1.0,
                     accumulate=1),
      checkpoint_every=100, checkpoint_keep=3, checkpoint_async=True,
      stop_after=0,      # >0: save and stop after this many steps (job slots); re-run to continue
      peak_flops=0.0))   # per device, for MFU (e.g. 459e12 for a v5p chip in bf16); 0: not logged
  # Held-out evaluators (big_vision's `evals`): name -> dict(every=N, data=dict(fields of `data`
  # to replace, e.g. sources=(...), root=...)); each logs eval/<name>/{loss,accuracy,tokens}
  # every N steps and at the end, reading its data once.
  cfg.evals = ml_collections.ConfigDict()
  if stage:
    st = STAGES[stage]
    for group, rate in st["lr"].items():
      rate = rate[size] if isinstance(rate, dict) and size in rate else rate
      if tiny:
        rate = TINY_LR
      elif lr_mode == "single":
        rate = st["base"][size]
      cfg.train.optimizer.lr[group] = float(rate if not isinstance(rate, dict) else rate["7b"])
    cfg.train.checkpoint_every = st["every"]
    cfg.data.read.time_instruction = st["time_instruction"]
    if tiny:
      cfg.data.batch_size, cfg.train.steps, cfg.train.checkpoint_every = 4, 60, 20
      cfg.data.root = "/tmp/hourjax_synth"
      cfg.data.sources = (dict(annotations="annotations.jsonl"),)
    else:
      cfg.data.batch_size = st["batch"][size]
      cfg.data.sources = tuple(dict(s) for s in st["sources"])
  return cfg
