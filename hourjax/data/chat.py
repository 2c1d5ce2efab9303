"""The official chat format and label rule (spec §3; official `preprocess_multimodal` and
`preprocess_qwen`): LLaVA conversations -> input ids with the `<image>` placeholder as
IMAGE_TOKEN_INDEX, and labels.

    tok = load_tokenizer("/ckpt/Qwen2-7B-Instruct")     # a Qwen2 / Qwen2.5 tokenizer directory
    turns = with_time_instruction(sample["conversations"], duration=3612.4, num_frames=3612)
    ids, labels = tokenize_conversation(tok, normalise_placeholders(turns), has_image=True)

The real Qwen2 tokenizers have no `<image>` token. As the official code does, a visual sample is
tokenized by a copy of the tokenizer to which `<image>` was added as a special token (a
tokenizer that already holds one, as transformers' LLaVA-OneVision processors do, keeps its
own); text-only samples use the tokenizer unchanged. ChatML with a minimal template:
`<|im_start|>{role}\n{content}<|im_end|>\n` per message, the system message first, each message
encoded on its own and concatenated. System and user turns are labelled -100, assistant turns
(header and `<|im_end|>\n` included) with their ids; then every `\n`, `<|im_start|>` and
`<|im_end|>` token is labelled with its own id everywhere (`label_separators=False` turns that
off). Those labelled separators are also why they are not MemAug query tokens.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import re
from typing import Any, Sequence

import numpy as np

from hourjax.constants import IGNORE_INDEX, IMAGE, IMAGE_TOKEN_INDEX

SYSTEM = "You are a helpful assistant."
ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant", "system": "system"}
IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
# Qwen2-Instruct's own chat template (what `apply_chat_template` renders; hourjax encodes the
# official minimal per-message form itself).
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@dataclasses.dataclass(frozen=True, eq=False)
class ChatTokenizer:
  """A Qwen2-family tokenizer in the terms of the official preprocessing.

  `text` is the tokenizer as loaded (text-only samples, decoding); `visual` its copy with
  `<image>` as a special token, whose id is `image_id` (replaced by IMAGE_TOKEN_INDEX); when the
  tokenizer has its own `<image>` both are the same object, and, as in the official code, the
  placeholder is then replaced in text-only samples too.
  `stop_ids`: generation ends at `<|im_end|>` or `<|endoftext|>`; `end_of_text` (`<|endoftext|>`,
  else `<|im_end|>`) ends each document of packed long text.
  """
  path: str
  text: Any
  visual: Any
  image_id: int
  im_start: int
  im_end: int
  newline: int
  stop_ids: tuple[int, ...]

  @property
  def end_of_text(self) -> int:
    return self.stop_ids[-1]

  def encode(self, text: str, visual: bool = False) -> list[int]:
    return (self.visual if visual else self.text).encode(text, add_special_tokens=False)

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    return self.visual.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def __len__(self) -> int:
    return len(self.visual)

  def check_vocab(self, vocab_size: int) -> None:
    """Every id the tokenizer gives (`<image>` aside: it never reaches the embedding) must exist
    in the model's vocabulary; an id past it would read garbage, silently."""
    if len(self.text) > vocab_size:
      raise ValueError(f"tokenizer {self.path} has {len(self.text)} tokens but the model's vocabulary has "
                       f"{vocab_size}: is this the model's tokenizer?")

  def template_ids(self) -> tuple[int, ...]:
    """Ids of the chat template's own tokens (`<|im_start|>`, `<|im_end|>`, newline, the
    assistant header), which the official labels supervise but which say nothing about answers."""
    return tuple(sorted(set(self.encode(f"{IM_START}assistant\n{IM_END}\n"))))


def from_hf(tokenizer: Any, path: str = "") -> ChatTokenizer:
  """Wrap a loaded HF tokenizer; errors name what makes it unusable for the official format."""
  name = path or getattr(tokenizer, "name_or_path", "") or "the tokenizer"
  ids = {}
  for t in (IM_START, IM_END):
    i = tokenizer.convert_tokens_to_ids(t)
    if i is None or i == tokenizer.unk_token_id or tokenizer.encode(t, add_special_tokens=False) != [i]:
      raise ValueError(f"tokenizer {name}: {t} is not one token; hourjax needs a Qwen2-style ChatML "
                       "tokenizer (<|im_start|>, <|im_end|>)")
    ids[t] = i
  newline = tokenizer.encode("\n", add_special_tokens=False)
  if len(newline) != 1:
    raise ValueError(f"tokenizer {name}: a newline encodes as {newline}, not one token")
  own = tokenizer.convert_tokens_to_ids(IMAGE)
  if own is not None and own != tokenizer.unk_token_id and own in tokenizer.encode(IMAGE, add_special_tokens=False):
    visual = tokenizer                 # it has its own <image> (LLaVA-OneVision processors add one)
  else:
    visual = copy.deepcopy(tokenizer)  # the official preprocess_qwen adds <image> to a copy
    visual.add_tokens([IMAGE], special_tokens=True)
  image_id = visual.convert_tokens_to_ids(IMAGE)
  probe = visual.encode(f"{IM_START}user\nabc{IMAGE}\nQ {IMAGE}{IM_END}\n", add_special_tokens=False)
  if image_id is None or probe.count(image_id) != 2:
    raise ValueError(f"tokenizer {name}: {IMAGE} does not encode as exactly one token per placeholder "
                     f"even after adding it as a special token (got {probe})")
  stops = [ids[IM_END]] + [i for i in [tokenizer.convert_tokens_to_ids(END_OF_TEXT)]
                           if i is not None and i != tokenizer.unk_token_id]
  return ChatTokenizer(name, tokenizer, visual, image_id, ids[IM_START], ids[IM_END], newline[0], tuple(stops))


