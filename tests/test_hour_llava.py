"""The batched Hour-LLaVA forward: padding never changes a sample's result, text-only samples are
plain Qwen2, the baseline path, images, forgetting variants under jit, one compile per bucket."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hourjax.models import build
from hourjax.models import anyres
from hourjax.models.forgetting import ForgettingConfig, video_layout
from hourjax.constants import IMAGE_TOKEN_INDEX
from hourjax.models.hour_llava import HourLlavaConfig
from hourjax.models.memaug import MemAugConfig
from hourjax.models.qwen2 import Qwen2Config
from hourjax.models.siglip import SiglipConfig
from conftest import jit_apply
from hourjax.numerics import rel_err

LLM = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                  num_kv_heads=2, tie_word_embeddings=True)
CFG = HourLlavaConfig(
    vision=SiglipConfig(hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, image_size=112,
                        patch_size=14),
    llm=LLM, memaug=MemAugConfig(hidden_size=32, num_heads=4, num_kv_heads=2, depth=2),
    forgetting=ForgettingConfig(spatial="uniform", min_memory_frames=8), pool_size=4)


def _sample(rng, length, placeholder):
  ids = rng.integers(1, LLM.vocab_size, length)
  labels = np.where(rng.random(length) < 0.4, ids, -100)
  if placeholder is not None:
    ids[placeholder], labels[placeholder] = IMAGE_TOKEN_INDEX, -100
  return ids, labels


def _params(cfg=CFG, seed=0):
  return build.init_params("hour_llava", cfg, jax.random.key(seed))


def test_batch_with_padding_equals_each_sample_alone():
  rng = np.random.default_rng(0)
  samples = [(_sample(rng, 10, 4), 3), (_sample(rng, 14, 6), 12), (_sample(rng, 7, None), 0)]
  frames = rng.uniform(-1, 1, (3, 12, 112, 112, 3)).astype(np.float32)
  model, params = build.build("hour_llava", CFG), _params()
  ids = np.zeros((3, 14), int)
  labels = np.full((3, 14), -100)
  mask = np.zeros((3, 14), int)
  for i, ((s_ids, s_lab), _) in enumerate(samples):
    ids[i, :len(s_ids)], labels[i, :len(s_ids)], mask[i, :len(s_ids)] = s_ids, s_lab, 1
  for with_labels in (True, False):
    lab = labels if with_labels else None
    batch = jit_apply(model, params, ids, mask, lab,
                        layout=video_layout([t for _, t in samples], CFG.forgetting), pixels=frames)
    for i, ((s_ids, s_lab), t) in enumerate(samples):
      if t == 0:
        alone = {"logits": jit_apply(model, params, s_ids[None],
                                       method=lambda m, x: m.llm(x)[0])}
      else:
        alone = jit_apply(model, params, s_ids[None], np.ones((1, len(s_ids))),
                            s_lab[None] if with_labels else None, layout=video_layout([t], CFG.forgetting),
                            pixels=frames[i:i + 1, :t])
      n = alone["logits"].shape[1]
      assert bool(batch["attention_mask"][i, :n].all()) and not bool(batch["attention_mask"][i, n:].any())
      assert rel_err(batch["logits"][i, :n], alone["logits"][0]) < 1e-5, (i, with_labels)
      if t and with_labels:
        np.testing.assert_array_equal(batch["labels"][i, :n], alone["labels"][0])


def test_training_and_inference_forms_differ_only_through_the_query():
  rng = np.random.default_rng(1)
  (ids, labels) = _sample(rng, 12, 3)
  frames = rng.uniform(-1, 1, (1, 4, 112, 112, 3)).astype(np.float32)
  model, params = build.build("hour_llava", CFG), _params()
  kw = dict(layout=video_layout([4], CFG.forgetting), pixels=frames, mutable="intermediates")
  (train, it), (infer, ii) = [jit_apply(model, params, ids[None], np.ones((1, 12)), lab, **kw)
                              for lab in (labels[None], None)]
  n_train = int((labels[:3] == -100).sum())
  q_train = np.asarray(it["intermediates"]["memaug_query_position_ids"][0][0])
  q_infer = np.asarray(ii["intermediates"]["memaug_query_position_ids"][0][0])
  # visual queries sit at P + memory id, P = kept prefix length (3 at inference, fewer in training)
  first_visual = np.asarray(it["intermediates"]["decayed_query_position_ids"][0][0, 0])
  assert q_train[n_train] == n_train + first_visual and q_infer[3] == 3 + first_visual
  assert rel_err(train["logits"], infer["logits"]) > 1e-3


def test_baseline_without_memaug_feeds_decayed_queries():
  cfg = dataclasses.replace(CFG, use_memaug=False)
  params = _params(cfg)
  assert "memaug" not in params
  rng = np.random.default_rng(2)
  ids, _ = _sample(rng, 9, 2)
  frames = rng.uniform(-1, 1, (1, 5, 112, 112, 3)).astype(np.float32)
  _, inter = jit_apply(build.build("hour_llava", cfg), params,
      ids[None], np.ones((1, 9)), layout=video_layout([5], cfg.forgetting),
      pixels=frames, mutable="intermediates")
  decayed = inter["intermediates"]["decayed_queries"][0][0]
  embeds = inter["intermediates"]["inputs_embeds"][0][0]
  np.testing.assert_array_equal(embeds[2:2 + decayed.shape[0]], decayed)
  assert decayed.shape[0] == 2 * (4 + 1)           # 8 padded frames // 4 retained, 4 kept + newline


def test_precomputed_features_equal_pixels():
  rng = np.random.default_rng(3)
  ids, labels = _sample(rng, 9, 1)
  frames = rng.uniform(-1, 1, (1, 6, 112, 112, 3)).astype(np.float32)
  model, params = build.build("hour_llava", CFG), _params()
  pooled = jit_apply(model, params, frames, pool=True, method=lambda m, p, pool: m.encode_frames(p, pool))
  lay = video_layout([6], CFG.forgetting)
  a = jit_apply(model, params, ids[None], np.ones((1, 9)), labels[None], layout=lay, pixels=frames)
  b = jit_apply(model, params, ids[None], np.ones((1, 9)), labels[None], layout=lay, features=pooled)
  assert rel_err(a["logits"], b["logits"]) < 1e-6


def test_single_image_memory_and_queries():
  cfg = dataclasses.replace(CFG, forgetting=ForgettingConfig(spatial="random"))
  rng = np.random.default_rng(4)
  ids, _ = _sample(rng, 8, 2)
  image = rng.uniform(-1, 1, (1, 1, 112, 112, 3)).astype(np.float32)
  _, inter = jit_apply(build.build("hour_llava", cfg), _params(cfg),
      ids[None], np.ones((1, 8)), layout=anyres.image_layout([[(112, 112, None)]], 8),
      pixels=image, modality="image", rng=jax.random.key(0), mutable="intermediates")
  it = inter["intermediates"]
  assert it["memory"][0].shape == (1, 64 + 1, 32)                   # unpooled 8x8 grid + newline
  ids_q = np.asarray(it["decayed_query_position_ids"][0][0])
  assert len(ids_q) == 16 + 1 and ids_q[-1] == 64 and (np.diff(ids_q) > 0).all()


@pytest.mark.parametrize("modality", ["video", "image"])
def test_memory_scale_zero_remembers_only_the_decayed_queries(modality):
  """forgetting.memory_scale=0 (the study's "decayed only" arm): MemAug's memory is the decayed
  queries themselves, tokens, position ids and mask, for videos and images alike."""
  cfg = dataclasses.replace(CFG, forgetting=ForgettingConfig(spatial="random", memory_scale=0.0, min_memory_frames=8))
  rng = np.random.default_rng(5)
  ids, _ = _sample(rng, 8, 2)
  if modality == "video":
    pixels, layout = rng.uniform(-1, 1, (1, 6, 112, 112, 3)), video_layout([6], cfg.forgetting)
  else:
    pixels, layout = rng.uniform(-1, 1, (1, 1, 112, 112, 3)), anyres.image_layout([[(112, 112, None)]], 8)
  _, inter = jit_apply(build.build("hour_llava", cfg), _params(cfg), ids[None], np.ones((1, 8)), layout=layout,
                       pixels=pixels.astype(np.float32), modality=modality, rng=jax.random.key(1),
                       mutable="intermediates")
  it = inter["intermediates"]
  np.testing.assert_array_equal(it["memory"][0], it["decayed_queries"][0])
  np.testing.assert_array_equal(it["memory_position_ids"][0], it["decayed_query_position_ids"][0])
  assert it["memory"][0].shape[1] < (8 if modality == "video" else 1) * 65   # fewer than the full tokens


@pytest.mark.parametrize("temporal", ["uniform", "random", "keyframe", "question"])
def test_forgetting_variants_jit_and_are_deterministic(temporal):
  cfg = dataclasses.replace(CFG, forgetting=ForgettingConfig(spatial="random", temporal=temporal,
                                                             min_memory_frames=8))
  model, params = build.build("hour_llava", cfg), _params(cfg)
  rng = np.random.default_rng(5)
  ids, labels = _sample(rng, 10, 3)
  frames = rng.uniform(-1, 1, (1, 12, 112, 112, 3)).astype(np.float32)
  lay = video_layout([12], cfg.forgetting)
  fwd = jax.jit(lambda p, k: model.apply({"params": p}, ids[None], np.ones((1, 10)), labels[None],
                                         layout=lay, pixels=frames, rng=k)["logits"])
  a, b, c = fwd(params, jax.random.key(1)), fwd(params, jax.random.key(1)), fwd(params, jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert rel_err(a, c) > 1e-4                       # the random spatial draw depends on the key
  assert bool(jnp.isfinite(a).all())


def test_one_compile_per_bucket():
  model, params = build.build("hour_llava", CFG), _params()
  fwd = jax.jit(lambda p, ids, mask, lay, px: model.apply({"params": p}, ids, mask, layout=lay,
                                                          pixels=px)["logits"])
  rng = np.random.default_rng(6)
  for counts in ([3, 9], [12, 1], [0, 5]):           # different samples, same bucket sizes
    ids = np.stack([_sample(rng, 12, 2)[0], _sample(rng, 12, 5)[0]])
    lay = video_layout(counts, CFG.forgetting, padded_frames=12, memory_frames=12, retained_frames=3)
    fwd(params, ids, np.ones((2, 12)), lay, rng.uniform(-1, 1, (2, 12, 112, 112, 3)).astype(np.float32))
  assert fwd._cache_size() == 1


def test_sequences_are_cut_at_max_length_after_the_visual_tokens():
  """The official model truncates the spliced sequence (text + visual tokens) to
  tokenizer_model_max_length: the first K LLM tokens, logits unchanged (causal), labels cut."""
  rng = np.random.default_rng(3)
  (ids, labels), frames = _sample(rng, 20, 5), rng.uniform(-1, 1, (1, 8, 112, 112, 3)).astype(np.float32)
  params, layout = _params(), video_layout([8], CFG.forgetting)

  def run(cfg):
    return jax.jit(lambda p: build.build("hour_llava", cfg).apply({"params": p},
        ids[None], np.ones((1, 20)), labels[None], layout=layout, pixels=frames))(params)
  full = run(CFG)
  n = full["logits"].shape[1]
  for k in (n - 7, 9):        # cut inside the text after the video, and inside the visual tokens
    cut = run(dataclasses.replace(CFG, max_length=k))
    assert cut["logits"].shape[1] == k and int(cut["attention_mask"].sum()) == k
    assert rel_err(cut["logits"], full["logits"][:, :k]) < 1e-6
    np.testing.assert_array_equal(cut["labels"], full["labels"][:, :k])


def test_siglip_gets_no_gradient_from_videos_longer_than_128_frames():
  """Official stage 2: videos of more than 128 frames are encoded under no_grad; shorter ones
  (and the LLM, projector and MemAug always) get gradients. Checked per sample in one batch."""
  cfg = dataclasses.replace(CFG, vision_grad_frames=6)
  model, params = build.build("hour_llava", cfg), _params(cfg)
  rng = np.random.default_rng(4)
  (ids, labels), frames = _sample(rng, 12, 2), rng.uniform(-1, 1, (2, 7, 112, 112, 3)).astype(np.float32)
  layout = video_layout([7, 6], cfg.forgetting)          # sample 0 has 7 > 6 frames

  @jax.jit
  def grads(p, weight):
    def loss(p):
      out = model.apply({"params": p}, np.stack([ids, ids]), np.ones((2, 12)), np.stack([labels, labels]),
                        layout=layout, pixels=frames)
      logp = jax.nn.log_softmax(out["logits"][:, :-1])
      tgt = out["labels"][:, 1:]
      nll = -jnp.take_along_axis(logp, jnp.maximum(tgt, 0)[..., None], -1)[..., 0] * (tgt >= 0)
      return jnp.sum(nll.sum(1) * weight)
    return jax.grad(loss)(p)

  norm = lambda tree: float(sum(jnp.sum(x * x) for x in jax.tree.leaves(tree)))
  long_only = grads(params, jnp.array([1.0, 0.0]))
  assert norm(long_only["vision"]) == 0.0 and norm(long_only["projector"]) > 0 and norm(long_only["llm"]) > 0
  short = grads(params, jnp.array([0.0, 1.0]))
  assert norm(short["vision"]) > 0
  both = grads(params, jnp.array([1.0, 1.0]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9), both["vision"], short["vision"])


@pytest.mark.parametrize("init", ["normal", "fan_in", "residual_zero"])
def test_every_module_initialises_by_its_init_field(init):
  """`init` of every module: "normal" draws each weight matrix from N(0, 0.02) (HF's rule),
  "fan_in" from N(0, 1/fan_in) (fan_in: the kernel's input axes; embeddings 1/width),
  "residual_zero" as fan_in but the last projection of every residual branch (attention `o`,
  MLP `fc2` / `down`) zero. Checked
  on the sample std of every matrix of the tiny preset (>= 1,024 draws, so the std's standard
  error is <= 1/sqrt(2n) = 2.2% and 10% is 4.5 of them); biases start at 0 and norms at 1 either way."""
  from hourjax.config import load, model_config
  import os
  config = os.path.join(os.path.dirname(__file__), "..", "configs", "hour_llava.py")
  run = load(config + ":tiny", [f"model.{f}={init}" for f in ("vision.init", "llm.init", "memaug.init",
                                                                            "projector_init")])
  params = build.init_params("hour_llava", model_config(run.model), jax.random.key(0))
  checked = set()
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [getattr(k, "key", "") for k in path]
    x = np.asarray(x)
    if names[-1] == "bias":
      assert not x.any(), names
      continue
    if names[-1] == "scale":
      assert (x == 1).all(), names
      continue
    if names[0] == "vision" and names[1] in ("patch_embed", "pos_embed") or x.ndim < 2:
      continue            # SigLIP's conv (lecun) and positions (0.02) follow HF whatever `init`
    if init == "residual_zero" and names[-2] in ("o", "fc2", "down"):
      assert not x.any(), names
      continue
    if init == "normal":
      want = 0.02
    elif names[-1] == "embedding":
      want = x.shape[-1] ** -0.5
    else:     # kernels are [*in, *out]: o projections have two input axes (heads, head_dim)
      want = int(np.prod(x.shape[:2 if names[-2] == "o" else 1])) ** -0.5
    assert abs(x.std() / want - 1) < 0.1, (names, x.std(), want)
    checked.add(names[0])
  assert checked == {"vision", "projector", "memaug", "llm"}
  with pytest.raises(ValueError, match="init='xavier'"):
    MemAugConfig(init="xavier")


def test_residual_zero_memaug_starts_by_passing_its_queries_through():
  """At init="residual_zero" every MemAug block is its three LayerNorms alone: the output is
  LayerNorm(queries) (float64 reference; LN is idempotent up to eps), whatever the memory, and
  the zero projections still get a gradient, so recall is learned from there (docs/demo.md)."""
  import flax.linen as nn
  from hourjax.models.memaug import MemAug
  cfg = MemAugConfig(hidden_size=64, num_heads=4, num_kv_heads=2, depth=2, init="residual_zero")
  rng = np.random.default_rng(0)
  q = rng.normal(size=(2, 7, 64)).astype(np.float32) * 3 + 1
  mem = [rng.normal(size=(2, 11, 64)).astype(np.float32) for _ in range(2)]
  qpos, mpos = np.tile(np.arange(7), (2, 1)), np.tile(np.arange(11), (2, 1))
  model = MemAug(cfg)
  params = nn.unbox(model.init(jax.random.key(0), q, mem[0], qpos, mpos)["params"])
  x = q.astype(np.float64)
  for _ in range(3 * cfg.depth):
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + cfg.layer_norm_eps)
  for m in mem:
    assert rel_err(np.asarray(model.apply({"params": params}, q, m, qpos, mpos)), x) < 1e-5
  grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, q, mem[0], qpos, mpos) * x))(params)
  for block in ("layers_0", "layers_1"):
    for path in (("self_attn", "o"), ("cross_attn", "o"), ("fc2",)):
      g = grads[block]
      for k in path:
        g = g[k]
      assert float(np.abs(g["kernel"]).max()) > 0, (block, path)


def test_recall_weights_are_the_probabilities_the_cross_attention_uses():
  """The sowed `recall_weights` (docs/ablation.md's attention-mass probe) reproduce the
  cross-attention's output through its own v and o projections (float64, one head), give the
  masked memory no weight."""
  import flax.linen as nn
  from hourjax.models.memaug import MemAug
  cfg = MemAugConfig(hidden_size=16, num_heads=1, num_kv_heads=1, depth=1)
  rng = np.random.default_rng(0)
  q = rng.normal(size=(2, 5, 16)).astype(np.float32)
  mem = rng.normal(size=(2, 9, 16)).astype(np.float32)
  qpos, mpos = np.tile(np.arange(5), (2, 1)), np.tile(np.arange(9), (2, 1))
  mask = np.arange(9)[None] < np.array([[9], [6]])
  model = MemAug(cfg)
  params = nn.unbox(model.init(jax.random.key(0), q, mem, qpos, mpos)["params"])
  _, inter = model.apply({"params": params}, q, mem, qpos, mpos, None, mask, capture_intermediates=True,
                         mutable=["intermediates"])
  cross = inter["intermediates"]["layers_0"]["cross_attn"]
  w = np.asarray(cross["recall_weights"][0], np.float64)                     # [B, Lq, M]
  assert np.abs(w[1, :, 6:]).max() == 0 and np.allclose(w.sum(-1), 1, atol=1e-6)
  v = np.asarray(cross["v"]["__call__"][0], np.float64)[:, :, 0]             # [B, M, D]
  o = params["layers_0"]["cross_attn"]["o"]
  ref = np.einsum("bqm,bmd->bqd", w, v) @ np.asarray(o["kernel"], np.float64)[0] + np.asarray(o["bias"])
  assert rel_err(np.asarray(cross["o"]["__call__"][0]), ref) < 1e-5
