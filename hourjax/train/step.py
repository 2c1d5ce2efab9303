"""The training step: loss, gradients and the optimizer update, one jitted function.

Batches are the typed batches of `hourjax.data.batch`: a VideoBatch (frames as `pixels`, or
cached `features`) or ImageBatch goes through the whole Hour-LLaVA, a TextBatch through it
without a visual input, a PackedBatch (ProLongVid's long-context stage) through the decoder
alone. `jit` compiles one program per batch kind and bucket shape. The loss is the mean
next-token cross-entropy over every supervised token of the global batch.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from hourjax.data.batch import Batch, PackedBatch
from hourjax.ops.attention import ring_shards
from hourjax.ops.loss import answer_tokens, chunked_next_token_loss


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def loss_fn(model: nn.Module, params: Any, batch: Batch, rng: jax.Array,
            template_ids: tuple[int, ...] = ()) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean next-token CE over the batch's supervised tokens; aux counts them, and the answer
  tokens (not in `template_ids`, e.g. `tokenizer.template_ids()`) the argmax gets right."""
  if isinstance(batch, PackedBatch):
    return lm_loss_fn(model, params, batch, rng)
  out = model.apply({"params": params}, batch.input_ids, batch.attention_mask, batch.labels,
                    **batch.model_inputs(), rng=rng, head=False)
  head = model.apply({"params": params}, method=lambda m: m.llm.head_weight())
  # Only text tokens are targets, each once: at most input_ids' width per sample, a fraction of
  # a video's LLM sequence, so the vocabulary head skips the visual positions.
  total, count, correct = chunked_next_token_loss(out["hidden"], head, out["labels"], shards=ring_shards(),
                                                  template_ids=template_ids,
                                                  supervised_at_most=batch.input_ids.shape[1])
  return total / jnp.maximum(count, 1), {"supervised_tokens": count, "correct_tokens": correct,
                                         "answer_tokens": answer_tokens(out["labels"], template_ids)}


def lm_loss_fn(model: nn.Module, params: Any, batch: PackedBatch,
               rng: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Qwen2 alone on packed token sequences."""
  hidden, _ = model.apply({"params": params}, batch.input_ids, positions=batch.positions,
                          segment_ids=batch.segment_ids, head=False)
  head = model.apply({"params": params}, method=lambda m: m.head_weight())
  total, count, correct = chunked_next_token_loss(hidden, head, batch.labels, shards=ring_shards())
  return total / jnp.maximum(count, 1), {"supervised_tokens": count, "correct_tokens": correct,
                                         "answer_tokens": count}


def init_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
  return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


LossFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def micro_batches(batch: Batch, k: int) -> Batch:
  """[B, ...] -> [k, B/k, ...], micro-batch j holding rows j, j+k, ...: a device's rows stay on
  it when B/k still divides by the batch shards."""
  def split(x):
    if x.shape[0] % k:
      raise ValueError(f"batch of {x.shape[0]} does not split into {k} micro-batches")
    return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def accumulated_value_and_grad(loss: LossFn, params: Any, batch: Batch, rng: jax.Array, k: int):
  """The loss and gradient of the whole batch, computed over k micro-batches in a scan: each
  micro-batch's mean loss is weighted by its supervised tokens, so the result is normalised by
  the tokens of the whole batch, as without accumulation."""
  def body(carry, micro):
    (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(params, micro, rng)
    n = aux["supervised_tokens"].astype(jnp.float32)
    total, g, sums = carry
    return (total + value * n, jax.tree.map(lambda a, b: a + b * n, g, grads),
            jax.tree.map(jnp.add, sums, aux)), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  first = jax.tree.map(lambda x: x[0], micro_batches(batch, k))
  aux0 = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(lambda: loss(params, first, rng)[1]))
  (total, grads, aux), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros, aux0), micro_batches(batch, k))
  n = jnp.maximum(aux["supervised_tokens"], 1).astype(jnp.float32)
  return (total / n, aux), jax.tree.map(lambda g: g / n, grads)


def make_train_step(loss: LossFn, optimizer: optax.GradientTransformation, accumulate: int = 1
                    ) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
  """loss(params, batch, rng) -> (state, batch, rng) -> (state, metrics); jit it with the
  state's and batch's shardings (and donate the state). `accumulate` > 1 splits the batch into
  that many micro-batches (less activation memory, one update)."""

  def train_step(state: TrainState, batch: Batch, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    if accumulate > 1:
      (value, aux), grads = accumulated_value_and_grad(loss, state.params, batch, rng, accumulate)
    else:
      (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(state.params, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": value, "grad_norm": optax.tree.norm(grads), **aux}
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def state_specs(optimizer: optax.GradientTransformation, param_specs: Any,
                abstract_params: Any) -> TrainState:
  """PartitionSpecs of the whole state: an optimizer leaf whose key path ends with a
  parameter's path (moments, also inside multi_transform) takes that parameter's spec;
  counts and the step are replicated."""
  from jax.sharding import PartitionSpec
  names = lambda path: tuple(getattr(k, "key", getattr(k, "name", None)) for k in path)
  by_path = {names(path): spec for path, spec in jax.tree_util.tree_flatten_with_path(
      param_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))[0]}

  def spec_of(path, leaf):
    keys = names(path)
    for i in range(len(keys)):
      if keys[i:] in by_path and len(by_path[keys[i:]]) <= leaf.ndim:
        return by_path[keys[i:]]
    return PartitionSpec()
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  return TrainState(PartitionSpec(), param_specs,
                    jax.tree_util.tree_map_with_path(spec_of, abstract_opt))
