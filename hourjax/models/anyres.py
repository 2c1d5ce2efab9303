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

from hourjax.models.layers import bilinear_matrix

# anyres_max_9's grid pinpoints "(1x1),...,(6x6)", in crops (rows, cols).
GRIDS = tuple((r, c) for r in range(1, 7) for c in range(1, 7))
MAX_CROPS = 9          # anyres_max_9: a map of more than ~9 crops' tokens is downsized


@flax.struct.dataclass
class ImageLayout:
  """Host-computed token layout for a batch of image samples (a pytree: passes through jit).

  What the LLaVA-OneVision models feed the LLM, and Hour-LLaVA's memory (spec §1.10):
  taps [B, N, 4]: flat indices into the sample's crops' tokens (crop * tokens_per_crop + token).
  weights [B, N, 4]: their weights (float32; unused taps weigh 0).
  newline [B, N]: the token is the learned image_newline.
  image [B, N]: which of the sample's images (its <image> placeholder, in order) the token is in.
  valid [B, N]: real tokens (False: padding up to the bucket width).
  What Hour-LLaVA's forgetting reads to draw its decayed queries from that memory:
  ids [B, N]: memory position ids (the official ones: a map's tokens arange(h * w) with every
    newline h * w, base tokens the id of the map token nearest them; k plain crops arange(k * g),
    newlines k * g).
  group [B, N]: the token set a random draw keeps ceil(n / keep) of (the base, the map, each
    plain crop); -1 for newlines and padding.
  row [B, N]: a newline is a decayed query when any token of its row is (-1: no newline).
  stride [B, N]: kept by uniform spatial forgetting (every other row and column of its grid).
  """
  taps: np.ndarray
  weights: np.ndarray
  newline: np.ndarray
  image: np.ndarray
  valid: np.ndarray
  ids: np.ndarray
  group: np.ndarray
  row: np.ndarray
  stride: np.ndarray


FIELDS = ("taps", "weights", "newline", "ids", "group", "row", "stride")


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


