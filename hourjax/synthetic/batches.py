"""Random training batches of a given bucket shape (Hour-LLaVA's or ProLongVid's videos, ProLongVid's
anyres images), for tests, benchmarks and ahead-of-time compilation (`abstract_batch` gives the
abstract batch without allocating it)."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from hourjax.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from hourjax.data.anyres import token_width
from hourjax.data.batch import ImageBatch, VideoBatch
from hourjax.data.batching import crop_edge
from hourjax.models import anyres
from hourjax.models.forgetting import video_layout
from hourjax.models.hour_llava import HourLlavaConfig
from hourjax.models.prolongvid import ProLongVidConfig


def synthetic_batch(cfg: HourLlavaConfig | ProLongVidConfig, key: jax.Array, num_frames: Sequence[int], text_len: int,
                    *, pixels: bool = False, padded_frames: int | None = None,
                    memory_frames: int | None = None, retained_frames: int | None = None,
                    prompt_len: int = 8) -> VideoBatch:
  """One video per sample (num_frames[i] frames, placeholder after `prompt_len` prompt tokens),
  random text; the answer (after the prompt) is supervised. Frames are SigLIP features
  [B, T, g, C] (the cached-feature path: g = cfg.feature_tokens) or, with `pixels`, images in [-1, 1]."""
  b, t = len(num_frames), max(num_frames)
  k_ids, k_frames = jax.random.split(key)
  layout = video_layout(num_frames, cfg.forgetting, padded_frames=padded_frames, memory_frames=memory_frames,
                        retained_frames=retained_frames)
  batch = VideoBatch(*_text(cfg, k_ids, b, text_len, prompt_len), layout)
  if pixels:
    size = cfg.vision.image_size
    return batch.replace(pixels=jax.random.uniform(k_frames, (b, t, size, size, 3), jnp.float32, -1, 1))
  shape = (b, t, cfg.feature_tokens, cfg.vision.hidden_size)
  return batch.replace(features=jax.random.normal(k_frames, shape, jnp.float32))


def _text(cfg, key, b: int, text_len: int, prompt_len: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """input_ids (a placeholder after the prompt), attention mask, labels (the answer supervised)."""
  if not 0 < prompt_len < text_len - 1:
    raise ValueError(f"prompt_len={prompt_len} must leave room in text_len={text_len}")
  ids = jax.random.randint(key, (b, text_len), 1, cfg.llm.vocab_size, jnp.int32)
  ids = ids.at[:, prompt_len].set(IMAGE_TOKEN_INDEX)
  supervised = jnp.arange(text_len)[None] > prompt_len + 1
  return ids, jnp.ones((b, text_len), jnp.int32), jnp.where(supervised, ids, IGNORE_INDEX)


def synthetic_image_batch(cfg: HourLlavaConfig | ProLongVidConfig, key: jax.Array, sizes: Sequence[tuple[int, int]],
                          text_len: int,
                          *, prompt_len: int = 8) -> ImageBatch:
  """One anyres image per sample of each (height, width): its crops' pixels in [-1, 1], padded
  to the batch's crop bucket, and their token layout at the bucket's static width."""
  side, size = cfg.vision.patches_per_side, cfg.vision.image_size
  images = [[(h, w, anyres.select_grid(h, w, size))] for h, w in sizes]
  crops = max(anyres.crop_count(g) for (_, _, g), in images)
  edge = crop_edge(crops)
  layout = anyres.image_layout(images, side, width=token_width(edge, side, cfg.max_crops), max_crops=cfg.max_crops,
                               rounding=cfg.unpad)
  k_ids, k_pixels = jax.random.split(key)
  pixels = jax.random.uniform(k_pixels, (len(sizes), edge, size, size, 3), jnp.float32, -1, 1)
  return ImageBatch(*_text(cfg, k_ids, len(sizes), text_len, prompt_len), layout, pixels=pixels)


def abstract_batch(cfg: HourLlavaConfig | ProLongVidConfig, num_frames: Sequence[int], text_len: int, *,
                   image_sizes: Sequence[tuple[int, int]] = (), **kw) -> VideoBatch | ImageBatch:
  """ShapeDtypeStructs of `synthetic_batch`, or of `synthetic_image_batch` for `image_sizes`
  (nothing allocated)."""
  if image_sizes:
    return jax.eval_shape(lambda key: synthetic_image_batch(cfg, key, image_sizes, text_len), jax.random.key(0))
  return jax.eval_shape(lambda key: synthetic_batch(cfg, key, num_frames, text_len, **kw),
                        jax.random.key(0))
