"""ProLongVid's model: LLaVA-OneVision as ProLongVid configures it (spec §7), no memory, no MemAug.

1. frames or image crops -> SigLIP (last kept layer, before post-LN) -> mlp2x_gelu projector,
   applied first (LLaVA-NeXT's `encode_images`), 729 tokens per crop.
2. video: bilinear 27x27 -> pool x pool on the projected features (`mm_fixed_patch_length` 12),
   then one `image_newline` per row ("grid": 12 x 13 = 156 tokens per frame) or one after the
   whole video ("video": transformers' LLaVA-OneVision, with pool = ceil(27 / 2) = 14).
   image: anyres crops packed by `models.anyres` (base crop, unpadded grid map, anyres_max_9
   downsizing, newline per row); each image of a multi-image sample: its 729 tokens + newline.
3. the visual tokens replace each sample's <image> placeholders, in order -> Qwen2 -> logits.

It shares SigLIP, the projector, the newline and the splice-and-decode step with `HourLlava`
(same parameter names, so the LLaVA checkpoints' key tables fill either), and takes the same
batches: a VideoBatch's layout only says which frames are real (`forgetting` keeps every frame),
an ImageBatch carries an `anyres.ImageLayout`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from hourjax.models.anyres import MAX_CROPS, UNPAD, ImageLayout
from hourjax.models.forgetting import ForgettingConfig, VideoLayout
from hourjax.models.hour_llava import HourLlava, _take_frames, bilinear_pool
from hourjax.models.layers import init_std
from hourjax.models.qwen2 import Qwen2, Qwen2Config
from hourjax.models.siglip import SiglipConfig

NEWLINES = ("grid", "video")
# Every input frame is a frame of the LLM's input: no padding to a memory, nothing forgotten.
ALL_FRAMES = ForgettingConfig(spatial_keep=1, temporal_keep=1, min_memory_frames=1, max_retained_frames=1 << 30)


@dataclasses.dataclass(frozen=True)
class ProLongVidConfig:
  vision: SiglipConfig
  llm: Qwen2Config
  feature_layer: int = -1          # SigLIP layer read (HF hidden_states index), before post-LN
  pool_size: int = 12              # video frames: bilinear resize of the projected grid (mm_fixed_patch_length)
  newline: str = "grid"            # grid: one image_newline per frame row; video: one per video
  max_crops: int = MAX_CROPS       # anyres_max_N: larger image maps are downsized to ~N crops
  unpad: str = "official"          # anyres.unpadded's rounding ("transformers" for its checkpoints)
  max_length: int = 32768          # LLM tokens kept (the rest is cut, as official)
  projector_init: str = "normal"

  def __post_init__(self):
    if self.newline not in NEWLINES:
      raise ValueError(f"newline={self.newline!r}: expected one of {NEWLINES}")
    if self.unpad not in UNPAD:
      raise ValueError(f"unpad={self.unpad!r}: expected one of {UNPAD}")
    init_std(self.projector_init)
    if min(self.pool_size, self.max_crops, self.max_length) < 1:
      raise ValueError(f"pool_size={self.pool_size}, max_crops={self.max_crops} and max_length="
                       f"{self.max_length} must be >= 1")

  @property
  def forgetting(self) -> ForgettingConfig:
    """The frame bookkeeping batching applies (`BatchSpec`): every frame kept."""
    return ALL_FRAMES

  @property
  def feature_tokens(self) -> int:
    """Tokens per frame of cached SigLIP features: unpooled (pooling follows the projector)."""
    return self.vision.patches_per_side ** 2

  @property
  def plain_images(self) -> bool:
    """Images are anyres crops only (LLaVA-OneVision's image path)."""
    return False

  @property
  def cache_pooled(self) -> bool:
    """Cached SigLIP features stay unpooled: pooling follows the projector."""
    return False

  def tokens_per_frame(self) -> int:
    return self.pool_size * (self.pool_size + (self.newline == "grid"))

  def video_tokens(self, frames: int) -> int:
    """The LLM's visual tokens for a video of `frames` frames (+ the one newline of "video")."""
    return frames * self.tokens_per_frame() + (self.newline == "video")


class ProLongVid(HourLlava):
  cfg: ProLongVidConfig

  def setup(self):
    self.setup_visual()
    self.llm = Qwen2(self.cfg.llm, name="llm", dtype=self.dtype, param_dtype=self.param_dtype)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, labels: jax.Array | None = None,
               *, layout: VideoLayout | ImageLayout | None = None, pixels: jax.Array | None = None,
               features: jax.Array | None = None, modality: str = "video",
               rng: jax.Array | None = None, head: bool = True,
               cache_len: int | None = None) -> dict[str, jax.Array]:
    """As `HourLlava.__call__` (same outputs): pixels [B, T, h, w, 3] are a video's frames or an
    image sample's crops (its images' crops one after another), `features` [B, T, 729, C] cached
    SigLIP features; `rng` is unused (nothing is random)."""
    del rng
    placeholders, valid, text = self._prompt(input_ids, attention_mask)
    decode = dict(head=head, cache_len=cache_len)
    if layout is None or (pixels is None and features is None):
      return self._decode(text, valid, placeholders, labels, None, None, **decode)
    if modality not in ("video", "image"):
      raise ValueError(f"modality={modality!r}: expected 'video' or 'image'")
    crops = self.project_crops(pixels, features)                             # [B, T, 729, H]
    if modality == "video":
      visual, visual_mask = self.video_tokens(crops, layout)
      image = None
    else:
      visual, visual_mask, image = self.image_tokens(crops, layout)
    self.sow("intermediates", "visual_tokens", visual)
    return self._decode(text, valid, placeholders, labels, visual, visual_mask, visual_image=image, **decode)

  def video_tokens(self, frames: jax.Array, layout: VideoLayout) -> tuple[jax.Array, jax.Array]:
    """[B, T, 729, H] projected frames -> visual tokens [B, N, H] and their mask."""
    c = self.cfg
    source = jnp.asarray(layout.source_frame)
    frames = bilinear_pool(_take_frames(frames, source), c.vision.patches_per_side, c.pool_size)
    b, t, _, h = frames.shape
    real = source >= 0
    newline = self.image_newline.astype(frames.dtype)
    if c.newline == "grid":
      rows = frames.reshape(b, t, c.pool_size, c.pool_size, h)
      rows = jnp.concatenate([rows, jnp.broadcast_to(newline, (b, t, c.pool_size, 1, h))], 3)
      mask = jnp.broadcast_to(real[:, :, None, None], rows.shape[:4])
      return rows.reshape(b, -1, h), mask.reshape(b, -1)
    tokens = jnp.concatenate([frames.reshape(b, -1, h), jnp.broadcast_to(newline, (b, 1, h))], 1)
    mask = jnp.concatenate([jnp.repeat(real, c.pool_size ** 2, 1), real.any(1, keepdims=True)], 1)
    return tokens, mask
