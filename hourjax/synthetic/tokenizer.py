"""A small byte-level BPE that behaves like Qwen2's tokenizer (the same special tokens, eos, pad and
chat template; no `<image>` token: the chat code adds it, as for the real one), trained in
milliseconds and saved like a real tokenizer directory: for the CPU demo and tests whose point is
a tiny vocabulary. Everything that tokenizes for the video path is also tested with the real
Qwen2 vocabulary (tools/qwen_tokenizer.py)."""
from __future__ import annotations

from typing import Sequence

from hourjax.data.chat import QWEN2_CHAT_TEMPLATE

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["You are a helpful assistant.", "What colour is the square in the video?",
          "The square is red, then blue.", "How many circles appear?", "Three circles appear.",
          "The video lasts for 12.00 seconds, and 12 frames are uniformly sampled from it.",
          "Please answer the following questions related to this video."] * 20


def save_tiny_tokenizer(path: str, texts: Sequence[str] = (), vocab_size: int = 400) -> str:
  """Trains on a fixed chat corpus plus `texts`; vocab_size must fit the model's vocabulary.

  Ids are laid out as Qwen2's: the 256 byte tokens first in byte-level order (so a newline is
  198, the id the official label rule names), then the learned merges, then the special tokens.
  """
  import json
  import tokenizers
  import transformers
  from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
  from transformers.convert_slow_tokenizer import bytes_to_unicode
  trained = tokenizers.Tokenizer(models.BPE())
  trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  trained.train_from_iterator(CORPUS + list(texts), trainers.BpeTrainer(
      vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  model = json.loads(trained.to_str())["model"]
  bytes_first = list(bytes_to_unicode().values())
  learned = sorted((t for t in model["vocab"] if t not in set(bytes_first)), key=model["vocab"].get)
  vocab = {t: i for i, t in enumerate(bytes_first + learned)}
  merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
  tok = tokenizers.Tokenizer(models.BPE(vocab, merges))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
      additional_special_tokens=["<|im_start|>", "<|im_end|>"], chat_template=QWEN2_CHAT_TEMPLATE)
  fast.save_pretrained(path)
  return path
