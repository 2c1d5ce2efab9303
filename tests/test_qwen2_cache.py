"""KV-cache decoding gives the same logits as the full forward."""
import jax
import jax.numpy as jnp
import numpy as np

from hourjax.models import build
from hourjax.models.qwen2 import KVCache, Qwen2Config
from hourjax.numerics import rel_err
from conftest import jit_apply

CFG = Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=8,
                  num_kv_heads=2, rope_theta=1e9, tie_word_embeddings=False)


def test_prefill_then_decode_equals_full_forward():
  params = build.init_params("qwen2", CFG, jax.random.key(0))
  model = build.build("qwen2", CFG)
  ids = np.asarray(jax.random.randint(jax.random.key(1), (2, 14), 0, CFG.vocab_size))
  full, _ = jit_apply(model, params, ids)
  step = jax.jit(lambda p, x, c: model.apply({"params": p}, x, cache=c))
  cache = KVCache.create(CFG, batch=2, max_len=32)
  logits, cache = step(params, ids[:, :6], cache)           # prefill 6 tokens
  pieces = [logits]
  for t in range(6, 14):                                    # then one token at a time
    logits, cache = step(params, ids[:, t:t + 1], cache)
    pieces.append(logits)
  assert int(cache.end) == 14
  assert rel_err(jnp.concatenate(pieces, 1), full) < 1e-5


def test_cache_respects_prompt_padding():
  """A left-padded prompt decodes like its unpadded self (pad slots are never attended)."""
  params = build.init_params("qwen2", CFG, jax.random.key(0))
  model = build.build("qwen2", CFG)
  ids = np.asarray(jax.random.randint(jax.random.key(2), (1, 9), 0, CFG.vocab_size))
  ref, _ = jit_apply(model, params, ids)
  padded = np.concatenate([np.zeros((1, 3), int), ids[:, :5]], 1)
  mask = np.concatenate([np.zeros((1, 3), bool), np.ones((1, 5), bool)], 1)
  positions = np.concatenate([np.zeros((1, 3), int), np.arange(5)[None]], 1)
  cache = KVCache.create(CFG, batch=1, max_len=16)
  logits, cache = jit_apply(model, params, padded, positions=positions, attention_mask=mask,
                              cache=cache)
  out = [logits[:, 3:]]
  decode = jax.jit(lambda p, x, pos, c: model.apply({"params": p}, x, positions=pos, cache=c))
  for t in range(5, 9):
    logits, cache = decode(params, ids[:, t:t + 1], np.array([[t]]), cache)
    out.append(logits)
  assert rel_err(jnp.concatenate(out, 1), ref) < 1e-5
