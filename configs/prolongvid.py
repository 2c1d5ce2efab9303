"""ProLongVid (paper §4, spec §7): its own model and its recipe, in the paper's order.

  # the whole recipe, each stage from the previous one's parameters (re-running resumes)
  python -m launch.recipe --config configs/prolongvid.py:7b --workdir /runs/plv data.root=/data \
      data.read.tokenizer=/ckpt/qwen2 context_extension:data.documents='("/data/slimpajama/*/*.jsonl",)' \
      context_extension:data.tokenizer=/ckpt/qwen2
  # one stage
  python -m launch.train --config configs/prolongvid.py:7b,stage=2 --workdir /runs/plv/5_video2 \
      data.root=/data train.init=/runs/plv/4_video1/params

Argument: `size[,stage=S][,model=prolongvid|hour_llava]`. Recipe (`RECIPE`, paper §4.2):
  1. context_extension: the decoder alone continues pretraining on long text (SlimPajama), packed
     into 256K-token sequences, RoPE theta 1e6 -> 1e9, ring attention over the 'sequence' axis.
     The paper follows Fu et al. 2024: per-source length upsampling (`data.upsample_long`: each
     `data.documents` pattern is a source, long documents repeated within it, the sources' token
     shares kept) at 2e-5 constant after warm-up, ~4M-token batches. `data.packing="continuous"`
     gives EasyContext's variant (positions continue across documents, no boundary masking).
  2. image stages, following LLaVA-OneVision: image_align (the projector alone, 1e-3, on image-text
     pairs), image_knowledge (everything: SigLIP 2e-6, the rest 1e-5, on knowledge data), image_sft
     (everything, single-image instructions). Images are anyres crops (anyres_max_9).
  3. progressive video stages, SigLIP frozen (projector and LLM 1e-5, cosine, 3% warm-up, one
     epoch): 1 = 32 frames of videos under 2 minutes, 2 = 128 frames of 2-5 minute videos, 3 = 192
     frames of 5-20 minute videos (tested at 256), fixed-N frames by linspace over the whole video.
The first image stage takes the extended decoder as its LLM (`train.init_llm`); every other stage
starts from the previous one's parameters (`train.init`). The tiny preset runs the same recipe on
this CPU with 1/8 of the frames (4 / 16 / 24).

The model (`model.kind="prolongvid"`, hourjax/models/prolongvid.py): SigLIP -> projector -> bilinear
27x27 -> 12x12 -> a newline per row, 156 LLM tokens per frame, no memory. So the LLM's visual
context grows with the stages as the paper's does (`visual_tokens`):

  stage | frames | tokens per frame | LLM visual tokens
  1     | 32     | 156              | 4,992
  2     | 128    | 156              | 19,968
  3     | 192    | 156              | 29,952
  test  | 256    | 156              | 39,936

`model=hour_llava` applies the video stages (and the context extension) to Hour-LLaVA instead:
RoPE theta 1e9, MemAug trains with the LLM. There the input frames fill Hour-LLaVA's memory
repository, which holds at least 128 frames (shorter inputs are padded); a quarter of it is
retained as decayed queries, 17 LLM tokens each (16 spatially kept + the newline). So the stages
grow the memory, not the LLM's context (`token_budget`):

  stage | input frames | memory frames | retained frames | LLM visual tokens | ProLongVid's model
  1     | 32           | 128           | 32              | 544               | 4,992
  2     | 128          | 128           | 32              | 544               | 19,968
  3     | 192          | 192           | 48              | 816               | 29,952

Annotations need a `duration` (seconds) per video for the stage filters.
"""
from __future__ import annotations

import ml_collections

from configs import hour_llava

STAGES = {1: dict(frames=32, seconds=(0, 120)), 2: dict(frames=128, seconds=(120, 300)),
          3: dict(frames=192, seconds=(300, 1200))}
TEST_FRAMES = 256
ROPE_THETA = 1e9
LR = 1e-5
# LLaVA-OneVision's image stages: trained groups and rates, data (paths under data.root).
IMAGE_STAGES = {
    "image_align": dict(lr=dict(projector=1e-3), batch=512,
                        annotations="LLaVA-OneVision/blip_558k.json", media="LLaVA-OneVision/images"),
    "image_knowledge": dict(lr=dict(vision=2e-6, projector=1e-5, llm=1e-5), batch=256,
                            annotations="LLaVA-OneVision/knowledge.json", media="LLaVA-OneVision/images"),
    "image_sft": dict(lr=dict(vision=2e-6, projector=1e-5, llm=1e-5), batch=256,
                      annotations="LLaVA-OneVision/llava_ov_si.json", media="LLaVA-OneVision/images"),
}
RECIPE = ("context_extension", *IMAGE_STAGES, 1, 2, 3)
TINY_FRAMES = 8       # the tiny preset divides the frame counts by this
MODELS = ("prolongvid", "hour_llava")


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
      seed=0, epochs=0, threads=2, read_ahead=0,
      # Fu et al. 2024's per-source length upsampling: documents of >= long_bytes (~4K tokens)
      # drawn `factor` times as often within their source (each data.documents pattern); factor 1: off
      upsample_long=dict(long_bytes=16384, factor=1 if size == "tiny" else 4),
      packing="documents"))      # or "continuous" (EasyContext: positions continue over documents)
  del cfg.train["stage"]      # an int in the video stages
  cfg.train.stage = "context_extension"
  cfg.train.decoder_only = True
  cfg.train.context_schedule = ()
  cfg.train.steps = c["steps"]
  cfg.train.checkpoint_every = 100 if size != "tiny" else 10
  cfg.train.optimizer.lr = ml_collections.ConfigDict(dict(vision=0.0, projector=0.0, memaug=0.0, llm=c["lr"]))
  cfg.train.optimizer.schedule = "constant"
  return cfg


