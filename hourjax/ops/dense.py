"""The dense layers' matmul, `x @ kernel`, with a backward pass written out.

Autodiff transposes a dense layer's dot_general into a weight gradient whose output dimensions
come out as [out, in] and are then transposed back to the kernel's [in, out]. XLA:CPU turns
that into a transposed copy of the incoming gradient (or of the activation) before a plain dot,
for every weight of every layer: in the decoder's training step at 2048 tokens those copies and
dots were a fifth of the step (docs/performance.md). Here the backward pass contracts in the
kernel's own layout, dW = x^T dy over the token axes and dx = dy W^T, so each gradient is one
canonical matmul. The values are the same matmuls autodiff would do (tests/test_dense.py); the
remat policies see the forward's dot_general as before.

`dot_general` is a drop-in for `lax.dot_general` (flax's `DenseGeneral(dot_general=...)`): the
dense form, contracting some axes of x with the kernel's leading axes and no batch dimensions,
takes the written-out backward; any other form goes to `lax.dot_general` unchanged.
"""
from __future__ import annotations

import functools

import jax
from jax import lax


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                preferred_element_type=None) -> jax.Array:
  """lax.dot_general, with the written-out backward for the dense form (see the module)."""
  (lc, rc), (lb, rb) = dimension_numbers
  rc = tuple(rc)
  if lb or rb or preferred_element_type is not None or rc != tuple(range(len(rc))):
    return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)
  return _dense(lhs, rhs, tuple(int(a) % lhs.ndim for a in lc), precision)


def _forward(x, w, contract, precision):
  return lax.dot_general(x, w, ((contract, tuple(range(len(contract)))), ((), ())), precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dense(x, w, contract, precision):
  return _forward(x, w, contract, precision)


def _dense_fwd(x, w, contract, precision):
  # The bare dot_general, not _dense: a remat policy sees through this rule to the dot only
  # when the dot is here (calling _dense hides it, and save_dots would save no matmul output).
  return _forward(x, w, contract, precision), (x, w)


def _dense_bwd(contract, precision, res, dy):
  x, w = res
  kept = tuple(a for a in range(x.ndim) if a not in contract)     # x's axes that reach the output
  n_out = w.ndim - len(contract)
  # dW [*x's contracted axes in x's order, *out]: contract the kept axes of x with dy's leading ones
  dw = lax.dot_general(x, dy, ((kept, tuple(range(len(kept)))), ((), ())), precision)
  order = sorted(contract)
  if list(contract) != order:                                      # the kernel lists them in `contract`'s order
    dw = dw.transpose([order.index(a) for a in contract] + list(range(len(contract), dw.ndim)))
  # dx [*kept, *contracted in the kernel's order] -> x's own axis order
  dx = lax.dot_general(dy, w, ((tuple(range(dy.ndim - n_out, dy.ndim)), tuple(range(len(contract), w.ndim))),
                               ((), ())), precision)
  position = {a: i for i, a in enumerate(kept + contract)}
  perm = [position[a] for a in range(x.ndim)]
  if perm != list(range(x.ndim)):
    dx = dx.transpose(perm)
  return dx.astype(x.dtype), dw.astype(w.dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)
