"""The device mesh and how logical names become shardings on it.

    mesh = make_mesh({"data": 2, "fsdp": -1, "tensor": 1, "sequence": 2})
    params = build.init_sharded("hour_llava", cfg, mesh, key)  # (models/build.py) born sharded
    with activate(mesh):      # context mesh: activation constraints, ring and splash attention
      ... jax.jit(step, in_shardings=shardings(specs, mesh), ...) ...

Axes are GSPMD 'Auto' axes: the sharding constraints of `axes.constrain` leave the rest of the
program to the partitioner (Explicit axes would demand a sharding on every value).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

from hourjax.parallel.axes import MESH_AXES, logical_to_spec

MeshLike = Mesh | AbstractMesh


def mesh_shape(axes: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Resolve one -1 entry; every name must be a mesh axis and the product the device count."""
  unknown = set(axes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected a subset of {MESH_AXES}")
  shape = {a: int(axes.get(a, 1)) for a in MESH_AXES}
  free = [a for a, n in shape.items() if n == -1]
  if len(free) > 1 or any(n == 0 or n < -1 for n in shape.values()):
    raise ValueError(f"mesh {dict(axes)}: sizes must be positive, with at most one -1")
  known = math.prod(n for n in shape.values() if n != -1)
  if free:
    if num_devices % known:
      raise ValueError(f"mesh {dict(axes)}: {num_devices} devices do not divide by {known}")
    shape[free[0]] = num_devices // known
  if math.prod(shape.values()) != num_devices:
    raise ValueError(f"mesh {dict(axes)} has {math.prod(shape.values())} devices, "
                     f"but there are {num_devices}")
  return shape


def make_mesh(axes: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor', 'sequence') mesh over `devices` (default: all).

  TPU devices are laid out by `create_device_mesh` so that the inner axes (tensor, sequence)
  ride the fastest interconnect; other platforms keep device order.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(axes, len(devices))
  dims = tuple(shape[a] for a in MESH_AXES)
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(dims, devices)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices, dtype=object).reshape(dims)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def one_device_mesh() -> Mesh:
  """Every axis 1, on the first device: one-device programs (profiles, benchmarks, the ablation)."""
  return make_mesh({}, jax.devices()[:1])


def abstract_mesh(axes: Mapping[str, int]) -> AbstractMesh:
  """A mesh of the given sizes without devices (for resolving specs of big configs)."""
  shape = mesh_shape(axes, math.prod(n for n in axes.values() if n > 0))
  return AbstractMesh(tuple(shape[a] for a in MESH_AXES), MESH_AXES,
                      axis_types=(AxisType.Auto,) * len(MESH_AXES))


def param_specs(logical: Any, abstract: Any, mesh: MeshLike) -> Any:
  """Trees of logical PartitionSpecs and ShapeDtypeStructs -> tree of mesh PartitionSpecs."""
  return jax.tree.map(lambda names, a: logical_to_spec(tuple(names), a.shape, mesh), logical, abstract,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def shardings(specs: Any, mesh: Mesh) -> Any:
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


@contextlib.contextmanager
def activate(mesh: MeshLike) -> Iterator[MeshLike]:
  """Make `mesh` the context mesh: activation constraints and ring attention follow it."""
  with jax.set_mesh(mesh):
    yield mesh


def batch_spec(mesh: MeshLike) -> PartitionSpec:
  """Every batch array is split over its leading (sample) axis by the BATCH rule."""
  from hourjax.parallel.axes import BATCH
  return logical_to_spec((BATCH,), (math.prod(dict(mesh.shape).values()),), mesh)


def batch_shards(mesh: MeshLike) -> int:
  """How many ways `batch_spec` splits the samples (the global batch must divide by it)."""
  spec = batch_spec(mesh)
  names = () if not spec or spec[0] is None else (spec[0] if isinstance(spec[0], tuple) else (spec[0],))
  return math.prod(dict(mesh.shape)[n] for n in names)