@functools.lru_cache(maxsize=8)
def load_tokenizer(path: str) -> ChatTokenizer:
  """A local HF tokenizer directory (the real Qwen2 / Qwen2.5 one, or the demo's small BPE),
  checked once: a tokenizer that cannot give the official format fails here, naming why."""
  import os
  try:
    if os.path.exists(os.path.join(path, "tokenizer.json")):
      # The tokenizers-backed class reads tokenizer.json and tokenizer_config.json as the
      # architecture's class does, without AutoTokenizer importing torch (seconds per process).
      from transformers import PreTrainedTokenizerFast
      hf = PreTrainedTokenizerFast.from_pretrained(path)
    else:
      import transformers
      hf = transformers.AutoTokenizer.from_pretrained(path)
  except (OSError, ValueError) as e:
    raise ValueError(f"tokenizer {path}: cannot load it ({str(e).splitlines()[0]})") from None
  return from_hf(hf, path)


def with_time_instruction(conversations: Sequence[dict], duration: float, num_frames: int) -> list[dict]:
  """Stages 2-3 for videos, as the official streaming loader does before `preprocess_multimodal`:
  the first message becomes `<image>\\n{TI}\\n{message with every "<image>" removed}`."""
  ti = (f"The video lasts for {duration:.2f} seconds, and {num_frames} frames are uniformly sampled "
        "from it. Please answer the following questions related to this video.")
  out = [dict(t) for t in conversations]
  if out:
    key = _value_key(out[0])
    out[0][key] = f"{IMAGE}\n{ti}\n{out[0][key].replace(IMAGE, '')}"
  return out


def normalise_placeholders(conversations: Sequence[dict]) -> list[dict]:
  """The official `preprocess_multimodal`: a message with exactly one `<image>` not at its start
  gets it moved there (`<image>\\n` + the rest, stripped); a known noise tag is removed."""
  out = []
  for turn in conversations:
    key = _value_key(turn)
    value = turn[key]
    if len(re.findall(IMAGE, value)) == 1 and not value.startswith(IMAGE):
      value = (IMAGE + "\n" + value.replace(IMAGE, "").strip()).strip()
    out.append({**turn, key: value.replace("QA_GT_caption_based_noisy", "")})
  return out


def _value_key(turn: dict) -> str:
  return "value" if "value" in turn else "content"


def turn_text(turn: dict) -> str:
  return turn[_value_key(turn)]


def with_placeholder(conversations: Sequence[dict]) -> list[dict]:
  """`<image>\n` before the first message (the official image sharding, for records without one)."""
  out = [dict(t) for t in conversations]
  out[0][_value_key(out[0])] = f"{IMAGE}\n{turn_text(out[0])}"
  return out


def tokenize_conversation(tokenizer: ChatTokenizer, conversations: Sequence[dict], *, has_image: bool,
                          system: str = SYSTEM, label_separators: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """(input_ids, labels) int32 [L]. With `has_image` the `<image>` token becomes
  IMAGE_TOKEN_INDEX (label -100); turns are {"from", "value"} (LLaVA) or {"role", "content"}."""
  turns = list(conversations)
  if turns and turns[0].get("from", turns[0].get("role")) in ("gpt", "assistant"):
    turns = turns[1:]                  # the official code drops a leading answer
  messages = [("system", system)]
  for t in turns:
    role = t.get("from", t.get("role"))
    if role not in ROLES:
      raise ValueError(f"conversation turn from {role!r}: expected one of {sorted(ROLES)}")
    messages.append((ROLES[role], t[_value_key(t)]))
  ids, labels = [], []
  for role, content in messages:
    piece = tokenizer.encode(f"{IM_START}{role}\n{content}{IM_END}\n", visual=has_image)
    ids += piece
    labels += piece if role == "assistant" else [IGNORE_INDEX] * len(piece)
  ids, labels = np.asarray(ids, np.int32), np.asarray(labels, np.int32)
  if label_separators:
    is_sep = np.isin(ids, [tokenizer.newline, tokenizer.im_start, tokenizer.im_end])
    labels = np.where(is_sep, ids, labels)
  if has_image or tokenizer.text is tokenizer.visual:
    placeholder = ids == tokenizer.image_id
    ids = np.where(placeholder, IMAGE_TOKEN_INDEX, ids)
    labels = np.where(placeholder, IGNORE_INDEX, labels)
  return ids.astype(np.int32), labels.astype(np.int32)


def generation_prompt(tokenizer: ChatTokenizer, turns: Sequence[dict], *, has_image: bool = True,
                      system: str = SYSTEM) -> np.ndarray:
  """A conversation ending in a user turn, plus the assistant header: what generation continues."""
  ids, _ = tokenize_conversation(tokenizer, turns, has_image=has_image, system=system)
  return np.concatenate([ids, np.asarray(tokenizer.encode(f"{IM_START}assistant\n", visual=has_image), np.int32)])


def render_prompt(tokenizer: ChatTokenizer, ids: Sequence[int], visual_tokens: int) -> str:
  """The prompt as text with the placeholder shown as `<image: N visual tokens>`: where the LLM
  reads the video."""
  ids = list(np.asarray(ids).tolist())
  parts, start = [], 0
  for i, t in enumerate(ids + [IMAGE_TOKEN_INDEX]):
    if t == IMAGE_TOKEN_INDEX:
      parts.append(tokenizer.decode(ids[start:i], skip_special_tokens=False))
      start = i + 1
  return f"<image: {visual_tokens} visual tokens>".join(parts)
