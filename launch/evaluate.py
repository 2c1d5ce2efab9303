"""Score a checkpoint on a long-video benchmark, as lmms-eval scores it.

  python -m launch.evaluate --params /ckpt/hj-hl7b-s3 --tokenizer /ckpt/Qwen2-7B-Instruct \\
      --benchmark videomme --root /data/Video-MME --out /results/hl7b
  python -m launch.evaluate ... --benchmark tempcompass --root /data/TempCompass --out /results/hl7b \\
      --judge-url https://api.openai.com/v1 --judge-model gpt-3.5-turbo-1106     # key: $OPENAI_API_KEY

Benchmarks (each read from its official release layout under --root, see
hourjax/evaluation/readers.py): videomme, videomme_sub (with subtitles), longvideobench,
lvbench, tempcompass (its four formats, lmms-eval's group), mlvu (dev, multiple choice; the
open-ended tasks are reported as not evaluated), or any of lmms-eval's task names
(videomme_w_subtitle, longvideobench_val_v, tempcompass_yes_no, mlvu_dev, ...).

`--protocol lmms-eval` (default): prompts, generation lengths, stop string, answer extraction
and aggregation identical to lmms-eval 0.7.3 (`--setting default`, what lmms-eval gives a model
without its own entry, or `llava_vid`). `--protocol paper`: the lmms-eval copy the papers used.
TempCompass answers its rules cannot read go to the judge given by `--judge-url` (any
OpenAI-compatible endpoint; cached in <out>/judge_cache.jsonl, so a rerun asks nothing twice);
without one they are reported as unjudged, never guessed, and a rerun with a judge scores them
without generating again. Frames: the official 1-FPS rule (default) or `--frames N` uniformly
sampled, resized as in training (a ProLongVid checkpoint: 192 frames by default and no time
instruction, as it was trained). Every answer is appended to <out>/<benchmark>.<process>.jsonl
as it is scored (a rerun skips what is done; a missing or unreadable video is recorded as
skipped); process 0 writes <out>/<benchmark>.json (lmms-eval's number per task, accuracy per
duration / category / task, unjudged and skipped counts) and <out>/<benchmark>.lmms_eval.json
(lmms-eval's results form) once every share is complete.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import sys

import numpy as np

TEMPCOMPASS_TASKS = ["tempcompass_multi_choice", "tempcompass_yes_no", "tempcompass_caption_matching",
                     "tempcompass_captioning"]
# benchmark -> (reader, lmms-eval tasks, lmms-eval group)
BENCHMARKS = {"videomme": ("videomme", ["videomme"], None),
              "videomme_sub": ("videomme", ["videomme_w_subtitle"], None),
              "longvideobench": ("longvideobench", ["longvideobench_val_v"], None),
              "lvbench": ("lvbench", ["lvbench"], None),
              "tempcompass": ("tempcompass", TEMPCOMPASS_TASKS, "tempcompass"),
              "mlvu": ("mlvu", ["mlvu_dev"], None)}
for _reader, _tasks, _ in list(BENCHMARKS.values()):
  for _task in _tasks:
    BENCHMARKS.setdefault(_task, (_reader, [_task], None))


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--params", required=True)
  p.add_argument("--tokenizer", default="")
  p.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
  p.add_argument("--root", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--protocol", default="lmms-eval", choices=("lmms-eval", "paper"))
  p.add_argument("--setting", default="default", choices=("default", "llava_vid"),
                 help="lmms-eval's per-model prompt entry (the paper protocol uses llava_vid)")
  p.add_argument("--judge-url", default="", help="an OpenAI-compatible endpoint for the judged items")
  p.add_argument("--judge-model", default="gpt-3.5-turbo-1106", help="lmms-eval's TempCompass judge")
  p.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
  p.add_argument("--frames", type=int, default=0, help="0: official 1-FPS rule (ProLongVid models: 192); "
                 "N: N uniform frames")
  p.add_argument("--min-frames", type=int, default=128)
  p.add_argument("--chunk", type=int, default=128)
  p.add_argument("--resample", default="pil", choices=("pil", "swscale"), help="frame resize (as training: pil)")
  p.add_argument("--max-new-tokens", type=int, default=0, help="0: the task's (lmms-eval's) length")
  p.add_argument("--no-time-instruction", action="store_true")
  p.add_argument("--limit", type=int, default=0, help="score at most this many items (0: all)")
  p.add_argument("--process-index", type=int, default=-1, help="default: jax.process_index()")
  p.add_argument("--process-count", type=int, default=-1)
  return p


def _row_key(row: dict) -> str:
  return f"{row['task']}:{row['id']}"


def main(argv=None) -> int:
  a = parser().parse_args(argv)
  import jax
  from hourjax.endpoint import ChatClient, EndpointError
  from hourjax.evaluation import protocol as pr
  from hourjax.evaluation import report
  from hourjax.evaluation.readers import READERS

  from hourjax.cli import writable_dir
  writable_dir(a.out, "out")           # before reading or generating anything
  proto = pr.Protocol(a.protocol, a.setting)
  reader, tasks, group = BENCHMARKS[a.benchmark]
  pi = jax.process_index() if a.process_index < 0 else a.process_index
  pc = jax.process_count() if a.process_count < 0 else a.process_count
  release = READERS[reader](a.root)
  docs = [d for d in release.docs if d.task in tasks]
  docs = docs[:a.limit] if a.limit else docs
  mine = docs[pi::pc]
  judge = None
  if a.judge_url:
    client = ChatClient(a.judge_url, a.judge_model, os.environ.get(a.judge_key_env),
                        cache=os.path.join(a.out, "judge_cache.jsonl"))

    def judge(request: str) -> str:
      messages = [{"role": "system", "content": pr.JUDGE_SYSTEM}, {"role": "user", "content": request}]
      return client.complete(messages, **pr.JUDGE_PARAMS)

  shard = os.path.join(a.out, f"{a.benchmark}.{pi}.jsonl")
  rows = {_row_key(r): r for r in map(json.loads, open(shard))} if os.path.exists(shard) else {}
  by_key = {f"{d.task}:{d.id}": d for d in mine}

  def scored(doc, response: str) -> dict:
    """lmms-eval's process_results for one answer; a judge that fails scores 0, as lmms-eval's does."""
    rng = random.Random(f"{doc.task}:{doc.id}")     # LongVideoBench's random fallback, reproducible
    try:
      result = pr.score(doc, response, proto, rng=rng, judge=judge)
    except (EndpointError, ValueError) as e:
      result = {"pred": response, "rating": -1 if doc.task == "tempcompass_captioning" else 0, "correct": False,
                "judged": True, "judge_error": str(e)}
    keep = {k: doc.fields[k] for k in ("task_type", "dim") if k in doc.fields}
    return {"id": doc.id, "task": doc.task, "groups": report.groups(doc.task, doc.fields), **keep,
            "response": response, **result}

  if judge is not None:       # answers waiting for a judge are scored now, without generating again
    waiting = [k for k, r in rows.items() if r.get("unjudged") and k in by_key]
    for k in waiting:
      rows[k] = scored(by_key[k], rows[k]["response"])
    if waiting:
      with open(shard + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows.values())
      os.replace(shard + ".tmp", shard)
  todo = [d for d in mine if f"{d.task}:{d.id}" not in rows]
  print(f"{a.benchmark} ({proto.name}): {len(docs)} items, {len(mine)} for process {pi}/{pc}, "
        f"{len(mine) - len(todo)} already scored", flush=True)
  for task, why in release.skipped.items():
    print(f"  not evaluated: {task}: {why}", flush=True)
  if todo:
    _generate(a, proto, todo, shard, scored)
  if pi == 0:
    return _report(a, proto, docs, release, tasks, group)
  return 0


def _generate(a, proto, todo, shard, scored) -> None:
  import jax
  from hourjax.data import video
  from hourjax.data.batching import Buckets, collate
  from hourjax.evaluation import protocol as pr
  from hourjax.infer.checkpoint import open_model
  from hourjax.infer.encode import video_features
  from hourjax.infer.generate import Sampling, generate, prompt_ids

  loaded = open_model(a.params, tokenizer=a.tokenizer)        # random forgetting with a fixed key
  model, params, cfg, tokenizer = loaded.model, loaded.params, loaded.cfg, loaded.tokenizer
  if not hasattr(cfg, "memaug"):      # ProLongVid's model: fixed frames by linspace, no time instruction
    a.frames, a.no_time_instruction = a.frames or 192, True
  current = (None, None)
  with open(shard, "a") as out:
    for n, doc in enumerate(todo, 1):
      try:
        if current[0] != doc.video:       # questions of one video share its encoding
          info = video.probe(doc.video)
          idx = (video.fixed_frame_indices(info.frames, a.frames) if a.frames else
                 video.official_frame_indices(info.frames, info.fps, min_frames=a.min_frames))
          current = (doc.video, (info, idx, video_features(model, params, doc.video, idx, cfg.vision.image_size,
                                                           a.chunk, a.resample)))
        info, idx, feats = current[1]
        text = pr.prompt(doc, proto, (info.fps, info.frames))
        ids = prompt_ids(tokenizer, text, None if a.no_time_instruction else info.duration, len(idx))
      except (ValueError, OSError) as e:         # a missing or unreadable video: not scored
        out.write(json.dumps({"id": doc.id, "task": doc.task, "skipped": f"{type(e).__name__}: {e}"}) + "\n")
        out.flush()
        continue
      tokens_max, stops = pr.generation(doc.task, proto)
      sample = {"input_ids": ids, "labels": np.full(len(ids), -100, np.int32), "features": feats}
      batch = collate([sample], cfg, Buckets(frames=(len(feats),), text=(-(-len(ids) // 256) * 256,)))
      sampling = Sampling(max_new_tokens=a.max_new_tokens or tokens_max)
      tokens, k = generate(model, params, batch, jax.random.key(0), sampling, tokenizer.stop_ids)
      response = pr.clean(pr.until(tokenizer.decode(tokens[0, :k[0]].tolist()), stops), proto)
      out.write(json.dumps(scored(doc, response)) + "\n")
      out.flush()
      if n % 50 == 0:
        print(f"  {n}/{len(todo)}", flush=True)


def _report(a, proto, docs, release, tasks, group) -> int:
  from hourjax.evaluation import report
  shards = sorted(glob.glob(os.path.join(a.out, f"{a.benchmark}.*.jsonl")))
  rows = {_row_key(r): r for path in shards for r in map(json.loads, open(path))}
  if len(rows) < len(docs):
    print(f"{len(rows)} of {len(docs)} items done; rerun when all shares finish", flush=True)
    return 0
  summaries, totals = {}, {}
  for task in tasks:
    task_rows = [r for r in rows.values() if r["task"] == task and "skipped" not in r]
    if any(d.task == task for d in docs):
      summaries[task] = report.summarise(task, task_rows, proto)
      totals[task] = sum(d.task == task for d in docs)
  skipped = {k: r["skipped"] for k, r in rows.items() if "skipped" in r}
  result = {"benchmark": a.benchmark, "protocol": proto.name, "setting": proto.setting, "params": a.params,
            "tasks": summaries, "skipped": skipped, "not_evaluated": release.skipped}
  with open(os.path.join(a.out, f"{a.benchmark}.json"), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(a.out, f"{a.benchmark}.lmms_eval.json"), "w") as f:
    json.dump(report.lmms_eval_results(summaries, proto, f"params={a.params}", totals, group), f, indent=2)
  for task, s in summaries.items():
    extra = f", {s['unjudged']} unjudged (need --judge-url)" if s["unjudged"] else ""
    print(f"{task}: {s['metric']} = {s['value']:.4g} over {s['n']} items{extra}", flush=True)
  if skipped:
    print(f"{len(skipped)} items skipped (video missing or unreadable)", flush=True)
  return 0


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
