"""The main job: synthetic data -> training -> save/restore -> held-out evaluation -> an answer."""
import json

from hourjax.synthetic.videos import QUESTION_TYPES
from launch import demo


def test_demo_trains_restores_and_answers(tmp_path, capsys):
  assert demo.main(["--workdir", str(tmp_path), "--steps", "16", "--videos", "4", "--seconds", "6", "12",
                    "mesh.fsdp=4", "mesh.sequence=2"]) == 0       # the 8 test devices
  out = json.load(open(tmp_path / "demo.json"))
  assert out["restored_equal"] and out["train"]["last_step"] == 16
  assert out["train"]["last_loss"] < out["train"]["first_loss"]
  assert out["held_out_after"]["loss"] < out["held_out_before"]["loss"]
  for split in ("held_out_before", "held_out_after"):       # 16 steps teach the format, not yet answers
    r = out[split]
    assert 0 <= r["accuracy"] <= 1 and 0 <= r["exact_match"] <= 1 and r["questions"] >= 2
    # per question type: the counts add up and the overall rate is their weighted mean
    assert set(r["by_type"]) == {a["type"] for a in r["answers"]} <= set(QUESTION_TYPES[:4])
    assert sum(t["questions"] for t in r["by_type"].values()) == r["questions"] == len(r["answers"])
    hits = sum(a["answer"] == a["reference"] for a in r["answers"])
    assert hits == round(sum(t["exact_match"] * t["questions"] for t in r["by_type"].values()))
    assert r["exact_match"] == hits / r["questions"]
  # the questions shown at the end: the first held-out question of each type, as answered above
  first = {}
  for a in out["held_out_after"]["answers"]:
    first.setdefault(a["type"], a)
  assert out["shown"] == list(first.values())
  # the probe answers as the demo did with each question's own video, and again with another
  from tools import demo_probe
  assert demo_probe.main(["--workdir", str(tmp_path)]) == 0
  rows = json.load(open(tmp_path / "probe.json"))["rows"]
  assert [(r["question"], r["answer"]) for r in rows] == [(a["question"], a["answer"])
                                                           for a in out["held_out_after"]["answers"]]
  assert "[5/5] the first held-out question of each type" in capsys.readouterr().out
