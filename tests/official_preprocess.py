"""An independent re-implementation of the official Hour-LLaVA text preprocessing, to test
hourjax's against (jylins/hourllava, commit 68eafcb: `hourllava/dataset/streaming_supervised_dataset.py`
(the time instruction), `preprocess.py::preprocess_multimodal` and `preprocess.py::preprocess_qwen`).

It follows the official steps literally, through transformers' own machinery where the official
code uses it: a deep copy of the tokenizer, `add_tokens(["<image>"], special_tokens=True)` only for
visual samples, the minimal chat template rendered by `apply_chat_template` one message at a
time, `<|im_start|>` / `<|im_end|>` taken from the tokenizer's `additional_special_tokens[:2]`,
and the hard-coded newline id 198.
"""
import copy
import json
import os
import re

IGNORE_INDEX, IMAGE_TOKEN_INDEX, IMAGE = -100, -200, "<image>"
TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
            "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def time_instruction(conversations, duration, frames):
  """The streaming loader: first message -> `<image>\\n{TI}\\n{value without <image>}`."""
  conv = copy.deepcopy(conversations)
  ti = (f"The video lasts for {duration:.2f} seconds, and {frames} frames are uniformly sampled from it. "
        "Please answer the following questions related to this video.")
  conv[0]["value"] = f"{IMAGE}\n{ti}\n{conv[0]['value'].replace(IMAGE, '')}"
  return conv


def preprocess_multimodal(conversations):
  conv = copy.deepcopy(conversations)
  for sentence in conv:
    if len(re.findall(IMAGE, sentence["value"])) == 1 and not sentence["value"].startswith(IMAGE):
      sentence["value"] = sentence["value"].replace(IMAGE, "").strip()
      sentence["value"] = (IMAGE + "\n" + sentence["value"]).strip()
    sentence["value"] = sentence["value"].replace("QA_GT_caption_based_noisy", "")
  return conv


def additional_special_tokens(tokenizer_dir):
  """What `tokenizer.additional_special_tokens` held under transformers 4 (the official code's
  version): the tokenizer_config.json list."""
  cfg = json.load(open(os.path.join(tokenizer_dir, "tokenizer_config.json")))
  return cfg.get("additional_special_tokens") or cfg.get("extra_special_tokens")


_COPIES = {}


def _prepared_copy(tokenizer, has_image):
  """The official code deep-copies the tokenizer (and adds `<image>` for visual samples) on every
  call; the copy is the same each time, so it is made once per tokenizer here (copying a Qwen2
  tokenizer takes about a second)."""
  key = (id(tokenizer), has_image)
  if key not in _COPIES:
    tok = copy.deepcopy(tokenizer)
    if has_image:
      tok.add_tokens([IMAGE], special_tokens=True)
    _COPIES[key] = (tokenizer, tok)      # the original is kept alive so that its id stays unique
  return _COPIES[key][1]


def preprocess_qwen(conversation, tokenizer, tokenizer_dir, has_image, system="You are a helpful assistant."):
  roles = {"human": "user", "gpt": "assistant"}
  tokenizer = _prepared_copy(tokenizer, has_image)
  image_token_index = tokenizer.convert_tokens_to_ids(IMAGE)
  im_start, im_end = tokenizer.convert_tokens_to_ids(additional_special_tokens(tokenizer_dir)[:2])
  unmask = [198, im_start, im_end]
  tokenizer.chat_template = TEMPLATE
  source = conversation
  if roles[source[0]["from"]] != roles["human"]:
    source = source[1:]

  def encode(messages):
    out = tokenizer.apply_chat_template(messages, tokenize=True)
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)

  input_id = encode([{"role": "system", "content": system}])
  target = [IGNORE_INDEX] * len(input_id)
  for conv in source:
    role = roles.get(conv["from"], conv["from"])
    ids = encode([{"role": role, "content": conv["value"]}])
    input_id += ids
    target += [IGNORE_INDEX] * len(ids) if role in ("user", "system") else ids
  for i, t in enumerate(input_id):
    if t in unmask:
      target[i] = t
    if t == image_token_index:
      input_id[i] = IMAGE_TOKEN_INDEX
  return input_id, target
