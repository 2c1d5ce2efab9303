"""Structured output: decoding constrained to a JSON schema (OpenAI's `response_format`), so that
even a small model returns JSON that parses and validates.

    grammar = json_grammar({"type": "object", "properties": {...}})    # ValueError: a bad schema
    constraint = Constraint(tokenizer, vocab_size, grammar)
    constraint.fill(bits)              # int32 [ceil(V / 32)]: the tokens allowed next, as bits
    finished = constraint.advance(token)

The grammar engine is llguidance (the one vLLM and SGLang use): it walks the tokenizer's
byte-level tokens against the schema's grammar, so a token is allowed exactly when some
continuation after it is valid for the schema; the end of the answer (a stop token) is allowed
only once the JSON is complete. Whitespace between JSON tokens is not allowed (compact JSON):
with it, a weak model can fill its whole budget with spaces.
"""
from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np

from hourjax.data.chat import ChatTokenizer

# Compact separators and no free whitespace (see above).
_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}


def words(vocab_size: int) -> int:
  """int32 words of a token bitmask over `vocab_size` tokens."""
  return (vocab_size + 31) // 32


@functools.lru_cache(maxsize=4)
def _ll_tokenizer(tokenizer: ChatTokenizer, vocab_size: int) -> Any:
  import llguidance.hf
  # The text tokenizer (without the `<image>` token added for prompts): answers never hold it.
  return llguidance.hf.from_tokenizer(tokenizer.text, n_vocab=vocab_size, eos_token=list(tokenizer.stop_ids))


def json_grammar(schema: dict | None) -> str:
  """The grammar for JSON valid under `schema` (None: any JSON object, OpenAI's `json_object`);
  ValueError naming what is wrong with a schema llguidance cannot compile."""
  import llguidance
  if schema is not None and not isinstance(schema, dict):
    raise ValueError(f"a JSON schema must be an object, not {type(schema).__name__}")
  try:
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        json.dumps({"type": "object"} if schema is None else schema), defaults=_OPTIONS)
  except (ValueError, TypeError) as e:
    raise ValueError(f"invalid JSON schema: {e}") from None
  error = llguidance.LLMatcher.validate_grammar(grammar)
  if error and not error.startswith("WARNING"):
    raise ValueError(f"invalid JSON schema: {' '.join(error.split())[:300]}")
  return grammar


class Constraint:
  """One answer's grammar state: which tokens may come next, advanced token by token."""

  def __init__(self, tokenizer: ChatTokenizer, vocab_size: int, grammar: str):
    import llguidance
    self.matcher = llguidance.LLMatcher(_ll_tokenizer(tokenizer, vocab_size), grammar, log_level=0)
    if self.matcher.is_error():
      raise ValueError(f"invalid JSON schema: {self.matcher.get_error()}")

  def fill(self, bits: np.ndarray) -> None:
    """Write the allowed next tokens into `bits` (int32 [words(V)], C-contiguous), bit t of word
    t // 32 for token t."""
    self.matcher.unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes)

  def advance(self, token: int) -> bool:
    """Consume the chosen token; True when the answer is complete (nothing may follow)."""
    if not self.matcher.consume_token(int(token)):
      raise RuntimeError(f"constrained decoding: token {token} rejected ({self.matcher.get_error()})")
    return self.matcher.is_stopped()