def parse_arg(arg: str) -> tuple[str, str | int, str]:
  size, *rest = arg.split(",")
  opts = dict(item.split("=", 1) for item in rest if "=" in item)
  stage = opts.get("stage", "1")
  stage = int(stage) if stage.isdigit() else stage
  model = opts.get("model", "prolongvid")
  if stage not in RECIPE or set(opts) - {"stage", "model"} or model not in MODELS or \
     (model == "hour_llava" and stage in IMAGE_STAGES):
    raise ValueError(f"config argument {arg!r}: expected size[,stage=S][,model=M] with S in {list(RECIPE)} "
                     f"(image stages only for model=prolongvid) and M in {MODELS}")
  return size, stage, model


def recipe(arg: str) -> tuple:
  """The stages `launch.recipe` runs for `size[,model=M]`, in order (no image stages for Hour-LLaVA)."""
  _, _, model = parse_arg(arg)
  return RECIPE if model == "prolongvid" else tuple(s for s in RECIPE if s not in IMAGE_STAGES)


def prolongvid_model(size: str) -> ml_collections.ConfigDict:
  """ProLongVid's model at a preset's sizes: Hour-LLaVA's SigLIP and Qwen2, theta 1e9."""
  base = hour_llava.get_config(size).model
  return ml_collections.ConfigDict(dict(
      kind="prolongvid", vision=base.vision.to_dict(), llm={**base.llm.to_dict(), "rope_theta": ROPE_THETA},
      feature_layer=-1, pool_size=4 if size == "tiny" else 12, newline="grid", max_crops=9, unpad="official",
      max_length=32768 if size == "tiny" else 256000, projector_init=base.projector_init))


def frames_of(size: str, stage: int) -> int:
  return STAGES[stage]["frames"] // (TINY_FRAMES if size == "tiny" else 1)


def get_config(arg: str = "7b,stage=1") -> ml_collections.ConfigDict:
  size, stage, model = parse_arg(arg)
  if stage == "context_extension":
    cfg = context_extension(size)
    if model == "prolongvid":      # the same decoder (its execution settings too) in ProLongVid's model
      llm, cfg.model = cfg.model.llm, prolongvid_model(size)
      cfg.model.llm = llm
    return cfg
  tiny = size == "tiny"
  cfg = hour_llava.get_config(f"{size},stage=3")      # trained groups: all but SigLIP
  if model == "prolongvid":
    cfg.model = prolongvid_model(size)
    cfg.train.optimizer.lr.memaug = 0.0
    cfg.data.read.images = "anyres"
  else:
    cfg.model.llm.rope_theta = ROPE_THETA
    cfg.model.memaug.rope_theta = ROPE_THETA      # MemAug's rotary follows its LLM (MemAugConfig.for_llm)
  del cfg.train["stage"]      # an int in Hour-LLaVA's configs
  cfg.train.stage = stage
  cfg.data.read.time_instruction = False
  if stage in IMAGE_STAGES:
    st = IMAGE_STAGES[stage]
    for group in ("vision", "projector", "memaug", "llm"):
      cfg.train.optimizer.lr[group] = (hour_llava.TINY_LR if tiny else st["lr"][group]) if group in st["lr"] else 0.0
    if tiny:
      cfg.data.sources = (dict(annotations="images.jsonl"),)
    else:
      cfg.data.sources = (dict(annotations=st["annotations"], media=st["media"]),)
      cfg.data.batch_size = st["batch"]
    return cfg
  st = STAGES[stage]
  for group in ("projector", "memaug", "llm") if model == "hour_llava" else ("projector", "llm"):
    cfg.train.optimizer.lr[group] = hour_llava.TINY_LR if tiny else LR
  frames = frames_of(size, stage)
  cfg.data.read.frames = f"fixed:{frames}"
  lo, hi = st["seconds"]
  if tiny:
    # CPU-sized videos: the stage boundaries scaled down 4x (stage 1: under 30 s, ...).
    cfg.data.sources = (dict(annotations="annotations.jsonl", min_seconds=lo / 4, max_seconds=hi / 4),)
  else:
    cfg.data.sources = (dict(annotations=f"ProLongVid_data/stage{stage}.json", media="ProLongVid_data/videos",
                             min_seconds=lo, max_seconds=hi),)
    cfg.data.batch_size = 128
  cfg.data.buckets.frames = (frames,)
  return cfg


def visual_tokens(arg: str, frames: int | None = None) -> int:
  """The LLM's visual tokens of one video at a stage of ProLongVid's model (the first table)."""
  from hourjax.config import model_config
  cfg = get_config(arg)
  model = model_config(cfg.model)
  frames = frames or int(cfg.data.read.frames.split(":")[1])
  return model.video_tokens(frames)


def token_budget(arg: str) -> dict[str, int]:
  """A stage's frame count in Hour-LLaVA's terms (`model=hour_llava`, the second table in this
  module's docstring), from the model's own forgetting layout: input, memory and retained frames
  and the LLM's visual tokens."""
  from hourjax.config import model_config
  from hourjax.models.forgetting import video_layout
  cfg = get_config(arg if "model=" in arg else f"{arg},model=hour_llava")
  frames = int(cfg.data.read.frames.split(":")[1])
  model = model_config(cfg.model)
  layout = video_layout([frames], model.forgetting)
  retained = int(layout.num_retained[0])
  per_frame = model.forgetting.spatial_count(model.pool_size ** 2) + 1
  return {"input frames": frames, "memory frames": int(layout.memory_frames.shape[1]),
          "retained frames": retained, "LLM visual tokens": retained * per_frame}
