"""SigLIP vision tower, numerically equal to transformers' `SiglipVisionModel`.

Input pixels are NHWC in [-1, 1]. Hour-LLaVA reads the output of its last encoder layer *before*
`post_layernorm` (the official code deletes the 27th layer of so400m; `feature_layer=-1` on a
26-layer tower is the same thing).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hourjax.models import stack
from hourjax.models.layers import dense, gelu_tanh, init_std, layer_norm
from hourjax.ops.attention import dot_product_attention
from hourjax.ops.splash import splash_attention
from hourjax.parallel import axes as ax


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
  hidden_size: int = 1152
  intermediate_size: int = 4304
  num_layers: int = 27
  num_heads: int = 16
  image_size: int = 384
  patch_size: int = 14
  layer_norm_eps: float = 1e-6
  use_head: bool = False          # attention-pooling (MAP) head, as `vision_use_head`
  use_post_layernorm: bool = True
  init: str = "normal"            # layers.INITS for the encoder's dense layers (a frozen random
                                  # tower in the CPU demo; pretrained weights replace it otherwise)
  # Execution: "xla" or "dot_product" (cuDNN on GPU); 729 patches never need a ring.
  attention: str = "xla"
  scan_layers: bool = False
  remat: str = "none"

  def __post_init__(self):
    if self.attention not in ("xla", "dot_product", "splash"):
      raise ValueError(f"SigLIP attention={self.attention!r}: expected xla, dot_product or splash")
    stack.check_remat(self.remat)
    init_std(self.init)

  @property
  def patches_per_side(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.patches_per_side ** 2


class SiglipAttention(nn.Module):
  cfg: SiglipConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, kv: jax.Array | None = None) -> jax.Array:
    c = self.cfg
    d = c.hidden_size // c.num_heads
    kv = x if kv is None else kv
    kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype, init_std=init_std(c.init))
    q = dense((c.num_heads, d), (ax.EMBED, ax.HEADS, ax.HEAD_DIM), name="q", **kw)(x)
    k = dense((c.num_heads, d), (ax.EMBED, ax.HEADS, ax.HEAD_DIM), name="k", **kw)(kv)
    v = dense((c.num_heads, d), (ax.EMBED, ax.HEADS, ax.HEAD_DIM), name="v", **kw)(kv)
    if c.attention == "dot_product":
      out = jax.nn.dot_product_attention(q, k, v)
    elif c.attention == "splash":
      out = splash_attention(q, k, v, jnp.ones(x.shape[:2], jnp.int32), jnp.ones(kv.shape[:2], jnp.int32),
                             causal=False)
    else:
      out = dot_product_attention(q, k, v)
    return dense(c.hidden_size, (ax.HEADS, ax.HEAD_DIM, ax.EMBED), in_axes=(-2, -1), name="o",
                 **{**kw, "init_std": init_std(c.init, branch_out=True)})(out)


class SiglipMLP(nn.Module):
  cfg: SiglipConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype, init_std=init_std(self.cfg.init))
    h = gelu_tanh(dense(self.cfg.intermediate_size, (ax.EMBED, ax.MLP), name="fc1", **kw)(x))
    h = ax.constrain(h, (ax.BATCH, ax.LENGTH, ax.ACT_MLP))
    return dense(self.cfg.hidden_size, (ax.MLP, ax.EMBED), name="fc2",
                 **{**kw, "init_std": init_std(self.cfg.init, branch_out=True)})(h)


class SiglipEncoderLayer(nn.Module):
  cfg: SiglipConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, unused_per_layer=None) -> tuple[jax.Array, None]:
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x + SiglipAttention(c, name="attn", **kw)(layer_norm(c.layer_norm_eps, name="ln1", **kw)(x))
    x = x + SiglipMLP(c, name="mlp", **kw)(layer_norm(c.layer_norm_eps, name="ln2", **kw)(x))
    return ax.constrain(x, (ax.BATCH, ax.LENGTH, ax.ACT_EMBED)), None


class SiglipMAPHead(nn.Module):
  """Attention pooling with one learned probe (transformers' `SiglipMultiheadAttentionPoolingHead`)."""
  cfg: SiglipConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    probe = self.param("probe", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, None, ax.EMBED)), (1, 1, c.hidden_size), self.param_dtype)
    probe = jnp.broadcast_to(probe.astype(self.dtype), (x.shape[0], 1, c.hidden_size))
    h = SiglipAttention(c, name="attn", **kw)(probe, x)
    h = h + SiglipMLP(c, name="mlp", **kw)(layer_norm(c.layer_norm_eps, name="ln", **kw)(h))
    return h[:, 0]


