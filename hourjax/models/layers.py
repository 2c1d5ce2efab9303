"""Small building blocks shared by SigLIP, Qwen2, MemAug and the projector."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hourjax.ops import dense as dense_ops
from hourjax.parallel import axes as ax

Dtype = Any

# A module's `init`: "normal" is HF's N(0, initializer_range) for every weight, which suits widths
# in the thousands (0.02 ~ 1/sqrt(width)); "fan_in" is N(0, 1/fan_in) per matrix (embeddings
# N(0, 1/width)), which a narrow model trained from scratch needs: at width 64, 0.02 leaves every
# product of two weights ~40x too weak and training sits on a plateau (docs/ablation.md).
# "residual_zero" is "fan_in" with the last projection of every residual branch (attention's
# output, the MLP's down projection) zero: each block starts as the identity (pre-norm) or as
# its LayerNorms alone (MemAug's post-norm), so a module inserted between trained or freshly
# initialised ones passes its input through at first instead of scrambling it. Narrow MemAugs
# need it: at fan_in they bury the decayed queries under their own random output (docs/demo.md).
INITS = ("normal", "fan_in", "residual_zero")


def init_std(init: str, initializer_range: float = 0.02, *, branch_out: bool = False) -> float | None:
  """The std of a module's weights under `init` (0: zeros), or None for N(0, 1/fan_in);
  `branch_out` for the last projection of a residual branch."""
  if init not in INITS:
    raise ValueError(f"init={init!r}: expected one of {', '.join(INITS)}")
  if init == "normal":
    return initializer_range
  return 0.0 if branch_out and init == "residual_zero" else None


def embedding_init(std: float | None, width: int) -> nn.initializers.Initializer:
  return nn.initializers.normal(width ** -0.5 if std is None else std)


def dense(features: int | Sequence[int], names: Sequence[str], *, use_bias: bool, dtype: Dtype,
          param_dtype: Dtype, name: str, in_axes: int | Sequence[int] = -1,
          init_std: float | None = 0.02, precision: jax.lax.PrecisionLike = None) -> nn.DenseGeneral:
  """DenseGeneral whose kernel carries logical names `names` ([*in, *out]); bias gets the out names.
  `init_std` None: N(0, 1/fan_in), fan_in the product of the input axes (DenseGeneral hands its
  initialiser the kernel flattened to [in, out]). Its matmul's backward pass is written out
  (`ops.dense`: the weight gradient in the kernel's layout, no transposed copies)."""
  n_in = 1 if isinstance(in_axes, int) else len(in_axes)
  kernel = (nn.initializers.variance_scaling(1.0, "fan_in", "normal") if init_std is None
            else nn.initializers.zeros if init_std == 0 else nn.initializers.normal(init_std))
  return nn.DenseGeneral(
      features=features, axis=in_axes, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      precision=precision, name=name, dot_general=dense_ops.dot_general,
      kernel_init=nn.with_logical_partitioning(kernel, tuple(names)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, tuple(names[n_in:])))


def layer_norm(eps: float, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (ax.NORM,)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (ax.NORM,)))


class RMSNorm(nn.Module):
  """Qwen2's RMSNorm: normalise in float32, cast back, then scale."""
  eps: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    weight = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (ax.NORM,)),
                        (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return weight.astype(self.dtype) * x32.astype(self.dtype)


def gelu_exact(x: jax.Array) -> jax.Array:
  return jax.nn.gelu(x, approximate=False)


def gelu_tanh(x: jax.Array) -> jax.Array:
  return jax.nn.gelu(x, approximate=True)


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[out, in] weights of torch `interpolate(mode="bilinear", align_corners=False)` along one
  axis, without antialiasing: source = (i + 0.5) * in / out - 0.5, clamped at 0."""
  w = np.zeros((size_out, size_in), np.float64)
  scale = np.float32(size_in) / np.float32(size_out)
  for i in range(size_out):
    src = max(float(np.float32(scale * (i + 0.5) - 0.5)), 0.0)
    i0 = min(int(np.floor(src)), size_in - 1)
    i1 = min(i0 + 1, size_in - 1)
    frac = src - i0
    w[i, i0] += 1.0 - frac
    w[i, i1] += frac
  return w.astype(np.float32)
