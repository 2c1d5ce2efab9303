"""Does a trained demo model look at the video? Its held-out answers with each video swapped.

    python -m tools.demo_probe --workdir /tmp/hourjax_demo        # after python -m launch.demo

Every held-out question of a `launch.demo` workdir is answered twice by its trained parameters
(`params/`): with its own video, and with the next held-out video's frames spread over the same
frame count (so the prompt, time instruction included, is token for token the same). A model that reads the
video changes its answer when the video changes, at least as often as the references do; one
that answers from the question alone never does. Prints per question type how often the answer
and the reference change, and writes `probe.json` beside `demo.json`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="/tmp/hourjax_demo")
  a = p.parse_args(argv)
  from hourjax.convert.io import load_params, read_meta
  from hourjax.data import chat
  from hourjax.data.batching import Buckets
  from hourjax.infer.generate import Sampling, answer
  from hourjax.models import build
  from launch.demo import held_out_videos

  params_dir, held_dir = os.path.join(a.workdir, "params"), os.path.join(a.workdir, "data", "heldout")
  demo_json = os.path.join(a.workdir, "demo.json")
  if not os.path.exists(os.path.join(params_dir, "hourjax.json")) or not os.path.exists(demo_json):
    raise FileNotFoundError(f"{a.workdir}: no finished demo (run python -m launch.demo --workdir {a.workdir})")
  asked = json.load(open(demo_json))["answering"]
  meta = read_meta(params_dir)
  cfg = build.config_from_dict("hour_llava", meta["config"])
  model, params = build.build("hour_llava", cfg), load_params(params_dir)
  tokenizer = chat.load_tokenizer(os.path.join(a.workdir, "tokenizer"))
  records = [json.loads(line) for line in open(os.path.join(held_dir, "annotations.jsonl"))]
  buckets = Buckets(frames=tuple(asked["frames"]), text=tuple(asked["text"]))
  frames = {r["video"]: (f, d) for r, f, d in held_out_videos(held_dir, records, cfg.vision.image_size,
                                                               asked["min_frames"])}
  rows = []
  for i, r in enumerate(records):
    other = records[(i + 1) % len(records)]
    own, duration = frames[r["video"]]
    theirs = frames[other["video"]][0]
    swapped = theirs[np.linspace(0, len(theirs) - 1, len(own)).round().astype(int)]
    for t in range(0, len(r["conversations"]), 2):
      kind = r["question_types"][t // 2]
      question = r["conversations"][t]["value"].replace("<image>\n", "")
      reply = [answer(model, params, cfg, tokenizer, question, f, duration=duration,
                      sampling=Sampling(max_new_tokens=8), buckets=buckets) for f in (own, swapped)]
      same_q = [other["conversations"][u + 1]["value"] for u in range(0, len(other["conversations"]), 2)
                if other["conversations"][u]["value"].replace("<image>\n", "") == question]
      rows.append({"type": kind, "question": question, "answer": reply[0], "answer_swapped": reply[1],
                   "reference": r["conversations"][t + 1]["value"],
                   "reference_swapped": same_q[0] if same_q else None})
  summary = {}
  for kind in sorted({r["type"] for r in rows}):
    rs = [r for r in rows if r["type"] == kind]
    comparable = [r for r in rs if r["reference_swapped"] is not None]
    changed = sum(r["answer"] != r["answer_swapped"] for r in rs)
    summary[kind] = {"questions": len(rs), "answer_changes": changed / len(rs), "comparable": len(comparable),
                     "reference_changes": (sum(r["reference"] != r["reference_swapped"] for r in comparable)
                                           / max(1, len(comparable)))}
    s = summary[kind]
    print(f"{kind:>16}: the answer changes with the video in {s['answer_changes']:.2f} of {s['questions']} "
          f"questions; the reference in {s['reference_changes']:.2f} of {s['comparable']}")
  with open(os.path.join(a.workdir, "probe.json"), "w") as f:
    json.dump({"summary": summary, "rows": rows}, f, indent=1)
  return 0


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
