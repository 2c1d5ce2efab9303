"""Convert weights between PyTorch/HF directories and hourjax checkpoints.

  # PyTorch -> hourjax (kind read from config.json: siglip, qwen2, llava_onevision, llava
  # (LLaVA-NeXT / OneVision originals: model_type llava or llava_qwen), hour_llava);
  # --scan-layers stores the layers stacked for nn.scan (the training layout)
  python -m tools.convert_torch.convert to-jax /ckpt/llava-onevision-qwen2-7b-si /ckpt/hj-ov7b --scan-layers
  # ProLongVid's model (prolongvid/* checkpoints are detected; --model prolongvid for any LLaVA one)
  python -m tools.convert_torch.convert to-jax /ckpt/prolongvid_7B /ckpt/hj-plv7b --scan-layers
  # hourjax -> PyTorch (the kind it came from, or --kind llava_onevision / hour_llava / ...)
  python -m tools.convert_torch.convert to-torch /ckpt/hj-ov7b /ckpt/back --dtype bfloat16

Export reads either layer layout. Tensors are converted one at a time; a missing, unexpected or
wrongly shaped tensor (even one of the right size), a truncated file, a tied head that is not a
copy of the embeddings, or NaN / inf weights (unless --allow-nonfinite) stop the conversion with
the file and tensor named. From LLaVA checkpoints, MemAug is initialised from --seed (logged).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import jax
import ml_dtypes
import numpy as np

from hourjax.convert import api, io
from hourjax.models import build


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="direction", required=True)
  a = sub.add_parser("to-jax", help="PyTorch/HF directory -> hourjax checkpoint")
  a.add_argument("src")
  a.add_argument("out")
  a.add_argument("--kind", choices=api.SOURCE_KINDS, help="default: from config.json model_type")
  a.add_argument("--model", choices=api.MODEL_KINDS, help="what a LLaVA checkpoint becomes; default: prolongvid "
                 "if its config records mm_fixed_patch_length (prolongvid/*), else hour_llava")
  a.add_argument("--seed", type=int, default=0, help="PRNG seed for weights the source lacks (MemAug)")
  a.add_argument("--scan-layers", action="store_true", help="store layers stacked (nn.scan layout)")
  a.add_argument("--allow-nonfinite", action="store_true", help="convert NaN / inf weights instead of failing")
  b = sub.add_parser("to-torch", help="hourjax checkpoint -> PyTorch/HF directory")
  b.add_argument("src")
  b.add_argument("out")
  b.add_argument("--kind", choices=api.SOURCE_KINDS, help="layout to write; default: the source's")
  b.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: as stored")
  args = p.parse_args(argv)
  from hourjax.cli import writable_dir
  writable_dir(os.path.dirname(os.path.abspath(args.out)), "out")      # before minutes of conversion
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  if args.direction == "to-jax":
    conv = api.import_torch(args.src, args.kind, key=jax.random.key(args.seed), model=args.model,
                            scan_layers=args.scan_layers, allow_nonfinite=args.allow_nonfinite)
    io.save_params(args.out, conv.params, conv.kind, conv.config, conv.source_config, conv.source_kind)
    n = build.count_params(conv.params)
    print(f"{args.src} ({conv.source_kind}) -> {args.out}: {conv.kind}, {n:,} parameters"
          + (f"; initialised at random: {', '.join(conv.initialised)}" if conv.initialised else ""))
  else:
    meta = io.read_meta(args.src)
    cfg = build.config_from_dict(meta["kind"], meta["config"])
    params = io.load_params(args.src)
    kind = args.kind or meta.get("source_kind", meta["kind"])
    dtype = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}.get(args.dtype)
    files = api.export_torch(args.out, kind, cfg, params, meta.get("source_config"), dtype=dtype)
    print(f"{args.src} -> {args.out} ({kind}): {', '.join(files)} + config.json")
  return 0


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
