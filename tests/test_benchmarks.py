"""Benchmark evaluation: every reader on a small fixture written in its published format,
lmms-eval's answer extraction, per-group scores, resume and sharding."""
import json
import os
import random

import jax
import pytest

from configs.hour_llava import get_config
from hourjax.config import model_config
from hourjax.convert.io import save_params
from hourjax.data.tiny_tokenizer import save_tiny_tokenizer
from hourjax.data.video import moving_square, write_video
from hourjax.infer import benchmarks as bm
from hourjax.models import build
from launch import evaluate

CFG = model_config(get_config("tiny").model)
OPTS = ["a red square", "a blue circle", "nothing", "two squares"]


def _write(root, benchmark):
  """Two questions about one 24-second video, in `benchmark`'s layout."""
  def video(rel):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_video(path, moving_square(24, fps=2, size=48), fps=2)
  qs = [("What is shown first?", 0), ("What is never shown?", 2)]
  if benchmark.startswith("videomme"):
    video("data/vid1.mp4")
    os.makedirs(os.path.join(root, "videomme"), exist_ok=True)
    with open(os.path.join(root, "videomme", "test.jsonl"), "w") as f:
      for i, (q, a) in enumerate(qs):
        f.write(json.dumps({"video_id": "001", "videoID": "vid1", "duration": "short", "domain": "Sports",
                            "sub_category": "x", "task_type": ["Counting", "Object Recognition"][i],
                            "question_id": f"001-{i}", "question": q,
                            "options": [f"{'ABCD'[j]}. {o}" for j, o in enumerate(OPTS)], "answer": "ABCD"[a]}) + "\n")
    os.makedirs(os.path.join(root, "subtitle"), exist_ok=True)
    with open(os.path.join(root, "subtitle", "vid1.srt"), "w") as f:
      f.write("1\n00:00:01,000 --> 00:00:03,000\n<i>hello there</i>\n\n2\n00:00:30,000 --> 00:00:31,000\nlater\n")
  elif benchmark == "longvideobench":
    video("videos/v1.mp4")
    json.dump([{"id": f"lvb{i}", "video_path": "v1.mp4", "question": q, "candidates": OPTS + ["N/A"],
                "correct_choice": a, "duration_group": 15, "question_category": "E2O"}
               for i, (q, a) in enumerate(qs)], open(os.path.join(root, "lvb_val.json"), "w"))
  elif benchmark == "lvbench":
    video("videos/k1.mp4")
    with open(os.path.join(root, "video_info.meta.jsonl"), "w") as f:
      f.write(json.dumps({"key": "k1", "qa": [
          {"uid": i, "question": q + "\n" + "\n".join(f"({'ABCD'[j]}) {o}" for j, o in enumerate(OPTS)),
           "answer": "ABCD"[a], "question_type": ["key information retrieval"]} for i, (q, a) in enumerate(qs)]}) + "\n")
  elif benchmark == "tempcompass":
    video("videos/t1.mp4")
    json.dump({"t1": {"order": [{"question": q + "\n" + "\n".join(f"{'ABCD'[j]}. {o}" for j, o in enumerate(OPTS)),
                                 "answer": f"{'ABCD'[a]}. {OPTS[a]}"} for q, a in qs]}},
              open(os.path.join(root, "multi-choice.json"), "w"))
  elif benchmark == "mlvu":
    video("video/count/m1.mp4")
    os.makedirs(os.path.join(root, "json"), exist_ok=True)
    json.dump([{"video": "m1.mp4", "duration": 24, "question": q, "candidates": OPTS, "answer": OPTS[a],
                "question_type": "count"} for q, a in qs], open(os.path.join(root, "json", "4_count.json"), "w"))


@pytest.mark.parametrize("benchmark", sorted(bm.READERS))
def test_readers(tmp_path, benchmark):
  _write(str(tmp_path), benchmark)
  items = bm.READERS[benchmark](str(tmp_path))
  assert [it.answer for it in items] == ["A", "C"]
  assert all(it.options == tuple(OPTS) and os.path.exists(it.video) for it in items)
  text = bm.prompt(benchmark, items[0], "hello there")
  assert "A. a red square\nB. a blue circle" in text and items[0].question in text
  if benchmark == "videomme_sub":
    assert bm.subtitle_text(items[0].subtitles, [0.0, 2.0, 10.0]) == "hello there"
    assert text.startswith("This video's subtitles are listed below:\nhello there\nSelect the best answer")


def test_answer_extraction_and_scores():
  assert bm.extract_letter("The best answer is B.", 4) == "B"
  assert bm.extract_letter("(C) nothing", 4) == "C"
  assert bm.extract_letter("I cannot tell what happens in this long video at all, sorry about that", 4) == ""
  assert bm.extract_letter("no idea", 5, random.Random(0)) in "ABCDE"
  s = bm.score([{"id": 1, "correct": True, "groups": [["task", "a"]]},
                {"id": 2, "correct": False, "groups": [["task", "b"]]},
                {"id": 3, "correct": True, "groups": [["task", "b"]]}])
  assert s["overall"]["accuracy"] == 2 / 3 and s["task"]["b"] == {"accuracy": 0.5, "n": 2}
  assert s["overall"]["task_mean"] == 0.75


def test_evaluate_resumes_and_shards(tmp_path, capsys):
  root, ckpt, out = str(tmp_path / "lvb"), str(tmp_path / "ckpt"), str(tmp_path / "out")
  _write(root, "longvideobench")
  save_params(ckpt, build.init_params("hour_llava", CFG, jax.random.key(0)), "hour_llava", CFG)
  tok = save_tiny_tokenizer(str(tmp_path / "tok"))
  args = ["--params", ckpt, "--tokenizer", tok, "--benchmark", "longvideobench", "--root", root, "--out", out,
          "--min-frames", "16", "--chunk", "8"]
  assert evaluate.main(args + ["--process-index", "1", "--process-count", "2"]) == 0
  assert not os.path.exists(os.path.join(out, "longvideobench.json"))       # share 0 not done
  assert evaluate.main(args + ["--process-index", "0", "--process-count", "2"]) == 0
  result = json.load(open(os.path.join(out, "longvideobench.json")))
  assert result["overall"]["n"] == 2 and set(result["category"]) == {"E2O"}
  rows = [json.loads(l) for p in ("longvideobench.0.jsonl", "longvideobench.1.jsonl") for l in open(os.path.join(out, p))]
  assert sorted(r["id"] for r in rows) == ["lvb0", "lvb1"] and all(r["pred"] in "ABCD" for r in rows)
  capsys.readouterr()
  assert evaluate.main(args + ["--process-index", "0", "--process-count", "2"]) == 0   # nothing left to do
  assert "1 already scored" in capsys.readouterr().out
  assert len(open(os.path.join(out, "longvideobench.0.jsonl")).readlines()) == 1
