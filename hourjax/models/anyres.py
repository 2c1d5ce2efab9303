"""Anyres images as LLaVA-OneVision lays them out (spec §1.10; transformers' `pack_image_features`).

An image becomes crops: a 384px "base" resize of the whole image, then, if the image was tiled,
a grid of rows x cols crops of its best-fit resolution. After SigLIP and the projector, the grid
crops are re-assembled into one feature map, the resize padding is cut away (`unpad`), a map
larger than ~9 crops is bilinearly downsized (`anyres_max_9`), and one `image_newline` closes each
row: tokens = [base crop, map rows with a newline each]. A single crop (a plain 384px image, or
each image of a multi-image sample) is its tokens plus one newline.

All of this depends only on image sizes, so it is worked out here on the host (numpy), once per
batch, as an `ImageLayout`: every visual token is at most four weighted feature taps (bilinear
takes two rows x two columns; a copy is one tap of weight 1) or the newline. The model then does
one gather and a weighted sum, with static shapes: the layout is padded to a bucket width.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax
import numpy as np

from hourjax.models.hour_llava import bilinear_matrix

# anyres_max_9's grid pinpoints "(1x1),...,(6x6)", in crops (rows, cols).
GRIDS = tuple((r, c) for r in range(1, 7) for c in range(1, 7))
MAX_CROPS = 9          # anyres_max_9: a map of more than ~9 crops' tokens is downsized


@flax.struct.dataclass
class ImageLayout:
  """Host-computed token layout for a batch of image samples (a pytree: passes through jit).

  taps [B, N, 4]: flat indices into the sample's crops' tokens (crop * tokens_per_crop + token).
  weights [B, N, 4]: their weights (float32; unused taps weigh 0).
  newline [B, N]: the token is the learned image_newline.
  image [B, N]: which of the sample's images (its <image> placeholder, in order) the token is in.
  valid [B, N]: real tokens (False: padding up to the bucket width).
  """
  taps: np.ndarray
  weights: np.ndarray
  newline: np.ndarray
  image: np.ndarray
  valid: np.ndarray


def select_grid(height: int, width: int, crop: int, grids: Sequence[tuple[int, int]] = GRIDS) -> tuple[int, int]:
  """The (rows, cols) whose resolution fits the image best: most of the image's pixels kept
  (resized to fit), then least padding (LLaVA-NeXT's `select_best_resolution`)."""
  best, best_fit, best_waste = None, -1, math.inf
  for rows, cols in grids:
    h, w = rows * crop, cols * crop
    scale = min(w / width, h / height)
    fit = min(int(width * scale) * int(height * scale), width * height)
    waste = h * w - fit
    if fit > best_fit or (fit == best_fit and waste < best_waste):
      best, best_fit, best_waste = (rows, cols), fit, waste
  return best


UNPAD = ("official", "transformers")


def unpadded(height: int, width: int, map_h: int, map_w: int, rounding: str = "official") -> tuple[int, int, int, int]:
  """(top, bottom, left, right) of a map_h x map_w feature map that the image covers: the resize
  padding is cut, centred (`unpad_image`). The covered side is truncated as the official
  LLaVA-NeXT / ProLongVid / Hour-LLaVA code does (`int(x)`), or rounded to 7 digits first as
  transformers does (`rounding="transformers"`); they differ when x lands a hair below an integer."""
  if rounding not in UNPAD:
    raise ValueError(f"rounding={rounding!r}: expected one of {UNPAD}")
  size = (lambda x: int(round(x, 7))) if rounding == "transformers" else int
  if width / height > map_w / map_h:
    new_h = size(height * (map_w / width))
    pad = (map_h - new_h) // 2
    return pad, map_h - pad, 0, map_w
  new_w = size(width * (map_h / height))
  pad = (map_w - new_w) // 2
  return 0, map_h, pad, map_w - pad


def _axis_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
  """Per output index: two source indices and weights (one of weight 1 when the size is unchanged)."""
  m = bilinear_matrix(size_in, size_out)
  idx = np.zeros((size_out, 2), np.int64)
  w = np.zeros((size_out, 2), np.float32)
  for i, row in enumerate(m):
    nz = np.flatnonzero(row)
    idx[i, :len(nz)], w[i, :len(nz)] = nz, row[nz]
    idx[i, len(nz):] = nz[0]
  return idx, w


def image_tokens(height: int, width: int, grid: tuple[int, int] | None, side: int,
                 max_crops: int = MAX_CROPS, rounding: str = "official") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One image's tokens relative to its first crop: (taps [n, 4], weights [n, 4], newline [n]).
  `grid` None: a single crop (+ newline); else (rows, cols) crops after the base crop. `side`:
  patches per crop side (27 for so400m at 384px)."""
  g = side * side
  base_taps = np.zeros((g, 4), np.int64) + np.arange(g)[:, None]
  base_w = np.zeros((g, 4), np.float32)
  base_w[:, 0] = 1.0
  if grid is None:
    return (np.concatenate([base_taps, np.zeros((1, 4), np.int64)]),
            np.concatenate([base_w, np.zeros((1, 4), np.float32)]), np.arange(g + 1) == g)
  rows, cols = grid
  top, bottom, left, right = unpadded(height, width, rows * side, cols * side, rounding)
  h, w = bottom - top, right - left
  ratio = math.sqrt(h * w / (max_crops * g))
  out_h, out_w = (int(h // ratio), int(w // ratio)) if ratio > 1.1 else (h, w)
  ry, wy = _axis_taps(h, out_h)
  rx, wx = _axis_taps(w, out_w)
  ry, rx = ry + top, rx + left

  def flat(y, x):       # map position -> crop token (crop 0 is the base)
    return (1 + (y // side) * cols + x // side) * g + (y % side) * side + x % side

  taps = flat(ry[:, None, :, None], rx[None, :, None, :]).reshape(out_h, out_w, 4)
  weights = (wy[:, None, :, None] * wx[None, :, None, :]).reshape(out_h, out_w, 4)
  # one newline after each row
  taps = np.concatenate([taps, np.zeros((out_h, 1, 4), np.int64)], 1).reshape(-1, 4)
  weights = np.concatenate([weights, np.zeros((out_h, 1, 4), np.float32)], 1).reshape(-1, 4)
  newline = np.broadcast_to(np.arange(out_w + 1) == out_w, (out_h, out_w + 1)).reshape(-1)
  return (np.concatenate([base_taps, taps]), np.concatenate([base_w, weights]),
          np.concatenate([np.zeros(g, bool), newline]))


def crop_count(grid: tuple[int, int] | None) -> int:
  return 1 if grid is None else 1 + grid[0] * grid[1]


def image_layout(samples: Sequence[Sequence[tuple[int, int, tuple[int, int] | None]]], side: int,
                 width: int | None = None, max_crops: int = MAX_CROPS, rounding: str = "official") -> ImageLayout:
  """samples: per sample, its images as (height, width, grid or None), crops stored image after
  image. Padded to `width` tokens (default: the widest sample); `rounding` of `unpadded`."""
  rows = []
  for images in samples:
    parts, first = [], 0
    for i, (h, w, grid) in enumerate(images):
      taps, weights, newline = image_tokens(h, w, grid, side, max_crops, rounding)
      parts.append((taps + first * side * side, weights, newline, np.full(len(newline), i)))
      first += crop_count(grid)
    rows.append([np.concatenate(p) for p in zip(*parts)] if parts else
                [np.zeros((0, 4), np.int64), np.zeros((0, 4), np.float32), np.zeros(0, bool), np.zeros(0, np.int64)])
  n = max([len(r[2]) for r in rows] + [1])
  width = n if width is None else width
  if width < n:
    raise ValueError(f"image layout of {n} tokens does not fit the bucket width {width}")
  b = len(samples)
  out = ImageLayout(np.zeros((b, width, 4), np.int32), np.zeros((b, width, 4), np.float32),
                    np.zeros((b, width), bool), np.zeros((b, width), np.int32), np.zeros((b, width), bool))
  for i, (taps, weights, newline, image) in enumerate(rows):
    k = len(newline)
    out.taps[i, :k], out.weights[i, :k], out.newline[i, :k] = taps, weights, newline
    out.image[i, :k], out.valid[i, :k] = image, True
  return out
