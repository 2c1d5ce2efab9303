"""Hour-LLaVA: video -> memory -> decayed queries -> MemAug -> LLM.

Read top to bottom, this file is the model's data flow (paper §4, official
`prepare_inputs_labels_for_multimodal`), batched with padding masks and static shapes:

1. frames -> SigLIP (last kept layer, before post-LN) -> bilinear 27x27 -> 8x8 -> mlp2x_gelu
   projector: the full video tokens, g = 64 per frame. Image crops are not pooled (729 each).
2. memory repository: every padded frame's g tokens plus the learned `image_newline`, with
   position ids t * (g + 1) + s. An image sample's memory is its anyres tokens (`models.anyres`:
   base crop, unpadded map with a newline per row; or a plain crop + newline per image), with
   the official ids that layout carries.
3. forgetting: per retained frame, k spatially kept tokens plus the newline -> decayed queries,
   keeping their memory position ids; an image: a quarter of each crop set's tokens and the
   newlines of the rows they touch (`forgetting.image_queries`).
4. MemAug query = [text; decayed queries of image 0; text; ...] with the official positions
   (one video: prefix 0..P-1, visual P + memory id, suffix after the largest visual id).
   Training form: only text tokens whose label is ignore_index are queries; inference form
   (labels=None): every prompt token is.
5. MemAug outputs at the visual slots replace each `<image>` placeholder in the LLM input.
6. Qwen2 -> logits.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hourjax.models import anyres
from hourjax.models import forgetting as fg
from hourjax.models.anyres import MAX_CROPS, UNPAD, ImageLayout
from hourjax.models.forgetting import ForgettingConfig, VideoLayout
from hourjax.models.layers import bilinear_matrix, dense, gelu_exact, init_std
from hourjax.models.memaug import MemAug, MemAugConfig
from hourjax.models.qwen2 import KVCache, Qwen2, Qwen2Config
from hourjax.models.siglip import SiglipConfig, SiglipVision
from hourjax.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from hourjax.parallel import axes as ax


@dataclasses.dataclass(frozen=True)
class HourLlavaConfig:
  vision: SiglipConfig
  llm: Qwen2Config
  memaug: MemAugConfig
  forgetting: ForgettingConfig = ForgettingConfig()
  feature_layer: int = -1          # SigLIP layer read (HF hidden_states index), before post-LN
  pool_size: int = 8               # video frames: bilinear resize of the patch grid to pool x pool
  use_memaug: bool = True          # False: decayed queries go straight to the LLM (baseline)
  max_length: int = 32768          # LLM tokens kept after the visual tokens are spliced in (official
                                   # `tokenizer_model_max_length`: longer sequences are cut there)
  vision_grad_frames: int = 128    # videos of more frames give SigLIP no gradient (the official
                                   # chunked `no_grad` encoding); 0: always a gradient
  projector_init: str = "normal"   # layers.INITS, as each module's own `init`
  max_crops: int = MAX_CROPS       # image samples: anyres_max_N (larger maps are downsized to ~N crops)
  unpad: str = "official"          # anyres.unpadded's rounding

  @property
  def feature_tokens(self) -> int:
    """Tokens per frame of cached SigLIP features (pooled before the projector)."""
    return self.pool_size ** 2

  @property
  def plain_images(self) -> bool:
    """A plain resized image is read as one crop (the official single-image path)."""
    return True

  @property
  def cache_pooled(self) -> bool:
    """Cached SigLIP features are pooled (`encode_frames(pool=True)`): pooling precedes the projector."""
    return True

  def query_width(self, crops: int, memory: int) -> int:
    """The decayed-query buffer of an image batch of `crops` crops and `memory` memory tokens."""
    return min(memory, anyres.query_width(crops, self.vision.patches_per_side, self.max_crops,
                                          self.forgetting.spatial_keep))

  def __post_init__(self):
    if self.memaug.hidden_size != self.llm.hidden_size:
      raise ValueError(f"memaug.hidden_size={self.memaug.hidden_size} must equal "
                       f"llm.hidden_size={self.llm.hidden_size}")
    init_std(self.projector_init)
    if self.unpad not in UNPAD:
      raise ValueError(f"unpad={self.unpad!r}: expected one of {UNPAD}")
    if min(self.max_length, self.max_crops) < 1 or self.vision_grad_frames < 0:
      raise ValueError(f"max_length={self.max_length} and max_crops={self.max_crops} must be >= 1 and "
                       f"vision_grad_frames={self.vision_grad_frames} >= 0")


def bilinear_pool(tokens: jax.Array, grid_in: int, grid_out: int) -> jax.Array:
  """[..., grid_in**2, C] -> [..., grid_out**2, C], rows then columns, raster order kept."""
  m = jnp.asarray(bilinear_matrix(grid_in, grid_out), tokens.dtype)
  x = tokens.reshape(*tokens.shape[:-2], grid_in, grid_in, tokens.shape[-1])
  x = jnp.einsum("oi,...ijc->...ojc", m, x, precision=jax.lax.Precision.HIGHEST)
  x = jnp.einsum("pj,...ojc->...opc", m, x, precision=jax.lax.Precision.HIGHEST)
  return x.reshape(*tokens.shape[:-2], grid_out * grid_out, tokens.shape[-1])


class Projector(nn.Module):
  """mlp2x_gelu: Linear(C -> H), exact GELU, Linear(H -> H)."""
  hidden_size: int
  dtype: Any
  param_dtype: Any
  init: str = "normal"

  @nn.compact
  def __call__(self, x):
    kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype, init_std=init_std(self.init))
    x = gelu_exact(dense(self.hidden_size, (ax.VISION_IN, ax.EMBED), name="linear_1", **kw)(x))
    return dense(self.hidden_size, (ax.EMBED, ax.EMBED), name="linear_2", **kw)(x)


def _take_frames(x: jax.Array, frames: jax.Array) -> jax.Array:
  """x [B, T, ...] gathered at frames [B, N] (-1 -> frame 0, masked by the caller)."""
  return jnp.take_along_axis(x, jnp.maximum(frames, 0).reshape(*frames.shape, *([1] * (x.ndim - 2))),
                             axis=1)


def _query_text_mask(valid: jax.Array, labels: jax.Array | None) -> jax.Array:
  """Text tokens that join MemAug's query: all prompt tokens, or (training) those labelled ignore."""
  if labels is None:
    return valid
  return valid & (jnp.asarray(labels) == IGNORE_INDEX)


