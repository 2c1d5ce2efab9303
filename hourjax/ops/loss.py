"""Next-token cross-entropy, as HF causal-LM losses compute it."""
from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100


def next_token_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum of CE of logits[:, :-1] against labels[:, 1:] over non-ignored tokens, their count).

  Returning the sum and count lets a caller normalise over a whole global batch.
  """
  logits, labels = logits[:, :-1].astype(jnp.float32), labels[:, 1:]
  valid = labels != IGNORE_INDEX
  logp = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
  return -jnp.sum(jnp.where(valid, picked, 0.0)), jnp.sum(valid)
