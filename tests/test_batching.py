"""Bucketed collation: one compile per bucket, and a sample's logits do not depend on what it is
batched with or how much padding its bucket adds."""
import jax
import numpy as np
import pytest

from hourjax.data.batching import Buckets, collate
from hourjax.models import build
from hourjax.constants import IMAGE_TOKEN_INDEX
from hourjax.numerics import rel_err
from conftest import tiny_model

CFG = tiny_model()
BUCKETS = Buckets(frames=(16, 40), text=(16, 32))


def _sample(rng, frames, text):
  ids = rng.integers(1, CFG.llm.vocab_size, text).astype(np.int32)
  labels = np.where(np.arange(text) > text // 2, ids, -100).astype(np.int32)
  feats = None
  if frames:
    ids[2], labels[2] = IMAGE_TOKEN_INDEX, -100
    feats = rng.normal(size=(frames, CFG.pool_size ** 2, CFG.vision.hidden_size)).astype(np.float32)
  return {"input_ids": ids, "labels": labels, "features": feats}


def test_one_compile_per_bucket_and_padding_invariance():
  rng = np.random.default_rng(0)
  model, params = build.build("hour_llava", CFG), build.init_params("hour_llava", CFG, jax.random.key(0))
  fwd = jax.jit(lambda p, b: model.apply({"params": p}, b.input_ids, b.attention_mask, b.labels,
                                         **b.model_inputs())["logits"])
  used = set()
  for frames, text in [((5, 12), (10, 14)), ((16, 0), (16, 9)), ((30, 3), (12, 12)), ((40, 22), (31, 8))]:
    batch = collate([_sample(rng, f, t) for f, t in zip(frames, text)], CFG, BUCKETS)
    used.add((batch.features.shape[1], batch.input_ids.shape[1]))
    fwd(params, batch)
  assert fwd._cache_size() == len(used) == 3
  lone = _sample(np.random.default_rng(1), 7, 11)
  alone = fwd(params, collate([lone], CFG, BUCKETS))                       # bucket (16, 16)
  mixed = fwd(params, collate([lone, _sample(rng, 33, 30)], CFG, BUCKETS))  # bucket (40, 32)
  n = 11 - 1 + alone.shape[1] - 16          # text + visual tokens of the lone sample
  assert rel_err(mixed[0, :n], alone[0, :n]) < 1e-5


def test_oversized_sample_and_bad_edges_are_refused():
  with pytest.raises(ValueError, match="exceeds the largest bucket"):
    BUCKETS.of(41, 10)
  with pytest.raises(ValueError, match="increasing"):
    Buckets(frames=(32, 16))
