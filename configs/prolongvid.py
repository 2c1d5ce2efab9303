"""ProLongVid's progressive long-video recipe (spec §7) applied to Hour-LLaVA: RoPE theta 1e9,
a fixed number of uniformly sampled frames per stage on videos of growing length, SigLIP frozen.

  python -m launch.train --config configs/prolongvid.py:7b,stage=2 --workdir /runs/plv-s2 \\
      data.root=/data train.init=/runs/plv-s1/params

Stages: 1 = 32 frames of videos under 2 minutes, 2 = 128 frames of 2-5 minute videos, 3 = 192
frames of 5-20 minute videos (ProLongVid's README; its stage-2 script: lr 1e-5, cosine, 3%
warmup, one epoch, projector and LLM trained, vision frozen, no time instruction). The model
is Hour-LLaVA's (configs/hour_llava.py) with the decoder's rope_theta raised from 1e6 to 1e9;
MemAug trains with the LLM. Annotations need a `duration` (seconds) per video for the filters.
The long-context decoder stage (text only, up to 256K tokens) is its own issue.
"""
from __future__ import annotations

import ml_collections

from configs import hour_llava

STAGES = {1: dict(frames=32, seconds=(0, 120)), 2: dict(frames=128, seconds=(120, 300)),
          3: dict(frames=192, seconds=(300, 1200))}
ROPE_THETA = 1e9
LR = 1e-5


def get_config(arg: str = "7b,stage=1") -> ml_collections.ConfigDict:
  size, *rest = arg.split(",")
  opts = dict(item.split("=", 1) for item in rest if "=" in item)
  stage = int(opts.get("stage", 1))
  if stage not in STAGES or set(opts) - {"stage"}:
    raise ValueError(f"config argument {arg!r}: expected size[,stage=N] with N in {sorted(STAGES)}")
  cfg = hour_llava.get_config(f"{size},stage=3")      # trained groups: all but SigLIP
  st = STAGES[stage]
  cfg.model.llm.rope_theta = ROPE_THETA
  cfg.model.memaug.rope_theta = ROPE_THETA      # MemAug's rotary follows its LLM (MemAugConfig.for_llm)
  cfg.train.stage = stage
  for group in ("projector", "memaug", "llm"):
    cfg.train.optimizer.lr[group] = hour_llava.TINY_LR if size == "tiny" else LR
  cfg.data.read.frames = f"fixed:{st['frames']}"
  cfg.data.read.time_instruction = False
  lo, hi = st["seconds"]
  if size == "tiny":
    # CPU-sized videos: the stage boundaries scaled down 4x (stage 1: under 30 s, ...).
    cfg.data.sources = [dict(annotations="annotations.jsonl", min_seconds=lo / 4, max_seconds=hi / 4)]
  else:
    cfg.data.sources = [dict(annotations=f"ProLongVid_data/stage{stage}.json", media="ProLongVid_data/videos",
                             min_seconds=lo, max_seconds=hi)]
    cfg.data.batch_size = 128
  cfg.data.buckets.frames = (st["frames"],)
  return cfg
