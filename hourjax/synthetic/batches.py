"""Random Hour-LLaVA training batches of a given bucket shape, for tests, benchmarks and
ahead-of-time compilation (`jax.eval_shape(lambda k: synthetic_batch(...), key)` gives the
abstract batch without allocating it)."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from hourjax.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from hourjax.data.batch import VideoBatch
from hourjax.models.forgetting import video_layout
from hourjax.models.hour_llava import HourLlavaConfig


def synthetic_batch(cfg: HourLlavaConfig, key: jax.Array, num_frames: Sequence[int], text_len: int,
                    *, pixels: bool = False, padded_frames: int | None = None,
                    memory_frames: int | None = None, retained_frames: int | None = None,
                    prompt_len: int = 8) -> VideoBatch:
  """One video per sample (num_frames[i] frames, placeholder after `prompt_len` prompt tokens),
  random text; the answer (after the prompt) is supervised. Frames are SigLIP features
  [B, T, pool^2, C] (the cached-feature path) or, with `pixels`, images in [-1, 1]."""
  b, t = len(num_frames), max(num_frames)
  if not 0 < prompt_len < text_len - 1:
    raise ValueError(f"prompt_len={prompt_len} must leave room in text_len={text_len}")
  k_ids, k_frames = jax.random.split(key)
  ids = jax.random.randint(k_ids, (b, text_len), 1, cfg.llm.vocab_size, jnp.int32)
  ids = ids.at[:, prompt_len].set(IMAGE_TOKEN_INDEX)
  supervised = jnp.arange(text_len)[None] > prompt_len + 1
  layout = video_layout(num_frames, cfg.forgetting, padded_frames=padded_frames, memory_frames=memory_frames,
                        retained_frames=retained_frames)
  batch = VideoBatch(ids, jnp.ones((b, text_len), jnp.int32), jnp.where(supervised, ids, IGNORE_INDEX), layout)
  if pixels:
    size = cfg.vision.image_size
    return batch.replace(pixels=jax.random.uniform(k_frames, (b, t, size, size, 3), jnp.float32, -1, 1))
  shape = (b, t, cfg.pool_size ** 2, cfg.vision.hidden_size)
  return batch.replace(features=jax.random.normal(k_frames, shape, jnp.float32))


def abstract_batch(cfg: HourLlavaConfig, num_frames: Sequence[int], text_len: int, **kw) -> VideoBatch:
  """ShapeDtypeStructs of `synthetic_batch` (nothing allocated)."""
  return jax.eval_shape(lambda key: synthetic_batch(cfg, key, num_frames, text_len, **kw),
                        jax.random.key(0))
