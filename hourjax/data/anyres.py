"""Images into crops, as LLaVA-OneVision's data code makes them (spec §1.10): uint8 RGB, PIL bicubic.

- one image of a sample (`anyres_max_9`): the best-fit grid resolution (`models.anyres.select_grid`),
  the image resized into it keeping its aspect ratio and centred on black, cut into crops; a plain
  resize of the whole image to one crop comes first (the "base").
- each image of a multi-image sample ("pad"): squared with SigLIP's mean colour, then resized to
  one crop.

The model needs each image's size and grid to pack its tokens: `images` rows (height, width, rows,
cols), rows = cols = 0 for a single crop (`models.anyres.image_layout` reads them).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from hourjax.models import anyres

MEAN_COLOUR = (127, 127, 127)      # SigLIP's image_mean 0.5, as the official expand2square uses it


def _pil(image):
  from PIL import Image
  return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))


def grid_crops(image, size: int) -> tuple[np.ndarray, tuple[int, int]]:
  """One image -> (crops uint8 [1 + rows * cols, size, size, 3] with the base first, (rows, cols))."""
  from PIL import Image
  image = _pil(image).convert("RGB")
  width, height = image.size
  rows, cols = anyres.select_grid(height, width, size)
  target_w, target_h = cols * size, rows * size
  if target_w / width < target_h / height:
    new_w, new_h = target_w, min(math.ceil(height * target_w / width), target_h)
  else:
    new_w, new_h = min(math.ceil(width * target_h / height), target_w), target_h
  canvas = Image.new("RGB", (target_w, target_h), (0, 0, 0))
  canvas.paste(image.resize((new_w, new_h), Image.BICUBIC), ((target_w - new_w) // 2, (target_h - new_h) // 2))
  grid = np.asarray(canvas).reshape(rows, size, cols, size, 3).transpose(0, 2, 1, 3, 4).reshape(-1, size, size, 3)
  base = np.asarray(image.resize((size, size), Image.BICUBIC))[None]
  return np.concatenate([base, grid]), (rows, cols)


def padded_crop(image, size: int) -> np.ndarray:
  """One image of a multi-image sample -> uint8 [1, size, size, 3] (official expand2square + resize)."""
  from PIL import Image
  image = _pil(image).convert("RGB")
  width, height = image.size
  side = max(width, height)
  square = Image.new("RGB", (side, side), MEAN_COLOUR)
  square.paste(image, ((side - width) // 2, (side - height) // 2))
  return np.asarray(square.resize((size, size), Image.BICUBIC))[None]


def crops(images: Sequence, size: int) -> tuple[np.ndarray, np.ndarray]:
  """A sample's images -> (crops uint8 [K, size, size, 3], images int32 [n, 4] of (height, width,
  rows, cols)): one image is tiled (anyres), several are one padded crop each."""
  if not images:
    raise ValueError("an image sample needs at least one image")
  rows_out, parts = [], []
  for image in images:
    im = _pil(image)
    if len(images) == 1:
      part, (rows, cols) = grid_crops(im, size)
    else:
      part, (rows, cols) = padded_crop(im, size), (0, 0)
    parts.append(part)
    rows_out.append((im.size[1], im.size[0], rows, cols))
  return np.concatenate(parts), np.asarray(rows_out, np.int32)


def layout_images(images: np.ndarray) -> list[tuple[int, int, tuple[int, int] | None]]:
  """`images` rows -> the (height, width, grid or None) list `models.anyres.image_layout` takes."""
  return [(int(h), int(w), (int(r), int(c)) if r else None) for h, w, r, c in np.asarray(images).reshape(-1, 4)]


def token_width(crop_edge: int, side: int, max_crops: int = anyres.MAX_CROPS) -> int:
  """Visual tokens that any sample of at most `crop_edge` crops can have (the static bucket width):
  one image is its base crop plus a map of at most (crop_edge - 1) crops, downsized to about
  `max_crops` crops (never more than 1.1^2 of that), with at most 6 crops' rows of newlines; k
  images are k crops and k newlines."""
  g = side * side
  tiled = g + min((crop_edge - 1) * g, int(1.21 * max_crops * g) + 1) + min(crop_edge - 1, 6) * side
  return max(crop_edge * (g + 1), tiled)
