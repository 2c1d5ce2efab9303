"""Synthetic long-video QA: real mp4 files whose frames answer the questions asked about them.

    python -m hourjax.synthetic.videos /tmp/synth --videos 8 --seconds 30 120
    python -m hourjax.synthetic.videos /tmp/recall --videos 128 --task recall

A video is a sequence of events, each a coloured shape (square or circle) shown on a dark
background for a few seconds at a moving position; one event, the "needle", is shown only once
and only briefly. Each video gets up to 4 QA pairs in LLaVA format, in a random order (the first question
carries `<image>`): the shape's colour at a time, how many circles appear, which of two events
came first, and what was shown only once. Everything is drawn from one seeded generator, so a dataset
is reproducible from its seed.

`task="recall"` is the sanity check of a model's visual path: one shape of one colour fills the
whole video and the only question is its colour, answerable from any frame (a model that
cannot learn this does not read its video at all; docs/demo.md).
"""
from __future__ import annotations

import sys
import argparse
import dataclasses
import json
import os

import numpy as np

from hourjax.data.video import write_video

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230),
           "yellow": (230, 210, 40), "white": (235, 235, 235)}
SHAPES = ("square", "circle")


@dataclasses.dataclass(frozen=True)
class Event:
  start: int      # seconds
  end: int        # exclusive
  shape: str
  colour: str


def plan_events(seconds: int, rng: np.random.Generator) -> list[Event]:
  """Back-to-back events of 3-8 s with the needle (a white shape, 1-2 s) at a random point."""
  events, t = [], 0
  while t < seconds:
    length = min(int(rng.integers(3, 9)), seconds - t)
    events.append(Event(t, t + length, str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS)[:4]))))
    t += length
  k = int(rng.integers(0, len(events)))
  e = events[k]
  needle_len = min(int(rng.integers(1, 3)), e.end - e.start)
  events[k:k + 1] = [Event(e.start, e.start + needle_len, str(rng.choice(SHAPES)), "white")] + (
      [Event(e.start + needle_len, e.end, e.shape, e.colour)] if e.end > e.start + needle_len else [])
  return events


def render(events: list[Event], seconds: int, fps: int, size: int) -> np.ndarray:
  frames = np.full((seconds * fps, size, size, 3), 16, np.uint8)
  yy, xx = np.mgrid[:size, :size]
  r = size // 6
  for e in events:
    for i in range(e.start * fps, e.end * fps):
      x = r + int((size - 2 * r) * ((i - e.start * fps) / max(1, (e.end - e.start) * fps - 1)))
      y = size // 2
      if e.shape == "square":
        mask = (abs(xx - x) <= r) & (abs(yy - y) <= r)
      else:
        mask = (xx - x) ** 2 + (yy - y) ** 2 <= r * r
      frames[i][mask] = COLOURS[e.colour]
  return frames


# What each question asks, in the order `questions` asks them (records keep them as "question_types");
# "colour" is the recall task's only question.
QUESTION_TYPES = ("colour at a time", "count", "shown once", "order", "colour")
TASKS = ("events", "recall")


def questions(events: list[Event], rng: np.random.Generator, max_pairs: int = 5) -> list[tuple[str, str, str]]:
  """(type, question, answer) triples; the order question only when two distinct events exist."""
  needle = next(e for e in events if e.colour == "white")
  ordinary = [e for e in events if e.colour != "white"]
  t_event = ordinary[int(rng.integers(0, len(ordinary)))]
  t = int(rng.integers(t_event.start, t_event.end))
  circles = sum(e.shape == "circle" for e in events)
  qa = [("colour at a time", f"What colour is the {t_event.shape} at second {t}?", t_event.colour),
        ("count", "How many circles appear in the video?", str(circles)),
        ("shown once", "What was shown only once, and only briefly?", f"a white {needle.shape}")]
  a, b = sorted(rng.choice(len(ordinary), 2, replace=False)) if len(ordinary) > 1 else (0, 0)
  if a != b and (ordinary[a].shape, ordinary[a].colour) != (ordinary[b].shape, ordinary[b].colour):
    first, second = ordinary[a], ordinary[b]
    pair = [f"the {first.colour} {first.shape}", f"the {second.colour} {second.shape}"]
    order = list(rng.permutation(2))
    qa.append(("order", f"Which appeared first: {pair[order[0]]} or {pair[order[1]]}?", pair[0]))
  return qa[:max_pairs]


def write_dataset(root: str, num_videos: int, seconds: tuple[int, int] = (30, 120), fps: int = 4,
                  size: int = 128, seed: int = 0, codec: str = "mpeg4", task: str = "events") -> str:
  """Videos at root/synthetic/*.mp4 (the official `{root}/{data_source}/{video}` layout) and
  root/annotations.jsonl; returns the annotation path. `task`: one of TASKS."""
  if task not in TASKS:
    raise ValueError(f"task={task!r}: expected one of {', '.join(TASKS)}")
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, "synthetic"), exist_ok=True)
  path = os.path.join(root, "annotations.jsonl")
  with open(path, "w") as f:
    for i in range(num_videos):
      length = int(rng.integers(seconds[0], seconds[1] + 1))
      if task == "recall":
        events = [Event(0, length, str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS)[:4])))]
        qa = [("colour", "What colour is the shape?", events[0].colour)]
      else:
        events = plan_events(length, rng)
      rel = f"synth_{i:05d}.mp4"
      write_video(os.path.join(root, "synthetic", rel), render(events, length, fps, size), fps=fps, codec=codec)
      conv, kinds = [], []
      if task == "events":
        qa = questions(events, rng)
      # Asked in a random order: a model asked one question at a time (launch.ask, the demo's
      # held-out answers) must answer what is asked, not what the first turn always asked.
      for j, (kind, q, a) in enumerate(qa[k] for k in rng.permutation(len(qa))):
        conv += [{"from": "human", "value": ("<image>\n" if j == 0 else "") + q}, {"from": "gpt", "value": a}]
        kinds.append(kind)
      f.write(json.dumps({"id": f"synth_{i:05d}", "video": rel, "data_source": "synthetic",
                          "duration": float(length), "conversations": conv, "question_types": kinds,
                          "events": [dataclasses.asdict(e) for e in events]}) + "\n")
  return path


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("root")
  p.add_argument("--videos", type=int, default=8)
  p.add_argument("--seconds", type=int, nargs=2, default=(30, 120), metavar=("MIN", "MAX"))
  p.add_argument("--fps", type=int, default=4)
  p.add_argument("--size", type=int, default=128)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--codec", default="mpeg4", choices=["mpeg4", "libx264"])
  p.add_argument("--task", default="events", choices=TASKS)
  a = p.parse_args(argv)
  print(write_dataset(a.root, a.videos, tuple(a.seconds), a.fps, a.size, a.seed, a.codec, a.task))


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
