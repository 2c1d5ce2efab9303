"""The official chat format and labels (spec §3) on the real Qwen2 / Qwen2.5 vocabularies, on a
tokenizer that has its own `<image>`, on the official fixture's vocabulary, and on the demo's
tiny BPE: all through the same code, compared with an independent re-implementation of the
official preprocessing (tests/official_preprocess.py)."""
import functools
import json

import numpy as np
import pytest
import transformers

import official_preprocess as official
from hourjax.constants import IMAGE_TOKEN_INDEX
from hourjax.data import chat
from hourjax.synthetic.tokenizer import save_tiny_tokenizer

# Single- and multi-turn, the placeholder at the start / middle / end / absent, non-ASCII text,
# a leading answer, blank lines.
CONVERSATIONS = [
    [{"from": "human", "value": "<image>\nWhat is the person doing?"}, {"from": "gpt", "value": "Cooking pasta."}],
    [{"from": "human", "value": "What colour is the square?\n<image>"}, {"from": "gpt", "value": "Red."},
     {"from": "human", "value": "How many circles appear?"}, {"from": "gpt", "value": "Three circles."},
     {"from": "human", "value": "And then?"}, {"from": "gpt", "value": "They leave.\n\nThe end."}],
    [{"from": "human", "value": "Describe <image> the scene in detail."},
     {"from": "gpt", "value": "A street at night."}],
    [{"from": "human", "value": "视频里的人在做什么？<image>"}, {"from": "gpt", "value": "他在做饭 🍝, très bien."}],
    [{"from": "gpt", "value": "a stray answer"}, {"from": "human", "value": "<image>\nQ1 don't?"},
     {"from": "gpt", "value": "A1"}],
    [{"from": "human", "value": "No placeholder here, 1234 numbers."}, {"from": "gpt", "value": "Fine.  Two  spaces"}],
]


def _with_own_image_token(qwen2_dir, tmp_path_factory):
  """A Qwen2 tokenizer that ships `<image>` and `<video>`, as transformers' LLaVA-OneVision processors do."""
  tok = transformers.AutoTokenizer.from_pretrained(qwen2_dir)
  tok.add_tokens(["<image>", "<video>"], special_tokens=True)
  out = str(tmp_path_factory.mktemp("ov_tok"))
  tok.save_pretrained(out)
  cfg = json.load(open(f"{out}/tokenizer_config.json"))
  cfg["additional_special_tokens"] = ["<|im_start|>", "<|im_end|>"]
  json.dump(cfg, open(f"{out}/tokenizer_config.json", "w"))
  return out


@pytest.fixture(scope="module", params=["qwen2", "qwen2.5", "own_image", "tiny"])
def tokenizer_dir(request, qwen2_tokenizer, qwen25_tokenizer, tmp_path_factory):
  if request.param == "qwen2":
    return qwen2_tokenizer
  if request.param == "qwen2.5":
    return qwen25_tokenizer
  if request.param == "own_image":
    return _with_own_image_token(qwen2_tokenizer, tmp_path_factory)
  return save_tiny_tokenizer(str(tmp_path_factory.mktemp("tiny")))


@functools.lru_cache(maxsize=None)
def _hf(tokenizer_dir):
  return transformers.AutoTokenizer.from_pretrained(tokenizer_dir)


def _official(tokenizer_dir, conv, has_image, duration=None):
  if duration is not None:
    conv = official.time_instruction(conv, duration, 37)
  if has_image:
    conv = official.preprocess_multimodal(conv)
  return official.preprocess_qwen(conv, _hf(tokenizer_dir), tokenizer_dir, has_image)


def _ours(tok, conv, has_image, duration=None):
  if duration is not None:
    conv = chat.with_time_instruction(conv, duration, 37)
  if has_image:
    conv = chat.normalise_placeholders(conv)
  return chat.tokenize_conversation(tok, conv, has_image=has_image)


@pytest.mark.parametrize("duration", [None, 3612.456], ids=["no_time", "time_instruction"])
def test_ids_and_labels_equal_the_official_preprocessing(tokenizer_dir, duration):
  tok = chat.load_tokenizer(tokenizer_dir)
  for conv in CONVERSATIONS:
    for has_image in (True, False):
      if duration is not None and not has_image:
        continue
      ids, labels = _ours(tok, conv, has_image, duration)
      want_ids, want_labels = _official(tokenizer_dir, conv, has_image, duration)
      assert ids.tolist() == want_ids, (conv, has_image)
      assert labels.tolist() == want_labels, (conv, has_image)


def test_real_qwen2_ids(qwen2_tokenizer, qwen25_tokenizer):
  """Known Qwen2 facts: ids of text and specials, `<image>` added after the specials."""
  tok = chat.load_tokenizer(qwen2_tokenizer)
  assert tok.encode("Hello world") == [9707, 1879] and tok.encode("\n") == [198] and tok.encode("\n\n") == [271]
  assert (tok.im_start, tok.im_end, tok.stop_ids, tok.image_id) == (151644, 151645, (151645, 151643), 151646)
  assert chat.load_tokenizer(qwen25_tokenizer).image_id == 151665
  ids, labels = chat.tokenize_conversation(tok, chat.normalise_placeholders(CONVERSATIONS[0]), has_image=True)
  # <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>...
  assert ids[:15].tolist() == [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198,
                               IMAGE_TOKEN_INDEX]
  assert (ids == IMAGE_TOKEN_INDEX).sum() == 1 and labels[14] == -100


