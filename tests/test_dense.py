"""ops.dense: the dense layers' matmul with its backward written out equals autodiff of
lax.dot_general, for every contraction form the models use and the ones they could."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hourjax.numerics import rel_err
from hourjax.ops import dense


@pytest.mark.parametrize("x_shape, w_shape, contract", [
    ((2, 5, 6), (6, 7), (2,)),                 # [B, T, D] @ [D, F]: the MLP, q/k/v, the projector
    ((2, 5, 3, 4), (3, 4, 6), (2, 3)),         # [B, T, heads, head_dim] @ [heads, head_dim, D]: o_proj
    ((2, 5, 6), (6, 3, 4), (2,)),              # [B, T, D] @ [D, heads, head_dim]
    ((5, 3, 2, 4), (4, 3, 6), (3, 1)),         # contracted axes out of order and not trailing
    ((6,), (6, 2), (0,)),                      # no kept axis
])
def test_dense_vjp_equals_autodiff_of_dot_general(x_shape, w_shape, contract):
  kx, kw, kd = jax.random.split(jax.random.key(0), 3)
  x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
  dims = ((contract, tuple(range(len(contract)))), ((), ()))
  y_ref, vjp_ref = jax.vjp(lambda x, w: jax.lax.dot_general(x, w, dims), x, w)
  y, vjp = jax.vjp(lambda x, w: dense.dot_general(x, w, dims), x, w)
  dy = jax.random.normal(kd, y.shape)
  assert rel_err(y, y_ref) == 0.0
  for got, ref in zip(vjp(dy), vjp_ref(dy)):
    assert got.shape == ref.shape and rel_err(got, ref) < 1e-6


def test_dense_vjp_keeps_the_primal_dtypes_and_other_forms_pass_through():
  x, w = jnp.ones((3, 4), jnp.bfloat16), jnp.ones((4, 5), jnp.bfloat16)
  dims = (((1,), (0,)), ((), ()))
  dx, dw = jax.grad(lambda x, w: dense.dot_general(x, w, dims).astype(jnp.float32).sum(), (0, 1))(x, w)
  assert dx.dtype == dw.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(dw, np.float32), 3.0)     # sum over the 3 rows of x
  # batch dimensions (not a dense layer's form) go to lax.dot_general unchanged
  a, b = jnp.arange(24.0).reshape(2, 3, 4), jnp.arange(40.0).reshape(2, 4, 5)
  batched = (((2,), (1,)), ((0,), (0,)))
  np.testing.assert_array_equal(dense.dot_general(a, b, batched), jax.lax.dot_general(a, b, batched))
  assert "custom_vjp" not in str(jax.make_jaxpr(lambda a, b: dense.dot_general(a, b, batched))(a, b))


def test_remat_policies_still_see_the_dense_matmul(capsys):
  """save_dots keeps matmul outputs: the dense layer's forward dot must stay visible to it."""
  from jax.ad_checkpoint import print_saved_residuals
  dims = (((1,), (0,)), ((), ()))
  f = jax.checkpoint(lambda x, w: jnp.sin(dense.dot_general(jnp.tanh(x), w, dims)).sum(),
                     policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
  print_saved_residuals(f, jnp.ones((8, 4)), jnp.ones((4, 4)))
  assert "f32[8,4] output of dot_general" in capsys.readouterr().out
