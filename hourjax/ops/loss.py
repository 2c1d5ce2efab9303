"""Next-token cross-entropy, as HF causal-LM losses compute it."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hourjax.constants import IGNORE_INDEX


def answer_tokens(labels: jax.Array, template_ids: tuple[int, ...] = ()) -> jax.Array:
  """How many next-token targets are supervised and not chat-template tokens."""
  shifted = labels[:, 1:]
  return jnp.sum((shifted != IGNORE_INDEX) & ~jnp.isin(shifted, jnp.asarray(template_ids, jnp.int32)))


def shift_labels(labels: jax.Array) -> jax.Array:
  """labels[:, 1:] padded with IGNORE_INDEX: the target of each position. The last position is
  masked with a `where`, not `.at[:, -1].set`: once the labels are sharded along the sequence
  (propagated from a ring-attention model's activations), XLA's partitioner applied that
  update at the last slot of every shard (jax 0.10.2, CPU), dropping one target per shard."""
  last = jnp.arange(labels.shape[1])[None] == labels.shape[1] - 1
  return jnp.where(last, IGNORE_INDEX, jnp.roll(labels, -1, axis=1))


def next_token_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum of CE of logits[:, :-1] against labels[:, 1:] over non-ignored tokens, their count).

  Returning the sum and count lets a caller normalise over a whole global batch. The labels
  are shifted (a roll: one neighbour exchange when the sequence is sharded) rather than the
  logits sliced, which would re-split a [B, T, V] array across the sequence shards.
  """
  labels = shift_labels(labels)
  logits = logits.astype(jnp.float32)
  valid = labels != IGNORE_INDEX
  logp = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
  return -jnp.sum(jnp.where(valid, picked, 0.0)), jnp.sum(valid)


def chunked_next_token_loss(hidden: jax.Array, head: jax.Array, labels: jax.Array, *,
                            chunk: int = 1024, shards: int = 1, template_ids: tuple[int, ...] = (),
                            supervised_at_most: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """next_token_loss of logits = hidden @ head, never holding more than a chunk of logits, plus
  how many supervised tokens whose label is not in `template_ids` the argmax predicts (answer
  accuracy): (total CE, count, correct).

  hidden [B, T, H] (after the final norm), head [H, V]. The full [B, T, V] float32 logits of a
  152K vocabulary dwarf everything else in a long-context step; here each scan step makes
  [B, shards, chunk, V] of them. `shards` is the number of sequence shards: every shard walks
  its own part of T, so no step needs a token from another device.

  Under differentiation the gradient of the total is computed in the same pass, while a chunk's
  logits are at hand (a custom VJP): the head's three matmuls per chunk (logits, d hidden,
  d head) instead of four when the backward pass rematerialises the logits, and no second
  softmax. The counts are integers and carry no gradient.

  `supervised_at_most` > 0 bounds the supervised targets of each sample, e.g. a visual batch's
  text length (its visual tokens are never targets, and they are most of the sequence): each
  shard's positions are first compacted to that many, supervised ones first and in order
  (`supervised_first`), so the head runs on min(bound, T / shards) positions per shard instead
  of all T. A bound below the true count would drop targets: it must hold for every sample.
  """
  b, t, h = hidden.shape
  labels = shift_labels(labels)
  if t % shards:
    shards = 1
  per_shard = t // shards
  x, y = hidden.reshape(b, shards, per_shard, h), labels.reshape(b, shards, per_shard)
  if 0 < supervised_at_most < per_shard:
    x, y = supervised_first(x, y, supervised_at_most)
    per_shard = supervised_at_most
  c = min(chunk, per_shard)
  pad = -per_shard % c
  x = jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0)))
  y = jnp.pad(y, ((0, 0), (0, 0), (0, pad)), constant_values=IGNORE_INDEX)
  k = (per_shard + pad) // c
  x = jnp.moveaxis(x.reshape(b, shards, k, c, h), 2, 0)
  y = jnp.moveaxis(y.reshape(b, shards, k, c), 2, 0)
  total, count, correct = _chunked_loss(tuple(template_ids), x, head, y)
  return total, count, correct


def supervised_first(hidden: jax.Array, targets: jax.Array, keep: int) -> tuple[jax.Array, jax.Array]:
  """hidden [..., T, H] and targets [..., T] -> their first `keep` positions after a stable
  sort that puts the supervised targets first: all of them (in order) when there are at most
  `keep`, then unsupervised ones, whose targets stay IGNORE_INDEX. A gather along the last
  position axis, local to each sequence shard."""
  order = jnp.argsort(targets == IGNORE_INDEX, axis=-1, stable=True)[..., :keep]
  return jnp.take_along_axis(hidden, order[..., None], axis=-2), jnp.take_along_axis(targets, order, axis=-1)


def _chunk_scan(template_ids: tuple[int, ...], x: jax.Array, head: jax.Array, y: jax.Array, with_grad: bool):
  """Scan the [k, B, shards, c, H] chunks: (total, count, correct) and, with_grad, d total /
  d x (chunked like x) and d total / d head (float32)."""
  template = jnp.asarray(template_ids, jnp.int32)

  def body(carry, xy):
    xc, yc = xy
    logits = jnp.einsum("bpch,hv->bpcv", xc, head.astype(xc.dtype), preferred_element_type=jnp.float32)
    valid = yc != IGNORE_INDEX
    target = jnp.where(valid, yc, 0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
    hit = valid & (jnp.argmax(logits, -1) == yc) & ~jnp.isin(yc, template)
    total, count, correct, d_head = carry
    carry = (total - jnp.sum(jnp.where(valid, picked, 0.0)), count + jnp.sum(valid), correct + jnp.sum(hit), d_head)
    if not with_grad:
      return carry, None
    # d(-log p[target]) / d logits = softmax - onehot(target), on supervised positions only.
    d_logits = jnp.exp(logp) - jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype)
    # The two matmuls take the compute dtype, as autodiff's transposes of the logits matmul
    # would: float32 operands double the head's gathered bytes on an FSDP mesh, and each chunk's
    # head gradient is reduced across devices in the compute dtype, then summed in float32.
    d_logits = jnp.where(valid[..., None], d_logits, 0.0).astype(xc.dtype)
    d_x = jnp.einsum("bpcv,hv->bpch", d_logits, head.astype(xc.dtype), preferred_element_type=jnp.float32)
    d_x = d_x.astype(xc.dtype)
    d_head = d_head + jnp.einsum("bpch,bpcv->hv", xc, d_logits, preferred_element_type=xc.dtype).astype(jnp.float32)
    return carry[:3] + (d_head,), d_x

  zero = jnp.zeros((), jnp.int32)
  d_head = jnp.zeros(head.shape if with_grad else (), jnp.float32)
  (total, count, correct, d_head), d_x = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zero, zero, d_head), (x, y))
  return (total, count, correct), (d_x, d_head)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked_loss(template_ids, x, head, y):
  return _chunk_scan(template_ids, x, head, y, with_grad=False)[0]


def _chunked_loss_fwd(template_ids, x, head, y):
  out, (d_x, d_head) = _chunk_scan(template_ids, x, head, y, with_grad=True)
  return out, (d_x, d_head.astype(head.dtype), y)


def _chunked_loss_bwd(template_ids, residuals, cotangents):
  d_x, d_head, y = residuals
  g = cotangents[0]
  return (g.astype(d_x.dtype) * d_x, g.astype(d_head.dtype) * d_head, np.zeros(y.shape, jax.dtypes.float0))


_chunked_loss.defvjp(_chunked_loss_fwd, _chunked_loss_bwd)
