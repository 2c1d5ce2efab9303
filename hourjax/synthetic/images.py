"""Synthetic image QA in LLaVA format: PNG files of any size and aspect ratio (anyres crops see
every layout) whose pixels answer the question, and multi-image samples.

    python -m hourjax.synthetic.images /tmp/synth --images 16

root/images/img_*.png and root/images.jsonl: one image per record ("What colour is the shape?"),
every fourth record two images with two `<image>` placeholders ("Which image shows the larger
shape?").
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from hourjax.synthetic.videos import COLOURS


def draw(rng: np.random.Generator, height: int, width: int, colour: str, scale: float) -> np.ndarray:
  """A dark image with one filled square of `colour`, `scale` of the shorter side."""
  image = np.full((height, width, 3), 20, np.uint8)
  side = max(1, int(min(height, width) * scale))
  top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
  image[top:top + side, left:left + side] = COLOURS[colour]
  return image


def write_images(root: str, num_images: int, sides: tuple[int, int] = (40, 400), seed: int = 0) -> str:
  """Writes the images and root/images.jsonl; returns the annotation path."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, "images"), exist_ok=True)
  path = os.path.join(root, "images.jsonl")
  colours = list(COLOURS)

  def save(name: str, pixels: np.ndarray) -> str:
    Image.fromarray(pixels).save(os.path.join(root, "images", name))
    return f"images/{name}"

  with open(path, "w") as f:
    for i in range(num_images):
      h, w = (int(x) for x in rng.integers(sides[0], sides[1] + 1, 2))
      colour = colours[int(rng.integers(len(colours)))]
      if i % 4 == 3:
        scales = rng.permutation([0.3, 0.8])
        files = [save(f"img_{i:05d}_{j}.png", draw(rng, h, w, colour, s)) for j, s in enumerate(scales)]
        conv = [{"from": "human", "value": "<image>\n<image>\nWhich image shows the larger shape?"},
                {"from": "gpt", "value": "the first" if scales[0] > scales[1] else "the second"}]
        record = {"id": f"img_{i:05d}", "image": files, "conversations": conv}
      else:
        file = save(f"img_{i:05d}.png", draw(rng, h, w, colour, 0.5))
        conv = [{"from": "human", "value": "<image>\nWhat colour is the shape?"}, {"from": "gpt", "value": colour}]
        record = {"id": f"img_{i:05d}", "image": file, "conversations": conv}
      f.write(json.dumps(record) + "\n")
  return path


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("root")
  p.add_argument("--images", type=int, default=16)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  print(write_images(a.root, a.images, seed=a.seed))


if __name__ == "__main__":
  main(sys.argv[1:])
