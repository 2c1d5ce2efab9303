"""Held-out loss and answer-token accuracy: the training loss without gradients, summed over
batches by token count."""
from __future__ import annotations

from typing import Any, Iterable

import jax
import numpy as np

from hourjax.train import step as step_lib


def evaluate(model: Any, params: Any, batches: Iterable[tuple[Any, Any]], rng: jax.Array | None = None,
             template_ids: tuple[int, ...] = (), *, loss: Any = None) -> dict[str, float]:
  """(batch, meta) pairs from `pipeline`; returns loss (mean CE per supervised token), accuracy
  (argmax hits per answer token: supervised, not in `template_ids`) and the token count.
  `loss`: a jitted (params, batch) -> (loss, aux) to reuse (e.g. `Program.eval_loss`); jit
  compiles one program per batch kind and shape."""
  rng = jax.random.key(0) if rng is None else rng
  loss = loss or jax.jit(lambda p, b: step_lib.loss_fn(model, p, b, rng, template_ids))
  total = correct = count = answers = 0.0
  for batch, _ in batches:
    if batch is None:        # the end of a stream (its meta reports what was dropped)
      continue
    value, aux = loss(params, batch)
    n = float(np.asarray(aux["supervised_tokens"]))
    total += float(np.asarray(value)) * n
    correct += float(np.asarray(aux["correct_tokens"]))
    answers += float(np.asarray(aux["answer_tokens"]))
    count += n
  return {"loss": total / max(count, 1), "accuracy": correct / max(answers, 1), "tokens": count}


def choose_option(model: Any, params: Any, batch: Any, rng: jax.Array, option_ids: Any) -> jax.Array:
  """Multiple choice, teacher-forced: for each sample, the index of the option token (the ids
  of "A".."D", or of each option's word: [K] or per sample [B, K]) with the highest logit where
  the first supervised option token is predicted. Batch as for training (labels mark the answer;
  prompt tokens are MemAug's query as in training). Jit-able; [B] int32."""
  import jax.numpy as jnp
  out = model.apply({"params": params}, batch.input_ids, batch.attention_mask, batch.labels,
                    **batch.model_inputs(), rng=rng)
  labels = out["labels"]
  option_ids = jnp.broadcast_to(jnp.asarray(option_ids), (labels.shape[0], jnp.shape(option_ids)[-1]))
  is_answer = jnp.any(labels[:, :, None] == option_ids[:, None, :], axis=-1)
  at = jnp.maximum(jnp.argmax(is_answer, axis=1) - 1, 0)       # logits there predict the answer
  logits = jnp.take_along_axis(out["logits"], at[:, None, None], axis=1)[:, 0]
  return jnp.argmax(jnp.take_along_axis(logits, option_ids, axis=1), axis=-1).astype(jnp.int32)
