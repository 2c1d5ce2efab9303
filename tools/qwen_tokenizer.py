"""The real Qwen2 / Qwen2.5 tokenizer, built offline from the package index.

    python -m tools.qwen_tokenizer --out /tmp/qwen2            # Qwen2-7B-Instruct's tokenizer
    python -m tools.qwen_tokenizer --out /tmp/qwen25 --qwen25  # Qwen2.5's (19 more special tokens)

No model hub is reachable here, but the `qwen-agent` wheel on the package index ships
`qwen_agent/utils/qwen.tiktoken`: 151,643 base64 byte strings whose ranks are exactly Qwen2's
regular vocabulary. With Qwen2's pre-tokenizer pattern, NFC normalisation, byte-level BPE (the
merges are recovered from the ranks, as transformers' TikTokenConverter does) and the special
tokens at their ids (`<|endoftext|>` 151643, `<|im_start|>` 151644, `<|im_end|>` 151645; Qwen2.5
adds 151646-151664), this gives a tokenizer directory that loads with `AutoTokenizer` and encodes
as Qwen2 does ("Hello world" -> [9707, 1879]). Like the real one it has no `<image>` token.

The wheel is fetched once with `pip download --no-deps` into the cache (`$HOURJAX_CACHE`, default
`~/.cache/hourjax`); `ensure()` builds a directory there on first use (the tests call it).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import zipfile

from hourjax.data.chat import QWEN2_CHAT_TEMPLATE
from tools import wheels

WHEEL = "qwen-agent==0.0.34"
RANKS = "qwen_agent/utils/qwen.tiktoken"
PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2.5 (151646-151664); the last eight are added tokens that are not "special".
QWEN25_SPECIALS = ["<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
                   "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                   "<|image_pad|>", "<|video_pad|>"]
QWEN25_PLAIN = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]


def fetch_ranks(cache: str | None = None) -> bytes:
  """The qwen.tiktoken file's bytes, from the qwen-agent wheel (downloaded once into the cache)."""
  with zipfile.ZipFile(wheels.fetch(WHEEL, cache)) as z:
    return z.read(RANKS)


def _byte_level(b: bytes) -> str:
  from transformers.convert_slow_tokenizer import bytes_to_unicode
  table = _byte_level.table = getattr(_byte_level, "table", None) or bytes_to_unicode()
  return "".join(table[c] for c in b)


def vocab_and_merges(ranks_file: bytes) -> tuple[dict[str, int], list[tuple[str, str]]]:
  """Byte-level vocabulary and BPE merges from tiktoken ranks: every split of a token into two
  tokens is a merge, ranked by the token it makes (tiktoken merges the lowest-ranked pair)."""
  ranks: dict[bytes, int] = {}
  for line in ranks_file.splitlines():
    if line.strip():
      token, rank = line.split()
      ranks[base64.b64decode(token)] = int(rank)
  merges = []
  for token, rank in ranks.items():
    splits = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
    merges += [(rank, ranks[l], ranks[r], l, r) for l, r in splits]
  merges.sort()
  return ({_byte_level(t): r for t, r in ranks.items()},
          [(_byte_level(l), _byte_level(r)) for *_, l, r in merges])


def build(out: str, qwen25: bool = False, cache: str | None = None) -> str:
  """Write a Qwen2 (or Qwen2.5) tokenizer directory to `out`; returns `out`."""
  import tokenizers
  from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
  vocab, merges = vocab_and_merges(fetch_ranks(cache))
  if len(vocab) != 151643:
    raise RuntimeError(f"{RANKS} holds {len(vocab)} ranks, expected Qwen2's 151,643")
  tok = tokenizers.Tokenizer(models.BPE(vocab, merges, byte_fallback=False, fuse_unk=False))
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(PATTERN), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  specials = QWEN2_SPECIALS + (QWEN25_SPECIALS if qwen25 else [])
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
  if qwen25:
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN25_PLAIN])
  os.makedirs(out, exist_ok=True)
  tok.save(os.path.join(out, "tokenizer.json"))
  with open(os.path.join(out, "vocab.json"), "w") as f:      # the slow tokenizer's files, as shipped
    json.dump(vocab, f, ensure_ascii=False)
  with open(os.path.join(out, "merges.txt"), "w") as f:
    f.write("#version: 0.2\n" + "".join(f"{l} {r}\n" for l, r in merges))
  # tokenizer_config.json as Qwen2-7B-Instruct / Qwen2.5-*-Instruct ship it (transformers 4 format).
  added = {str(tok.token_to_id(t)): dict(content=t, lstrip=False, normalized=False, rstrip=False,
                                          single_word=False, special=t in specials)
           for t in specials + (QWEN25_PLAIN if qwen25 else [])}
  config = dict(add_prefix_space=False, added_tokens_decoder=added,
                additional_special_tokens=["<|im_start|>", "<|im_end|>"] + (QWEN25_SPECIALS if qwen25 else []),
                bos_token=None, chat_template=QWEN2_CHAT_TEMPLATE, clean_up_tokenization_spaces=False,
                eos_token="<|im_end|>", errors="replace", model_max_length=131072 if qwen25 else 32768,
                pad_token="<|endoftext|>", split_special_tokens=False, tokenizer_class="Qwen2Tokenizer",
                unk_token=None)
  with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
    json.dump(config, f, indent=2, ensure_ascii=False)
  ids = {t: tok.token_to_id(t) for t in specials}
  want = {t: 151643 + i for i, t in enumerate(specials)}
  if ids != want:
    raise RuntimeError(f"special token ids {ids} differ from Qwen's {want}")
  return out


def ensure(qwen25: bool = False, cache: str | None = None) -> str:
  """The cached tokenizer directory, built on first use."""
  out = os.path.join(cache or wheels.cache_dir(), "qwen2.5" if qwen25 else "qwen2")
  if not os.path.exists(os.path.join(out, "tokenizer.json")):
    tmp = out + f".tmp{os.getpid()}"
    build(tmp, qwen25, cache)
    try:
      os.replace(tmp, out)            # atomic: concurrent builders never see half a directory
    except OSError:
      if not os.path.exists(os.path.join(out, "tokenizer.json")):
        raise
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="", help="directory to write (default: the cache)")
  p.add_argument("--qwen25", action="store_true", help="Qwen2.5's special tokens (151646-151664) too")
  a = p.parse_args(argv)
  path = build(a.out, a.qwen25) if a.out else ensure(a.qwen25)
  print(path)
  return 0


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
