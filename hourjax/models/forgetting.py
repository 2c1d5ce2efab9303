"""The forgetting mechanism: which frames and tokens become decayed queries, and what the memory holds.

Two halves:
- `video_layout` (host, numpy): frame bookkeeping that depends only on frame counts. It uses
  numpy's float64 `linspace(...).astype(int)` exactly as the official code does (integer
  arithmetic differs from it for some counts, e.g. T'=149), and pads to static sizes.
- device functions (JAX, explicit PRNG keys, static shapes): spatial forgetting (random /
  uniform) and the content- or key-dependent temporal variants of the paper's App. A.2.2
  (random, keyframe, question-guided).

Terms: a sample's T input frames are repeated up to T' = max(T, min_memory_frames) "padded
frames" (official rule for short videos); the memory repository holds padded frames
(all of them at memory scale 1.0); n of them are retained as decayed queries.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

SPATIAL = ("random", "uniform")
TEMPORAL = ("uniform", "random", "keyframe", "question")


@dataclasses.dataclass(frozen=True)
class ForgettingConfig:
  spatial: str = "random"          # random: ceil(g/keep) random tokens per frame; uniform: stride-2 grid
  spatial_keep: int = 4            # keep 1/spatial_keep of a frame's tokens
  temporal: str = "uniform"
  temporal_keep: int = 4           # retain T' // temporal_keep frames ...
  min_retained_frames: int = 1     # ... clipped to [min, max] (and to T')
  max_retained_frames: int = 512
  min_memory_frames: int = 128     # short videos are repeated up to this many frames
  memory_scale: float = 1.0        # fraction of padded frames kept in memory; 0 = decayed tokens only
  keyframe_neighbours: int = 8     # K temporal neighbours for keyframe forgetting

  def __post_init__(self):
    if self.spatial not in SPATIAL:
      raise ValueError(f"forgetting.spatial={self.spatial!r}: expected one of {SPATIAL}")
    if self.temporal not in TEMPORAL:
      raise ValueError(f"forgetting.temporal={self.temporal!r}: expected one of {TEMPORAL}")
    if not 0.0 <= self.memory_scale <= 1.0:
      raise ValueError(f"forgetting.memory_scale={self.memory_scale}: expected 0 <= scale <= 1")
    if min(self.spatial_keep, self.temporal_keep, self.min_retained_frames, self.max_retained_frames,
           self.min_memory_frames) < 1:
      raise ValueError(f"forgetting: keep ratios and frame bounds must be >= 1, got {self}")

  def spatial_count(self, tokens_per_frame: int) -> int:
    if self.spatial == "uniform":
      side = math.isqrt(tokens_per_frame)
      return math.ceil(side / 2) ** 2
    return math.ceil(tokens_per_frame / self.spatial_keep)


@flax.struct.dataclass
class VideoLayout:
  """Host-computed frame bookkeeping for a batch (a pytree: passes through jit); -1 marks padding.

  source_frame [B, Tp]: the input frame shown at each padded frame.
  memory_frames [B, Tm]: padded frames stored in the memory repository (ascending).
  retained_frames [B, Tr]: padded frames kept as decayed queries by uniform temporal forgetting.
  num_retained [B]: how many frames each sample retains (used by the on-device variants).
  """
  source_frame: np.ndarray
  memory_frames: np.ndarray
  retained_frames: np.ndarray
  num_retained: np.ndarray


def official_linspace(stop: int, num: int) -> np.ndarray:
  """`np.linspace(0, stop, num, dtype=int)`: float64 then floor, the official index rule."""
  return np.linspace(0, stop, num, dtype=int)


def num_retained(padded: int, cfg: ForgettingConfig) -> int:
  if padded == 0:
    return 0
  n = min(cfg.max_retained_frames, max(cfg.min_retained_frames, padded // cfg.temporal_keep))
  return min(n, padded)


def _pad(rows: Sequence[np.ndarray], width: int) -> np.ndarray:
  out = np.full((len(rows), width), -1, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def video_layout(num_frames: Sequence[int], cfg: ForgettingConfig, *, padded_frames: int | None = None,
                 memory_frames: int | None = None, retained_frames: int | None = None) -> VideoLayout:
  """Layout for a batch whose samples have `num_frames` input frames (0 = text-only sample).

  The three sizes default to the batch maximum; pass bucket sizes to keep jit shapes fixed.
  """
  src, mem, ret, counts = [], [], [], []
  for t in num_frames:
    t = int(t)
    if t < 0:
      raise ValueError(f"num_frames must be >= 0, got {t}")
    padded = 0 if t == 0 else max(t, cfg.min_memory_frames)
    src.append(official_linspace(t - 1, padded) if 0 < t < padded else np.arange(t))
    n = num_retained(padded, cfg)
    r = official_linspace(padded - 1, n) if n else np.zeros(0, int)
    if n and padded - 1 not in r:   # the official "keep the last frame" rule (only fires for n=1)
      r = np.append(r, padded - 1)
    ret.append(r)
    counts.append(len(r))
    if cfg.memory_scale >= 1.0 or padded == 0:
      mem.append(np.arange(padded))
    elif cfg.memory_scale == 0.0:
      mem.append(r)                   # decayed-only memory: the retained frames' decayed tokens
    else:
      mem.append(official_linspace(padded - 1, max(1, round(padded * cfg.memory_scale))))
  sizes = dict(padded_frames=(padded_frames, src), memory_frames=(memory_frames, mem),
               retained_frames=(retained_frames, ret))
  widths = {}
  for name, (given, rows) in sizes.items():
    need = max((len(r) for r in rows), default=0)
    if given is not None and given < need:
      raise ValueError(f"{name}={given} is smaller than this batch needs ({need})")
    widths[name] = max(1, need if given is None else given)
  return VideoLayout(_pad(src, widths["padded_frames"]), _pad(mem, widths["memory_frames"]),
                     _pad(ret, widths["retained_frames"]), np.asarray(counts, np.int32))


# ---------------------------------------------------------------------------------------------
# On-device forgetting (pure functions of explicit PRNG keys, static shapes).

def spatial_indices(key: jax.Array | None, cfg: ForgettingConfig, shape: tuple[int, int],
                    grid: int) -> jax.Array:
  """Token indices kept per frame, ascending (raster order): [*shape, k] for a grid x grid frame.

  random: an independent uniformly random subset per frame (official: topk-smallest of
  uniform noise, then sorted); uniform: rows and columns 0, 2, 4, ...
  """
  g = grid * grid
  k = cfg.spatial_count(g)
  if cfg.spatial == "uniform":
    idx = (jnp.arange(0, grid, 2)[:, None] * grid + jnp.arange(0, grid, 2)[None, :]).reshape(-1)
    return jnp.broadcast_to(idx, (*shape, k))
  if key is None:
    raise ValueError("random spatial forgetting needs a PRNG key")
  noise = jax.random.uniform(key, (*shape, g))
  _, idx = jax.lax.top_k(-noise, k)
  return jnp.sort(idx, axis=-1)


def image_queries(key: jax.Array | None, cfg: ForgettingConfig, group: jax.Array, row: jax.Array,
                  stride: jax.Array, newline: jax.Array) -> jax.Array:
  """Which tokens of an image sample's memory become decayed queries: [B, N] bool, from an
  `anyres.ImageLayout`'s group, row, stride and newline.

  random: ceil(n / spatial_keep) tokens uniformly at random of each group's n (the base, the
  map, each plain crop), as the official topk-smallest of uniform noise; uniform: every other row
  and column of each grid (`stride`). A newline is kept when its row kept a token (official
  `add_grid_image_newline`; a plain crop's newline always is). Memory order is kept.
  """
  b, n = group.shape
  tokens = group >= 0
  if cfg.spatial == "uniform":
    keep = tokens & stride
  else:
    if key is None:
      raise ValueError("random spatial forgetting needs a PRNG key")
    sets = jnp.where(tokens, group, n)                 # padding and newlines: set n, never kept
    order = jnp.lexsort((jax.random.uniform(key, (b, n)), sets), axis=-1)   # by set, then noise
    in_order = jnp.take_along_axis(sets, order, 1)
    size = jax.vmap(lambda s: jnp.zeros(n + 1, jnp.int32).at[s].add(1))(sets)
    first = jnp.cumsum(size, 1) - size
    rank = jnp.arange(n)[None] - jnp.take_along_axis(first, in_order, 1)
    quota = -(-size // cfg.spatial_keep)
    kept = (rank < jnp.take_along_axis(quota, in_order, 1)) & (in_order < n)
    keep = jax.vmap(lambda o, k: jnp.zeros(n, bool).at[o].set(k))(order, kept)
  rows = jnp.where(row >= 0, row, n)
  touched = jax.vmap(lambda r, k: jnp.zeros(n + 1, jnp.int32).at[r].max(k))(rows, keep.astype(jnp.int32))
  return keep | (newline & (row >= 0) & (jnp.take_along_axis(touched, rows, 1) > 0))


def select_frames(scores: jax.Array, valid: jax.Array, count: jax.Array, width: int) -> jax.Array:
  """The `count[b]` highest-scoring valid frames of each row, ascending, padded with -1 to `width`."""
  scores = jnp.where(valid, scores, -jnp.inf)
  _, top = jax.lax.top_k(scores, width)
  keep = jnp.arange(width)[None] < count[:, None]
  top = jnp.where(keep, top, jnp.iinfo(jnp.int32).max)
  top = jnp.sort(top, axis=-1)
  return jnp.where(top == jnp.iinfo(jnp.int32).max, -1, top)


def temporal_random(key: jax.Array, valid: jax.Array, count: jax.Array, width: int) -> jax.Array:
  """`count` frames chosen uniformly at random among the valid padded frames."""
  return select_frames(jax.random.uniform(key, valid.shape), valid, count, width)


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
  return jnp.sum(a * b, axis=-1)


def temporal_keyframe(frame_embeddings: jax.Array, valid: jax.Array, count: jax.Array, width: int,
                      neighbours: int = 8) -> jax.Array:
  """Keep the frames least similar to their K temporal neighbours (K/2 each side, fewer at the ends).

  frame_embeddings [B, Tp, C]: a frame's mean token (SigLIP features in the paper).
  """
  e = frame_embeddings.astype(jnp.float32)
  e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
  sim = jnp.einsum("btc,bsc->bts", e, e)
  t = jnp.arange(e.shape[1])
  near = (jnp.abs(t[:, None] - t[None, :]) <= neighbours // 2) & (t[:, None] != t[None, :])
  near = near[None] & valid[:, None, :]
  mean_sim = jnp.sum(jnp.where(near, sim, 0.0), -1) / jnp.maximum(jnp.sum(near, -1), 1)
  return select_frames(-mean_sim, valid, count, width)


def temporal_question(frame_embeddings: jax.Array, question_embedding: jax.Array, valid: jax.Array,
                      count: jax.Array, width: int) -> jax.Array:
  """Keep the frames whose mean token is most cosine-similar to the question's mean token embedding."""
  scores = _cosine(frame_embeddings.astype(jnp.float32), question_embedding[:, None].astype(jnp.float32))
  return select_frames(scores, valid, count, width)