class SiglipVision(nn.Module):
  """Patch embedding + position embedding + pre-LN encoder (+ post-LN, + MAP head).

  `__call__(pixels, feature_layer=i)` returns the hidden state after encoder layer i (HF
  `hidden_states[i]` indexing: 0 is the embedding output, -1 the last layer), without
  post-LN, and runs only the layers it needs. With `feature_layer=None` it returns
  `{"last_hidden_state", "pooler_output"}` like transformers.
  """
  cfg: SiglipConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array, feature_layer: int | None = None):
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Conv(c.hidden_size, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size),
                padding="VALID", name="patch_embed",
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.lecun_normal(), (None, None, None, ax.EMBED)),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (ax.EMBED,)),
                **kw)(pixels.astype(self.dtype))
    x = x.reshape(x.shape[0], -1, c.hidden_size)
    pos = self.param("pos_embed", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, ax.EMBED)), (c.num_patches, c.hidden_size),
        self.param_dtype)
    x = ax.constrain(x + pos.astype(self.dtype)[None], (ax.BATCH, ax.LENGTH, ax.ACT_EMBED))
    last = c.num_layers if feature_layer is None else feature_layer % (c.num_layers + 1)
    # At init every layer and head is built, so checkpoints keep weights this call skips.
    init = self.is_initializing()
    if c.scan_layers:
      if last != c.num_layers:
        raise ValueError(f"feature_layer={feature_layer} with scan_layers: a scan runs every layer; "
                         f"build the tower with num_layers={last} (as the official code deletes "
                         "the layers it does not read)")
      x, _ = stack.apply(stack.make(SiglipEncoderLayer, c.num_layers, scan=True, remat=c.remat,
                                    num_shared=0, cfg=c, **kw), x)
      selected = x
    else:
      layers = stack.make(SiglipEncoderLayer, c.num_layers, scan=False, remat=c.remat,
                          num_shared=0, cfg=c, **kw)
      selected = x
      for i in range(c.num_layers if init else last):
        x, _ = layers[i](x)
        if i + 1 == last:
          selected = x
    if feature_layer is not None and not init:
      return selected
    out = {"last_hidden_state": x}
    if c.use_post_layernorm:
      out["last_hidden_state"] = layer_norm(c.layer_norm_eps, name="post_ln", **kw)(x)
    if c.use_head:
      out["pooler_output"] = SiglipMAPHead(c, name="head", **kw)(out["last_hidden_state"])
    return selected if feature_layer is not None else out


@dataclasses.dataclass(frozen=True)
class SiglipTextConfig:
  """transformers' `SiglipTextConfig` (so400m's text tower: 1152 wide, 27 layers, 64 positions)."""
  vocab_size: int = 32000
  hidden_size: int = 1152
  intermediate_size: int = 4304
  num_layers: int = 27
  num_heads: int = 16
  max_positions: int = 64
  projection_size: int = 1152
  layer_norm_eps: float = 1e-6
  init: str = "normal"

  def __post_init__(self):
    init_std(self.init)

  @property
  def encoder(self) -> SiglipConfig:
    """The encoder layers are the vision tower's."""
    return SiglipConfig(hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                        num_layers=self.num_layers, num_heads=self.num_heads,
                        layer_norm_eps=self.layer_norm_eps, init=self.init)


class SiglipText(nn.Module):
  """SigLIP's text tower, numerically equal to transformers' `SiglipTextModel`: token + position
  embeddings, the bidirectional pre-LN encoder, a final LayerNorm, and the last position's state
  through a linear head as the text embedding (`pooler_output`). As SigLIP was trained, texts
  are padded to `max_positions` (the processor's `padding="max_length"`) and no mask is used."""
  cfg: SiglipTextConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array) -> dict[str, jax.Array]:
    c, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if input_ids.shape[1] > c.max_positions:
      raise ValueError(f"SigLIP text of {input_ids.shape[1]} tokens: at most {c.max_positions}")
    tokens = nn.Embed(c.vocab_size, c.hidden_size, name="tok_embed", embedding_init=nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (ax.VOCAB, ax.EMBED)), **kw)(input_ids)
    pos = self.param("pos_embed", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, ax.EMBED)), (c.max_positions, c.hidden_size), self.param_dtype)
    x = tokens + pos[:input_ids.shape[1]].astype(self.dtype)[None]
    layers = stack.make(SiglipEncoderLayer, c.num_layers, scan=False, remat="none", num_shared=0, cfg=c.encoder, **kw)
    for layer in layers:
      x, _ = layer(x)
    x = layer_norm(c.layer_norm_eps, name="final_ln", **kw)(x)
    pooled = dense(c.projection_size, (ax.EMBED, ax.EMBED), use_bias=True, name="head", init_std=init_std(c.init),
                   **kw)(x[:, -1])
    return {"last_hidden_state": x, "pooler_output": pooled}
