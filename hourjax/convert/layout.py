"""Move parameters between the unrolled layout (`layers_0 .. layers_{n-1}`, as PyTorch names
them) and the scanned one (`layers` with a leading layer axis), and configs between the two.

Conversion tables speak the unrolled layout; checkpoints record which layout they hold
(`hourjax.json` "scan_layers") and loaders convert when the model wants the other one.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

_LAYER = re.compile(r"layers_(\d+)$")


def _stack(arrays):
  xp = np if all(isinstance(a, np.ndarray) for a in arrays) else jnp
  return xp.stack(arrays)


def is_scanned(params: Mapping) -> bool:
  """True if any module of `params` holds scanned layers."""
  return any(isinstance(v, Mapping) and (k == "layers" or is_scanned(v)) for k, v in params.items())


def stack_layers(params: Mapping) -> dict:
  """Unrolled -> scanned, in every module that has `layers_i` children."""
  out, layers = {}, {}
  for k, v in params.items():
    m = _LAYER.match(k)
    if m and isinstance(v, Mapping):
      layers[int(m.group(1))] = v
    else:
      out[k] = stack_layers(v) if isinstance(v, Mapping) else v
  if layers:
    if sorted(layers) != list(range(len(layers))):
      raise ValueError(f"layer indices {sorted(layers)} are not 0..{len(layers) - 1}")
    flat = [layers[i] for i in range(len(layers))]
    out["layers"] = _tree_stack(flat)
  return out


def _tree_stack(trees):
  first = trees[0]
  if not isinstance(first, Mapping):
    return _stack(trees)
  return {k: _tree_stack([t[k] for t in trees]) for k in first}


def unstack_layers(params: Mapping) -> dict:
  """Scanned -> unrolled."""
  out = {}
  for k, v in params.items():
    if k == "layers" and isinstance(v, Mapping):
      n = _leading(v)
      for i in range(n):
        out[f"layers_{i}"] = _tree_index(v, i)
    else:
      out[k] = unstack_layers(v) if isinstance(v, Mapping) else v
  return out


def _leading(tree) -> int:
  return _leading(next(iter(tree.values()))) if isinstance(tree, Mapping) else tree.shape[0]


def _tree_index(tree, i):
  return {k: _tree_index(v, i) for k, v in tree.items()} if isinstance(tree, Mapping) else tree[i]


def to_layout(params: Mapping, scan: bool) -> dict:
  """Params in the layout a model with `scan_layers=scan` expects, whatever they hold now."""
  if is_scanned(params) == scan:
    return dict(params)
  return stack_layers(params) if scan else unstack_layers(params)


def with_scan(cfg: Any, scan: bool) -> Any:
  """The model config (any family, nested for Hour-LLaVA) with every `scan_layers` set."""
  changes = {f.name: with_scan(getattr(cfg, f.name), scan) for f in dataclasses.fields(cfg)
             if dataclasses.is_dataclass(getattr(cfg, f.name))}
  if any(f.name == "scan_layers" for f in dataclasses.fields(cfg)):
    changes["scan_layers"] = scan
  return dataclasses.replace(cfg, **changes)


def config_scanned(cfg: Any) -> bool:
  """Whether the config's layers are scanned; mixed settings inside one model are refused."""
  flags = set()

  def visit(c):
    for f in dataclasses.fields(c):
      v = getattr(c, f.name)
      if dataclasses.is_dataclass(v):
        visit(v)
      elif f.name == "scan_layers":
        flags.add(v)
  visit(cfg)
  if len(flags) > 1:
    raise ValueError("scan_layers must be the same for the vision tower, MemAug and the LLM "
                     "(one checkpoint layout)")
  return flags.pop() if flags else False