def _scatter(dest_len: int, slots: jax.Array, values: jax.Array) -> jax.Array:
  """Place values [B, N, ...] at slots [B, N] of a zero [B, dest_len, ...]; slots >= dest_len drop."""
  out = jnp.zeros((values.shape[0], dest_len, *values.shape[2:]), values.dtype)
  return jax.vmap(lambda o, s, v: o.at[s].set(v, mode="drop"))(out, slots, values)


class HourLlava(nn.Module):
  cfg: HourLlavaConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.setup_visual()
    if self.cfg.use_memaug:
      self.memaug = MemAug(self.cfg.memaug, name="memaug", dtype=self.dtype, param_dtype=self.param_dtype)
    self.llm = Qwen2(self.cfg.llm, name="llm", dtype=self.dtype, param_dtype=self.param_dtype)

  def setup_visual(self) -> None:
    """SigLIP, the projector and the learned newline: what every LLaVA-family model has."""
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.vision = SiglipVision(c.vision, name="vision", **kw)
    self.projector = Projector(c.llm.hidden_size, init=c.projector_init, name="projector", **kw)
    self.image_newline = self.param("image_newline", nn.with_logical_partitioning(
        nn.initializers.normal(c.llm.hidden_size ** -0.5), (ax.EMBED,)), (c.llm.hidden_size,),
        self.param_dtype)

  def _prompt(self, input_ids: jax.Array, attention_mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The prompt's placeholders (IMAGE_TOKEN_INDEX), its real text tokens and their embeddings."""
    input_ids = jnp.asarray(input_ids)
    placeholders = input_ids == IMAGE_TOKEN_INDEX
    valid = jnp.asarray(attention_mask).astype(bool) & ~placeholders
    return placeholders, valid, self.llm.embed(jnp.where(valid, input_ids, 0))

  def project_crops(self, pixels: jax.Array | None, features: jax.Array | None) -> jax.Array:
    """Crops (or frames) at full SigLIP resolution: pixels [B, K, h, w, 3], or their cached
    unpooled `features` [B, K, g, C] -> projected [B, K, g, H]."""
    siglip = self.encode_frames(pixels, pool=False) if features is None else features
    crops = self.projector(siglip.astype(self.dtype))
    self.sow("intermediates", "projected", crops)
    return crops

  # -- 1. frames -> full video tokens ------------------------------------------------------------
  def encode_frames(self, pixels: jax.Array, pool: bool) -> jax.Array:
    """pixels [B, T, h, w, 3] in [-1, 1], or uint8 RGB (scaled here, on the device: a quarter of
    the host work and transfer) -> SigLIP features [B, T, g, C] (pooled to 8x8 if `pool`)."""
    if pixels.dtype == jnp.uint8:
      pixels = pixels.astype(jnp.float32) / 127.5 - 1.0     # = video.to_siglip
    b, t = pixels.shape[:2]
    feats = self.vision(pixels.reshape(b * t, *pixels.shape[2:]),
                        feature_layer=self.cfg.feature_layer)
    self.sow("intermediates", "siglip_features", feats)
    if pool:
      feats = bilinear_pool(feats, self.cfg.vision.patches_per_side, self.cfg.pool_size)
      self.sow("intermediates", "pooled_features", feats)
    return feats.reshape(b, t, *feats.shape[1:])

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, labels: jax.Array | None = None,
               *, layout: VideoLayout | None = None, pixels: jax.Array | None = None,
               features: jax.Array | None = None, modality: str = "video",
               rng: jax.Array | None = None, head: bool = True,
               cache_len: int | None = None) -> dict[str, jax.Array]:
    """input_ids [B, L] with an IMAGE_TOKEN_INDEX per video or image (none for text-only);
    video: pixels [B, T, h, w, 3] or pre-pooled SigLIP `features` [B, T, 64, C] and a
    `forgetting.video_layout`; image: the crops' pixels [B, K, h, w, 3] (or unpooled features
    [B, K, g, C]) and an `anyres.ImageLayout`; rng for random forgetting.
    Returns logits [B, L', V], labels [B, L'] aligned to them (ignore_index on visual tokens
    and padding) and attention_mask [B, L'] (L' at most `max_length`: the rest is cut); with
    head=False "hidden" (the LLM's final-normed
    states [B, L', H]) replaces "logits", for a loss that applies the head in chunks.
    With `cache_len` (inference prefill; prompts right-padded) the LLM fills a KVCache of that
    many slots and the result is {"last_logits" [B, V] (each prompt's last token), "cache",
    "lengths" [B] (the next token's position)}: continue with `decode_step`.
    """
    c = self.cfg
    placeholders, valid, text = self._prompt(input_ids, attention_mask)
    if layout is None or (pixels is None and features is None):
      return self._decode(text, valid, placeholders, labels, None, None, head, cache_len)
    if modality not in ("video", "image"):
      raise ValueError(f"modality={modality!r}: expected 'video' or 'image'")
    rng = jax.random.key(0) if rng is None else rng
    spatial_key, temporal_key = jax.random.split(rng)
    if modality == "image":
      if not isinstance(layout, ImageLayout):
        raise ValueError(f"an image batch takes an anyres.ImageLayout, not {type(layout).__name__}")
      parts = self.image_queries(self.project_crops(pixels, features), layout, spatial_key)
      return self._remember(text, valid, placeholders, labels, *parts, head=head, cache_len=cache_len)

    if features is None:
      siglip = self.encode_frames(pixels, pool=True)
      if c.vision_grad_frames:
        long = jnp.max(jnp.asarray(layout.source_frame), 1) + 1 > c.vision_grad_frames   # input frames
        siglip = jnp.where(long[:, None, None, None], jax.lax.stop_gradient(siglip), siglip)
    else:
      siglip = features.reshape(*features.shape[:2], -1, features.shape[-1])
    frames = self.projector(siglip.astype(self.dtype))                       # [B, T, g, H]
    self.sow("intermediates", "projected", frames)
    b, _, g, h = frames.shape
    grid = int(round(g ** 0.5))
    newline = self.image_newline.astype(self.dtype)

    # -- 2. the memory repository ------------------------------------------------------------
    source = jnp.asarray(layout.source_frame)
    padded = _take_frames(frames, source)                                     # [B, Tp, g, H]
    padded_valid = source >= 0

    def with_newline(tokens, frame_ids, token_ids):
      """[B, N, k, H] + newline -> [B, N*(k+1), H] and position ids frame*(g+1) + token."""
      tokens = jnp.concatenate([tokens, jnp.broadcast_to(newline, (*tokens.shape[:2], 1, h))], 2)
      ids = jnp.concatenate([token_ids, jnp.full((*token_ids.shape[:2], 1), g)], 2)
      ids = frame_ids[..., None] * (g + 1) + ids
      mask = jnp.broadcast_to((frame_ids >= 0)[..., None], ids.shape)
      return tokens.reshape(b, -1, h), ids.reshape(b, -1), mask.reshape(b, -1)

    # -- 3. forgetting: decayed queries --------------------------------------------------------
    width = layout.retained_frames.shape[1]
    count = jnp.asarray(layout.num_retained)
    if c.forgetting.temporal == "uniform":
      retained = jnp.asarray(layout.retained_frames)
    elif c.forgetting.temporal == "random":
      retained = fg.temporal_random(temporal_key, padded_valid, count, width)
    elif c.forgetting.temporal == "keyframe":
      retained = fg.temporal_keyframe(_take_frames(siglip, source).mean(2), padded_valid, count,
                                      width, c.forgetting.keyframe_neighbours)
    else:
      question = _query_text_mask(valid, labels)
      q_emb = (text * question[..., None]).sum(1) / jnp.maximum(question.sum(1, keepdims=True), 1)
      retained = fg.temporal_question(padded.mean(2), q_emb, padded_valid, count, width)
    spatial = fg.spatial_indices(spatial_key, c.forgetting, retained.shape, grid)   # [B, Tr, k]
    decayed = jnp.take_along_axis(_take_frames(padded, retained), spatial[..., None], axis=2)
    visual, visual_ids, visual_mask = with_newline(decayed, retained, spatial)
    self.sow("intermediates", "decayed_queries", visual)
    self.sow("intermediates", "decayed_query_position_ids", visual_ids)

    mem_frames = jnp.asarray(layout.memory_frames)
    memory, memory_ids, memory_mask = with_newline(
        _take_frames(padded, mem_frames), mem_frames, jnp.broadcast_to(jnp.arange(g), (*mem_frames.shape, g)))
    return self._remember(text, valid, placeholders, labels, visual, visual_ids, visual_mask,
                          jnp.zeros(visual_ids.shape, jnp.int32), memory, memory_ids, memory_mask,
                          head=head, cache_len=cache_len)

  def image_tokens(self, crops: jax.Array, layout: ImageLayout) -> tuple[jax.Array, jax.Array, jax.Array]:
    """[B, K, g, H] projected crops -> an `anyres.ImageLayout`'s tokens [B, N, H] (each at most
    four weighted taps, or the newline), their mask and image index."""
    b, k, g, h = crops.shape
    flat = crops.reshape(b, k * g, h)
    taps = jnp.asarray(layout.taps)
    gathered = jnp.take_along_axis(flat, taps.reshape(b, -1, 1), axis=1).reshape(*taps.shape, h)
    tokens = jnp.einsum("bnt,bnth->bnh", jnp.asarray(layout.weights, gathered.dtype), gathered,
                        precision=jax.lax.Precision.HIGHEST)
    newline = jnp.asarray(layout.newline)[..., None]
    tokens = jnp.where(newline, self.image_newline.astype(tokens.dtype), tokens)
    return tokens, jnp.asarray(layout.valid), jnp.asarray(layout.image)

  def image_queries(self, crops: jax.Array, layout: ImageLayout, key: jax.Array) -> tuple[jax.Array, ...]:
    """An image sample's memory (its anyres tokens, official ids) and the decayed queries spatial
    forgetting draws from it (`forgetting.image_queries`), packed in memory order into a buffer
    of `anyres.query_width` tokens: (visual, ids, mask, image; memory, ids, mask)."""
    c = self.cfg
    memory, memory_mask, image = self.image_tokens(crops, layout)
    memory_ids = jnp.asarray(layout.ids)
    keep = memory_mask & fg.image_queries(key, c.forgetting, jnp.asarray(layout.group), jnp.asarray(layout.row),
                                          jnp.asarray(layout.stride), jnp.asarray(layout.newline))
    width = c.query_width(crops.shape[1], memory.shape[1])
    slot = jnp.where(keep, jnp.cumsum(keep, 1) - 1, width)
    source = _scatter(width, slot, jnp.broadcast_to(jnp.arange(memory.shape[1]), keep.shape))
    visual_mask = jnp.arange(width)[None] < keep.sum(1, keepdims=True)
    visual = jnp.take_along_axis(memory, source[..., None], 1)
    visual_ids, visual_image = (jnp.take_along_axis(x, source, 1) for x in (memory_ids, image))
    self.sow("intermediates", "decayed_queries", visual)
    self.sow("intermediates", "decayed_query_position_ids", visual_ids)
    self.sow("intermediates", "decayed_query_source", jnp.where(visual_mask, source, -1))   # memory index
    return visual, visual_ids, visual_mask, visual_image, memory, memory_ids, memory_mask

  def _remember(self, text, valid, placeholders, labels, visual, visual_ids, visual_mask, visual_image,
                memory, memory_ids, memory_mask, *, head, cache_len):
    """Steps 4-6 for either modality: MemAug reads the memory for the decayed queries, the LLM reads
    its outputs at the placeholders. memory_scale 0: the decayed queries are the whole memory (what
    the caller built as memory is then unused, and compiled away)."""
    if self.cfg.forgetting.memory_scale == 0.0:
      memory, memory_ids, memory_mask = visual, visual_ids, visual_mask
    memory = ax.constrain(memory, (ax.BATCH, ax.MEMORY, ax.ACT_EMBED))
    self.sow("intermediates", "memory", memory)
    self.sow("intermediates", "memory_position_ids", memory_ids)
    if self.cfg.use_memaug:
      visual = self._memaug(text, valid, placeholders, labels, visual, visual_ids, visual_mask, visual_image,
                            memory, memory_ids, memory_mask)
    return self._decode(text, valid, placeholders, labels, visual, visual_mask, head, cache_len,
                        visual_image=visual_image)

  def decode_step(self, tokens: jax.Array, positions: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """tokens, positions [B] -> (logits [B, V], the cache one slot further)."""
    logits, cache = self.llm(tokens[:, None], positions=positions[:, None], cache=cache)
    return logits[:, 0], cache

  def _memaug(self, text, valid, placeholders, labels, visual, visual_ids, visual_mask, visual_image,
              memory, memory_ids, memory_mask):
    """MemAug's query, as the official code builds it: [text 0; queries of image 0; text 1; ...]
    (text: the tokens `_query_text_mask` keeps). Position ids run on through the text, and each
    image's query ids are its memory ids offset by the largest id before it + 1, so a segment of
    text after image i starts after image i's largest id (one image: prefix 0..P-1, queries
    P + memory id, suffix after the largest query id)."""
    b, length = valid.shape
    q_len = length + visual.shape[1]
    query_text = _query_text_mask(valid, labels)
    segment = jnp.cumsum(placeholders, 1)                # text after placeholder s-1, before s
    image = jnp.where(visual_mask, visual_image, length)

    def per_index(index, values, fill=0, op="add"):      # [B, length + 1] sums (maxima) by index
      return jax.vmap(lambda i, v: getattr(jnp.full(length + 1, fill, v.dtype).at[i], op)(v))(index, values)

    text_count = per_index(jnp.where(query_text, segment, length), query_text.astype(jnp.int32))
    visual_count = per_index(image, visual_mask.astype(jnp.int32))
    largest = per_index(image, jnp.where(visual_mask, visual_ids, -1), -1, "max")
    text_upto = jnp.cumsum(text_count, 1)                # query text in segments <= s
    visual_before = jnp.cumsum(visual_count, 1) - visual_count
    ids_before = jnp.cumsum(largest + 1, 1) - (largest + 1)   # images before s: their id spans
    at = lambda table, index: jnp.take_along_axis(table, jnp.minimum(index, length), 1)   # noqa: E731
    text_rank = jnp.cumsum(query_text, 1) - 1
    text_slot = jnp.where(query_text, text_rank + at(visual_before, segment), q_len)
    text_ids = text_rank + at(ids_before, segment)
    vis_slot = jnp.where(visual_mask, at(text_upto, image) + jnp.cumsum(visual_mask, 1) - 1, q_len)
    vis_ids = visual_ids + at(text_upto, image) + at(ids_before, image)
    queries = _scatter(q_len, text_slot, text) + _scatter(q_len, vis_slot, visual)
    q_ids = _scatter(q_len, text_slot, text_ids) + _scatter(q_len, vis_slot, vis_ids)
    q_mask = jnp.arange(q_len)[None] < query_text.sum(1, keepdims=True) + visual_mask.sum(1, keepdims=True)
    self.sow("intermediates", "memaug_query", queries)
    self.sow("intermediates", "memaug_query_position_ids", q_ids)
    out = self.memaug(queries, memory, q_ids, memory_ids, q_mask, memory_mask)
    self.sow("intermediates", "memaug_output", out)
    visual_out = jnp.take_along_axis(out, jnp.minimum(vis_slot, q_len - 1)[..., None], axis=1)
    self.sow("intermediates", "memaug_visual_output", visual_out)
    return visual_out

  # -- 6. splice and decode ----------------------------------------------------------------------
  def _decode(self, text, valid, placeholders, labels, visual, visual_mask, head=True, cache_len=None,
              visual_image=None):
    """Text tokens keep their order; the visual tokens take their placeholder's place:
    `placeholders` [B, L] marks them, `visual_image` [B, N] names each visual token's placeholder
    (in order; tokens image-major; default: the first)."""
    b, length = valid.shape
    labels = jnp.full((b, length), IGNORE_INDEX) if labels is None else jnp.asarray(labels)
    labels = jnp.where(valid, labels, IGNORE_INDEX)
    n_vis = 0 if visual is None else visual.shape[1]
    out_len = min(length if visual is None else length - 1 + n_vis, self.cfg.max_length)   # cut, as official
    if visual_image is None:
      visual_image = jnp.zeros((b, n_vis), jnp.int32)
    # per placeholder (ordinal k): the valid text before it and its visual token count
    ordinal = jnp.where(placeholders, jnp.cumsum(placeholders, 1) - 1, length)
    text_before = _scatter(length + 1, ordinal, jnp.cumsum(valid, 1) - valid)[:, :length]
    if visual is None:
      per_image = jnp.zeros((b, length), jnp.int32)
    else:
      image_slot = jnp.where(visual_mask, visual_image, length)
      per_image = jax.vmap(lambda s, v: jnp.zeros(length + 1, jnp.int32).at[s].add(v))(
          image_slot, visual_mask.astype(jnp.int32))[:, :length]
    own = jnp.take_along_axis(per_image, jnp.minimum(ordinal, length - 1), 1)
    vis_before = jnp.cumsum(jnp.where(placeholders, own, 0), 1)
    n_visual = per_image.sum(1, keepdims=True)
    rank = jnp.cumsum(valid, 1) - 1
    slots = jnp.where(valid, rank + vis_before, out_len)
    embeds = _scatter(out_len, slots, text)
    if visual is not None:
      vis_rank = jnp.cumsum(visual_mask, 1) - 1
      vis_slots = jnp.where(visual_mask, jnp.take_along_axis(text_before, visual_image, 1) + vis_rank, out_len)
      embeds = embeds + _scatter(out_len, vis_slots, visual.astype(text.dtype))
    llm_labels = jnp.full((b, out_len), IGNORE_INDEX).at[jnp.arange(b)[:, None], slots].set(
        labels, mode="drop")
    mask = jnp.arange(out_len)[None] < valid.sum(1, keepdims=True) + n_visual      # slots past out_len drop
    self.sow("intermediates", "inputs_embeds", embeds)
    if cache_len is not None:
      if cache_len < out_len:
        raise ValueError(f"cache_len={cache_len} is shorter than the prompt's {out_len} LLM tokens")
      lengths = mask.sum(1)
      cache = KVCache.create(self.cfg.llm, b, cache_len, self.dtype)
      hidden, cache = self.llm(inputs_embeds=embeds, attention_mask=mask, cache=cache, head=False,
                               positions=jnp.broadcast_to(jnp.arange(out_len), (b, out_len)))
      last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)     # [B, 1, H]
      return {"last_logits": self.llm.logits(last)[:, 0], "cache": cache, "lengths": lengths}
    out, _ = self.llm(inputs_embeds=embeds, attention_mask=mask, head=head)
    return {"logits" if head else "hidden": out, "labels": llm_labels, "attention_mask": mask}
