"""Held-out loss and answer-token accuracy: the training loss without gradients, summed over
batches by token count."""
from __future__ import annotations

from typing import Any, Iterable

import jax
import numpy as np

from hourjax.data import pipeline
from hourjax.train import step as step_lib


def evaluate(model: Any, params: Any, batches: Iterable[dict], rng: jax.Array,
             template_ids: tuple[int, ...] = ()) -> dict[str, float]:
  """Batches from `pipeline` (with meta); returns loss (mean CE per supervised token), accuracy
  (argmax hits per answer token: supervised, not in `template_ids`) and the token count."""
  steps: dict[str, Any] = {}
  total = correct = count = answers = 0.0
  for batch in batches:
    modality = pipeline.MODALITY[batch["meta"]["stream"]]
    if modality not in steps:
      steps[modality] = jax.jit(lambda p, b, m=modality: step_lib.loss_fn(model, p, b, rng, m, template_ids))
    loss, aux = steps[modality](params, {k: v for k, v in batch.items() if k != "meta"})
    n = float(np.asarray(aux["supervised_tokens"]))
    total += float(np.asarray(loss)) * n
    correct += float(np.asarray(aux["correct_tokens"]))
    answers += float(np.asarray(aux["answer_tokens"]))
    count += n
  return {"loss": total / max(count, 1), "accuracy": correct / max(answers, 1), "tokens": count}
