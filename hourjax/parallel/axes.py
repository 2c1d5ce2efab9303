"""Logical axis names carried by every parameter and large activation, and the one rule table
that maps them onto the mesh axes ('data', 'fsdp', 'tensor', 'sequence').

Modules name axes in model terms; only `RULES` knows the mesh, so changing a sharding strategy
never needs a model edit. `tests/golden/` records what the table gives the 7B model.
"""
from __future__ import annotations

from typing import Sequence

import jax
from jax.sharding import PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "sequence")

# Parameter axes.
EMBED = "embed"            # model width (LLM hidden, SigLIP width)
MLP = "mlp"                # MLP hidden width
HEADS = "heads"            # query heads
KV_HEADS = "kv_heads"      # key/value heads
HEAD_DIM = "head_dim"
VOCAB = "vocab"
VISION_IN = "vision_in"    # projector input (SigLIP width) and conv patch dims
NORM = "norm"              # LayerNorm / RMSNorm scale vectors
LAYERS = "layers"          # the stacked axis of scanned layers
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

# logical name -> mesh axes, in order of preference. Weights are sharded over every axis that
# does not split the batch (fsdp and sequence: ZeRO-3 over the context-parallel devices too,
# since each of them holds a full model otherwise) and over 'tensor' for heads/MLP/vocab.
# A mesh axis is used once per array, and only where it divides the dimension (see
# `mesh.logical_to_spec`), so one table serves every model size and mesh shape.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (EMBED, ("fsdp", "sequence")),
    (MLP, ("tensor",)),
    (HEADS, ("tensor",)),
    (KV_HEADS, ("tensor",)),
    (HEAD_DIM, ()),
    (VOCAB, ("tensor",)),
    (VISION_IN, ()),
    (NORM, ()),
    (LAYERS, ()),
    (BATCH, ("data", "fsdp")),
    (LENGTH, ("sequence",)),
    (MEMORY, ("sequence",)),
    (FRAMES, ()),
    (ACT_EMBED, ()),
    (ACT_HEADS, ("tensor",)),
    (ACT_KV_HEADS, ("tensor",)),
    (ACT_MLP, ("tensor",)),
    (ACT_VOCAB, ("tensor",)),
)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh) -> PartitionSpec:
  """PartitionSpec for an array of `shape` whose dims carry logical `names`.

  Each dim takes the mesh axes its rule lists, skipping axes of size 1, axes an earlier dim
  already took, and any axis that would no longer divide the dim; so e.g. 4 KV heads on an
  8-way tensor axis stay replicated instead of failing.
  """
  rules, sizes, used = dict(RULES), dict(mesh.shape), set()
  spec = []
  for name, dim in zip(names, shape):
    if name is not None and name not in rules:
      raise KeyError(f"logical axis {name!r} has no rule in hourjax.parallel.axes.RULES")
    chosen, prod = [], 1
    for a in rules.get(name, ()) if name else ():
      n = sizes.get(a, 1)
      if n == 1 or a in used or dim % (prod * n):
        continue
      chosen.append(a)
      prod *= n
    used.update(chosen)
    spec.append(tuple(chosen) if len(chosen) > 1 else (chosen[0] if chosen else None))
  while spec and spec[-1] is None:
    spec.pop()
  return PartitionSpec(*spec)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Activation sharding constraint by logical names (a no-op without a context mesh, see
  `mesh.activate`). The same resolution as the parameters' keeps the two consistent."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(mesh.axis_names) <= set(MESH_AXES):
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh))
