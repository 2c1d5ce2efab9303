"""Host batches -> global arrays on the mesh: every process pads its share to the largest bucket
any process drew (one small host allgather), then `jax.make_array_from_process_local_data`
shards the samples over the mesh's batch axes.

    batch, meta = next(data_iter)
    batch = feed.to_global(batch, mesh, spec)     # the same typed batch, of global jax.Arrays
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hourjax.constants import IGNORE_INDEX
from hourjax.data.batch import Batch, VideoBatch
from hourjax.data.batching import BatchSpec
from hourjax.parallel import mesh as mesh_lib


def _pad_axis(x: np.ndarray, axis: int, size: int, value: Any) -> np.ndarray:
  if x.shape[axis] == size:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return np.pad(x, pad, constant_values=value)


def pad_batch(batch: Batch, spec: Any, frames: int, text: int) -> Batch:
  """A collated batch padded to a larger bucket (what every process agreed on)."""
  fills = {"input_ids": 0, "attention_mask": 0, "labels": IGNORE_INDEX, "positions": 0, "segment_ids": 0}
  out = {k: _pad_axis(np.asarray(getattr(batch, k)), 1, text, v) for k, v in fills.items() if hasattr(batch, k)}
  if isinstance(batch, VideoBatch) and frames != batch.frames:     # never for images: one frame each
    key = "pixels" if batch.features is None else "features"
    out[key] = _pad_axis(np.asarray(getattr(batch, key)), 1, frames, 0)
    widths = BatchSpec.of(spec).layout([frames], frames)
    out["layout"] = jax.tree.map(lambda x, w: x if x.ndim == 1 else _pad_axis(x, 1, w.shape[1], -1),
                                 batch.layout, widths)
  return dataclasses.replace(batch, **out)


def agree_on_bucket(batch: Batch, spec: Any) -> Batch:
  """Every process pads its share to the largest bucket any process drew, so that the global
  array has one shape."""
  if jax.process_count() == 1:
    return batch
  from jax.experimental import multihost_utils
  frames = batch.frames if isinstance(batch, VideoBatch) else 0
  shape = np.array([frames, batch.input_ids.shape[1]], np.int32)
  frames, text = np.asarray(multihost_utils.process_allgather(shape)).max(0)
  return pad_batch(batch, spec, int(frames), int(text))


def everyone_has_data(mine: bool) -> bool:
  """Whether every process still has a batch (its shares may end at different steps when their
  skips differ: all stop together rather than wait forever in a collective)."""
  if jax.process_count() == 1:
    return mine
  from jax.experimental import multihost_utils
  return bool(np.asarray(multihost_utils.process_allgather(np.int32(mine))).all())


def to_global(batch: Batch, mesh: Mesh, spec: Any = None) -> Batch:
  """This process's numpy share -> global jax.Arrays sharded over the batch axes of `mesh`.
  Pass `spec` (a BatchSpec or the model config) on several processes, so that shares of
  different buckets are padded to a common one."""
  if spec is not None:
    batch = agree_on_bucket(batch, spec)
  spec_ = mesh_lib.batch_spec(mesh)
  axes = spec_[0] if len(spec_) else None

  def put(x):
    sharding = NamedSharding(mesh, PartitionSpec(axes, *([None] * (np.ndim(x) - 1))))
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))
  return jax.tree.map(put, batch)
