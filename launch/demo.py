"""The main job on its embedded default: train a tiny Hour-LLaVA on synthetic QA videos on this CPU.

  bash launch/main.sh                                   # set up, then this with its defaults
  python -m launch.demo --workdir /tmp/hourjax_demo --steps 150 --videos 32
  python -m launch.demo --workdir /tmp/hourjax_recall --task recall --videos 128   # does it read video?

1. Writes the synthetic dataset (real mp4 files whose frames answer the questions, LLaVA-style
   JSONL) for training and a held-out split, and a small tokenizer trained on their text.
2. Measures held-out loss and answer-token accuracy of the initial model.
3. Trains stage 3 of configs/hour_llava.py:tiny (SigLIP frozen; projector, MemAug and LLM
   trained) through the real pipeline, loop and Orbax checkpoints (re-running resumes).
4. Writes the trained parameters, restores them, and measures the held-out split again.
5. Shows the first held-out question of each type with the model's answer and the reference.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import jax
import numpy as np


def _dataset(root: str, videos: int, seed: int, task: str, seconds: tuple[int, int]) -> list[dict]:
  from hourjax.synthetic.videos import write_dataset
  path = os.path.join(root, "annotations.jsonl")
  if not os.path.exists(path):
    write_dataset(root, num_videos=videos, seconds=seconds, fps=2, size=64, seed=seed, task=task)
  return [json.loads(line) for line in open(path)]


def held_out_videos(held_dir: str, records: list[dict], image_size: int, min_frames: int) -> list[tuple]:
  """(record, frames [T, S, S, 3] uint8 at the official frame rule, duration s) per held-out video."""
  from hourjax.data.video import read_official_frames
  return [(r, *read_official_frames(os.path.join(held_dir, r["data_source"], r["video"]), image_size, min_frames))
          for r in records]


def main(argv=None) -> int:
  from hourjax.synthetic.videos import TASKS
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="/tmp/hourjax_demo")
  p.add_argument("--steps", type=int, default=150)
  p.add_argument("--videos", type=int, default=32, help="training videos (held out: a quarter as many)")
  p.add_argument("--task", default="events", choices=TASKS, help="events: the four "
                 "question types; recall: one colour fills the video, asked once (the visual path's "
                 "sanity check). A workdir keeps the data it was first given")
  p.add_argument("--seconds", type=int, nargs=2, default=(20, 48), metavar=("MIN", "MAX"),
                 help="video lengths drawn from this range (events of 3-8 s, docs/demo.md)")
  p.add_argument("--tokenizer", default="", help="a tokenizer directory instead of the small BPE trained "
                 "here, e.g. the real Qwen2 one (python -m tools.qwen_tokenizer); the LLM's vocabulary grows to fit")
  p.add_argument("overrides", nargs="*", help="overrides of configs/hour_llava.py:tiny,stage=3: "
                 "--config.key=value (or key=value)")
  from hourjax.config import split_overrides
  own, flags_ = split_overrides(sys.argv[1:] if argv is None else argv)
  a = p.parse_args(own)
  a.overrides = flags_ + a.overrides
  from hourjax.config import load, model_config
  from hourjax.convert.io import load_params, save_params
  from hourjax.data import chat, pipeline
  from hourjax.data.batching import Buckets
  from hourjax.synthetic.tokenizer import save_tiny_tokenizer
  from hourjax.synthetic.videos import QUESTION_TYPES
  from hourjax.infer.generate import Sampling, answer as answer_question
  from hourjax.models import build
  from hourjax.parallel import mesh as mesh_lib
  from hourjax.train.evaluate import evaluate
  from hourjax.train.loop import train

  from hourjax.cli import writable_dir
  writable_dir(a.workdir)
  train_dir, held_dir = os.path.join(a.workdir, "data", "train"), os.path.join(a.workdir, "data", "heldout")
  print(f"[1/5] synthetic QA videos in {a.workdir}/data", flush=True)
  records = _dataset(train_dir, a.videos, seed=0, task=a.task, seconds=tuple(a.seconds))
  held = _dataset(held_dir, max(2, a.videos // 4), seed=1, task=a.task, seconds=tuple(a.seconds))
  tok_dir = a.tokenizer or os.path.join(a.workdir, "tokenizer")
  if not os.path.exists(tok_dir):
    save_tiny_tokenizer(tok_dir, [t["value"] for r in records for t in r["conversations"]])
  tokenizer = chat.load_tokenizer(tok_dir)
  vocab = [f"model.llm.vocab_size={-(-len(tokenizer) // 128) * 128}"] if a.tokenizer else []
  print(f"      {len(records)} training videos, {len(held)} held out, "
        f"{sum(len(r['conversations']) // 2 for r in records)} training questions", flush=True)

  config = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "hour_llava.py")
  batch = math.lcm(4, jax.device_count())     # every device gets whole samples
  run = load(config + ":tiny,stage=3", [f"data.root={train_dir}", f"data.read.tokenizer={tok_dir}",
                                        f"train.steps={a.steps}", "train.checkpoint_every=50",
                                        f"data.batch_size={batch}", *vocab, *a.overrides])
  cfg = model_config(run.model)
  model = build.build("hour_llava", cfg)
  held_data = run.data.copy_and_resolve_references()
  held_data.root, held_data.epochs, held_data.batch_size = held_dir, 1, 2

  template = tokenizer.template_ids()
  answering = dict(frames=list(run.data.buckets.frames), text=[256], min_frames=run.data.read.min_frames)
  buckets = Buckets(frames=tuple(answering["frames"]), text=tuple(answering["text"]))
  videos = held_out_videos(held_dir, held, cfg.vision.image_size, answering["min_frames"])

  def answer(params, r, frames, duration, turn):
    question = r["conversations"][turn]["value"].replace("<image>\n", "")
    return question, answer_question(model, params, cfg, tokenizer, question, frames, duration=duration,
                                     sampling=Sampling(max_new_tokens=8), buckets=buckets)

  def held_out(params) -> dict:
    """Teacher-forced loss and answer-token accuracy, and exact-match of greedy answers (overall
    and per question type)."""
    out = evaluate(model, params, pipeline.from_config(held_data, cfg), jax.random.key(7), template)
    hits: dict[str, list[bool]] = {kind: [] for kind in QUESTION_TYPES
                                   if any(kind in r["question_types"] for r, _, _ in videos)}
    answers = []
    for r, f, d in videos:
      for t in range(0, len(r["conversations"]), 2):
        kind, reference = r["question_types"][t // 2], r["conversations"][t + 1]["value"]
        question, reply = answer(params, r, f, d, t)
        hits[kind].append(reply == reference)
        answers.append({"video": r["video"], "type": kind, "question": question, "answer": reply,
                        "reference": reference})
    every = sum(hits.values(), [])
    return {**out, "exact_match": sum(every) / len(every), "questions": len(every), "answers": answers,
            "by_type": {k: {"exact_match": sum(v) / max(1, len(v)), "questions": len(v)} for k, v in hits.items()}}

  print("[2/5] held-out before training", flush=True)
  mesh = mesh_lib.make_mesh(dict(run.mesh))
  before = held_out(build.init_sharded("hour_llava", cfg, mesh, jax.random.key(run.train.seed)))
  print(f"      loss {before['loss']:.3f}, answer-token accuracy {before['accuracy']:.3f}, "
        f"exact answers {before['exact_match']:.3f} of {before['questions']} questions", flush=True)

  print(f"[3/5] training {a.steps} steps (batch {run.data.batch_size}; re-running resumes)", flush=True)
  summary = train(run, os.path.join(a.workdir, "run"))
  state = summary.pop("state")
  if summary["first_loss"] is None:       # a re-run after the last step: nothing left to train
    print(f"      already trained to step {summary['last_step']} (restored from its checkpoint)", flush=True)
  else:
    print(f"      loss {summary['first_loss']:.3f} at step {summary['first_step']} -> "
          f"{summary['last_loss']:.3f} at step {summary['last_step']}", flush=True)

  print("[4/5] save, restore and evaluate the trained parameters", flush=True)
  params_dir = os.path.join(a.workdir, "params")
  save_params(params_dir, jax.device_get(state.params), "hour_llava", cfg)
  restored = load_params(params_dir)
  trained = jax.tree.leaves(jax.device_get(state.params))
  same = all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(restored), trained))
  after = held_out(restored)
  print(f"      restored equal to trained: {same}; held-out loss {before['loss']:.3f} -> {after['loss']:.3f}, "
        f"answer-token accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}, exact answers "
        f"{before['exact_match']:.3f} -> {after['exact_match']:.3f}", flush=True)
  for kind, r in after["by_type"].items():
    print(f"      {kind:>16}: {r['exact_match']:.3f} exact of {r['questions']} "
          f"(before training {before['by_type'][kind]['exact_match']:.3f})", flush=True)

  # Fixed by the data before training, not picked after seeing answers: the first held-out
  # question of each type, in the held-out file's order (every answer is in demo.json).
  print("[5/5] the first held-out question of each type", flush=True)
  shown: dict[str, dict] = {}
  for x in after["answers"]:
    shown.setdefault(x["type"], x)
  for x in shown.values():
    print(f"      {x['type']} ({x['video']})\n      Q: {x['question']}\n      model: {x['answer']}  "
          f"reference: {x['reference']}  {'right' if x['answer'] == x['reference'] else 'wrong'}", flush=True)
  result = {"held_out_before": before, "held_out_after": after, "train": summary, "restored_equal": same,
            "shown": list(shown.values()),
            "answering": answering}     # how held-out questions were asked (tools.demo_probe asks again)
  with open(os.path.join(a.workdir, "demo.json"), "w") as f:
    json.dump(result, f, indent=1)
  return 0


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
