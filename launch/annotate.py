"""Build VideoMarathon-style training data for your own videos (paper §3): clip captions from six
perspectives by a video/image LMM, events, event and global summaries and QA over the 22 tasks by
an LLM, both behind OpenAI-compatible endpoints (vLLM, SGLang, a hosted API, or launch.serve).

  python -m launch.annotate --videos /data/myvideos --out /data/myvideos.jsonl \\
      --captioner http://localhost:8000/v1 --captioner-model Qwen/Qwen2-VL-7B-Instruct \\
      --llm https://api.deepseek.com/v1 --llm-model deepseek-chat --api-key-env DEEPSEEK_API_KEY \\
      --cache /data/annotate_cache

Writes one LLaVA-style record per QA pair (`video` relative to --videos, `data_source`, `task`,
`topic`, `question_type`, `conversations`); train on it with a source of `group_qa: 5`. Every
answer is validated and re-asked (--attempts); what stays invalid is counted and dropped. The
cache (one JSONL file per endpoint) makes a rerun ask nothing twice, and a crash loses nothing.
Prompts: hourjax/annotate/prompts.py (written from the paper's description; its own are images).

At dataset scale, `--beam` runs the same pipeline on Apache Beam (hourjax/annotate/beam.py);
the arguments this command does not know are Beam's pipeline options (default: the DirectRunner
on this machine), e.g. on Flink, with the videos and caches on a filesystem every worker sees:

  python -m launch.annotate --beam --videos /mnt/shared/videos --out /mnt/shared/vm.jsonl \\
      --captioner ... --llm ... --cache /mnt/shared/annotate_cache \\
      --runner=FlinkRunner --flink_master=flink-jobmanager:8081 --environment_type=LOOPBACK

`--pipeline prolongvid` builds ProLongVid's data instead (hourjax/annotate/prolongvid.py): a
caption per frame, semantic segments from a SigLIP checkpoint's two towers, segment captions, the
video's dense caption and QA of four task types by three input strategies:

  python -m launch.annotate --pipeline prolongvid --siglip /ckpt/siglip-so400m-patch14-384 \\
      --videos /data/myvideos --out /data/plv.jsonl --captioner ... --llm ...
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from hourjax.annotate import prolongvid as plv
from hourjax.annotate import videomarathon as vm
from hourjax.endpoint import Endpoint

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                              allow_abbrev=False)
  p.add_argument("--videos", required=True, help="folder of videos (searched recursively)")
  p.add_argument("--out", required=True, help="annotations, .jsonl")
  p.add_argument("--captioner", required=True, help="base URL of the video/image LMM endpoint")
  p.add_argument("--captioner-model", required=True)
  p.add_argument("--llm", help="base URL of the LLM endpoint (default: the captioner's)")
  p.add_argument("--llm-model", help="default: the captioner model")
  p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
  p.add_argument("--cache", default="annotate_cache", help="folder of the request caches")
  p.add_argument("--max-in-flight", type=int, default=16, help="requests in flight per endpoint")
  p.add_argument("--beam", action="store_true", help="run on Apache Beam; unknown arguments are Beam's options")
  p.add_argument("--pipeline", default="videomarathon", choices=("videomarathon", "prolongvid"))
  p.add_argument("--siglip", help="prolongvid: a SiglipModel checkpoint (transformers layout) whose two towers "
                 "give the segmentation's features")
  p.add_argument("--siglip-tokenizer", help="prolongvid: its tokenizer directory (default: --siglip)")
  fields = {f.name: f for o in (vm.Options, plv.Options) for f in dataclasses.fields(o)}
  for f in fields.values():     # each pipeline's Options; a field they share is one flag
    if f.name != "topics":
      p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None,
                     help=f"default: {f.default}")
  p.add_argument("--topics", nargs="*", default=list(vm.Options.topics))
  a, beam_args = p.parse_known_args(argv)
  if beam_args and not a.beam:
    p.error(f"unrecognized arguments: {' '.join(beam_args)} (Beam's options go with --beam)")
  options = vm.Options if a.pipeline == "videomarathon" else plv.Options
  given = {k: v for k, v in vars(a).items() if k in fields and k != "topics" and v is not None}
  wrong = set(given) - {f.name for f in dataclasses.fields(options)}
  if wrong:
    p.error(f"--{', --'.join(sorted(wrong)).replace('_', '-')}: not an option of the {a.pipeline} pipeline")
  if a.pipeline == "videomarathon":
    given["topics"] = tuple(a.topics)
    unknown = set(a.topics) - set(vm.TOPICS)
    if unknown:
      raise SystemExit(f"--topics {sorted(unknown)}: expected some of {list(vm.TOPICS)}")
  elif a.beam or not a.siglip:
    p.error("--pipeline prolongvid runs on one machine and needs --siglip")
  opts = options(**given)
  paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(a.videos) for f in fs
                 if f.lower().endswith(VIDEO_SUFFIXES))
  if not paths:
    raise SystemExit(f"--videos {a.videos}: no videos ({', '.join(VIDEO_SUFFIXES)}) found")
  os.makedirs(a.cache, exist_ok=True)
  captioner = Endpoint(a.captioner, a.captioner_model, a.api_key_env, os.path.join(a.cache, "captioner.jsonl"),
                       a.max_in_flight)
  llm = Endpoint(a.llm or a.captioner, a.llm_model or a.captioner_model, a.api_key_env,
                 os.path.join(a.cache, "llm.jsonl"), a.max_in_flight)
  if a.beam:
    try:
      from hourjax.annotate import beam
    except ImportError as e:
      raise SystemExit(f"--beam needs Apache Beam ({e}): pip install 'hourjax[beam]'") from None
    stats = beam.run(paths, captioner, llm, opts, out=a.out, root=a.videos, pipeline_args=beam_args)
    print(f"{stats['qa']} QA records from {stats['videos']} of {len(paths)} videos -> {a.out} (Beam); "
          f"dropped: {_drops(stats)}")
    return 0
  captioner, llm = captioner.client(), llm.client()
  if a.pipeline == "prolongvid":
    records, stats = plv.annotate_videos(paths, captioner, llm, siglip_features(a.siglip, a.siglip_tokenizer),
                                         opts, root=a.videos)
  else:
    records, stats = vm.annotate_videos(paths, captioner, llm, opts, root=a.videos)
  tmp = a.out + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  os.replace(tmp, a.out)
  print(f"{len(records)} QA records from {stats['videos']} of {len(paths)} videos -> {a.out}; "
        f"dropped: {_drops(stats)}; captioner {captioner.stats}; llm {llm.stats}")
  return 0


def siglip_features(path: str, tokenizer: str | None = None):
  """The segmentation's features from a SigLIP checkpoint's vision (MAP head) and text towers."""
  import jax
  import transformers
  from hourjax.convert import import_torch
  from hourjax.models import build
  towers = [import_torch(path, kind) for kind in ("siglip", "siglip_text")]
  if not towers[0].config.use_head:
    raise SystemExit(f"--siglip {path}: the vision tower has no attention-pooling head (vision_use_head)")
  tok = transformers.AutoTokenizer.from_pretrained(tokenizer or path)
  length = towers[1].config.max_positions

  def tokenize(texts):
    return tok(list(texts), padding="max_length", max_length=length, truncation=True, return_tensors="np")["input_ids"]
  vision, text = (jax.tree.map(jax.numpy.asarray, t.params) for t in towers)
  return plv.siglip_features(build.build("siglip", towers[0].config), vision,
                             build.build("siglip_text", towers[1].config), text, tokenize)


def _drops(stats: dict) -> dict:
  return {k: v for k, v in stats.items() if k not in ("videos", "qa")}


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
