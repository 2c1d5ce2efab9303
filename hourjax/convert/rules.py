"""Declarative PyTorch <-> hourjax key tables and the machinery that applies them.

A table is a list of `Rule`s. Each maps one PyTorch tensor to one or more hourjax parameters
(several when PyTorch fuses them, e.g. MemAug's `Wqkv`), with a transform for each direction.
Families build their table from their config (`siglip.rules(cfg)` etc.).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import ml_dtypes
import numpy as np

Params = dict  # nested dict of arrays, keyed like flax params


Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
  ours: tuple[str, ...]          # '/'-joined parameter paths
  theirs: str                    # PyTorch state-dict key
  to_jax: Callable[[np.ndarray], tuple[np.ndarray, ...]]
  to_torch: Callable[[Sequence[np.ndarray]], np.ndarray]
  # The torch tensor's shape given our parameters' shapes: checked before converting, so that a
  # tensor of the right size but the wrong shape (a transposed matrix) is an error, not weights.
  torch_shape: Callable[[Sequence[Shape]], Shape] = lambda shapes: tuple(shapes[0])


def copy(ours: str, theirs: str) -> Rule:
  return Rule((ours,), theirs, lambda t: (t,), lambda a: np.asarray(a[0]))


def linear(ours: str, theirs: str, in_shape: Sequence[int], out_shape: Sequence[int]) -> Rule:
  """torch Linear weight [out, in] <-> DenseGeneral kernel [*in_shape, *out_shape]."""
  shape, n_in = (*in_shape, *out_shape), math.prod(in_shape)
  return Rule((ours,), theirs, lambda t: (np.ascontiguousarray(t.T).reshape(shape),),
              lambda a: np.ascontiguousarray(np.asarray(a[0]).reshape(n_in, -1).T),
              lambda _: (math.prod(out_shape), n_in))


def bias(ours: str, theirs: str, shape: Sequence[int]) -> Rule:
  return Rule((ours,), theirs, lambda t: (t.reshape(tuple(shape)),),
              lambda a: np.asarray(a[0]).reshape(-1), lambda _: (math.prod(shape),))


def fused_linear(ours: Sequence[str], theirs: str, in_size: int,
                 out_shapes: Sequence[Sequence[int]]) -> Rule:
  """One torch Linear whose output rows are the concatenation of several of ours."""
  sizes = [math.prod(s) for s in out_shapes]
  splits = np.cumsum(sizes)[:-1]

  def to_jax(t):
    return tuple(np.ascontiguousarray(p.T).reshape(in_size, *s)
                 for p, s in zip(np.split(t, splits, axis=0), out_shapes))

  def to_torch(arrays):
    return np.concatenate([np.asarray(a).reshape(in_size, -1).T for a in arrays], axis=0)
  return Rule(tuple(ours), theirs, to_jax, to_torch, lambda _: (sum(sizes), in_size))


def fused_bias(ours: Sequence[str], theirs: str, out_shapes: Sequence[Sequence[int]]) -> Rule:
  sizes = [math.prod(s) for s in out_shapes]
  splits = np.cumsum(sizes)[:-1]
  return Rule(tuple(ours), theirs,
              lambda t: tuple(p.reshape(tuple(s)) for p, s in zip(np.split(t, splits), out_shapes)),
              lambda arrays: np.concatenate([np.asarray(a).reshape(-1) for a in arrays]),
              lambda _: (sum(sizes),))


def conv(ours: str, theirs: str) -> Rule:
  """torch Conv2d weight OIHW <-> flax Conv kernel HWIO."""
  return Rule((ours,), theirs, lambda t: (np.ascontiguousarray(t.transpose(2, 3, 1, 0)),),
              lambda a: np.ascontiguousarray(np.asarray(a[0]).transpose(3, 2, 0, 1)),
              lambda shapes: tuple(shapes[0][i] for i in (3, 2, 0, 1)))


def prefixed(rules: Iterable[Rule], ours_prefix: str, theirs_prefix: str) -> list[Rule]:
  """The same rules under a parent module (e.g. SigLIP inside Hour-LLaVA)."""
  join = (lambda o: f"{ours_prefix}/{o}") if ours_prefix else (lambda o: o)
  return [dataclasses.replace(r, ours=tuple(join(o) for o in r.ours),
                              theirs=theirs_prefix + r.theirs) for r in rules]


# ---------------------------------------------------------------------------------------------
# Applying a table.

class ConversionError(ValueError):
  pass


def flatten(params: Mapping, prefix: str = "") -> dict[str, object]:
  out = {}
  for k, v in params.items():
    path = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, Mapping):
      out.update(flatten(v, path))
    else:
      out[path] = v
  return out


def unflatten(flat: Mapping[str, object]) -> Params:
  out: dict = {}
  for path, v in flat.items():
    node = out
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


def to_params(rules: Sequence[Rule], keys: Iterable[str], get: Callable[[str], np.ndarray],
              expected: Mapping | None = None, *, ignore: Sequence[str] = (),
              allow_nonfinite: bool = False) -> Params:
  """Build hourjax params from torch tensors, one tensor at a time.

  keys: every key present in the torch checkpoint; get(key) reads one tensor.
  expected: a tree of objects with .shape (e.g. from jax.eval_shape) to check against: every
  torch tensor must have exactly the shape these imply. Arrays keep the checkpoint's dtype (the
  model casts to its param_dtype when it loads them).
  ignore: regexes of torch keys that are read-only extras (buffers, tied heads).
  Raises ConversionError naming every missing, unexpected, wrongly shaped or (unless
  `allow_nonfinite`) NaN / inf tensor.
  """
  keys = set(keys)
  known = {r.theirs for r in rules}
  unexpected = sorted(k for k in keys - known if not any(re.fullmatch(p, k) for p in ignore))
  missing = [r.theirs for r in rules if r.theirs not in keys]
  if missing or unexpected:
    raise ConversionError(_describe(missing=missing, unexpected=unexpected))
  exp = flatten(expected) if expected is not None else None
  flat, wrong, nonfinite = {}, [], []
  for r in rules:
    if exp is not None:
      unknown = [p for p in r.ours if p not in exp]
      if unknown:
        raise ConversionError(f"table maps {r.theirs} to {unknown}, which the model does not have")
      want = tuple(r.torch_shape([tuple(exp[p].shape) for p in r.ours]))
    tensor = get(r.theirs)
    if exp is not None and tuple(tensor.shape) != want:
      wrong.append(f"{r.theirs}: got {tuple(tensor.shape)}, expected {want} (for {'/'.join(r.ours)})")
      continue
    if not allow_nonfinite and (tensor.dtype.kind == "f" or tensor.dtype == ml_dtypes.bfloat16):
      bad = tensor.size - int(np.isfinite(tensor).sum())
      if bad:
        nonfinite.append(f"{r.theirs} ({bad} of {tensor.size} values)")
    try:
      converted = r.to_jax(tensor)
    except ValueError as e:   # a reshape that cannot work: the tensor has the wrong size
      wrong.append(f"{r.theirs}: got {tuple(tensor.shape)}, cannot become {'/'.join(r.ours)} ({e})")
      continue
    for path, arr in zip(r.ours, converted):
      flat[path] = arr   # keeps the checkpoint's dtype: a bf16 7B stays ~15 GB in RAM
    del tensor
  if wrong:
    raise ConversionError(_describe(wrong_shape=wrong))
  if nonfinite:
    raise ConversionError(_describe(non_finite=nonfinite) + " (NaN or inf values; allow_nonfinite / "
                          "--allow-nonfinite converts them anyway)")
  if exp is not None:
    uncovered = sorted(set(exp) - set(flat))
    if uncovered:
      raise ConversionError(f"the table leaves these parameters unset: {uncovered}")
  return unflatten(flat)


def to_torch(rules: Sequence[Rule], params: Mapping) -> Iterator[tuple[str, np.ndarray]]:
  """Yield (torch key, array) one tensor at a time, in table order."""
  flat = flatten(params)
  covered = {p for r in rules for p in r.ours}
  extra = sorted(set(flat) - covered)
  if extra:
    raise ConversionError(f"no torch key for these parameters: {extra}")
  for r in rules:
    try:
      arrays = [np.asarray(flat[p]) for p in r.ours]
    except KeyError as e:
      raise ConversionError(f"parameter {e.args[0]} (for {r.theirs}) is missing") from None
    yield r.theirs, r.to_torch(arrays)


def find_prefix(keys: Iterable[str], suffix: str) -> str:
  found = sorted({k[:-len(suffix)] for k in keys if k.endswith(suffix)})
  if len(found) != 1:
    raise ConversionError(f"expected one tensor named *{suffix}, found {found or 'none'}")
  return found[0]


def _describe(**groups: list[str]) -> str:
  parts = []
  for name, items in groups.items():
    if items:
      shown = ", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")
      parts.append(f"{name.replace('_', ' ')} tensors: {shown}")
  return "; ".join(parts)