def test_time_instruction_goes_in_before_the_placeholder_moves():
  """Official order: the loader's time instruction first, then preprocess_multimodal."""
  ti = ("The video lasts for 12.00 seconds, and 12 frames are uniformly sampled from it. "
        "Please answer the following questions related to this video.")
  for value, want in [("Q\n<image>", f"<image>\n{ti}\nQ\n"), ("<image>\nQ", f"<image>\n{ti}\n\nQ"),
                      ("Q", f"<image>\n{ti}\nQ")]:
    turns = chat.normalise_placeholders(chat.with_time_instruction([{"from": "human", "value": value}], 12.0, 12))
    assert turns[0]["value"] == want
  assert chat.normalise_placeholders([{"from": "human", "value": "Q <image> ?"}])[0]["value"] == "<image>\nQ  ?"


def test_fixture_conversation_gives_the_fixture_ids_and_labels(fixture_path):
  """The official end-to-end fixture's own conversation, on its own vocabulary, gives exactly its
  train.input_ids / train.labels, and its inference prompt (cut after the assistant header)."""
  import tokenizers
  from safetensors import safe_open
  from tokenizers import AddedToken, Regex, models, pre_tokenizers
  with safe_open(fixture_path("hourllava_official_e2e_small.safetensors"), "np") as f:
    meta = f.metadata()
    want = {k: f.get_tensor(k)[0].tolist() for k in ("train.input_ids", "train.labels", "infer.input_ids")}
  vocab, conv = json.loads(meta["tokenizer"]), json.loads(meta["conversation"])
  specials = {i: t for t, i in vocab["vocab"].items() if t.startswith("<|")}
  words = tokenizers.Tokenizer(models.WordLevel(vocab["vocab"], unk_token="<unused_0>"))
  words.pre_tokenizer = pre_tokenizers.Split(Regex(vocab["pieces_regex"]), behavior="isolated")
  words.add_special_tokens([AddedToken(specials[i], special=True, normalized=False) for i in sorted(specials)])
  tok = chat.from_hf(transformers.PreTrainedTokenizerFast(
      tokenizer_object=words, eos_token="<|im_end|>", pad_token="<|endoftext|>",
      additional_special_tokens=["<|im_start|>", "<|im_end|>"]), "fixture vocabulary")
  ids, labels = chat.tokenize_conversation(tok, conv["messages"], has_image=True, system=conv["system"])
  assert ids.tolist() == want["train.input_ids"] and labels.tolist() == want["train.labels"]
  prompt = chat.generation_prompt(tok, conv["messages"][:1], system=conv["system"])
  assert prompt.tolist() == want["infer.input_ids"]
  # ... and the fixture's first message is the streaming loader's time instruction on the record.
  record = [{"from": "human", "value": "<image>\nWhat is the person doing in the video?"}]
  assert chat.normalise_placeholders(chat.with_time_instruction(record, 12.0, 4)) == conv["messages"][:1]


def test_unusable_tokenizers_fail_at_load_naming_why(tmp_path, qwen2_tokenizer):
  words = __import__("tokenizers").Tokenizer(__import__("tokenizers").models.WordLevel({"a": 0, "[UNK]": 1},
                                                                                        unk_token="[UNK]"))
  plain = transformers.PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]")
  with pytest.raises(ValueError, match=r"<\|im_start\|> is not one token"):
    chat.from_hf(plain, "plain")
  with pytest.raises(ValueError, match="cannot load"):
    chat.load_tokenizer(str(tmp_path / "nowhere"))
  tok = chat.load_tokenizer(qwen2_tokenizer)
  with pytest.raises(ValueError, match="'robot'"):
    chat.tokenize_conversation(tok, [{"from": "robot", "value": "hi"}], has_image=False)


def test_labels_follow_the_official_rule(qwen2_tokenizer):
  tok = chat.load_tokenizer(qwen2_tokenizer)
  conv = chat.normalise_placeholders(CONVERSATIONS[1])
  ids, labels = chat.tokenize_conversation(tok, conv, has_image=True)
  sep = {tok.im_start, tok.im_end, tok.newline}
  supervised = tok.decode([i for i, l in zip(ids, labels) if l != -100 and i not in sep])
  assert supervised == "assistantRed.assistantThree circles.assistantThey leave.\n\nThe end."
  is_sep = np.isin(ids, list(sep))
  np.testing.assert_array_equal(labels[is_sep], ids[is_sep])          # separators labelled everywhere
  _, plain = chat.tokenize_conversation(tok, conv, has_image=True, label_separators=False)
  first_user_end = int(np.flatnonzero(ids == tok.im_end)[1]) + 2
  assert (plain[:first_user_end] == -100).all() and (plain[first_user_end:] != -100).any()
