"""The official chat format and label rule (spec §3): LLaVA conversations -> input ids with the
`<image>` placeholder as IMAGE_TOKEN_INDEX, and labels.

    tok = load_tokenizer("/ckpt/Qwen2-7B-Instruct")      # any directory with a HF tokenizer
    turns = with_time_instruction(sample["conversations"], duration=3612.4, num_frames=3612)
    ids, labels = tokenize_conversation(tok, turns)

ChatML with a minimal template: `<|im_start|>{role}\n{content}<|im_end|>\n` per message, the
system message first, each message encoded on its own and concatenated. System and user turns
are labelled -100, assistant turns (header and `<|im_end|>\n` included) with their ids; then,
as the official code does, every `\n`, `<|im_start|>` and `<|im_end|>` token is labelled with
its own id everywhere (`label_separators=False` turns that off). Those labelled separators are
also why they are not MemAug query tokens.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from hourjax.models.hour_llava import IMAGE_TOKEN_INDEX
from hourjax.ops.loss import IGNORE_INDEX

IMAGE = "<image>"
SYSTEM = "You are a helpful assistant."
ROLES = {"human": "user", "gpt": "assistant"}


def load_tokenizer(path: str) -> Any:
  """A local HF tokenizer directory (the real Qwen2 one, or the tests' small BPE)."""
  import transformers
  return transformers.AutoTokenizer.from_pretrained(path)


def template_ids(tokenizer: Any) -> tuple[int, ...]:
  """Ids of the chat template's own tokens (`<|im_start|>`, `<|im_end|>`, newline, the
  assistant header), which the official labels supervise but which say nothing about answers."""
  ids = tokenizer.encode("<|im_start|>assistant\n<|im_end|>\n", add_special_tokens=False)
  return tuple(sorted(set(int(i) for i in ids)))


def move_placeholder_to_front(conversations: Sequence[dict]) -> list[dict]:
  """A message with exactly one `<image>` not at its start gets it moved: `<image>\\n` + rest."""
  out = []
  for turn in conversations:
    value = turn["value"]
    if value.count(IMAGE) == 1 and not value.startswith(IMAGE):
      value = IMAGE + "\n" + value.replace(IMAGE, "").strip()
    out.append({**turn, "value": value})
  return out


def with_time_instruction(conversations: Sequence[dict], duration: float, num_frames: int) -> list[dict]:
  """Stages 2-3 for videos: the first human message becomes `<image>\\n{TI}\\n{message without
  <image>}`, TI as in the official streaming dataset."""
  ti = (f"The video lasts for {duration:.2f} seconds, and {num_frames} frames are uniformly sampled "
        "from it. Please answer the following questions related to this video.")
  out = [dict(t) for t in conversations]
  for turn in out:
    if turn["from"] == "human":
      turn["value"] = f"{IMAGE}\n{ti}\n{turn['value'].replace(IMAGE, '')}"
      break
  return out


def tokenize_conversation(tokenizer: Any, conversations: Sequence[dict], *, system: str = SYSTEM,
                          label_separators: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """(input_ids, labels) int32 [L]; `<image>` becomes IMAGE_TOKEN_INDEX (label -100)."""
  turns = list(conversations)
  if turns and turns[0]["from"] == "gpt":    # the official code drops a leading answer
    turns = turns[1:]
  for t in turns:
    if t["from"] not in ROLES:
      raise ValueError(f"conversation turn from {t['from']!r}: expected 'human' or 'gpt'")
  image_id = tokenizer.convert_tokens_to_ids(IMAGE)
  ids, labels = [], []
  for role, content in [("system", system)] + [(ROLES[t["from"]], t["value"]) for t in turns]:
    piece = tokenizer.encode(f"<|im_start|>{role}\n{content}<|im_end|>\n", add_special_tokens=False)
    ids += piece
    labels += piece if role == "assistant" else [IGNORE_INDEX] * len(piece)
  ids, labels = np.asarray(ids, np.int32), np.asarray(labels, np.int32)
  if label_separators:
    separators = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>")]
    separators += tokenizer.encode("\n", add_special_tokens=False)
    is_sep = np.isin(ids, separators)
    labels = np.where(is_sep, ids, labels)
  placeholder = ids == image_id
  ids = np.where(placeholder, IMAGE_TOKEN_INDEX, ids)
  labels = np.where(placeholder, IGNORE_INDEX, labels)
  return ids.astype(np.int32), labels.astype(np.int32)
