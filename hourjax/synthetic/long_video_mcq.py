"""A synthetic long-video multiple-choice benchmark whose answers depend on *when* things happen.

    python -m hourjax.synthetic.long_video_mcq /tmp/lvmcq --split test --videos 400

A video is `frames` seconds at 1 FPS on a background of one colour: back-to-back segments of
8-24 s, each a centred square or circle of one colour (neighbours differ), interrupted by one
to four brief "flashes" (1-3 frames of a white-and-colour checkerboard filling the screen)
placed where a new segment starts. Each video carries one 4-option question (chance 25%):

  needle    one flash: what colour was it?                 (needs the 1-3 flash frames)
  blink     inside a segment the shape turns another colour for 1-3 frames, then back: what
            colour?                                        (needs those frames; see below)
  order     one flash: what colour was the shape right after it?   (needs where the flash was)
  counting  1-4 flashes: how many?                         (needs every flash)
  control   what colour is the background?                 (any frame answers it)

The reply is the option word itself, scored among the task's four options (chance 25%), so
a tiny model trained from scratch need not also learn a letter-to-option mapping per task.
Answers are balanced by construction. Uniform 1/4 temporal sampling (Hour-LLaVA's decayed
frames) misses a 1-, 2- or 3-frame flash with probability 3/4, 1/2, 1/4, so about half of the
needle, blink and order questions lose their evidence to temporal forgetting
(`Item.needle_dropped`). Options keep a fixed order per task.

The flash is the most surprising frame of its video by construction, so selecting the frames
least like their neighbours (keyframe forgetting) finds it for free. The blink is the fairer
needle: its frames differ from their neighbours only in the attribute asked (the shape's
colour), a change every segment boundary of the video also makes, and the video's flash
(not asked) is the more surprising event.
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

TASKS = ("needle", "blink", "order", "counting", "control")
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
BACKGROUNDS = {"black": (12, 12, 12), "grey": (110, 110, 110), "brown": (110, 70, 30), "purple": (90, 40, 120)}
WHITE = (245, 245, 245)
QUESTIONS = {
    "needle": ("The screen flashed once, briefly. What colour was the flash?", tuple(COLOURS)),
    "blink": ("The shape changed colour once, briefly, and changed back. What colour did it turn?",
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
  needle_dropped: bool      # no frame of the evidence (the flashes; the blink) survives uniform
                            # 1/4 sampling
  blink: tuple[int, int, str] | None = None     # (start, length, colour) of the shape's brief recolour

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
  count = int(rng.integers(1, 5)) if task == "counting" else 1
  while True:     # redraw the rare timeline with too few places for the flashes
    segments, t, prev = [], 0, None
    while t < frames:
      length = min(int(rng.integers(8, 25)), frames - t)
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
  blink = None
  if task == "blink":      # inside a segment, clear of its flash, the segment's colour on each side
    length = int(rng.integers(1, 4))
    inside = [(s0, s1, c) for s0, s1, _, c in segments if s1 - s0 >= length + 8]
    s0, s1, colour = inside[int(rng.integers(len(inside)))]
    start = int(rng.integers(s0 + 4, s1 - length - 3))
    blink = (start, length, str(rng.choice([c for c in colours if c != colour])))
  answer = {"needle": lambda: colours.index(flashes[0][2]),
            "blink": lambda: colours.index(blink[2]),
            "order": lambda: colours.index(segments[chosen[0]][3]),
            "counting": lambda: count - 1,
            "control": lambda: list(BACKGROUNDS).index(background)}[task]()
  kept = set(uniform_retained(frames).tolist())
  evidence = [blink] if blink else flashes
  dropped = not any(f in kept for s, n, _ in evidence for f in range(s, s + n))
  return Item(task, answer, background, tuple(segments), flashes, dropped, blink)


def render(item: Item, frames: int = 256, size: int = 32) -> np.ndarray:
  """uint8 [frames, size, size, 3]."""
  out = np.empty((frames, size, size, 3), np.uint8)
  out[:] = BACKGROUNDS[item.background]
  yy, xx = np.mgrid[:size, :size]
  c, r = (size - 1) / 2, size * 0.3
  masks = {"square": (abs(yy - c) <= r) & (abs(xx - c) <= r), "circle": (yy - c) ** 2 + (xx - c) ** 2 <= r * r}
  for start, end, shape, colour in item.segments:
    out[start:end, masks[shape]] = COLOURS[colour]
  if item.blink:
    start, length, colour = item.blink
    shape = next(s for s0, s1, s, _ in item.segments if s0 <= start < s1)
    out[start:start + length, masks[shape]] = COLOURS[colour]
  # A flash fills the screen (a blink is never on one).
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
