"""A synthetic long-video multiple-choice benchmark whose answers depend on *when* things happen.

    python -m hourjax.synthetic.long_video_mcq /tmp/lvmcq --split test --videos 400

A video is `frames` seconds at 1 FPS on a background of one colour: back-to-back segments of
8-24 s, each a centred square or circle of one colour (neighbours differ), interrupted by one
to four brief "flashes" (1-3 frames of a white-and-colour checkerboard filling the screen)
placed where a new segment starts. Each video carries one 4-option question (chance 25%):

  needle    one flash: what colour was it?                 (needs the 1-3 flash frames)
  framed    a busy video (the shape and its colour change every 1-3 s, no flash) in which, for
            1-3 frames, the shape is a circle framed by a white square: what colour was it?
                                                           (needs those frames; see below)
  order     one flash: what colour was the shape right after it?   (needs where the flash was)
  counting  1-4 flashes: how many?                         (needs every flash)
  control   what colour is the background?                 (any frame answers it)

The reply is the option word itself, scored among the task's four options (chance 25%), so
a tiny model trained from scratch need not also learn a letter-to-option mapping per task.
Answers are balanced by construction. Uniform 1/4 temporal sampling (Hour-LLaVA's decayed
frames) misses a 1-, 2- or 3-frame event with probability 3/4, 1/2, 1/4, so about half of the
needle, framed and order questions lose their evidence to temporal forgetting
(`Item.needle_dropped`). Options keep a fixed order per task.

Two needles, because a needle can be found for free. The flash is the most surprising frame of
its video by construction, so selecting the frames least like their neighbours (keyframe
forgetting) keeps it. The framed circle is the fair needle: its video changes every 1-3 s, so
every frame differs from its neighbours about as much as the framed one does, and only its
content, which the question names, tells it apart: what a memory read by the question can find
and a surprise heuristic cannot (docs/ablation.md: keyframe keeps it in 44% of the held-out
videos, uniform sampling in 35%, and every flash). Two earlier fair needles failed (docs/ablation.md): a 1-3 frame
recolour of a calm video's shape, which keyframe kept (90%) and only its duration identified,
and a cross in the busy video, which no arm learned to read.
Everything comes from one seeded generator: a split is reproducible from (seed, n, frames).
"""
from __future__ import annotations

import sys
import argparse
import dataclasses
import json
import os
from typing import Iterator, Sequence

import numpy as np

from hourjax.models.forgetting import official_linspace

TASKS = ("needle", "framed", "order", "counting", "control")
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
BACKGROUNDS = {"black": (12, 12, 12), "grey": (110, 110, 110), "brown": (110, 70, 30), "purple": (90, 40, 120)}
WHITE = (245, 245, 245)
QUESTIONS = {
    "needle": ("The screen flashed once, briefly. What colour was the flash?", tuple(COLOURS)),
    "framed": ("Once, briefly, a circle appeared framed by a white square. What colour was that circle?",
               tuple(COLOURS)),
    "order": ("What colour was the shape shown right after the flash?", tuple(COLOURS)),
    "counting": ("How many times did the screen flash?", ("1", "2", "3", "4")),
    "control": ("What colour is the background?", tuple(BACKGROUNDS)),
}
SPLIT_SEEDS = {"train": 0, "test": 1}      # the study's splits
INSTRUCTION = "Answer with one of the options."


@dataclasses.dataclass(frozen=True)
class Item:
  task: str
  answer: int                                   # index into the task's options
  background: str
  segments: tuple[tuple[int, int, str, str], ...]   # (start, end, shape, colour), end exclusive
  flashes: tuple[tuple[int, int, str], ...]     # (start, length, colour)
  needle_dropped: bool      # no frame of the evidence (the flashes; the framed circle) survives
                            # uniform 1/4 sampling
  framed: tuple[int, int, str] | None = None    # (start, length, colour) of the framed circle in a
                                                # busy video

  @property
  def evidence(self) -> tuple[tuple[int, int], ...]:
    """(start, length) of each event the answer is read from or anchored on: the framed circle,
    else the flashes (the needle's colour, the order question's moment, the counted flashes)."""
    return (self.framed[:2],) if self.framed else tuple(f[:2] for f in self.flashes)

  @property
  def question(self) -> str:
    return QUESTIONS[self.task][0]

  @property
  def options(self) -> tuple[str, ...]:
    return QUESTIONS[self.task][1]

  def prompt(self) -> str:
    """The user turn (with the `<image>` placeholder): question, the four options, instruction."""
    return "\n".join(["<image>", self.question, "Options: " + ", ".join(self.options) + ".", INSTRUCTION])

  def conversation(self) -> list[dict]:
    """The reply is the option itself (one word), scored among the task's four options."""
    return [{"from": "human", "value": self.prompt()}, {"from": "gpt", "value": self.options[self.answer]}]


