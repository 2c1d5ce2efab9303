"""Synthetic QA videos: the decoded frames show what the annotations say, and the answers
follow from the events."""
import json
import os

import numpy as np
import pytest

from hourjax.synthetic.videos import COLOURS, QUESTION_TYPES, write_dataset
from hourjax.data.video import decode_frames, official_frame_indices, probe


def _colour_at(frame):
  """Name of the nearest palette colour among the bright pixels of a frame (None if dark)."""
  bright = frame.reshape(-1, 3)[frame.reshape(-1, 3).max(1) > 80]
  if len(bright) < 20:
    return None
  mean = bright.mean(0)
  return min(COLOURS, key=lambda c: np.linalg.norm(mean - np.array(COLOURS[c])))


def test_frames_answer_the_questions(tmp_path):
  path = write_dataset(str(tmp_path), num_videos=3, seconds=(20, 40), fps=4, size=64, seed=3)
  records = [json.loads(line) for line in open(path)]
  assert len({r["id"] for r in records}) == 3
  for r in records:
    conv = r["conversations"]
    assert conv[0]["value"].startswith("<image>\n") and sum("<image>" in t["value"] for t in conv) == 1
    assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2) and len(conv) <= 10
    assert sorted(r["question_types"]) == sorted(QUESTION_TYPES[:len(conv) // 2])     # events: the first 4
    opening = {"colour at a time": "What colour", "count": "How many", "shown once": "What was shown",
               "order": "Which appeared"}
    assert all(conv[2 * i]["value"].replace("<image>\n", "").startswith(opening[kind])
               for i, kind in enumerate(r["question_types"]))
    events = r["events"]
    needles = [e for e in events if e["colour"] == "white"]
    assert len(needles) == 1 and needles[0]["end"] - needles[0]["start"] <= 2
    answers = dict((conv[i]["value"].replace("<image>\n", ""), conv[i + 1]["value"])
                   for i in range(0, len(conv), 2))
    assert answers["How many circles appear in the video?"] == str(sum(e["shape"] == "circle" for e in events))
    assert answers["What was shown only once, and only briefly?"] == f"a white {needles[0]['shape']}"
    video = os.path.join(str(tmp_path), r["data_source"], r["video"])
    info = probe(video)
    assert abs(info.duration - r["duration"]) < 0.5
    frames = decode_frames(video, official_frame_indices(info.frames, info.fps, min_frames=0), 64)
    for e in events:     # the middle second of every event shows its colour
      assert _colour_at(frames[(e["start"] + e["end"]) // 2]) == e["colour"], (r["id"], e)
    (question, colour), = [(q, a) for q, a in answers.items() if q.startswith("What colour")]
    assert _colour_at(frames[int(question.split("second ")[1].rstrip("?"))]) == colour


def test_recall_videos_show_one_colour_throughout(tmp_path):
  """task="recall": one event fills the video and its colour, asked once, is in every frame."""
  path = write_dataset(str(tmp_path), num_videos=4, seconds=(8, 12), fps=2, size=48, seed=5, task="recall")
  for r in map(json.loads, open(path)):
    assert r["question_types"] == ["colour"] and len(r["events"]) == 1
    assert r["conversations"][0]["value"] == "<image>\nWhat colour is the shape?"
    video = os.path.join(str(tmp_path), r["data_source"], r["video"])
    frames = decode_frames(video, official_frame_indices(probe(video).frames, 2, min_frames=0), 48)
    assert {_colour_at(f) for f in frames} == {r["conversations"][1]["value"]}
  with pytest.raises(ValueError, match="task='story'"):
    write_dataset(str(tmp_path), num_videos=1, task="story")
