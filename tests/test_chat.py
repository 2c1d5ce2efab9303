"""The official chat format and labels (spec §3) on a small BPE with Qwen2's special tokens."""
import numpy as np
import pytest

from hourjax.data.chat import (load_tokenizer, move_placeholder_to_front, tokenize_conversation,
                               with_time_instruction)
from hourjax.models.hour_llava import IMAGE_TOKEN_INDEX
from hourjax.data.tiny_tokenizer import save_tiny_tokenizer

CONV = [{"from": "human", "value": "What colour is the square?\n<image>"},
        {"from": "gpt", "value": "The square is red."},
        {"from": "human", "value": "How many circles appear?"},
        {"from": "gpt", "value": "Three circles appear."}]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return load_tokenizer(save_tiny_tokenizer(str(tmp_path_factory.mktemp("tok"))))


def _decode(tok, ids):
  image = tok.convert_tokens_to_ids("<image>")
  return tok.decode(np.where(ids == IMAGE_TOKEN_INDEX, image, ids).tolist())


def test_time_instruction_and_placeholder_text():
  turns = with_time_instruction(move_placeholder_to_front(CONV), duration=12.0, num_frames=12)
  assert turns[0]["value"] == (
      "<image>\nThe video lasts for 12.00 seconds, and 12 frames are uniformly sampled from it. "
      "Please answer the following questions related to this video.\n\nWhat colour is the square?")
  assert turns[1:] == CONV[1:]
  assert move_placeholder_to_front([{"from": "human", "value": "Q <image> ?"}])[0]["value"] == "<image>\nQ  ?"


def test_ids_spell_the_chatml_prompt(tok):
  turns = move_placeholder_to_front(CONV)
  ids, labels = tokenize_conversation(tok, turns)
  assert _decode(tok, ids) == (
      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
      "<|im_start|>user\n<image>\nWhat colour is the square?<|im_end|>\n"
      "<|im_start|>assistant\nThe square is red.<|im_end|>\n"
      "<|im_start|>user\nHow many circles appear?<|im_end|>\n"
      "<|im_start|>assistant\nThree circles appear.<|im_end|>\n")
  assert (ids == IMAGE_TOKEN_INDEX).sum() == 1 and labels[ids == IMAGE_TOKEN_INDEX] == -100


def test_labels_follow_the_official_rule(tok):
  ids, labels = tokenize_conversation(tok, move_placeholder_to_front(CONV))
  sep = {tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>")} | set(
      tok.encode("\n", add_special_tokens=False))
  supervised = tok.decode([i for i, l in zip(ids, labels) if l != -100 and i not in sep])
  assert supervised == "assistant" "The square is red." "assistant" "Three circles appear."
  is_sep = np.isin(ids, list(sep))
  np.testing.assert_array_equal(labels[is_sep], ids[is_sep])          # separators labelled everywhere
  _, plain = tokenize_conversation(tok, move_placeholder_to_front(CONV), label_separators=False)
  first_user_end = len(tok.encode("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                  "<|im_start|>user\n<image>\nWhat colour is the square?<|im_end|>\n",
                                  add_special_tokens=False))
  assert (plain[:first_user_end] == -100).all() and (plain[first_user_end:] != -100).any()


def test_leading_answer_dropped_and_bad_role_refused(tok):
  a, _ = tokenize_conversation(tok, [{"from": "gpt", "value": "stray"}] + CONV)
  b, _ = tokenize_conversation(tok, CONV)
  np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="'robot'"):
    tokenize_conversation(tok, [{"from": "robot", "value": "hi"}])