def nearest_rows(size: int, num: int) -> np.ndarray:
  """`torch.linspace(0, size - 1, num).round()`: the official nearest-neighbour resampling of the
  map's position ids to the base crop. As torch computes it: float32, the first half stepping up
  from 0 and the second half down from the end (so the middle of 0..7 in 27 steps is 3.4999998,
  not 3.5), rounded half to even."""
  stop, i = np.float32(size - 1), np.arange(num)
  step = stop / np.float32(max(num - 1, 1))
  up = step * i.astype(np.float32)
  down = stop - step * (num - 1 - i).astype(np.float32)
  return np.round(np.where(i < num // 2, up, down)).astype(np.int64)


def _crop_tokens(side: int) -> dict[str, np.ndarray]:
  """One plain crop: its side x side tokens (one tap each) and a newline."""
  g = side * side
  y, x = np.divmod(np.arange(g + 1), side)
  taps = np.zeros((g + 1, 4), np.int64)
  taps[:g, 0] = np.arange(g)
  weights = np.zeros((g + 1, 4), np.float32)
  weights[:g, 0] = 1.0
  newline = np.arange(g + 1) == g
  return dict(taps=taps, weights=weights, newline=newline, ids=np.arange(g + 1), group=np.where(newline, -1, 0),
              row=np.zeros(g + 1, np.int64), stride=~newline & (y % 2 == 0) & (x % 2 == 0))


def image_tokens(height: int, width: int, grid: tuple[int, int] | None, side: int,
                 max_crops: int = MAX_CROPS, rounding: str = "official") -> dict[str, np.ndarray]:
  """One image's tokens relative to its first crop: `ImageLayout`'s FIELDS for n tokens
  (taps [n, 4], weights [n, 4], the rest [n]). `grid` None: a single crop (+ newline); else
  (rows, cols) crops after the base crop. `side`: patches per crop side (27 for so400m at 384px)."""
  if grid is None:
    return _crop_tokens(side)
  g = side * side
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
  # one newline after each row; every newline has the id after the map's
  y, x = np.divmod(np.arange(out_h * (out_w + 1)), out_w + 1)
  newline = x == out_w
  grid_map = dict(
      taps=np.concatenate([taps, np.zeros((out_h, 1, 4), np.int64)], 1).reshape(-1, 4),
      weights=np.concatenate([weights, np.zeros((out_h, 1, 4), np.float32)], 1).reshape(-1, 4),
      newline=newline, ids=np.where(newline, out_h * out_w, y * out_w + x), group=np.where(newline, -1, 1),
      row=1 + y, stride=~newline & (y % 2 == 0) & (x % 2 == 0))
  base = _crop_tokens(side)
  base = {k: v[:g] for k, v in base.items()}
  base["ids"] = (nearest_rows(out_h, side)[:, None] * out_w + nearest_rows(out_w, side)[None]).reshape(-1)
  base["row"] = np.full(g, -1)
  return {k: np.concatenate([base[k], grid_map[k]]) for k in FIELDS}


def crop_count(grid: tuple[int, int] | None) -> int:
  return 1 if grid is None else 1 + grid[0] * grid[1]


def sample_tokens(images: Sequence[tuple[int, int, tuple[int, int] | None]], side: int,
                  max_crops: int = MAX_CROPS, rounding: str = "official") -> dict[str, np.ndarray]:
  """One sample's images -> its tokens (FIELDS + "image"), crops stored image after image. Several
  images are one plain crop each, numbered as the official multi-image path does (ids image-major,
  every newline k * g; a group and a row per image)."""
  if len(images) > 1 and any(grid is not None for _, _, grid in images):
    raise ValueError("a multi-image sample takes one plain crop per image, not anyres grids")
  g, k = side * side, len(images)
  parts, first = [], 0
  for i, (h, w, grid) in enumerate(images):
    t = image_tokens(h, w, grid, side, max_crops, rounding)
    t["taps"] = t["taps"] + first * g
    if k > 1:
      t["ids"] = np.where(t["newline"], k * g, t["ids"] + i * g)
      t["group"] = np.where(t["newline"], -1, i)
      t["row"] = np.full(len(t["row"]), i)
    t["image"] = np.full(len(t["newline"]), i)
    parts.append(t)
    first += crop_count(grid)
  return {key: np.concatenate([p[key] for p in parts]) for key in (*FIELDS, "image")}


def image_layout(samples: Sequence[Sequence[tuple[int, int, tuple[int, int] | None]]], side: int,
                 width: int | None = None, max_crops: int = MAX_CROPS, rounding: str = "official") -> ImageLayout:
  """samples: per sample, its images as (height, width, grid or None), crops stored image after
  image. Padded to `width` tokens (default: the widest sample); `rounding` of `unpadded`."""
  rows = [sample_tokens(images, side, max_crops, rounding) if images else None for images in samples]
  n = max([len(r["newline"]) for r in rows if r is not None] + [1])
  width = n if width is None else width
  if width < n:
    raise ValueError(f"image layout of {n} tokens does not fit the bucket width {width}")
  b = len(samples)
  out = ImageLayout(taps=np.zeros((b, width, 4), np.int32), weights=np.zeros((b, width, 4), np.float32),
                    newline=np.zeros((b, width), bool), image=np.zeros((b, width), np.int32),
                    valid=np.zeros((b, width), bool), ids=np.zeros((b, width), np.int32),
                    group=np.full((b, width), -1, np.int32), row=np.full((b, width), -1, np.int32),
                    stride=np.zeros((b, width), bool))
  for i, r in enumerate(rows):
    if r is None:
      continue
    k = len(r["newline"])
    out.valid[i, :k] = True
    for key in (*FIELDS, "image"):
      getattr(out, key)[i, :k] = r[key]
  return out


def query_width(crops: int, side: int, max_crops: int = MAX_CROPS, keep: int = 4) -> int:
  """Decayed queries that Hour-LLaVA draws from any sample of at most `crops` crops (a static
  bound for its query buffer, whichever spatial forgetting): a draw keeps ceil(n / keep) of a
  group's n tokens (uniform: ceil(h / 2) * ceil(w / 2) <= n / 4 + (h + w + 1) / 4) and the
  newlines of the rows it touches."""
  g = side * side
  crop = max(-(-g // keep), ((side + 1) // 2) ** 2)
  plain = crops * (crop + 1)
  if crops == 1:
    return plain
  rows = min(crops - 1, 6) * side                    # map rows (and columns) at most
  tokens = min((crops - 1) * g, int(1.21 * max_crops * g) + 1)
  tiled = crop + max(-(-tokens // keep), -(-(tokens + 2 * rows + 1) // 4)) + rows
  return max(plain, tiled)
