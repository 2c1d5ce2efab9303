"""KV-cached generation equals recomputing the whole forward for every new token, for a batch
of prompts of different lengths and videos of different lengths; sampling keeps to the nucleus."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from hourjax.data.batching import Buckets, collate
from hourjax.infer.generate import Sampling, generate, sample_token
from hourjax.models import build
from hourjax.constants import IMAGE_TOKEN_INDEX
from conftest import tiny_model

CFG = tiny_model()
CFG = dataclasses.replace(CFG, forgetting=dataclasses.replace(CFG.forgetting, spatial="uniform"))
BUCKETS = Buckets(frames=(32,), text=(48,))


def _prompts(rng):
  out = []
  for text, frames in ((13, 20), (21, 31)):
    ids = rng.integers(1, CFG.llm.vocab_size, text).astype(np.int32)
    ids[3] = IMAGE_TOKEN_INDEX
    out.append({"input_ids": ids, "labels": np.full(text, -100, np.int32),
                "pixels": rng.integers(0, 256, (frames, 112, 112, 3), np.uint8)})
  return out


def test_cached_generation_equals_full_recompute():
  model, params = build.build("hour_llava", CFG), build.init_params("hour_llava", CFG, jax.random.key(0))
  prompts = _prompts(np.random.default_rng(0))
  end_id, n = 7, 6
  tokens, lengths = generate(model, params, collate(prompts, CFG, BUCKETS), jax.random.key(1),
                             Sampling(max_new_tokens=n), end_id)

  # MemAug reads the question once, at prefill (as the official generate does): in the full
  # recompute the generated tokens are labelled, so that they stay out of its query.
  @jax.jit
  def last_logits(batch):
    out = model.apply({"params": params}, batch.input_ids, batch.attention_mask, batch.labels,
                      layout=batch.layout, pixels=batch.pixels)
    last = jnp.sum(out["attention_mask"], 1) - 1
    return jnp.take_along_axis(out["logits"], last[:, None, None], 1)[:, 0]

  for i, p in enumerate(prompts):
    ids = list(p["input_ids"])
    expected = []
    for _ in range(n):
      labels = np.concatenate([p["labels"], np.asarray(ids[len(p["input_ids"]):], np.int32)])
      sample = {**p, "input_ids": np.asarray(ids, np.int32), "labels": labels}
      token = int(jnp.argmax(last_logits(collate([sample], CFG, BUCKETS))[0]))
      expected.append(token)
      if token == end_id:
        break
      ids.append(token)
    got = tokens[i, :len(expected)].tolist()
    assert got == expected, (i, got, expected)
    assert lengths[i] == (expected.index(end_id) if end_id in expected else n)


def test_generation_stops_at_any_stop_token():
  """Qwen2's answers end at <|im_end|> or <|endoftext|>: any of the stop ids ends a prompt, and
  what it produced before stays the same."""
  model, params = build.build("hour_llava", CFG), build.init_params("hour_llava", CFG, jax.random.key(0))
  batch = collate(_prompts(np.random.default_rng(0)), CFG, BUCKETS)
  never = CFG.llm.vocab_size - 1
  free, _ = generate(model, params, batch, jax.random.key(1), Sampling(max_new_tokens=6), (never,))
  assert never not in free
  second = int(free[0, 2])             # the third token of the first answer becomes a second stop id
  tokens, lengths = generate(model, params, batch, jax.random.key(1), Sampling(max_new_tokens=6), (never, second))
  first = free[0].tolist().index(second)
  assert lengths[0] == first and tokens[0, :first].tolist() == free[0, :first].tolist()
  assert (tokens[0, first + 1:] == never).all()     # padded with the first stop id after the end


def test_sampling_keeps_to_the_nucleus():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  draws = jnp.stack([sample_token(logits, jax.random.key(i), Sampling(temperature=1.0, top_p=0.7))
                     for i in range(200)])
  assert set(np.unique(np.asarray(draws)).tolist()) == {0, 1}        # 0.5 + 0.3 >= 0.7
  assert int(sample_token(logits, jax.random.key(0), Sampling(temperature=1.0, top_p=1e-6))[0]) == 0
  full = np.asarray(jnp.stack([sample_token(logits, jax.random.key(i), Sampling(temperature=1.0))
                               for i in range(400)]))
  assert set(np.unique(full).tolist()) == {0, 1, 2, 3} and abs((full == 0).mean() - 0.5) < 0.1


def test_ask_streams_the_answer(tmp_path, capsys):
  """launch.ask on a video file prints, token by token, what generation returns for the same
  chunk-encoded features."""
  from hourjax.convert.io import save_params
  from hourjax.data import chat, video
  from hourjax.synthetic.tokenizer import save_tiny_tokenizer
  from hourjax.infer.encode import video_features
  from hourjax.infer.generate import prompt_ids
  from launch import ask
  params = build.init_params("hour_llava", CFG, jax.random.key(3))
  save_params(str(tmp_path / "ckpt"), params, "hour_llava", CFG)
  tok_dir = save_tiny_tokenizer(str(tmp_path / "tok"))
  path = str(tmp_path / "v.mp4")
  video.write_video(path, video.moving_square(30, fps=4, size=64), fps=4)
  question = "What colour is the square in the video?"
  assert ask.main(["--params", str(tmp_path / "ckpt"), "--tokenizer", tok_dir, "--video", path, "--question",
                   question, "--max-new-tokens", "10", "--chunk", "8", "--min-frames", "16",
                   "--deterministic"]) == 0
  printed = capsys.readouterr().out.split("A: ", 1)[1][:-1]       # the final print() adds one newline
  # The same answer from whole-video encoding (chunking must not change the features).
  model, tok = build.build("hour_llava", CFG), chat.load_tokenizer(tok_dir)
  info = video.probe(path)
  idx = video.official_frame_indices(info.frames, info.fps, min_frames=16)
  feats = video_features(model, params, path, idx, 112, chunk=len(idx))
  assert np.allclose(feats, video_features(model, params, path, idx, 112, chunk=8), atol=1e-5)
  ids = prompt_ids(tok, question, info.duration, len(idx))
  batch = collate([{"input_ids": ids, "labels": np.full(len(ids), -100, np.int32), "features": feats}], CFG,
                  Buckets(frames=(len(idx),), text=(-(-len(ids) // 64) * 64,)))
  tokens, n = generate(model, params, batch, jax.random.key(0), Sampling(max_new_tokens=10), tok.stop_ids)
  assert printed == "".join(tok.decode([t]) for t in tokens[0, :n[0]]) and n[0] > 0
