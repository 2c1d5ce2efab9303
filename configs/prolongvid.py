"""ProLongVid's progressive long-video recipe (spec §7) applied to Hour-LLaVA: RoPE theta 1e9,
a fixed number of uniformly sampled frames per stage on videos of growing length, SigLIP frozen.

  python -m launch.train --config configs/prolongvid.py:7b,stage=2 --workdir /runs/plv-s2 \\
      data.root=/data train.init=/runs/plv-s1/params

  python -m launch.train --config configs/prolongvid.py:7b,stage=context_extension --workdir /runs/plv-ctx \
      data.documents='["/data/slimpajama/*.jsonl"]' data.tokenizer=/ckpt/qwen2 train.init=/ckpt/llava-ov-7b

Stage context_extension (paper §4.2): the decoder alone continues pretraining on long text
(SlimPajama), packed into 256K-token sequences with segment ids, RoPE theta raised to 1e9 from
the start, ring attention over the mesh's 'sequence' axis. Its <workdir>/params initialise the
video stages' LLM (train.init_llm=/runs/plv-ctx/params). A progressive context schedule trains
phases of growing length, e.g. train.context_schedule='((200, 32768), (200, 131072), (400, 262144))'.
The paper gives neither token count nor rate for this stage; the defaults follow Fu et al. 2024
(its cited recipe): 2e-5 constant after warm-up, ~4M-token batches.

Stages: 1 = 32 frames of videos under 2 minutes, 2 = 128 frames of 2-5 minute videos, 3 = 192
frames of 5-20 minute videos (ProLongVid's README; its stage-2 script: lr 1e-5, cosine, 3%
warmup, one epoch, projector and LLM trained, vision frozen, no time instruction). The model
is Hour-LLaVA's (configs/hour_llava.py) with the decoder's rope_theta raised from 1e6 to 1e9;
MemAug trains with the LLM. Annotations need a `duration` (seconds) per video for the filters.

What a stage's frame count means here (`token_budget`): the input frames fill Hour-LLaVA's
memory repository, which holds at least 128 frames (shorter inputs are padded); a quarter of it
is retained as decayed queries, 17 LLM tokens each (16 spatially kept + the newline). So the
progressive stages grow the memory, not the LLM's context, as ProLongVid's own model would
(12 x 13 = 156 tokens per frame):

  stage | input frames | memory frames | retained frames | LLM visual tokens | ProLongVid's model
  1     | 32           | 128           | 32              | 544               | 4,992
  2     | 128          | 128           | 32              | 544               | 19,968
  3     | 192          | 192           | 48              | 816               | 29,952
"""
from __future__ import annotations

import ml_collections

from configs import hour_llava

STAGES = {1: dict(frames=32, seconds=(0, 120)), 2: dict(frames=128, seconds=(120, 300)),
          3: dict(frames=192, seconds=(300, 1200))}
ROPE_THETA = 1e9
LR = 1e-5


CONTEXT = {"7b": dict(seq_len=262144, batch_size=16, steps=1250, lr=2e-5, sequence=8),
           "3b": dict(seq_len=262144, batch_size=16, steps=1250, lr=2e-5, sequence=8),
           "tiny": dict(seq_len=512, batch_size=4, steps=20, lr=hour_llava.TINY_LR, sequence=1)}


def context_extension(size: str) -> ml_collections.ConfigDict:
  """The decoder alone on packed long text (hourjax.data.text); SigLIP, projector, MemAug unused."""
  cfg = hour_llava.get_config(size)
  c = CONTEXT[size]
  cfg.model.llm.rope_theta = ROPE_THETA
  cfg.model.memaug.rope_theta = ROPE_THETA
  if size != "tiny":
    # Ulysses within groups of the kv heads' size, a ring across them: the 256K plan's best
    # estimate of ring / all-gather / hybrid (docs/scaling.md, "Context parallelism per plan")
    cfg.model.llm.attention = "hybrid"
    cfg.model.llm.remat = "full"
    cfg.model.llm.scan_layers = True
  cfg.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, sequence=c["sequence"]))
  cfg.data = ml_collections.ConfigDict(dict(
      documents=(), field="text", tokenizer="", seq_len=c["seq_len"], batch_size=c["batch_size"],
      seed=0, epochs=0, threads=2, read_ahead=0))
  del cfg.train["stage"]      # an int in the video stages
  cfg.train.stage = "context_extension"
  cfg.train.decoder_only = True
  cfg.train.context_schedule = ()
  cfg.train.steps = c["steps"]
  cfg.train.checkpoint_every = 100 if size != "tiny" else 10
  cfg.train.optimizer.lr = ml_collections.ConfigDict(dict(vision=0.0, projector=0.0, memaug=0.0, llm=c["lr"]))
  cfg.train.optimizer.schedule = "constant"
  return cfg


def get_config(arg: str = "7b,stage=1") -> ml_collections.ConfigDict:
  size, *rest = arg.split(",")
  opts = dict(item.split("=", 1) for item in rest if "=" in item)
  if opts.get("stage") == "context_extension" and not set(opts) - {"stage"}:
    return context_extension(size)
  stage = int(opts.get("stage", 1)) if str(opts.get("stage", 1)).isdigit() else 0
  if stage not in STAGES or set(opts) - {"stage"}:
    raise ValueError(f"config argument {arg!r}: expected size[,stage=N] with N in {sorted(STAGES)} "
                     "or stage=context_extension")
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
    cfg.data.sources = (dict(annotations="annotations.jsonl", min_seconds=lo / 4, max_seconds=hi / 4),)
  else:
    cfg.data.sources = (dict(annotations=f"ProLongVid_data/stage{stage}.json", media="ProLongVid_data/videos",
                             min_seconds=lo, max_seconds=hi),)
    cfg.data.batch_size = 128
  cfg.data.buckets.frames = (st["frames"],)
  return cfg


def token_budget(arg: str) -> dict[str, int]:
  """A stage's frame count in Hour-LLaVA's terms (the table in this module's docstring), from the
  model's own forgetting layout: input, memory and retained frames and the LLM's visual tokens."""
  from hourjax.config import model_config
  from hourjax.models.forgetting import video_layout
  cfg = get_config(arg)
  frames = int(cfg.data.read.frames.split(":")[1])
  model = model_config(cfg.model)
  layout = video_layout([frames], model.forgetting)
  retained = int(layout.num_retained[0])
  per_frame = model.forgetting.spatial_count(model.pool_size ** 2) + 1
  return {"input frames": frames, "memory frames": int(layout.memory_frames.shape[1]),
          "retained frames": retained, "LLM visual tokens": retained * per_frame}
