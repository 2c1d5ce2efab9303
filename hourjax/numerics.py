"""Relative errors, the project's one measure of agreement: ‖out − ref‖ / ‖ref‖ in float64."""
from __future__ import annotations

from typing import Any

import numpy as np


def rel_err(out: Any, ref: Any) -> float:
  out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
  if out.shape != ref.shape:
    raise ValueError(f"shape {out.shape} != reference {ref.shape}")
  return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def tree_rel_err(out: Any, ref: Any) -> float:
  """rel_err of two pytrees flattened into one vector each (leaves whose true value is zero,
  such as attention key-bias gradients, then count by their size, not as 0/0)."""
  import jax
  if jax.tree.structure(out) != jax.tree.structure(ref):
    raise ValueError("trees differ in structure")
  flat = lambda t: np.concatenate([np.asarray(a, np.float64).ravel() for a in jax.tree.leaves(t)])
  return rel_err(flat(out), flat(ref))
