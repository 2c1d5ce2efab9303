"""Logical axis names carried by every parameter and large activation.

Modules name axes in model terms; the scale-out issue maps them to mesh axes in one rule
table, so sharding never needs model edits.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

# Parameter axes.
EMBED = "embed"            # model width (LLM hidden, SigLIP width)
MLP = "mlp"                # MLP hidden width
HEADS = "heads"            # query heads
KV_HEADS = "kv_heads"      # key/value heads
HEAD_DIM = "head_dim"
VOCAB = "vocab"
VISION_IN = "vision_in"    # projector input (SigLIP width) and conv patch dims
NORM = "norm"              # LayerNorm / RMSNorm scale vectors
# Activation axes.
BATCH = "act_batch"
LENGTH = "act_length"      # text / query / LLM sequence
MEMORY = "act_memory"      # memory-repository tokens (the long axis of MemAug cross-attention)
FRAMES = "act_frames"
ACT_EMBED = "act_embed"
ACT_HEADS = "act_heads"
ACT_KV_HEADS = "act_kv_heads"
ACT_MLP = "act_mlp"
ACT_VOCAB = "act_vocab"


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Activation sharding constraint by logical names (a no-op outside a rules context)."""
  return nn.with_logical_constraint(x, tuple(names))
