"""hourjax (jit, XLA:CPU) against transformers (torch eager, float32) on one small
LLaVA-OneVision-shaped model with the same weights: the vision tower on a clip of frames, the
decoder's training step (loss + backward) and its prefill.

  .venv/bin/python -m tools.bench.vs_transformers [--seq 2048] [--frames 16] [--repeats 5]
  .venv/bin/python -m tools.bench.vs_transformers --attention blockwise   # the decoder's attention

The transformers model is built with random weights, saved, and converted with
`hourjax.convert.import_torch`, so both sides compute the same function (checked: relative
error of the outputs is printed). Both use every core of the host. Results: docs/performance.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def _median_time(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--seq", type=int, default=2048)
  p.add_argument("--frames", type=int, default=16)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--attention", default="xla", help="the decoder's attention (ops.attention.IMPLEMENTATIONS)")
  a = p.parse_args(argv)
  import dataclasses
  import jax
  import jax.numpy as jnp
  import torch
  import transformers
  from hourjax.convert.api import import_torch
  from hourjax.models import build
  from hourjax.train.step import lm_loss_fn
  from hourjax.numerics import rel_err

  vision = transformers.SiglipVisionConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                                           num_attention_heads=6, image_size=224, patch_size=14)
  text = transformers.Qwen2Config(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=6,
                                  num_attention_heads=8, num_key_value_heads=2, rope_theta=1e6,
                                  max_position_embeddings=a.seq, tie_word_embeddings=False)
  cfg = transformers.LlavaOnevisionConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                                          vision_feature_layer=-1, vision_feature_select_strategy="full",
                                          image_token_index=31999, video_token_index=31998)
  torch.manual_seed(0)
  hf = transformers.LlavaOnevisionForConditionalGeneration(cfg).float().eval()
  path = tempfile.mkdtemp()
  hf.save_pretrained(path)
  conv = import_torch(path, key=jax.random.key(0))
  hj_cfg, params = conv.config, jax.tree.map(jnp.asarray, conv.params)
  siglip = build.build("siglip", hj_cfg.vision)
  qwen = build.build("qwen2", dataclasses.replace(hj_cfg.llm, attention=a.attention))
  rows = []

  # 1. vision tower: frames [T, 224, 224, 3]
  px = np.random.default_rng(0).uniform(-1, 1, (a.frames, 224, 224, 3)).astype(np.float32)
  px_t = torch.from_numpy(px).permute(0, 3, 1, 2).contiguous()
  vis = jax.jit(lambda p, x: siglip.apply({"params": p}, x, feature_layer=-1))
  with torch.no_grad():
    ref = hf.model.vision_tower(px_t, output_hidden_states=True).hidden_states[-1].numpy()
  out = np.asarray(vis(params["vision"], px))
  err = rel_err(out, ref)
  with torch.no_grad():
    t_hf = _median_time(lambda: hf.model.vision_tower(px_t, output_hidden_states=True), a.repeats)
  t_hj = _median_time(lambda: vis(params["vision"], px).block_until_ready(), a.repeats)
  rows.append(("SigLIP forward", f"{a.frames} frames x 256 patches", t_hf, t_hj, err))

  # 2. decoder prefill: logits of one sequence
  ids = np.random.default_rng(1).integers(0, 31990, (1, a.seq))
  ids_t = torch.from_numpy(ids)
  prefill = jax.jit(lambda p, x: qwen.apply({"params": p}, x)[0])
  with torch.no_grad():
    ref = hf.model.language_model(ids_t).last_hidden_state
    ref = hf.lm_head(ref).numpy()
  err = rel_err(np.asarray(prefill(params["llm"], ids)), ref)
  with torch.no_grad():
    t_hf = _median_time(lambda: hf.lm_head(hf.model.language_model(ids_t).last_hidden_state), a.repeats)
  t_hj = _median_time(lambda: prefill(params["llm"], ids).block_until_ready(), a.repeats)
  rows.append(("Qwen2 prefill (logits)", f"1 x {a.seq} tokens", t_hf, t_hj, err))

  # 3. decoder training step: mean next-token CE and its gradient
  def hf_step():
    hf.zero_grad(set_to_none=True)
    logits = hf.lm_head(hf.model.language_model(ids_t).last_hidden_state)
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids_t[0, 1:])
    loss.backward()
    return loss
  from hourjax.data.batch import PackedBatch
  batch = PackedBatch(ids, ids, np.broadcast_to(np.arange(ids.shape[1]), ids.shape), np.ones_like(ids))
  grad = jax.jit(jax.value_and_grad(lambda p: lm_loss_fn(qwen, p, batch)[0]))
  loss_hj, _ = grad(params["llm"])
  err = rel_err(np.asarray(loss_hj), hf_step().detach().numpy())
  t_hf = _median_time(hf_step, a.repeats)
  t_hj = _median_time(lambda: jax.block_until_ready(grad(params["llm"])), a.repeats)
  rows.append(("Qwen2 training step (loss + grad)", f"1 x {a.seq} tokens", t_hf, t_hj, err))

  print("| part | shape | transformers (s) | hourjax (s) | speed-up | rel. err |")
  print("|---|---|---|---|---|---|")
  for name, shape, t_hf, t_hj, err in rows:
    print(f"| {name} | {shape} | {t_hf:.3f} | {t_hj:.3f} | {t_hf / t_hj:.2f}x | {err:.1e} |")
  print(f"\n(decoder attention {a.attention}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"jax {jax.__version__}, {os.cpu_count()} CPUs)")
  return 0


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
