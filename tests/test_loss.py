"""The chunked training loss equals the plain next-token loss on full logits."""
import jax
import jax.numpy as jnp
import pytest

from hourjax.models import build
from hourjax.models.qwen2 import Qwen2Config
from hourjax.constants import IGNORE_INDEX
from hourjax.data.batch import PackedBatch
from hourjax.ops.loss import chunked_next_token_loss, next_token_loss
from hourjax.train.step import lm_loss_fn
from hourjax.numerics import rel_err, tree_rel_err
from conftest import jit_apply


@pytest.mark.parametrize("t,chunk,shards", [(24, 5, 1), (24, 4, 2), (23, 64, 2), (32, 8, 4)])
def test_chunked_loss_and_grads_equal_full_logits(t, chunk, shards):
  ks = jax.random.split(jax.random.key(0), 3)
  hidden = jax.random.normal(ks[0], (2, t, 16))
  head = jax.random.normal(ks[1], (16, 50)) / 4
  labels = jnp.where(jax.random.uniform(ks[2], (2, t)) < 0.3, IGNORE_INDEX,
                     jax.random.randint(ks[2], (2, t), 0, 50))
  full = lambda h, w: next_token_loss(jnp.einsum("bth,hv->btv", h, w), labels)
  chunked = lambda h, w: chunked_next_token_loss(h, w, labels, chunk=chunk, shards=shards)
  (ref, n_ref), (got, n, correct) = full(hidden, head), jax.jit(chunked)(hidden, head)
  assert int(n) == int(n_ref) and rel_err(got, ref) < 1e-6
  shifted = jnp.roll(labels, -1, 1).at[:, -1].set(IGNORE_INDEX)
  hits = (jnp.argmax(jnp.einsum("bth,hv->btv", hidden, head), -1) == shifted) & (shifted != IGNORE_INDEX)
  assert int(correct) == int(hits.sum()) > 0
  common = (int(jnp.bincount(jnp.where(shifted >= 0, shifted, 0).ravel(), length=50)[1:].argmax()) + 1,)
  *_, answer_hits = jax.jit(lambda h, w: chunked_next_token_loss(h, w, labels, chunk=chunk, shards=shards,
                                                                 template_ids=common))(hidden, head)
  assert int(answer_hits) == int((hits & (shifted != common[0])).sum())
  g_ref = jax.grad(lambda h, w: full(h, w)[0], (0, 1))(hidden, head)
  g = jax.jit(jax.grad(lambda h, w: chunked(h, w)[0], (0, 1)))(hidden, head)
  assert tree_rel_err(g, g_ref) < 1e-6
  # The gradient is formed in the forward pass (a custom VJP): a cotangent other than 1, as a
  # mean over the batch's tokens gives, must scale it.
  g_mean = jax.jit(jax.grad(lambda h, w: chunked(h, w)[0] / 7.0, (0, 1)))(hidden, head)
  assert tree_rel_err(g_mean, jax.tree.map(lambda x: x / 7.0, g_ref)) < 1e-6


@pytest.mark.parametrize("shards", [1, 4])
def test_head_on_supervised_positions_only_is_exact(shards):
  """A visual batch's loss runs the head on at most `supervised_at_most` positions per shard (the
  supervised ones first); with the tightest bound that holds, everything equals the full logits'."""
  ks = jax.random.split(jax.random.key(1), 3)
  hidden = jax.random.normal(ks[0], (2, 48, 16))
  head = jax.random.normal(ks[1], (16, 50)) / 4
  labels = jnp.where(jax.random.uniform(ks[2], (2, 48)) < 0.8, IGNORE_INDEX,
                     jax.random.randint(ks[2], (2, 48), 0, 50))
  shifted = jnp.roll(labels, -1, 1).at[:, -1].set(IGNORE_INDEX)
  bound = int((shifted != IGNORE_INDEX).reshape(2, shards, -1).sum(-1).max())
  assert 0 < bound < 48 // shards
  full = lambda h, w: next_token_loss(jnp.einsum("bth,hv->btv", h, w), labels)
  compact = lambda h, w: chunked_next_token_loss(h, w, labels, chunk=3, shards=shards, supervised_at_most=bound)
  (ref, n_ref), (got, n, correct) = full(hidden, head), jax.jit(compact)(hidden, head)
  hits = (jnp.argmax(jnp.einsum("bth,hv->btv", hidden, head), -1) == shifted) & (shifted != IGNORE_INDEX)
  assert int(n) == int(n_ref) and int(correct) == int(hits.sum()) and rel_err(got, ref) < 1e-6
  g_ref = jax.grad(lambda h, w: full(h, w)[0], (0, 1))(hidden, head)
  g = jax.jit(jax.grad(lambda h, w: compact(h, w)[0], (0, 1)))(hidden, head)
  assert tree_rel_err(g, g_ref) < 1e-6


@pytest.mark.parametrize("tie", [True, False])
def test_lm_loss_uses_the_models_head(tie):
  cfg = Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                    num_kv_heads=2, tie_word_embeddings=tie)
  model, params = build.build("qwen2", cfg), build.init_params("qwen2", cfg, jax.random.key(0))
  ids = jax.random.randint(jax.random.key(1), (2, 12), 0, 40)
  batch = PackedBatch(ids, ids, jnp.broadcast_to(jnp.arange(12), (2, 12)), jnp.ones_like(ids))   # one document
  logits, _ = jit_apply(model, params, ids)
  total, count = next_token_loss(logits, ids)
  loss, aux = lm_loss_fn(model, params, batch)
  assert int(aux["supervised_tokens"]) == int(count) == 22
  assert rel_err(loss, total / count) < 1e-6
