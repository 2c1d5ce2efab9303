"""Answers from Hour-LLaVA: prefill the KV cache with the prompt (video memory -> decayed queries
-> MemAug -> LLM), then decode one token per step in a `lax.while_loop`, greedy or sampled
(temperature, top-p), until every prompt of the batch has produced a stop token (`<|im_end|>` or
`<|endoftext|>`, `ChatTokenizer.stop_ids`).

    batch = collate([sample, ...], cfg, buckets)          # prompts of any lengths, right-padded
    tokens, n = generate(model, params, batch, jax.random.key(0), Sampling(max_new_tokens=64),
                         tokenizer.stop_ids)

One compiled program per (bucket, Sampling). Random forgetting (the official default) makes an
answer depend on the key; a fixed key, or `forgetting.spatial="uniform"`, makes it reproducible.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hourjax.constants import IMAGE
from hourjax.data import chat
from hourjax.data.chat import ChatTokenizer
from hourjax.data.batching import Buckets, collate
from hourjax.models.hour_llava import HourLlavaConfig


@dataclasses.dataclass(frozen=True)
class Sampling:
  temperature: float = 0.0      # 0: greedy
  top_p: float = 1.0            # nucleus: the smallest set of tokens holding this probability
  max_new_tokens: int = 64


def nucleus(logits: jax.Array, top_p: jax.Array | float) -> jax.Array:
  """logits [B, V] with every token outside the nucleus (the smallest set of tokens holding
  `top_p` of the probability, per row when top_p is [B, 1]) at -inf; the top token always stays."""
  order = jnp.argsort(-logits, -1)
  sorted_logits = jnp.take_along_axis(logits, order, -1)
  probs = jax.nn.softmax(sorted_logits, -1)
  before = jnp.cumsum(probs, -1) - probs            # mass of the tokens ranked above
  sorted_logits = jnp.where(before < top_p, sorted_logits, -jnp.inf)
  return jnp.full_like(logits, -jnp.inf).at[jnp.arange(logits.shape[0])[:, None], order].set(sorted_logits)


def sample_token(logits: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
  """logits [B, V] -> tokens [B]."""
  if sampling.temperature == 0:
    return jnp.argmax(logits, -1)
  logits = logits / sampling.temperature
  if sampling.top_p < 1:
    logits = nucleus(logits, sampling.top_p)
  return jax.random.categorical(key, logits, -1)


def sample_rows(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_p: jax.Array,
                allowed: jax.Array | None = None) -> jax.Array:
  """Each row with its own settings (a server's batch of requests): logits [B, V], keys [B],
  temperature / top_p [B] (temperature 0: greedy), `allowed` [B, V] bool (constrained decoding:
  only these tokens) -> tokens [B]."""
  if allowed is not None:
    logits = jnp.where(allowed, logits, -jnp.inf)
  greedy = jnp.argmax(logits, -1)
  scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
  scaled = jax.lax.cond(jnp.any(top_p < 1), lambda x: nucleus(x, top_p[:, None]), lambda x: x, scaled)
  sampled = jax.vmap(lambda k, x: jax.random.categorical(k, x))(keys, scaled)
  return jnp.where(temperature > 0, sampled, greedy)


_PROGRAMS: dict[Any, Any] = {}


def _program(model: Any, sampling: Sampling, stop_ids: tuple[int, ...], on_token: Any) -> Any:
  key = (model, sampling, stop_ids, on_token)
  if key in _PROGRAMS:
    return _PROGRAMS[key]

  def run(params, batch, rng):
    forget_key, sample_key = jax.random.split(rng)
    inputs = dict(batch.model_inputs(), rng=forget_key)
    out_len = jax.eval_shape(lambda: model.apply({"params": params}, batch.input_ids, batch.attention_mask,
                                                 **inputs)["attention_mask"]).shape[1]
    pre = model.apply({"params": params}, batch.input_ids, batch.attention_mask, **inputs,
                      cache_len=out_len + sampling.max_new_tokens)
    b, n = pre["lengths"].shape[0], sampling.max_new_tokens
    stops, end_id = jnp.asarray(stop_ids, jnp.int32), stop_ids[0]
    state = (jnp.zeros((), jnp.int32), jnp.full((b, n), end_id, jnp.int32), jnp.zeros((b,), bool),
             pre["last_logits"], pre["cache"], pre["lengths"])

    def step(state):
      i, tokens, done, logits, cache, positions = state
      token = jnp.where(done, end_id, sample_token(logits, jax.random.fold_in(sample_key, i), sampling))
      tokens = tokens.at[:, i].set(token)
      if on_token is not None:          # streaming: the host sees each token as it is chosen
        jax.debug.callback(on_token, token, done, ordered=True)
      done = done | jnp.isin(token, stops)
      logits, cache = model.apply({"params": params}, token, positions, cache, method="decode_step")
      return i + 1, tokens, done, logits, cache, positions + 1

    _, tokens, done, *_ = jax.lax.while_loop(lambda s: (s[0] < n) & ~jnp.all(s[2]), step, state)
    lengths = jnp.argmax(jnp.concatenate([jnp.isin(tokens, stops), jnp.ones((b, 1), bool)], 1), 1)
    return tokens, lengths

  _PROGRAMS[key] = jax.jit(run)
  return _PROGRAMS[key]


def generate(model: Any, params: Any, batch: Any, rng: jax.Array, sampling: Sampling,
             stop_ids: int | Sequence[int], on_token: Any = None) -> tuple[np.ndarray, np.ndarray]:
  """A collated batch of prompts (a VideoBatch, ImageBatch or TextBatch; labels unused) ->
  (tokens [B, max_new_tokens], how many of them precede the first stop token per prompt).
  `on_token(tokens [B], finished [B])` is called on the host after every decoding step."""
  stops = (int(stop_ids),) if isinstance(stop_ids, (int, np.integer)) else tuple(int(i) for i in stop_ids)
  tokens, lengths = _program(model, sampling, stops, on_token)(params, batch, rng)
  return np.asarray(tokens), np.asarray(lengths)


def prompt_ids(tokenizer: ChatTokenizer, question: str, duration: float | None = None,
               num_frames: int = 0) -> np.ndarray:
  """The system message, one user turn about a video and the assistant header, formed as training
  forms a record `"<image>\nquestion"`: with a duration, the time instruction goes first."""
  turns = [{"from": "human", "value": question if IMAGE in question else f"{IMAGE}\n{question}"}]
  if duration is not None:
    turns = chat.with_time_instruction(turns, duration, num_frames)
  return chat.generation_prompt(tokenizer, chat.normalise_placeholders(turns))


def answer(model: Any, params: Any, cfg: HourLlavaConfig, tokenizer: ChatTokenizer, question: str,
           pixels: np.ndarray, *, duration: float | None = None, sampling: Sampling = Sampling(max_new_tokens=24),
           buckets: Buckets = Buckets(frames=(128, 256, 512, 1024, 2048, 3600), text=(256, 1024)),
           rng: jax.Array | None = None) -> str:
  """One question about one video (uint8 frames [T, S, S, 3] at 1 FPS) -> the answer text."""
  ids = prompt_ids(tokenizer, question, duration, len(pixels))
  sample = {"input_ids": ids, "labels": np.full(len(ids), -100, np.int32), "pixels": pixels}
  tokens, n = generate(model, params, collate([sample], cfg, buckets), jax.random.key(0) if rng is None else rng,
                       sampling, tokenizer.stop_ids)
  return tokenizer.decode(tokens[0, :n[0]].tolist()).strip()
