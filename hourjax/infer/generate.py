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
from hourjax.models.forgetting import video_layout
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


def greedy_answer(model: Any, params: Any, cfg: HourLlavaConfig, tokenizer: Any, question: str,
                  pixels: np.ndarray, *, duration: float | None = None, max_new_tokens: int = 24,
                  text_len: int = 256) -> str:
  """pixels: uint8 [T, S, S, 3] of one video (1 FPS)."""
  ids = list(prompt_ids(tokenizer, question, duration, len(pixels)))
  if len(ids) + max_new_tokens > text_len:
    raise ValueError(f"prompt of {len(ids)} tokens + {max_new_tokens} new ones exceeds text_len={text_len}")
  layout = video_layout([len(pixels)], cfg.forgetting)
  end = tokenizer.convert_tokens_to_ids("<|im_end|>")

  @jax.jit
  def next_token(padded, mask):
    out = model.apply({"params": params}, padded, mask, layout=layout, pixel_values=pixels[None],
                      rng=jax.random.key(0))
    last = jnp.sum(out["attention_mask"][0]) - 1        # the LLM sequence has no padding inside
    return jnp.argmax(out["logits"][0, last])

  new = []
  for _ in range(max_new_tokens):
    padded = np.zeros((1, text_len), np.int32)
    padded[0, :len(ids)] = ids
    mask = (np.arange(text_len) < len(ids)).astype(np.int32)[None]
    token = int(next_token(padded, mask))
    if token == end:
      break
    ids.append(token)
    new.append(token)
  return tokenizer.decode(new, skip_special_tokens=True).strip()
