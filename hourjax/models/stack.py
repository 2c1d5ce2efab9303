"""A stack of identical layers, unrolled or under `nn.scan`, with a named remat policy.

Scanned, the parameters of all layers live under one `layers` module with a leading layer
axis (logical name 'layers'), and compile time no longer grows with depth. Unrolled, they are
`layers_0 .. layers_{n-1}` like the PyTorch checkpoints. `convert.layout` moves between the two.

A layer is called `layer(x, *shared, per_layer) -> (x, out)`: `shared` arguments are the same
for every layer (masks, RoPE tables, the MemAug memory), `per_layer` is a pytree with a leading
layer axis (a KV cache) or None, and `out` (or None) is stacked over layers.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from hourjax.parallel import axes as ax

REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,                     # keep every activation (fastest, most memory)
    "full": jax.checkpoint_policies.nothing_saveable,                # recompute the whole layer
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,   # keep matmul outputs
    "offload_dots": jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
}


def check_remat(remat: str) -> None:
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r}: expected one of {sorted(REMAT_POLICIES)}")


def make(layer: type[nn.Module], num_layers: int, *, scan: bool, remat: str, num_shared: int,
         **kwargs) -> nn.Module | list[nn.Module]:
  """Instantiate the stack inside a parent module (setup or compact); run it with `apply`."""
  check_remat(remat)
  if remat != "none":
    # Under scan the loop already stops XLA from merging recomputation with the forward pass.
    layer = nn.remat(layer, policy=REMAT_POLICIES[remat], prevent_cse=not scan)
  if not scan:
    return [layer(name=f"layers_{i}", **kwargs) for i in range(num_layers)]
  scanned = nn.scan(layer, variable_axes={"params": 0, "intermediates": 0}, split_rngs={"params": True},
                    in_axes=(nn.broadcast,) * num_shared + (0,), length=num_layers,
                    metadata_params={nn.PARTITION_NAME: ax.LAYERS})
  return scanned(name="layers", **kwargs)


def apply(stack: nn.Module | list[nn.Module], x: jax.Array, *shared: Any,
          per_layer: Any = None) -> tuple[jax.Array, Any]:
  if not isinstance(stack, (list, tuple)):
    return stack(x, *shared, per_layer)
  outs = []
  for i, layer in enumerate(stack):
    x, out = layer(x, *shared, jax.tree.map(lambda a: a[i], per_layer))
    outs.append(out)
  if outs[0] is None:
    return x, None
  return x, jax.tree.map(lambda *a: jnp.stack(a), *outs)