def uniform_retained(frames: int, keep: int = 4) -> np.ndarray:
  """Frames that uniform temporal forgetting at 1/keep retains (the official index rule)."""
  return official_linspace(frames - 1, max(1, frames // keep))


def plan(task: str, rng: np.random.Generator, frames: int = 256) -> Item:
  if task not in TASKS:
    raise ValueError(f"task {task!r}: expected one of {TASKS}")
  if frames < 96:
    raise ValueError(f"frames={frames}: a long-video item needs at least 96 frames")
  colours = list(COLOURS)
  count = {"counting": int(rng.integers(1, 5)), "framed": 0}.get(task, 1)
  lengths = (1, 4) if task == "framed" else (8, 25)     # a busy video changes every 1-3 s
  while True:     # redraw the rare timeline with too few places for the flashes
    segments, t, prev = [], 0, None
    while t < frames:
      length = min(int(rng.integers(*lengths)), frames - t)
      colour = str(rng.choice([c for c in colours if c != prev]))
      segments.append((t, t + length, str(rng.choice(["square", "circle"])), colour))
      prev, t = colour, t + length
    # Flashes open a segment that outlasts them, away from the video's ends.
    starts = [i for i, s in enumerate(segments) if i > 0 and 8 <= s[0] <= frames - 12 and s[1] - s[0] >= 6]
    if len(starts) >= count:
      break
  chosen = sorted(rng.choice(starts, count, replace=False))
  flashes = tuple((segments[i][0], int(rng.integers(1, 4)), str(rng.choice(colours))) for i in chosen)
  background = str(rng.choice(list(BACKGROUNDS)))
  framed = None
  if task == "framed":     # away from the video's ends, like a flash; any colour, its neighbours' too
    length = int(rng.integers(1, 4))
    framed = (int(rng.integers(8, frames - 11 - length)), length, str(rng.choice(colours)))
  answer = {"needle": lambda: colours.index(flashes[0][2]),
            "framed": lambda: colours.index(framed[2]),
            "order": lambda: colours.index(segments[chosen[0]][3]),
            "counting": lambda: count - 1,
            "control": lambda: list(BACKGROUNDS).index(background)}[task]()
  item = Item(task, answer, background, tuple(segments), flashes, False, framed)
  kept = set(uniform_retained(frames).tolist())
  return dataclasses.replace(item, needle_dropped=not any(
      f in kept for s, n in item.evidence for f in range(s, s + n)))


def render(item: Item, frames: int = 256, size: int = 32) -> np.ndarray:
  """uint8 [frames, size, size, 3]."""
  out = np.empty((frames, size, size, 3), np.uint8)
  out[:] = BACKGROUNDS[item.background]
  yy, xx = np.mgrid[:size, :size]
  c, r = (size - 1) / 2, size * 0.3
  masks = {"square": (abs(yy - c) <= r) & (abs(xx - c) <= r), "circle": (yy - c) ** 2 + (xx - c) ** 2 <= r * r}
  for start, end, shape, colour in item.segments:
    out[start:end, masks[shape]] = COLOURS[colour]
  if item.framed:          # a circle, the square's corners around it white
    start, length, colour = item.framed
    out[start:start + length, masks["square"] & ~masks["circle"]] = WHITE
    out[start:start + length, masks["circle"]] = COLOURS[colour]
  # A flash fills the screen (a framed video has none).
  check = ((yy // max(1, size // 4)) + (xx // max(1, size // 4))) % 2 == 0
  for start, length, colour in item.flashes:
    out[start:start + length] = np.where(check[..., None], np.uint8(WHITE), np.uint8(COLOURS[colour]))
  return out


def make_split(n: int, seed: int, frames: int = 256) -> list[Item]:
  """n items, tasks in equal shares (round robin), from one seeded generator."""
  rng = np.random.default_rng(seed)
  return [plan(TASKS[i % len(TASKS)], rng, frames) for i in range(n)]


def rendered(items: Sequence[Item], frames: int = 256, size: int = 32) -> Iterator[np.ndarray]:
  for item in items:
    yield render(item, frames, size)


def write_split(root: str, n: int, seed: int, frames: int = 256, size: int = 32, codec: str = "mpeg4") -> str:
  """mp4 files (1 FPS) at root/synthetic_mcq/*.mp4 and root/annotations.jsonl in LLaVA format
  (plus task, answer and needle_dropped), for the real pipeline and `launch.evaluate`."""
  from hourjax.data.video import write_video
  os.makedirs(os.path.join(root, "synthetic_mcq"), exist_ok=True)
  path = os.path.join(root, "annotations.jsonl")
  with open(path, "w") as f:
    for i, item in enumerate(make_split(n, seed, frames)):
      rel = f"mcq_{i:05d}.mp4"
      write_video(os.path.join(root, "synthetic_mcq", rel), render(item, frames, size), fps=1, codec=codec)
      f.write(json.dumps({"id": f"mcq_{i:05d}", "video": rel, "data_source": "synthetic_mcq",
                          "duration": float(frames), "conversations": item.conversation(),
                          "task": item.task, "answer": item.options[item.answer],
                          "needle_dropped": item.needle_dropped}) + "\n")
  return path


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("root")
  p.add_argument("--split", choices=["train", "test"], default="test",
                 help="train uses seed 0, test seed 1 (the study's splits)")
  p.add_argument("--videos", type=int, default=400)
  p.add_argument("--frames", type=int, default=256)
  p.add_argument("--size", type=int, default=32)
  a = p.parse_args(argv)
  print(write_split(a.root, a.videos, SPLIT_SEEDS[a.split], a.frames, a.size))


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
