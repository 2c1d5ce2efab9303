"""Greedy answers from Hour-LLaVA: the prompt in the official chat format, the video as the
memory, one token at a time until `<|im_end|>`.

Each step re-runs the forward on a fixed-size padded prompt (one compiled program), which is
what a tiny model on a CPU needs; cached decoding for real models belongs to the inference
module.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hourjax.data import chat
from hourjax.data.batching import Buckets, collate
from hourjax.models.hour_llava import HourLlavaConfig


def prompt_ids(tokenizer: Any, question: str, duration: float | None = None, num_frames: int = 0) -> np.ndarray:
  """System + user turn (with `<image>` and, given a duration, the time instruction) + the
  assistant header."""
  turns = [{"from": "human", "value": "<image>\n" + question}]
  if duration is not None:
    turns = chat.with_time_instruction(turns, duration, num_frames)
  ids, _ = chat.tokenize_conversation(tokenizer, turns)
  header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
  return np.concatenate([ids, np.asarray(header, np.int32)])


_FORWARD: dict[Any, Any] = {}


def _last_token_logits(model: Any) -> Any:
  """One jitted forward per model (and per batch shape): logits at the last prompt position."""
  if model not in _FORWARD:
    def fn(params, batch):
      out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                        layout=batch["layout"], pixel_values=batch["pixel_values"], rng=jax.random.key(0))
      last = jnp.sum(out["attention_mask"], axis=1) - 1      # the LLM sequence has no padding inside
      return jnp.take_along_axis(out["logits"], last[:, None, None], axis=1)[:, 0]
    _FORWARD[model] = jax.jit(fn)
  return _FORWARD[model]


def greedy_answer(model: Any, params: Any, cfg: HourLlavaConfig, tokenizer: Any, question: str,
                  pixels: np.ndarray, *, duration: float | None = None, max_new_tokens: int = 24,
                  buckets: Buckets = Buckets(frames=(128, 256, 512, 1024, 2048, 3600), text=(256, 1024))) -> str:
  """pixels: uint8 [T, S, S, 3] of one video (1 FPS). Prompts and videos are padded to
  `buckets`, so answering many questions compiles once per bucket."""
  ids = list(prompt_ids(tokenizer, question, duration, len(pixels)))
  end = tokenizer.convert_tokens_to_ids("<|im_end|>")
  forward = _last_token_logits(model)
  new: list[int] = []
  for _ in range(max_new_tokens):
    sample = {"input_ids": np.asarray(ids, np.int32), "labels": np.full(len(ids), -100, np.int32),
              "pixels": pixels}
    token = int(jnp.argmax(forward(params, collate([sample], cfg, buckets))[0]))
    if token == end:
      break
    ids.append(token)
    new.append(token)
  return tokenizer.decode(new, skip_special_tokens=True).strip()
