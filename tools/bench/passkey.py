"""Does the context-extension stage do what it is for? A passkey check on this CPU.

  python -m tools.bench.passkey --workdir /tmp/hourjax_passkey      # ~10 min on 2 cores

1. Writes a long-text corpus: filler sentences with a 5-digit pass key stated once and asked for
   at the end ("... The pass key is 7 3 9 1 4. ... What is the pass key? The pass key is 7 3 9 1 4.").
2. Trains a tiny base decoder at a short context (256 tokens, RoPE theta 1e6) through the real
   stage code (`run_stage`, configs/prolongvid.py:tiny,stage=context_extension with overrides).
3. Continues it with the context-extension stage itself (theta 1e9, 2048-token packed
   sequences) for a few hundred steps, and, as a control, the same steps at the old theta.
4. Scores retrieval at 256 / 1024 / 2048 tokens of context, the key at a random depth:
   all five digits right under teacher forcing (greedy decoding gives the same digits).
Prints a table and writes it as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

FILLER = ["The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
          "There and back again.", "The river flows to the sea.", "Birds sing in the morning."]


def document(rng: np.random.Generator, words: int) -> tuple[str, str]:
  """A filler text of about `words` words with the key at a random depth; returns (text, key)."""
  key = " ".join(str(d) for d in rng.integers(0, 10, 5))
  sentences, n = [], 0
  while n < words:
    s = FILLER[int(rng.integers(len(FILLER)))]
    sentences.append(s)
    n += len(s.split())
  at = int(rng.integers(0, len(sentences) + 1))
  sentences.insert(at, f"The pass key is {key}. Remember it.")
  return " ".join(sentences) + f" What is the pass key? The pass key is {key}.", key


def write_corpus(path: str, n: int, words: tuple[int, int], seed: int) -> None:
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    for _ in range(n):
      f.write(json.dumps({"text": document(rng, int(rng.integers(*words)))[0]}) + "\n")


def retrieval(params, cfg, tokenizer, context: int, n: int, seed: int) -> float:
  """Fraction of n prompts of ~`context` tokens whose 5 key digits the model predicts exactly."""
  import jax
  import jax.numpy as jnp
  from hourjax.models import build
  model = build.build("qwen2", cfg)
  rng = np.random.default_rng(seed)
  rows, key_at = [], []
  words = max(8, int(context / 1.75))      # ~1.75 tokens per filler word with the tiny tokenizer
  while len(rows) < n:
    text, key = document(rng, words)
    ids = tokenizer.encode(text)
    if len(ids) > context:
      words = int(words * 0.95)
      continue
    digits = tokenizer.encode(" " + key + ".")[:-1]
    rows.append(ids)
    key_at.append((len(ids) - len(digits) - 1, len(digits)))
  ids = np.zeros((n, context), np.int32)
  seg = np.zeros((n, context), np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)], seg[i, :len(r)] = r, 1
  pos = np.broadcast_to(np.arange(context), ids.shape)
  logits_fn = jax.jit(lambda p, x, s, q: model.apply({"params": p}, x, positions=q, segment_ids=s)[0])
  hits = 0
  for s in range(0, n, 4):
    logits = np.asarray(logits_fn(params, jnp.asarray(ids[s:s + 4]), jnp.asarray(seg[s:s + 4]),
                                  jnp.asarray(pos[s:s + 4])))
    for j, (start, k) in enumerate(key_at[s:s + 4]):
      pred = logits[j, start - 1:start - 1 + k].argmax(-1)
      hits += int(np.array_equal(pred, ids[s + j, start:start + k]))
  return hits / n


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="/tmp/hourjax_passkey")
  p.add_argument("--base-steps", type=int, default=1500)
  p.add_argument("--extension-steps", type=int, default=300)
  p.add_argument("--long", type=int, default=2048, help="the extended context")
  p.add_argument("--prompts", type=int, default=100)
  a = p.parse_args(argv)
  from absl import flags
  flags.FLAGS.mark_as_parsed()
  from hourjax.config import load, model_config
  from hourjax.convert.io import load_params
  from hourjax.data.chat import load_tokenizer
  from hourjax.synthetic.tokenizer import save_tiny_tokenizer
  from hourjax.train.stage import run_stage

  os.makedirs(a.workdir, exist_ok=True)
  short_docs, long_docs = os.path.join(a.workdir, "short.jsonl"), os.path.join(a.workdir, "long.jsonl")
  if not os.path.exists(long_docs):
    write_corpus(short_docs, 20000, (10, 120), seed=0)
    write_corpus(long_docs, 4000, (100, 1100), seed=1)
  tok_dir = os.path.join(a.workdir, "tokenizer")
  if not os.path.exists(tok_dir):
    save_tiny_tokenizer(tok_dir, [json.loads(l)["text"] for l in open(short_docs)][:2000], vocab_size=400)
  tokenizer = load_tokenizer(tok_dir)
  config = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "prolongvid.py")
  spec = config + ":tiny,stage=context_extension"
  # The tiny preset's N(0, 1/fan_in) init: HF's 0.02 stalls a width-64 model (docs/ablation.md).
  common = [f"data.tokenizer={tok_dir}", "train.checkpoint_every=500", "train.optimizer.warmup_ratio=0.05"]
  t0 = time.time()
  runs = {
      "base (256 tokens, theta 1e6)": (
          [f"data.documents=['{short_docs}']", "data.seq_len=256", "data.batch_size=16",
           f"train.steps={a.base_steps}", "model.llm.rope_theta=1e6"], "base", ""),
      f"+ context extension ({a.long} tokens, theta 1e9)": (
          [f"data.documents=['{long_docs}']", f"data.seq_len={a.long}", "data.batch_size=2",
           f"train.steps={a.extension_steps}", "train.optimizer.lr.llm=1e-3"], "extended", "base"),
      "+ same steps at theta 1e6 (control)": (
          [f"data.documents=['{long_docs}']", f"data.seq_len={a.long}", "data.batch_size=2",
           f"train.steps={a.extension_steps}", "train.optimizer.lr.llm=1e-3", "model.llm.rope_theta=1e6"],
          "control", "base"),
  }
  contexts = (256, 1024, a.long)
  report = {}
  for name, (overrides, sub, init) in runs.items():
    init_arg = [f"train.init={os.path.join(a.workdir, init, 'params')}"] if init else []
    run = load(spec, common + overrides + init_arg)
    workdir = os.path.join(a.workdir, sub)
    run_stage(run, workdir)
    cfg = model_config(run.model).llm
    params = load_params(os.path.join(workdir, "params"))
    report[name] = {c: retrieval(params, cfg, tokenizer, c, a.prompts, seed=7) for c in contexts}
    print(f"{name}: " + ", ".join(f"{c} tokens {v:.2f}" for c, v in report[name].items()), flush=True)
  print("\n| model | " + " | ".join(f"{c} tokens" for c in contexts) + " |\n|---|" + "---|" * len(contexts))
  for name, accs in report.items():
    print(f"| {name} | " + " | ".join(f"{accs[c] * 100:.0f}%" for c in contexts) + " |")
  print(f"\nwall time {(time.time() - t0) / 60:.1f} min")
  with open(os.path.join(a.workdir, "passkey.json"), "w") as f:
    json.dump({"retrieval": report, "seconds": time.time() - t0}, f, indent=1)
  return 0


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
