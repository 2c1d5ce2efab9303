"""Run a config's whole recipe: its stages in order (the config module's `recipe(arg)`), each in
<workdir>/<i>_<stage>, each from the previous one's parameters (`stage.run_recipe`).

  python -m launch.recipe --config configs/prolongvid.py:7b --workdir /runs/plv data.root=/data \\
      data.read.tokenizer=/ckpt/qwen2 context_extension:data.documents='("/data/slimpajama/*/*.jsonl",)' \\
      context_extension:data.tokenizer=/ckpt/qwen2 context_extension:train.init=/ckpt/qwen2-hj
  python -m launch.recipe --config configs/prolongvid.py:tiny --workdir /tmp/plv data.root=/tmp/synth \\
      data.read.tokenizer=/tmp/synth/tokenizer context_extension:data.documents='("/tmp/docs.jsonl",)' \\
      context_extension:data.tokenizer=/tmp/synth/tokenizer

Overrides `key=value` apply to every stage but the decoder-only ones' `data.*` (their data is
text); `STAGE:key=value` to that stage alone. Re-running skips finished stages and resumes the
interrupted one from its checkpoint.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys


def stage_overrides(stage: str, overrides: list[str], decoder_only: bool) -> list[str]:
  """This stage's overrides: its own (`STAGE:key=value`) and the shared ones it has fields for."""
  out = []
  for item in overrides:
    head, sep, rest = item.partition(":")
    if sep and "=" not in head:
      if head == stage:
        out.append(rest)
    elif not (decoder_only and item.removeprefix("--config.").startswith("data.")):
      out.append(item)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="path.py:size[,model=...] of a config module with recipe(arg)")
  p.add_argument("--workdir", required=True)
  p.add_argument("overrides", nargs="*", help="key=value (every stage) or STAGE:key=value")
  a = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  from hourjax.config import load
  from hourjax.train.stage import run_recipe
  path, _, arg = a.config.partition(":")
  spec = importlib.util.spec_from_file_location("hourjax_recipe_config", path)
  if spec is None:
    raise ValueError(f"config file {path!r} not found (expected path/to/config.py:size)")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "recipe"):
    raise ValueError(f"config {path} has no recipe(arg) (the ordered stages to run)")
  names = [str(s) for s in module.recipe(arg)]
  unknown = {o.partition(":")[0] for o in a.overrides if ":" in o.partition("=")[0]} - set(names)
  if unknown:
    raise ValueError(f"overrides name unknown stages {sorted(unknown)}; the recipe is {names}")
  stages = []
  for name in names:
    spec_arg = f"{path}:{arg},stage={name}"
    decoder_only = bool(load(spec_arg).train.get("decoder_only", False))
    stages.append((name, load(spec_arg, stage_overrides(name, a.overrides, decoder_only))))
  print(json.dumps(run_recipe(stages, a.workdir), indent=1, default=str))
  return 0


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
