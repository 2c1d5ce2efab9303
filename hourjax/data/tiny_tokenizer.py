"""A small byte-level BPE with Qwen2's special tokens, trained in milliseconds and saved like a
real tokenizer directory: for the tests and the CPU demo (a real run loads the Qwen2 tokenizer
from its checkpoint directory)."""
from __future__ import annotations

from typing import Sequence

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
CORPUS = ["You are a helpful assistant.", "What colour is the square in the video?",
          "The square is red, then blue.", "How many circles appear?", "Three circles appear.",
          "The video lasts for 12.00 seconds, and 12 frames are uniformly sampled from it.",
          "Please answer the following questions related to this video."] * 20


def save_tiny_tokenizer(path: str, texts: Sequence[str] = (), vocab_size: int = 400) -> str:
  """Trains on a fixed chat corpus plus `texts`; vocab_size must fit the model's vocabulary."""
  import tokenizers
  import transformers
  from tokenizers import decoders, models, pre_tokenizers, trainers
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(CORPUS + list(texts), trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
      additional_special_tokens=["<|im_start|>", "<|im_end|>", "<image>", "<video>"])
  fast.save_pretrained(path)
  return path
